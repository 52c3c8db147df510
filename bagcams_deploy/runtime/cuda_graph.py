"""CUDA-graph capture of work enqueued on a stream, through the CUDA driver API (ctypes).

Why ctypes: PyCUDA (2026.1) has no stream-capture API, and the capture is four driver calls. The TensorRT
backend captures ``execute_async_v3`` plus our aggregation kernels once per input shape and then
replays them with one ``cuGraphLaunch``, which removes the per-layer launch overhead that dominates
small batches. Every call's ``CUresult`` is checked and reported by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable

from ..errors import BagcamsError

CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1  # what trtexec uses for TensorRT enqueue capture


def _libcuda() -> ctypes.CDLL:
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise BagcamsError("CUDA graphs need the CUDA driver library (libcuda.so.1), which was not found")


class CudaGraph:
    """One captured graph, replayable on the stream it was captured on (or any other stream)."""

    def __init__(self) -> None:
        self._cu = _libcuda()
        self._graph = ctypes.c_void_p()
        self._exec = ctypes.c_void_p()

    def _check(self, result: int, call: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            self._cu.cuGetErrorString(ctypes.c_int(result), ctypes.byref(text))
            msg = text.value.decode() if text.value else f"CUresult {result}"
            raise BagcamsError(f"CUDA graph: {call} failed: {msg}")

    def capture(self, stream_handle: int, enqueue: Callable[[], None]) -> None:
        """Record everything ``enqueue`` puts on the stream (nothing runs during capture)."""
        stream = ctypes.c_void_p(stream_handle)
        self._check(self._cu.cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                    "cuStreamBeginCapture")  # fmt: skip
        try:
            enqueue()
        except BaseException:
            graph = ctypes.c_void_p()
            self._cu.cuStreamEndCapture(stream, ctypes.byref(graph))  # leave the stream usable
            if graph.value:
                self._cu.cuGraphDestroy(graph)
            raise
        self._check(self._cu.cuStreamEndCapture(stream, ctypes.byref(self._graph)), "cuStreamEndCapture")
        self._check(self._cu.cuGraphInstantiateWithFlags(ctypes.byref(self._exec), self._graph, ctypes.c_ulonglong(0)),
                    "cuGraphInstantiate")  # fmt: skip

    def launch(self, stream_handle: int) -> None:
        if not self._exec.value:
            raise BagcamsError("CUDA graph: launch before capture")
        self._check(self._cu.cuGraphLaunch(self._exec, ctypes.c_void_p(stream_handle)), "cuGraphLaunch")

    def free(self) -> None:
        if self._exec.value:
            self._cu.cuGraphExecDestroy(self._exec)
            self._exec = ctypes.c_void_p()
        if self._graph.value:
            self._cu.cuGraphDestroy(self._graph)
            self._graph = ctypes.c_void_p()

    def __del__(self) -> None:  # best effort; the context may already be gone at exit
        with contextlib.suppress(Exception):
            self.free()
