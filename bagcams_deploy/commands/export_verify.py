"""``export`` and ``verify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import BagcamsError
from ..methods.names import METHODS
from .core import (
    ARCH_HELP,
    INPUT_SIZE_DEFAULT,
    NUM_CLASSES_HELP,
    TARGET_LAYER_DEFAULT,
    TARGET_LAYER_HELP,
    THREADS_HELP,
    checkpoint_hint,
    graph_first_hint,
)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("verify")(verify)


def export(
    checkpoint: Path = typer.Argument(..., help="DA-WSOL checkpoint or state dict"),
    output: Path = typer.Option(..., "--output", "-o", "--out", help="the .onnx file to write"),
    method: str = typer.Option("bagcams", "--method", help="|".join(METHODS)),
    target_layer: str = typer.Option(None, "--target-layer", help=TARGET_LAYER_HELP, show_default=TARGET_LAYER_DEFAULT),
    arch: str = typer.Option(None, "--arch", help=ARCH_HELP),
    num_classes: int = typer.Option(None, "--num-classes", help=NUM_CLASSES_HELP),
    input_size: int = typer.Option(224, "--input-size", min=1, max=4096, help="H = W of the graph's input"),
    no_cam: bool = typer.Option(False, "--no-cam", help="leave the in-graph map out (features/gradients only)"),
    opset: int = typer.Option(None, "--opset", help="ONNX opset, 17 or newer", show_default="18; 22 for bf16"),
    dynamic_size: bool = typer.Option(False, "--dynamic-size", help="leave H and W dynamic"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | bf16 (mixed-precision graph)"),
    gradient_scale: float = typer.Option(None, "--gradient-scale", help="scale of the gradients output (fp16: auto)"),
    small_feature_map: bool = typer.Option(
        False, "--small-feature-map", help="checkpoint trained without the large feature map (e.g. OpenImages)"
    ),
    exporter: str = typer.Option(
        "torchscript", "--exporter", help="torchscript | dynamo (torch.export-based; needs onnxscript)"
    ),
) -> None:
    """Export the analytic CAM graph: logits, features, exact gradients and the map, for every input."""
    from ..export.contract import check_graph_name
    from ..export.onnx_export import EXPORTERS, export_onnx, require_onnxscript
    from ..models import load_model
    from ..models.checkpoint import check_checkpoint_file
    from ..outputs import output_file

    if method not in METHODS:
        raise BagcamsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if exporter not in EXPORTERS:
        raise BagcamsError(f"unknown --exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    if exporter == "dynamo":
        require_onnxscript()  # before the checkpoint is read
    output_file(output, "--output", {"the checkpoint": checkpoint})
    check_checkpoint_file(checkpoint)  # a missing checkpoint is the first thing to fix
    check_graph_name(output, "--output")  # before the checkpoint is read, which can take long
    model = load_model(checkpoint, arch, num_classes, large_feature_map=False if small_feature_map else None)
    model.check_layer_for(method, target_layer)
    kwargs = {}
    if precision != "fp32":
        kwargs["precision"] = precision
    if gradient_scale is not None:
        kwargs["gradient_scale"] = gradient_scale
    r = export_onnx(
        model, output, method=method, target_layer=target_layer, input_size=input_size,
        with_cam=not no_cam, opset=opset, dynamic_size=dynamic_size, exporter=exporter, **kwargs,
    )  # fmt: skip
    typer.echo(
        f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB, opset {r.opset}, {r.precision}) in {r.seconds:.1f}s: "
        f"{r.method} at {r.target_layer}; outputs {', '.join(r.outputs)}"
    )
    if r.method == "pcs" and r.precision != "fp32":
        # PCS sums g*F over channels, which cancels: half precision moves most pixels (README, Accuracy)
        typer.echo(f"warning: PCS in {r.precision} moves most map pixels (fp16 fails verify); use fp32", err=True)


BAR_PRESETS = ("fp32", "tf32", "fp16", "bf16")


def verify(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="exported .onnx (or .plan for tensorrt backends)"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the PyTorch checkpoint it was exported from"),
    images: Path = typer.Option(None, "--images", help="folder (or file) of real images to check as well"),
    num_random: int = typer.Option(8, "--num-random", min=0, help="fresh random images drawn this run"),
    backend: str = typer.Option(
        None,
        "--backend",
        help="backend under test (default: tensorrt for a .plan; ort-cuda with a GPU; else ort-cpu)",
    ),
    exact: bool = typer.Option(False, "--exact", help="ONNX Runtime with graph optimisations off"),
    fp64_reference: bool = typer.Option(
        False, "--fp64-reference", help="reference in float64 (ground truth where float32 rounding flips a mask)"
    ),
    seed: int = typer.Option(None, "--seed", min=0, help="fix the random images (default: fresh each run)"),
    input_size: int = typer.Option(
        None,
        "--input-size",
        min=1,
        max=4096,
        help="H = W fed to the graph, only for one exported with --dynamic-size (a fixed-size graph runs only at "
        "its own size)",
        show_default=INPUT_SIZE_DEFAULT,
    ),
    threads: int = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    report: Path = typer.Option(None, "--report", help="write the JSON report here"),
    pearson: float = typer.Option(None, "--min-pearson", help="per-image map Pearson bar"),
    iou50: float = typer.Option(None, "--min-iou", help="per-image IoU of 0.5-thresholded maps"),
    grad_rel: float = typer.Option(None, "--max-grad-rel", help="per-image gradient relative L2 bar"),
    pixels_off: float = typer.Option(None, "--max-pixels-off", help="share of map pixels allowed off by > 0.01"),
    bars: str = typer.Option(
        None,
        "--bars",
        help="tolerance preset " + " | ".join(BAR_PRESETS) + " (default: the arithmetic the backend runs)",
    ),
) -> None:
    """Compare a deployment with the PyTorch reference; exit 1 when a tolerance is exceeded."""
    from ..outputs import output_file
    from ..preprocessing import expand_image_paths
    from ..progress import progress_bar
    from ..runtime import create_backend
    from ..runtime.base import run_input_size
    from ..runtime.open import PLAN_SUFFIXES, load_checkpoint_for, read_model_info
    from ..runtime.registry import GRAPH_BACKENDS, check_model_kind, default_backend
    from ..verify import Tolerances, check_checkpoint_matches, judged_precision, verify_backend
    from .core import print_note

    paths = expand_image_paths([images], on_note=print_note) if images else None  # found before anything runs
    inputs = {"the model": model_path, "the checkpoint": checkpoint, **{f"the image {p}": p for p in paths or []}}
    output_file(report, "--report", inputs)
    is_plan = str(model_path).lower().endswith(PLAN_SUFFIXES)
    name = backend or ("tensorrt" if is_plan else default_backend())
    if name == "torch-reference":
        raise BagcamsError("torch-reference is the reference itself; choose the backend under test (--backend)")
    if exact and not name.startswith("ort-"):
        raise BagcamsError(f"--exact turns ONNX Runtime's optimisations off; {name} is not an ONNX Runtime backend")
    if name in GRAPH_BACKENDS:
        check_model_kind(name, model_path)
    with checkpoint_hint(graph_first_hint("verify")):
        info = read_model_info(model_path)
    run_input_size(info, input_size, str(model_path))  # refused before the checkpoint loads
    model = load_checkpoint_for(checkpoint, info)
    check_checkpoint_matches(info, model)
    if bars is not None and bars not in BAR_PRESETS:
        raise BagcamsError(f"unknown --bars {bars!r}; valid: {', '.join(BAR_PRESETS)}")
    b = create_backend(name, graph=model_path, model=model, threads=threads, exact=exact)
    # a TF32 engine of a float32 graph is judged by TF32 bars, a half-precision graph by half-precision ones
    preset = bars or judged_precision(b)
    tol = Tolerances.for_precision(preset)
    overridden = []
    for name, flag, value, (lo, hi) in (("map_pearson", "--min-pearson", pearson, (-1, 1)),
                                        ("map_iou50", "--min-iou", iou50, (0, 1)),
                                        ("gradient_rel_l2", "--max-grad-rel", grad_rel, (0, float("inf"))),
                                        ("map_pixels_off", "--max-pixels-off", pixels_off, (0, 1))):  # fmt: skip
        if value is not None:
            if not lo <= value <= hi or value != value or value == float("inf"):
                raise BagcamsError(f"{flag} must be a number in [{lo}, {hi}], got {value}")
            setattr(tol, name, value)
            overridden.append(f"{flag} {value:g}")
    with b, progress_bar(num_random + len(paths or []), "verifying") as advance:
        rep = verify_backend(b, model, str(model_path), paths, num_random, seed, tol, fp64_reference=fp64_reference,
                             input_size=input_size, on_batch=advance)  # fmt: skip
    rep.bars = f"{preset} preset" + (" (--bars)" if bars else "") + "".join(f", {o}" for o in overridden)
    _render(rep)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(rep.to_dict(), indent=2, allow_nan=False))
        typer.echo(f"report: {report}")
    if not rep.passed:
        for f in rep.failures[:10]:
            typer.echo(f"FAIL {f}", err=True)
        mismatch = rep.checkpoint_mismatch()
        if rep.non_finite_outputs():
            typer.echo(
                "hint: some logits/features comparisons are not finite (NaN or Inf): the backend overflowed, "
                "e.g. a half-precision graph outside its range; try the fp32 graph",
                err=True,
            )
        elif mismatch is not None:
            typer.echo(
                f"hint: logits/features differ by {mismatch:.2g} (relative L2), far past rounding: is "
                f"{checkpoint} the checkpoint {model_path} was exported from?",
                err=True,
            )
        elif rep.only_maps_fail() and rep.method in ("gradcampp", "pcs"):
            worst = rep.worst()["worst_gradient_rel_l2"]
            typer.echo(
                f"hint: logits, features and gradients pass (worst gradient rel L2 {worst:.1e}); only the "
                f"{rep.method} map differs: its formula amplifies rounding where it nearly cancels (README, "
                "'Numerics, honestly'). Where that layer is what you deploy, judge the map with looser "
                "--max-pixels-off / --min-pearson / --min-iou",
                err=True,
            )
        elif not fp64_reference:
            typer.echo(
                "hint: the float32 reference can itself be off where its rounding flips a ReLU mask "
                "(GradCAM++/PCS, flat images); --fp64-reference judges against float64",
                err=True,
            )
        raise typer.Exit(1)


def _render(rep) -> None:
    console = Console(width=None if Console().is_terminal else 140)
    size = "" if rep.input_size is None else f", {rep.input_size[0]}x{rep.input_size[1]} input"
    t = Table(title=f"{rep.backend} vs {rep.reference}: {rep.method} at {rep.target_layer} ({rep.precision}{size})")
    for col in (
        "image",
        "class",
        "s_c",
        "map r",
        "max|Δ|",
        "px>0.01",
        "IoU .2/.5/.8",
        "box IoU",
        "grad relL2",
        "",
    ):
        t.add_column(col, justify="right" if col not in ("image", "") else "left")
    for r in rep.images:
        iou = "/".join(f"{v:.3f}" for v in r.map_iou.values())
        grad = "-" if r.gradients_rel_l2 is None else f"{r.gradients_rel_l2:.1e}"
        t.add_row(
            escape(r.source[-28:]), str(r.class_id), f"{r.score:.2f}", f"{r.map_pearson:.5f}", f"{r.map_max_abs:.4f}",
            f"{r.map_pixels_off:.2%}", iou, f"{r.box_iou:.3f}", grad, "ok" if not r.failures else "FAIL",
        )  # fmt: skip
    console.print(t)
    n_changed = sum(not r.boxes_equal for r in rep.images)
    console.print(
        f"{len(rep.images)} images (seed {rep.seed}); boxes changed on {n_changed}; "
        f"worst map Pearson {min(r.map_pearson for r in rep.images):.6f}; "
        f"worst share of pixels off {max(r.map_pixels_off for r in rep.images):.3%}; "
        + ("PASS" if rep.passed else f"FAIL ({len(rep.failures)} problems)")
    )
    t = rep.tolerances
    console.print(
        f"bars: {rep.bars}: map Pearson >= {t.map_pearson:g}, pixels off by > {t.map_pixel_delta:g} <= "
        f"{t.map_pixels_off:.0%}, IoU@.5 >= {t.map_iou50:g}, box IoU >= {t.box_iou:g}, gradients <= "
        f"{t.gradient_rel_l2:g}, logits <= {t.logits_rel_l2:g}, features <= {t.features_rel_l2:g} (relative L2)",
        highlight=False,
        soft_wrap=True,
    )
    if rep.map_source != "cam output":
        console.print(f"note: maps from the {rep.map_source}")
    if rep.nonpositive_scores:
        console.print(f"note: target logit <= 0 on images {rep.nonpositive_scores}: log(s_c) undefined, sign flipped")
