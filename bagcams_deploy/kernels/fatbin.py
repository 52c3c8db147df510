"""What the shipped fatbin holds, read from its own headers, and how a given GPU will get its code.

Why: whether a GPU runs the prebuilt machine code, JIT-compiles the embedded PTX (slow first load,
needs a driver at least as new as the toolkit) or falls back to compiling the CUDA source at run time
(needs nvcc) decides how a deployment behaves, and the answer should come from the binary we ship,
not from a list that can drift from it. A fatbin is a header (magic ``0xBA55ED50``, version, header
size, payload size) followed by entries, each with a kind (1 = PTX, 2 = ELF machine code), its header
and payload sizes and the SM version it targets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import BagcamsError

FATBIN_MAGIC = 0xBA55ED50
_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries
_ENTRY = struct.Struct("<HHII16xI")  # kind, version, header size, padded payload size, ..., SM version
KIND_PTX, KIND_ELF = 1, 2


@dataclass(frozen=True)
class FatbinContents:
    sass: tuple[int, ...]  # SM versions with machine code (75 = sm_75)
    ptx: tuple[int, ...]  # compute capabilities with PTX


def read_fatbin(path: str | Path) -> FatbinContents:
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise BagcamsError(f"{path} is not a CUDA fatbin (too short)")
    magic, _version, header_size, size = _HEADER.unpack_from(data, 0)
    if magic != FATBIN_MAGIC:
        raise BagcamsError(f"{path} is not a CUDA fatbin (magic {magic:#x})")
    end = header_size + size
    if end > len(data):
        raise BagcamsError(f"{path} is truncated ({len(data)} of {end} bytes)")
    sass, ptx, offset = set(), set(), header_size
    while offset < end:
        if offset + _ENTRY.size > end:
            raise BagcamsError(f"{path}: truncated entry at byte {offset}")
        kind, _v, entry_header, payload, sm = _ENTRY.unpack_from(data, offset)
        if entry_header < _ENTRY.size:
            raise BagcamsError(f"{path}: malformed entry at byte {offset}")
        (ptx if kind == KIND_PTX else sass if kind == KIND_ELF else set()).add(sm)
        offset += entry_header + payload
    return FatbinContents(tuple(sorted(sass)), tuple(sorted(ptx)))


def kernel_route(contents: FatbinContents, compute_capability: tuple[int, int]) -> str:
    """How a GPU of this compute capability gets the kernels from ``contents``, in words.

    Machine code for sm_XY runs on sm_XZ with Z >= Y (same major version); PTX for compute_XY is
    JIT-compiled by the driver for any GPU of compute capability >= XY."""
    major, minor = compute_capability
    arch = 10 * major + minor
    same_major = [s for s in contents.sass if s // 10 == major and s <= arch]
    if same_major:
        return f"prebuilt machine code (sm_{max(same_major)})"
    usable_ptx = [p for p in contents.ptx if p <= arch]
    if usable_ptx:
        return f"PTX compute_{max(usable_ptx)}, JIT-compiled by the driver on first load"
    return "no usable image: compiled from the shipped CUDA source at run time (needs nvcc)"
