"""``build-engine`` (ONNX -> TensorRT plan + sidecar) and ``engine-info`` (read a plan's record)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import BagcamsError


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine_cmd)
    app.command("engine-info")(engine_info)


def build_engine_cmd(
    model: Path = typer.Argument(..., help="an exported .onnx graph"),
    output: Path = typer.Option(
        ..., "--output", "-o", "--out", help="the .plan to write (its record goes to <plan>.json)"
    ),
    min_batch: int = typer.Option(1, "--min-batch", help="the smallest batch size the engine takes"),
    opt_batch: int = typer.Option(
        None, "--opt-batch", help="the batch size TensorRT tunes for", show_default="8 within [min, max]"
    ),  # a default string is printed as it is; a help string is Rich markup, where "[" must be "\\["
    max_batch: int = typer.Option(32, "--max-batch", help="the largest batch size the engine takes"),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="builder workspace limit"),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="read and update this timing cache file"),
    input_size: int = typer.Option(None, "--input-size", help="H = W, only for graphs exported with --dynamic-size"),
    tf32: bool = typer.Option(
        True, "--tf32/--no-tf32", help="let float32 convolutions use TF32 on Ampere+ (faster; ~1e-3 relative)"
    ),
) -> None:
    """Build a TensorRT engine with one optimization profile; precision is the graph's own (strongly typed)."""
    from ..outputs import output_file
    from ..runtime.tensorrt_build import BatchProfile, build_engine
    from .core import BUILD_FROM_GRAPH_HINT, checkpoint_hint

    output_file(output, "--output", {"the ONNX graph": model})
    if opt_batch is None:  # --max-batch 4 alone is a complete request
        opt_batch = min(max(8, min_batch), max_batch)
    if not 0 < workspace_gb < float("inf"):
        raise BagcamsError(f"--workspace-gb must be a positive number, got {workspace_gb}")
    if input_size is not None and input_size < 1:
        raise BagcamsError(f"--input-size must be positive, got {input_size}")

    with checkpoint_hint(BUILD_FROM_GRAPH_HINT):
        record = build_engine(
            model,
            output,
            BatchProfile(min_batch, opt_batch, max_batch),
            workspace_gb=workspace_gb,
            timing_cache=timing_cache,
            input_size=(input_size, input_size) if input_size else None,
            tf32=tf32,
            log=typer.echo,
        )
    g = record["graph"]
    built = record["built_with"]
    typer.echo(
        f"{output}: {g['method']} at {g['target_layer']} ({g['architecture']}, {g['precision']}), "
        f"TensorRT {built['tensorrt_version']} on {built['device_name']}"
    )


def engine_info(
    plan: Path = typer.Argument(..., help="a .plan written by build-engine"),
    check: bool = typer.Option(False, "--check", help="also check it against this machine's TensorRT and GPU"),
) -> None:
    """Print a plan's record (export metadata, profile, TensorRT version and GPU it was built for)."""
    from ..runtime.tensorrt_build import check_plan_compatible, current_system, read_sidecar

    record = read_sidecar(plan)
    typer.echo(json.dumps(record, indent=2))
    if check:
        check_plan_compatible(record, current_system(), plan)
        typer.echo(f"{plan}: compatible with this machine")
