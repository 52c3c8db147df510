"""The aggregation kernel's achieved memory bandwidth, against the device's own copy bandwidth.

Why: the kernel reads F and g once and writes the map once, so it is memory-bound; its quality is how
close it gets to what the device can move at all. That reference is measured, not looked up: a
device-to-device copy of a large buffer in the same process, counted as bytes read plus bytes written
like the kernel. Used by ``benchmarks/bench_kernel.py`` and by ``bench`` on the ``tensorrt`` backends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ..errors import BagcamsError


def aggregation_bytes(n: int, k: int, h: int, w: int, out_h: int, out_w: int, itemsize: int) -> int:
    """Bytes one map computation must move: F and g read once, the float32 map written once."""
    return 2 * n * k * h * w * itemsize + n * out_h * out_w * 4


def time_events(drv: Any, stream: Any, fn: Callable[[], None], warmup: int, iters: int,
                spacer: DeviceCopy | None = None) -> tuple[float, float]:  # fmt: skip
    """(GPU milliseconds per call of ``fn()``, host microseconds to enqueue one call).

    The calls are enqueued back to back on ``stream`` and timed with CUDA events. Enqueuing a launch
    from Python can take longer than a small launch runs on the GPU; then the GPU would idle between
    launches and the events would time the host. So, when a ``spacer`` (a callable enqueuing
    ``spacer.ms`` of unrelated GPU work) is given, enough of it is queued before the start event to
    keep the GPU busy while the host enqueues all the timed calls.
    """
    for _ in range(warmup):
        fn()
    stream.synchronize()
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    host_us = (time.perf_counter() - t0) / max(1, warmup) * 1e6
    stream.synchronize()
    if spacer is not None:
        for _ in range(math.ceil(1.5 * iters * host_us * 1e-3 / spacer.ms) + 1):
            spacer()
    start, stop = drv.Event(), drv.Event()
    start.record(stream)
    for _ in range(iters):
        fn()
    stop.record(stream)
    stop.synchronize()
    return stop.time_since(start) / iters, host_us


class DeviceCopy:
    """Device-to-device copies of one large buffer: the copy-bandwidth reference, and GPU filler work."""

    def __init__(self, drv: Any, stream: Any, mib: int = 256) -> None:
        free, _total = drv.mem_get_info()
        self.nbytes = min(mib << 20, int(free * 0.3)) // 256 * 256
        if self.nbytes <= 0:
            raise BagcamsError("not enough free device memory for the copy-bandwidth reference")
        self.drv, self.stream = drv, stream
        self.src = drv.mem_alloc(self.nbytes)
        self.dst = drv.mem_alloc(self.nbytes)
        drv.memset_d8(self.src, 1, self.nbytes)
        self.ms = 1.0

    def __call__(self) -> None:
        self.drv.memcpy_dtod_async(self.dst, self.src, self.nbytes, self.stream)

    def measure(self, warmup: int, iters: int) -> dict:
        """Time the copy; its bandwidth counts bytes read plus bytes written, as the kernel's does."""
        self.ms, _ = time_events(self.drv, self.stream, self, max(2, warmup // 4), max(5, iters // 4))
        gbps = 2 * self.nbytes / (self.ms * 1e-3) / 1e9
        return {"bytes": self.nbytes, "ms": self.ms, "gbps_read_plus_write": gbps}

    def free(self) -> None:
        self.src.free()
        self.dst.free()
