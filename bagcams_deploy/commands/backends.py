"""``backends``: what can run on this machine, what is missing for the rest, and how the GPU gets our kernels."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def register(app: typer.Typer) -> None:
    app.command("backends")(backends)


def backends() -> None:
    """List every backend with its version or what it lacks, and how the GPU gets the kernels.

    The CUDA device is reported with its route to the aggregation kernels: prebuilt machine code, PTX
    JIT, or a run-time compile."""
    from ..kernels.fatbin import kernel_route, read_fatbin
    from ..kernels.launcher import FATBIN
    from ..runtime.environment import backend_statuses, cuda_device

    console = Console(width=None if Console().is_terminal else 160)
    t = Table(title="backends on this machine")
    for col in ("backend", "runs", "on", "version / missing"):
        t.add_column(col)
    for s in backend_statuses():
        t.add_row(s.name, "yes" if s.available else "no", s.runs_on, escape(s.detail))  # pip extras: [gpu]
    console.print(t)
    contents = read_fatbin(FATBIN)
    sass = " ".join(f"sm_{a}" for a in contents.sass)
    ptx = " ".join(f"compute_{a}" for a in contents.ptx)
    console.print(f"shipped kernels: {sass}; PTX {ptx}", highlight=False, markup=False)
    device = cuda_device()
    if isinstance(device, str):
        console.print(f"CUDA device: none ({device})", highlight=False, markup=False)
    else:
        cc = device.compute_capability
        console.print(f"CUDA device: {device.name} (sm_{cc[0]}{cc[1]}, seen by {device.seen_by}); "
                      f"kernels: {kernel_route(contents, cc)}", highlight=False, markup=False)  # fmt: skip
