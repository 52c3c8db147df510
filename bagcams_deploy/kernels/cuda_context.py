"""The CUDA context our PyCUDA code runs in: the device's primary context, pushed around every use.

Why not ``pycuda.autoprimaryctx`` once: PyCUDA allocates, loads modules, makes streams and launches
only while a context is on *its own* per-thread context stack; it does not look at the driver's
current context. The CUDA runtime (TensorRT deserialising an engine, torch on CUDA) makes the primary
context current without putting it on that stack, so PyCUDA then fails with "invalid device context";
and a context pushed in one thread is missing in the next, where a server's calls may come from.
Retaining the primary context (the one the runtime and TensorRT use, so device pointers are shared)
and pushing it for each use works in any thread, whatever ran first.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..errors import BagcamsError


class PrimaryContext:
    """``with ctx: ...`` runs PyCUDA calls in device ``device``'s primary context, in any thread."""

    def __init__(self, drv: ModuleType, device: int = 0, what: str = "CUDA") -> None:
        self._drv = drv
        try:
            drv.init()
            count = drv.Device.count()
        except drv.Error as exc:
            raise BagcamsError(f"{what} found no usable CUDA device: {exc}") from None
        if count <= device:
            raise BagcamsError(f"{what} needs CUDA device {device}; {count} visible")
        try:
            self.device = drv.Device(device)
            self.context: Any = self.device.retain_primary_context()
        except drv.Error as exc:
            raise BagcamsError(f"{what} could not retain the CUDA primary context: {exc}") from None

    def __enter__(self) -> PrimaryContext:
        self.context.push()
        return self

    def __exit__(self, *exc: object) -> None:
        self._drv.Context.pop()
