"""``demo``: the whole product on the shipped model, no download: export, verify, localize, evaluate
every method, benchmark the CPU backends. Everything lands in one folder with a summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from ..errors import BagcamsError


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


METHOD_ORDER = ("cam", "gradcam", "gradcampp", "pcs", "bagcams")


def run_demo_evaluation(
    checkpoint: Path,
    data_root: Path,
    out: Path,
    methods: tuple[str, ...] = METHOD_ORDER,
    target_layer: str = "layer3",
    cam_interval: float = 0.001,
    limit: int | None = None,
    threads: int | None = None,
    console: Console | None = None,
    backend: str = "ort-cpu",
) -> dict[str, dict]:
    """Export each method's graph and evaluate it with ``backend`` on the generated test split."""
    from ..evaluation import load_metadata
    from ..evaluation.runner import Scorer, evaluate_backend
    from ..export.onnx_export import export_onnx
    from ..models import load_model
    from ..progress import progress_bar
    from ..runtime import create_backend

    model = load_model(checkpoint)
    meta = load_metadata(data_root / "metadata" / "test")
    mask_meta = load_metadata(data_root / "metadata_masks" / "test")
    n = min(limit, len(meta.image_ids)) if limit else len(meta.image_ids)
    rows: dict[str, dict] = {}
    for method in methods:
        graph = out / f"model_{method}.onnx"
        layer = None if method == "cam" else target_layer  # CAM has one layer: the classifier's input
        export_onnx(model, graph, method=method, target_layer=layer)
        scorer = Scorer(meta, mask_meta, data_root / "masks", cam_interval)
        with (
            create_backend(backend, graph=graph, threads=threads) as b,
            progress_bar(n, f"evaluate {method}") as adv,
        ):
            res = evaluate_backend(b, scorer, data_root / "images", batch_size=16, limit=limit, on_batch=adv)
        rows[method] = res.summary()
        graph.unlink()  # the graphs are large and rebuilt in seconds
        if console:
            s = rows[method]
            console.print(
                f"  {method:<10} Top-1 Loc {s['Top-1 Loc']:.2f}  GT-known {s['GT-known Loc']:.2f}  "
                f"MaxBoxAccV2 {s['MaxBoxAccV2']:.2f}  pIoU {s['pIoU']:.2f}  PxAP {s['PxAP']:.2f}",
                highlight=False,
            )
    return rows


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="where everything is written"),
    num_test: int = typer.Option(200, "--num-test", min=10, help="test scenes to evaluate on"),
    num_localize: int = typer.Option(8, "--num-localize", min=1, help="scenes to draw overlays for"),
    cam_interval: float = typer.Option(
        0.001, "--cam-interval", help="threshold step of the metrics (the default is the published one; 0.01 is faster)"
    ),
    threads: int = typer.Option(2, "--threads", min=1, help="intra-op threads of every backend"),
    skip_bench: bool = typer.Option(False, "--skip-bench", help="leave out the CPU benchmark"),
) -> None:
    """Run the shipped scene model through export, verify, localize, evaluate and bench (~2 min on 2 cores)."""
    from ..bench import run_benchmark
    from ..commands.evaluate import summary_markdown, summary_table
    from ..export.onnx_export import export_onnx
    from ..methods.names import METHOD_LABELS
    from ..runtime import create_backend
    from ..runtime.registry import default_backend
    from ..scenes import write_dataset
    from ..verify import verify_backend

    try:
        from ..demo_model import DEMO_DATA_SEED, load_demo_model, write_demo_checkpoint
    except ImportError as exc:
        raise BagcamsError(f"the demo model is not part of this installation ({exc})") from None

    from ..outputs import output_dir

    output_dir(out, "--out")
    from ..evaluation.boxes import MIN_CAM_INTERVAL

    if num_localize > num_test:
        raise BagcamsError(f"--num-localize {num_localize} is more than the {num_test} test scenes (--num-test)")

    if not MIN_CAM_INTERVAL <= cam_interval < 1:
        raise BagcamsError(f"--cam-interval must be in [{MIN_CAM_INTERVAL}, 1), got {cam_interval}")
    console = Console(width=None if Console().is_terminal else 140)
    cpu = default_backend()  # ort-cpu here (ort-cuda with onnxruntime-gpu and a GPU)
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    console.rule("1/6  the shipped model")
    ckpt = write_demo_checkpoint(out / "scenes_resnet18.pth")
    model = load_demo_model()
    console.print(f"{ckpt}: {model.architecture}, {model.num_classes} classes: {', '.join(model.class_names or ())}")

    console.rule("2/6  generated test scenes (seeded, the split the model was tested on)")
    data = out / "scenes"
    try:
        write_dataset(data, {"train": 0, "val": 0, "test": num_test}, seed=DEMO_DATA_SEED)
    except ValueError as exc:  # e.g. --out/scenes holds files the scene writer did not make
        raise BagcamsError(str(exc)) from None
    from ..evaluation import load_metadata

    test_meta = load_metadata(data / "metadata" / "test")
    labels = test_meta.class_labels
    # this run's scenes, from its metadata: the folder may hold an earlier, larger run's images
    scenes = [data / "images" / image_id for image_id in test_meta.image_ids]
    console.print(f"{num_test} test scenes with boxes and masks under {data}")

    console.rule("3/6  export BagCAMs (layer3) to ONNX and verify it against the PyTorch reference")
    graph = out / "scenes_resnet18_bagcams.onnx"
    r = export_onnx(model, graph, method="bagcams", target_layer="layer3")
    console.print(f"{graph}: {r.size_bytes / 1e6:.0f} MB in {r.seconds:.1f}s; outputs {', '.join(r.outputs)}")
    scene_paths = scenes[:4]
    with create_backend(cpu, graph=graph, threads=threads) as b:
        rep = verify_backend(b, model, str(graph), scene_paths, num_random=4)
    w = rep.worst()
    console.print(
        f"verify {cpu} vs torch-reference on {w['images']} images: worst map Pearson {w['worst_map_pearson']:.6f}, "
        f"worst pixels off {w['worst_pixels_off']:.3%}, boxes changed on {w['boxes_changed']}: "
        + ("PASS" if rep.passed else "FAIL")
    )
    summary["verify"] = {"passed": rep.passed, "worst_pearson": w["worst_map_pearson"], "failures": rep.failures}

    console.rule("4/6  localize a few scenes (overlays with boxes)")
    from ..localize import localize_images

    shown = scenes[:num_localize]
    with create_backend(cpu, graph=graph, threads=threads) as b:
        recs = localize_images(b, shown, out / "localize", threshold=0.5)
    right = sum(r["class_id"] == labels[Path(r["image"]).relative_to(data / "images").as_posix()] for r in recs)
    console.print(f"{len(recs)} overlays with boxes in {out / 'localize'}; {right}/{len(recs)} classified right")

    console.rule("5/6  evaluate CAM, GradCAM, GradCAM++, PCS and BagCAMs on the test split")
    console.print(f"backend: {cpu}")
    rows = run_demo_evaluation(ckpt, data, out, cam_interval=cam_interval, threads=threads, console=console,
                               backend=cpu)  # fmt: skip
    labelled = {METHOD_LABELS[m]: s for m, s in rows.items()}
    console.print(summary_table(labelled, f"{num_test} generated test scenes, resnet18 (layer3 for gradient methods)"))
    (out / "evaluation.md").write_text(summary_markdown(labelled))
    summary["evaluation"] = rows

    if not skip_bench:
        console.rule("6/6  benchmark the CPU backends (batch 1 and 8)")
        backends = ["torch-reference", "torch-analytic", "ort-cpu"]
        try:
            import openvino  # noqa: F401

            backends.append("ov-cpu")
        except ImportError:
            pass

        def show(row) -> None:
            console.print(f"  {row.backend:<18} batch {row.batch_size}: p50 {row.p50_ms:7.1f} ms, "
                          f"{row.images_per_s:6.1f} img/s", highlight=False)  # fmt: skip

        bench = run_benchmark(str(graph), str(ckpt), backends, [1, 8], warmup=1, iters=5, threads=threads, on_row=show)
        (out / "bench.json").write_text(json.dumps(bench, indent=2))
        summary["bench"] = bench["ratios"]
    else:
        (out / "bench.json").unlink(missing_ok=True)  # an earlier run's, not this one's
    summary["seconds"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    console.rule(f"done in {summary['seconds']:.0f}s")
    console.print(f"overlays: {out / 'localize'}; table: {out / 'evaluation.md'}; summary: {out / 'summary.json'}")
    if not rep.passed:
        raise typer.Exit(1)
