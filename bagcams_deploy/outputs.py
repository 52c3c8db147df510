"""Where results go: output paths are checked before a run, so a long verify or benchmark never fails
at its last step on a path that could not have worked."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterator
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


def output_names(path: Path) -> tuple[str, str]:
    """The map and overlay file names ``localize`` (and ``cam``) write for one image."""
    return f"{path.stem}.npy", f"{path.stem}_overlay.png"


OVERLAY_SUFFIX = "_overlay.png"


def is_output_name(name: object) -> bool:
    """A bare file name of the shape ``localize`` writes: nothing else is ever removed or skipped."""
    if not isinstance(name, str) or Path(name).name != name:
        return False
    return (name.endswith(".npy") and len(name) > 4) or (name.endswith(OVERLAY_SUFFIX) and len(name) > 12)


def read_localize_index(folder: Path) -> set[str] | None:
    """The file names a ``localize`` run's ``folder/boxes.json`` lists (its maps and overlays, and an
    interrupted run's ``stale_outputs``), only those of the shape localize writes; ``None`` when there
    is no ``boxes.json``. Raises ``ValueError`` for a ``boxes.json`` that is not localize's and
    ``OSError`` for one that cannot be read: the caller decides whether that is an error."""
    index = folder / "boxes.json"
    if not index.is_file():
        return None
    doc = json.loads(index.read_text())  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(doc, dict) or "method" not in doc or not isinstance(doc.get("images"), list):
        raise ValueError(f"{index} is not a localize index")
    try:
        names = list(doc.get("stale_outputs", []))
        for r in doc["images"]:
            names += [r["map"], r["overlay"]] if "map" in r else output_names(Path(r["image"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{index} is not a localize index") from exc
    return {n for n in names if is_output_name(n)}


def earlier_run_files(folder: Path, names: Collection[str]) -> tuple[set[str], set[str]]:
    """Which of ``names`` (image files of ``folder``) an earlier ``localize`` or ``cam`` run wrote there:
    (those the folder's localize record lists, the other ``<stem>_overlay.png`` beside a ``<stem>.npy``).

    Reading them back as images would localize the overlays (``a_overlay_overlay.png``). The second
    test covers ``cam``, which leaves no record, and folders whose record was deleted; a ``boxes.json``
    that is not localize's (a data set's own) or cannot be read is simply no record here."""
    try:
        listed = read_localize_index(folder) or set()
    except (OSError, ValueError):
        listed = set()
    recorded = {n for n in names if n in listed}
    paired = {
        n
        for n in names
        if n not in recorded
        and is_output_name(n)
        and n.endswith(OVERLAY_SUFFIX)
        and (folder / f"{n[: -len(OVERLAY_SUFFIX)]}.npy").is_file()
    }
    return recorded, paired


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
