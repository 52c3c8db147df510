"""``evaluate`` (wsolevaluation metrics over any backend or precomputed maps) and ``localize``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import BagcamsError, plural
from ..methods.names import METHODS
from .core import (
    INPUT_SIZE_DEFAULT,
    INPUT_SIZE_HELP,
    MODEL_BACKEND_DEFAULT,
    THREADS_HELP,
    checkpoint_hint,
    model_option_hint,
    print_load_notes,
    print_note,
)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("localize")(localize)


def _console() -> Console:
    return Console(width=None if Console().is_terminal else 140)


def summary_columns(rows: dict[str, dict]) -> list[str]:
    """The summaries' keys in order (the box metric's name depends on the contour mode)."""
    return list(dict.fromkeys(k for summary in rows.values() for k in summary))


def summary_table(rows: dict[str, dict], title: str) -> Table:
    t = Table(title=title)
    t.add_column("")
    keys = summary_columns(rows)
    for k in keys:
        t.add_column(k, justify="right")
    for name, summary in rows.items():
        t.add_row(name, *("-" if summary.get(k) is None else f"{summary[k]:.2f}" for k in keys))
    return t


def summary_markdown(rows: dict[str, dict]) -> str:
    keys = [k for k in summary_columns(rows) if any(s.get(k) is not None for s in rows.values())]
    lines = ["| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, s in rows.items():
        lines.append(f"| {name} | " + " | ".join("-" if s.get(k) is None else f"{s[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def evaluate(
    model: Path = typer.Option(None, "--model", help=".onnx, .plan or a checkpoint (or use --maps)"),
    metadata: Path = typer.Option(..., "--metadata", help="wsolevaluation metadata folder of one split"),
    data_root: Path = typer.Option(None, "--data-root", help="folder the image ids are relative to"),
    mask_root: Path = typer.Option(None, "--mask-root", help="folder the mask paths are relative to"),
    mask_metadata: Path = typer.Option(
        None, "--mask-metadata", help="folder whose localization.txt lists the masks (when --metadata has boxes)"
    ),
    backend: str = typer.Option(
        None,
        "--backend",
        help="what runs --model (`bagcams-deploy backends` lists them)",
        show_default=MODEL_BACKEND_DEFAULT,
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="PyTorch checkpoint: the reference of --compare-reference, and the model a torch backend (--backend "
        "torch-*) runs for a .onnx or .plan --model (the checkpoint it was exported from)",
    ),
    method: str = typer.Option(
        None, "--method", help="|".join(METHODS) + " (when --model is a checkpoint)", show_default="bagcams"
    ),
    target_layer: str = typer.Option(
        None,
        "--target-layer",
        help="layer to map when --model is a checkpoint: valid layers depend on the architecture (`info` lists them)",
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="images per inference call"),
    input_size: int = typer.Option(
        None, "--input-size", min=1, max=4096, help=INPUT_SIZE_HELP, show_default=INPUT_SIZE_DEFAULT
    ),
    cam_interval: float = typer.Option(
        0.001, "--cam-interval", help="threshold step (the default is the published one; 0.01 is faster)"
    ),
    single_contour: bool = typer.Option(
        False, "--single-contour", help="largest contour only (default: all, as MaxBoxAccV2)"
    ),
    maps: Path = typer.Option(None, "--maps", help="evaluate precomputed maps DIR/<image_id>.npy instead of a model"),
    predictions: Path = typer.Option(None, "--predictions", help="with --maps: 'image_id,label' lines for Top-1 Loc"),
    save_maps: Path = typer.Option(None, "--save-maps", help="save each map as DIR/<image_id>.npy"),
    compare_reference: bool = typer.Option(False, "--compare-reference", help="also run the PyTorch reference"),
    limit: int = typer.Option(None, "--limit", min=1, help="only the first N images"),
    threads: int = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    small_feature_map: bool = typer.Option(
        False, "--small-feature-map", help="checkpoint trained without the large feature map (e.g. OpenImages)"
    ),
    report: Path = typer.Option(None, "--report", help="JSON report (a Markdown table is written beside it)"),
    plot: Path = typer.Option(None, "--plot", help="folder for the accuracy-vs-threshold and PR curves (PNG)"),
) -> None:
    """Top-1 Loc, GT-known Loc, MaxBoxAccV2 (and pIoU/PxAP with masks), wsolevaluation's definitions."""
    from ..evaluation import align_mask_ids, load_mask_metadata, load_metadata, plot_metrics
    from ..evaluation.boxes import MIN_CAM_INTERVAL
    from ..evaluation.runner import Scorer, evaluate_backend, evaluate_maps, read_predictions
    from ..outputs import output_dir, output_file
    from ..progress import progress_bar
    from ..runtime.base import run_input_size
    from ..runtime.open import PLAN_SUFFIXES, load_checkpoint_for, open_model, read_model_info

    if not MIN_CAM_INTERVAL <= cam_interval < 1:
        raise BagcamsError(f"--cam-interval must be in [{MIN_CAM_INTERVAL}, 1), got {cam_interval}")
    inputs = {"the model": model, "the checkpoint": checkpoint, "--predictions": predictions}
    output_file(report, "--report", inputs)
    if report is not None:
        if report.suffix.lower() == ".md":
            raise BagcamsError(
                f"--report {report} names the JSON report; its Markdown table is written beside it (.md)"
            )
        output_file(report.with_suffix(".md"), "--report's Markdown table", inputs)
    output_dir(save_maps, "--save-maps")
    output_dir(plot, "--plot")
    if (model is None) == (maps is None):
        raise BagcamsError("give exactly one of --model or --maps")
    model_only = {"--backend": backend, "--checkpoint": checkpoint, "--method": method, "--target-layer": target_layer,
                  "--save-maps": save_maps, "--compare-reference": compare_reference or None,
                  "--small-feature-map": small_feature_map or None, "--input-size": input_size}  # fmt: skip
    given = [flag for flag, value in model_only.items() if value is not None]
    if maps is not None and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise BagcamsError(f"{', '.join(given)} {verb} to --model, not to precomputed --maps")
    if model is not None and predictions is not None:
        raise BagcamsError("--predictions is for --maps; with --model the model's own predictions are used")
    meta = load_metadata(metadata)
    mask_meta = align_mask_ids(meta.image_ids, load_mask_metadata(mask_metadata)) if mask_metadata else None
    if mask_meta is not None:  # before the run, not at the first image without one
        scored = meta.image_ids[:limit] if limit else meta.image_ids
        lacking = [i for i in scored if i not in mask_meta.mask_paths]
        if lacking:
            raise BagcamsError(
                f"{len(lacking)} of {len(scored)} images have no mask in {mask_metadata}/localization.txt "
                f"(first: {lacking[0]!r}; its ids look like {next(iter(mask_meta.mask_paths))!r})"
            )
    notes = meta.notes + (mask_meta.notes if mask_meta else [])
    for note in notes:  # before a run that may take an hour
        print_note(note)

    def scorer() -> Scorer:
        return Scorer(meta, mask_meta, mask_root, cam_interval, multi_contour=not single_contour)

    n = min(limit, len(meta.image_ids)) if limit else len(meta.image_ids)
    results = {}
    b = None
    fed = None  # (H, W) the model is fed; precomputed --maps have none
    extra = []
    ref_scorer = None
    if maps is None:  # opened before the progress bar: their notes would be drawn into it
        if data_root is None:
            raise BagcamsError("--data-root is needed to read the images")
        lfm = False if small_feature_map else None
        with checkpoint_hint(model_option_hint()):
            b = open_model(model, backend, checkpoint, method, target_layer, threads, large_feature_map=lfm)
        fed, _ = run_input_size(b.spec, input_size, str(model))  # refused before the reference loads
        if compare_reference:
            if checkpoint is None:
                raise BagcamsError("--compare-reference needs --checkpoint")
            from ..models import load_model
            from ..runtime.torch_backends import TorchReferenceBackend

            spec = b.spec
            if model.suffix.lower() in (".onnx", *PLAN_SUFFIXES):
                ref_model = load_checkpoint_for(checkpoint, read_model_info(model))
            else:
                ref_model = load_model(checkpoint, spec.architecture, large_feature_map=lfm)
            ref = TorchReferenceBackend(ref_model, spec.method, spec.target_layer,
                                        input_size=spec.input_size, published_autograd=False)  # fmt: skip
            ref_scorer = scorer()
            extra = [(ref, ref_scorer)]
        notes += print_load_notes(b, *(e for e, _ in extra))  # before the run, and in the report
    with progress_bar(n, "evaluating") as advance:
        if b is None:
            preds = read_predictions(predictions) if predictions else None
            results[str(maps)] = evaluate_maps(maps, scorer(), preds, on_image=advance, limit=limit)
        else:
            with b:
                main_scorer = scorer()
                res = evaluate_backend(b, main_scorer, data_root, batch_size, save_maps, limit, advance, extra,
                                       input_size)  # fmt: skip
            name = f"{b.name}: {b.spec.method}@{b.spec.target_layer}"
            results[name] = res
            if ref_scorer is not None:
                ref_res = ref_scorer.result()
                results["torch-reference"] = ref_res

    rows = {name: r.summary() for name, r in results.items()}
    if compare_reference and len(rows) == 2:
        (_, a), (_, b_) = rows.items()
        # rounded first, so a difference of -1e-6 does not print as -0.00
        rows["difference"] = {k: None if a[k] is None or b_[k] is None else round(a[k] - b_[k], 2) + 0.0 for k in a}
    console = _console()
    first = next(iter(results.values()))
    fed_text = "" if fed is None else f"{fed[0]}x{fed[1]} input, "
    console.print(
        summary_table(
            rows,
            f"{first.count} images, {fed_text}interval {cam_interval}, "
            f"{first.count / max(first.seconds, 1e-9):.1f} img/s",
        )
    )
    run_notes = list(dict.fromkeys(n for r in results.values() for n in r.notes))
    for note in run_notes:
        print_note(note)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "metadata": str(metadata),
            "cam_interval": cam_interval,
            "input_size": None if fed is None else list(fed),
            "notes": notes + run_notes,
            "runs": {k: r.to_dict() for k, r in results.items()},
        }
        report.write_text(json.dumps(payload, indent=2, default=float))
        report.with_suffix(".md").write_text(summary_markdown(rows))
        console.print(f"report: {report} (+ {report.with_suffix('.md').name})")
    if plot:
        for name, r in results.items():
            tag = "".join(c if c.isalnum() else "_" for c in name)[:40]
            for metrics, kind in ((r.boxes, "box_accuracy"), (r.masks, "precision_recall")):
                if metrics is not None:
                    plot_metrics(metrics, plot / f"{tag}_{kind}.png", title=name)
        console.print(f"plots: {plot}")


