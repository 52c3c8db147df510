"""Where results go: output paths are checked before a run, so a long verify or benchmark never fails
at its last step on a path that could not have worked."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import BagcamsError


def _check_ancestor(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a writable folder (the rest is created)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise BagcamsError(f"{what} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise BagcamsError(f"{what} {path}: cannot write in {parent}")
            return


def same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths name one file (resolved links, or one inode for hard links); a path
    that cannot be resolved (a link loop) names no file."""
    try:
        return a.exists() and b.exists() and (a.resolve() == b.resolve() or os.path.samefile(a, b))
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's symlink loop
        return False


def output_file(path: Path | None, what: str, inputs: dict[str, Path | None] | None = None) -> Path | None:
    """A file the command will write (``None`` passes through): not a folder, under a writable folder,
    and none of the command's ``inputs`` (``{"the model": path}``), which it would destroy."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise BagcamsError(f"{what} {path} is a folder; give a file name")
    for name, source in (inputs or {}).items():
        if source is not None and same_file(path, Path(source)):
            raise BagcamsError(f"{what} {path} is {name}; writing it would destroy the input")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise BagcamsError(f"{what} {path}: the file is not writable")
    else:
        _check_ancestor(path, what)
    return path


def output_dir(path: Path | None, what: str) -> Path | None:
    """A folder the command will write into (created if missing): not an existing file."""
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        raise BagcamsError(f"{what} {path} is a file, not a folder")
    if not path.exists():
        _check_ancestor(path, what)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise BagcamsError(f"{what} {path}: cannot write in it")
    return path


def check_distinct_stems(paths: list[Path]) -> None:
    """Per-image outputs are named by the image's stem: two inputs with one stem would overwrite."""
    seen: dict[str, Path] = {}
    for p in paths:
        other = seen.setdefault(p.stem, p)
        if other.resolve() != p.resolve():
            raise BagcamsError(
                f"{other} and {p} would both write {p.stem}.npy and {p.stem}_overlay.png: "
                "rename one, or run them into different --out folders"
            )


def json_safe(value: object) -> object:
    """NaN and infinities as null, through dicts, lists and tuples: ``json.dumps`` would write ``NaN``,
    which is not JSON, into a report (a non-finite measure fails its check anyway)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@contextmanager
def write_atomically(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once written in full (a temporary file beside it,
    flushed to disk, then renamed), so an interruption or a full disk leaves the previous file (or
    none), never a truncated one; the temporary file is removed either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
