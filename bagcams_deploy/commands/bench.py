"""``bench``: latency/throughput/memory of backends side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..runtime.registry import ALL_BACKENDS
from .core import print_note


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def _ints(text: str, what: str) -> list[int]:
    """Comma-separated positive integers, each once in the order given (a size twice would be run twice)."""
    from ..errors import BagcamsError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BagcamsError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BagcamsError(f"{what} must be positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def _note_without_checkpoint(names: list[str], named: bool, floor: bool) -> None:
    """Say what a run without ``--checkpoint`` leaves out, rather than refusing it: a graph alone can be
    timed, and the torch backends and the forward-only floor (the checkpoint's classifier) cannot."""
    if named:
        if floor:
            print_note("no forward-only floor: it needs --checkpoint")
        return
    needs = "the torch backends and the forward-only floor need" if floor else "the torch backends need"
    print_note(f"benchmarking {', '.join(names)} only: {needs} --checkpoint")


def bench(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="exported .onnx (or .plan)"),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="the PyTorch checkpoint it was exported from (for the torch backends and the floor)"
    ),
    backends: str = typer.Option(
        None,
        "--backends",
        help="comma-separated backends to time, of: " + ", ".join(ALL_BACKENDS),
        show_default="torch-reference,torch-analytic,ort-cpu with --checkpoint, else ort-cpu (tensorrt for a .plan)",
    ),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="comma-separated batch sizes, each timed on its own"),
    warmup: int = typer.Option(3, "--warmup", min=0, help="untimed calls before the timed ones"),
    iters: int = typer.Option(20, "--iters", min=1, help="timed calls: p50/p90/p99 are over this many"),
    threads: int = typer.Option(
        None, "--threads", min=1, help="same intra-op thread count for every backend (default: each runtime's own)"
    ),
    exact: bool = typer.Option(False, "--exact", help="ONNX Runtime optimisations off (the floor's too)"),
    device: str = typer.Option("cpu", "--device", help="torch backends only: cpu, cuda or cuda:N"),
    input_size: int = typer.Option(
        None,
        "--input-size",
        min=1,
        max=4096,
        help="H = W, only for graphs exported with --dynamic-size",
        show_default="224, or the graph's own size",
    ),
    no_floor: bool = typer.Option(False, "--no-floor", help="skip the forward-only classifier floor"),
    json_out: Path = typer.Option(None, "--json", help="save the report (rows, ratios, settings, machine) as JSON"),
) -> None:
    """p50/p90/p99 latency, images/s (batch / p50) and peak memory per backend and batch size, plus the
    forward-only floor. Timed: numpy in to numpy out, GPU copies included, device synchronised."""
    from ..bench import BenchmarkIncomplete, default_backends, run_benchmark, save_report
    from ..errors import BagcamsError
    from ..outputs import output_file
    from ..runtime import parse_backends
    from ..runtime.open import read_model_info
    from .core import checkpoint_hint, graph_first_hint

    output_file(json_out, "--json", inputs={"the model": model_path, "the checkpoint": checkpoint})
    names = parse_backends(backends) if backends is not None else default_backends(model_path, checkpoint)
    sizes = _ints(batch_sizes, "--batch-sizes")
    with checkpoint_hint(graph_first_hint("bench")):  # the model file is checked before any note on it
        read_model_info(model_path)
    console = Console(width=None if Console().is_terminal else 140)
    if checkpoint is None and not any(n.startswith("torch") for n in names):  # (those are refused below)
        _note_without_checkpoint(names, named=backends is not None, floor=not no_floor)

    def on_row(r) -> None:
        console.print(
            f"  {r.backend:<18} batch {r.batch_size:<3} p50 {r.p50_ms:9.1f} ms  {r.images_per_s:7.1f} img/s",
            highlight=False,
        )

    try:
        report = run_benchmark(
            str(model_path), str(checkpoint) if checkpoint else None, names, sizes, warmup, iters, threads, exact,
            device, include_floor=not no_floor, on_row=on_row, input_size=input_size,
            on_note=lambda text: console.print(text, highlight=False),
        )  # fmt: skip
    except BenchmarkIncomplete as exc:
        if json_out is None:
            raise
        save_report(exc.report, json_out)
        raise BagcamsError(
            f'{exc} (the {len(exc.report["rows"])} rows measured before it are in {json_out}, "complete": false)'
        ) from None
    console.print(results_table(report))
    gpu = gpu_table(report)
    if gpu is not None:
        console.print(gpu)
    if json_out:
        save_report(report, json_out)
        console.print(f"report: {json_out}")


def results_table(report: dict) -> Table:
    """The rows with their ratios; the caption says what each figure is over and what was timed."""
    size = "x".join(map(str, report["input_size"]))
    t = Table(
        title=f"{report['method']} at {report['target_layer']}, {size}, threads={report['threads'] or 'default'}, "
        f"--device {report['device']}",
        caption=f"p50/p90/p99 over {report['iters']} timed calls after {report['warmup']} warm-up; img/s = batch / "
        "p50; timed: numpy in to numpy out (GPU copies included, synchronised); x forward: vs the forward-only "
        "classifier in ONNX Runtime on the CPU, fp32, for rows on the CPU in fp32",
    )
    for col in ("backend", "on", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak RSS MB", "vs reference",
                "x forward"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("backend", "on") else "right")
    for r in report["rows"]:
        ratio = report["ratios"].get(f"{r['backend']}@{r['batch_size']}", {})
        sp = ratio.get("speedup_vs_torch_reference")
        xf = ratio.get("x_forward_only")
        peak = r.get("peak_rss_mb")
        t.add_row(
            r["backend"], f"{r.get('device', 'cpu')} {r.get('precision', 'fp32')}", str(r["batch_size"]),
            f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['images_per_s']:.1f}",
            f"{peak:.0f}" if peak is not None else "-", f"{sp:.2f}x" if sp else "-", f"{xf:.2f}x" if xf else "-",
        )  # fmt: skip
    return t


GPU_COLUMNS = (  # (header, key in a row's extra, scale)
    ("copy in ms", "stage_h2d_s", 1e3),
    ("engine ms", "stage_engine_s", 1e3),
    ("kernel ms", "stage_kernel_s", 1e3),
    ("graph ms (engine + kernel)", "stage_graph_s", 1e3),
    ("copy out ms", "stage_d2h_s", 1e3),
    ("GPU MB", "gpu_memory_mb", 1.0),
    ("kernel GB/s", "kernel_gbps", 1.0),
    ("% of D2D copy", "kernel_fraction_of_copy", 100.0),
)


def gpu_table(report: dict) -> Table | None:
    """Per-stage times of the last run, device memory and the kernel's bandwidth, for GPU backends."""
    rows = [r for r in report["rows"] if any(key in r["extra"] for _, key, _ in GPU_COLUMNS)]
    if not rows:
        return None
    t = Table(title="GPU: stages of the last run, device memory, kernel bandwidth vs a D2D copy measured alongside")
    for header in ("backend", "batch", *(c[0] for c in GPU_COLUMNS)):
        t.add_column(header, justify="left" if header == "backend" else "right")
    for r in rows:
        e = r["extra"]
        cells = [f"{e[key] * scale:.2f}" if key in e else "-" for _, key, scale in GPU_COLUMNS]
        t.add_row(r["backend"], str(r["batch_size"]), *cells)
    return t