def localize(
    inputs: list[Path] = typer.Argument(..., metavar="IMAGE_OR_DIR...", help="image files or folders"),
    model: Path = typer.Option(..., "--model", help=".onnx, .plan or a checkpoint"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    threshold: float = typer.Option(
        None, "--threshold", help="box threshold, fraction of the map maximum", show_default="0.5"
    ),
    auto: bool = typer.Option(False, "--auto", help="per-image threshold by Otsu's method instead of --threshold"),
    multi_contour: bool = typer.Option(False, "--multi-contour", help="a box per contour (default: the largest)"),
    backend: str = typer.Option(
        None,
        "--backend",
        help="what runs the model (`bagcams-deploy backends` lists them); torch backends need a checkpoint as --model",
        show_default=MODEL_BACKEND_DEFAULT,
    ),
    method: str = typer.Option(
        None, "--method", help="|".join(METHODS) + " (checkpoints only)", show_default="bagcams"
    ),
    target_layer: str = typer.Option(
        None,
        "--target-layer",
        help="layer to map (checkpoints only): valid layers depend on the architecture (`info` lists them)",
    ),
    class_id: int = typer.Option(None, "--class-id", min=0, help="explain this class (default: the predicted one)"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="images per inference call"),
    input_size: int = typer.Option(
        None, "--input-size", min=1, max=4096, help=INPUT_SIZE_HELP, show_default=INPUT_SIZE_DEFAULT
    ),
    threads: int = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    small_feature_map: bool = typer.Option(
        False, "--small-feature-map", help="checkpoint trained without the large feature map (e.g. OpenImages)"
    ),
) -> None:
    """Maps, boxes and pictures: per image an overlay PNG and the map (.npy); one boxes.json."""
    from ..images import check_images
    from ..localize import check_run_outputs, localize_images
    from ..outputs import check_distinct_stems, output_dir
    from ..preprocessing import expand_image_paths
    from ..progress import progress_bar
    from ..runtime.base import run_input_size
    from ..runtime.open import open_model

    output_dir(out, "--out")
    if auto and threshold is not None:
        raise BagcamsError("--threshold and --auto exclude each other: give one")
    threshold = 0.5 if threshold is None else threshold
    if not 0 <= threshold <= 1:
        raise BagcamsError(f"--threshold must be in [0, 1], got {threshold}")
    notes: list[str] = []
    paths = expand_image_paths(inputs, on_note=notes.append)  # skips an earlier run's overlays, with a note
    # before the model loads (localize_images checks again, for library callers)
    check_distinct_stems(paths)
    check_run_outputs(paths, out, "localize")
    check_images(paths)
    for note in notes:  # only now: before a refusal, a note would make it two lines
        print_note(note)
    with checkpoint_hint(model_option_hint()):
        b = open_model(model, backend, None, method, target_layer, threads,
                       large_feature_map=False if small_feature_map else None, checkpoint_option=None)  # fmt: skip
    print_load_notes(b)
    run_input_size(b.spec, input_size, str(model))  # refused before the progress bar is drawn
    with b, progress_bar(len(paths), "localizing") as advance:
        records = localize_images(
            b, paths, out, None if auto else threshold, multi_contour, class_id, batch_size, advance, input_size,
            on_note=print_note,
        )  # fmt: skip
    typer.echo(f"wrote {plural(len(records), 'overlay')} and {plural(len(records), 'map')}, and {out / 'boxes.json'}")
