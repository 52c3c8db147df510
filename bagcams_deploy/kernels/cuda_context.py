"""The CUDA context our PyCUDA code runs in: the device's primary context, pushed around every use.

Why not ``pycuda.autoprimaryctx`` once: PyCUDA allocates, loads modules and makes streams and events
only while a context is on *its own* per-thread context stack (and frees them in the context they were
made in); it does not look at the driver's
current context. The CUDA runtime (TensorRT deserialising an engine, torch on CUDA) makes the primary
context current without putting it on that stack, so PyCUDA then fails with "invalid device context";
and a context pushed in one thread is missing in the next, where a server's calls may come from.
Retaining the primary context (the one the runtime and TensorRT use, so device pointers are shared)
and pushing it for each use works in any thread, whatever ran first.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from ..errors import BagcamsError


def cuda_device(drv: ModuleType, what: str = "CUDA") -> Any:
    """The device our GPU code runs on, and the one a plan is checked against: that of the current
    context when there is one (torch or TensorRT chose it), else ``CUDA_DEVICE`` (as PyCUDA's own
    ``autoprimaryctx``), else device 0; ``CUDA_VISIBLE_DEVICES`` selects among the GPUs."""
    try:
        drv.init()
        count = drv.Device.count()
    except drv.Error as exc:
        raise BagcamsError(f"{what} found no usable CUDA device: {exc}") from None
    if count < 1:
        raise BagcamsError(f"{what} needs a CUDA GPU; none is visible")
    try:
        return drv.Context.get_device()
    except drv.Error:  # no current context
        pass
    raw = os.environ.get("CUDA_DEVICE", "0")
    if not raw.isdigit() or int(raw) >= count:
        raise BagcamsError(f"CUDA_DEVICE={raw!r} is not one of the {count} visible devices (0..{count - 1})")
    try:
        return drv.Device(int(raw))
    except drv.Error as exc:
        raise BagcamsError(f"{what} cannot open CUDA device {raw}: {exc}") from None


class PrimaryContext:
    """``with ctx: ...`` runs PyCUDA calls in the primary context of :func:`cuda_device`, in any thread."""

    def __init__(self, drv: ModuleType, what: str = "CUDA") -> None:
        self._drv = drv
        self.device = cuda_device(drv, what)
        try:
            self.context: Any = self.device.retain_primary_context()
        except drv.Error as exc:
            raise BagcamsError(f"{what} could not retain the CUDA primary context: {exc}") from None

    def __enter__(self) -> PrimaryContext:
        self.context.push()
        return self

    def __exit__(self, *exc: object) -> None:
        self._drv.Context.pop()


F = TypeVar("F", bound=Callable[..., Any])


def in_context(attribute: str) -> Callable[[F], F]:
    """Run a method with the :class:`PrimaryContext` held in ``self.<attribute>`` pushed."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def pushed(self: Any, *args: Any, **kwargs: Any) -> Any:
            with getattr(self, attribute):
                return method(self, *args, **kwargs)

        return pushed  # type: ignore[return-value]

    return decorate
