"""Where results go: output paths are checked before a run, so a long verify or benchmark never fails
at its last step on a path that could not have worked."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
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


def output_file(path: Path | None, what: str, inputs: Mapping[str, Path | None] | None = None) -> Path | None:
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


OVERLAY_SUFFIX = "_overlay.png"


def output_names(path: Path) -> tuple[str, str]:
    """The map and overlay file names ``localize`` (and ``cam``) write for one image."""
    return f"{path.stem}.npy", f"{path.stem}{OVERLAY_SUFFIX}"


def planned_output_names(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Every file name a ``localize`` or ``cam`` run over ``paths`` writes into its folder (record aside)."""
    return [n for p in paths for n in output_names(Path(p))]


def is_output_name(name: object) -> bool:
    """A bare file name of the shape ``localize`` writes: nothing else is ever removed or skipped."""
    if not isinstance(name, str) or Path(name).name != name:
        return False
    return (name.endswith(".npy") and len(name) > len(".npy")) or (
        name.endswith(OVERLAY_SUFFIX) and len(name) > len(OVERLAY_SUFFIX)
    )


RECORDS = {"localize": "boxes.json", "cam": "cam.json"}
"""The record each command writes into its output folder, listing the files it wrote there. Only a
record tells an earlier run's outputs from the user's own files of the same shape."""


def read_run_record(folder: Path, command: str) -> set[str] | None:
    """The file names the record ``command`` (``localize`` or ``cam``) left in ``folder`` lists (its
    maps and overlays, and an interrupted run's ``stale_outputs``), only those of the shape the
    commands write; ``None`` when there is no record. Raises ``ValueError`` for a file of that name
    that is not the command's record (including JSON nested too deep to read) and ``OSError`` for one
    that cannot be read: the caller decides whether that is an error."""
    index = folder / RECORDS[command]
    if not index.is_file():
        return None
    try:
        doc = json.loads(index.read_text())  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    except RecursionError:  # "[[[[..." 200,000 deep
        raise ValueError(f"{index} is nested too deeply to be a {command} record") from None
    ours = isinstance(doc, dict) and isinstance(doc.get("images"), list)
    # boxes.json from before its "command" field is still localize's; cam.json always had it
    ours = ours and doc.get("command", "localize" if command == "localize" and "method" in doc else None) == command
    if not ours:
        raise ValueError(f"{index} is not a {command} record")
    try:
        names = list(doc.get("stale_outputs", []))
        for r in doc["images"]:
            names += [r["map"], r["overlay"]] if "map" in r else output_names(Path(r["image"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{index} is not a {command} record") from exc
    return {n for n in names if is_output_name(n)}


def read_records_leniently(folder: Path) -> dict[str, set[str]]:
    """Per command, the names its record in ``folder`` lists; a record that is not the command's (a
    data set's own ``boxes.json``) or cannot be read, however broken, is simply no record here."""
    found: dict[str, set[str]] = {}
    for command in RECORDS:
        try:
            names = read_run_record(folder, command)
        except (OSError, ValueError, RecursionError):
            continue
        if names is not None:
            found[command] = names
    return found


def earlier_run_files(folder: Path, names: Collection[str]) -> dict[str, set[str]]:
    """Which of ``names`` (image files of ``folder``) an earlier run wrote there, per command, as the
    command's record (:data:`RECORDS`) lists them; commands that wrote none of them are left out.

    Reading them back as images would localize the overlays (``a_overlay_overlay.png``). Without a
    record nothing is skipped: a user's own ``x_overlay.png`` beside their ``x.npy`` is an image."""
    found = {cmd: {n for n in names if n in listed} for cmd, listed in read_records_leniently(folder).items()}
    return {cmd: hits for cmd, hits in found.items() if hits}


def finish_run_record(
    out: Path,
    command: str,
    doc: dict,
    earlier: set[Path],
    planned: Iterable[str] = (),
    checkpoints: RecordCheckpoints | None = None,
) -> list[str]:
    """Write ``command``'s record ``doc`` (with ``complete`` and the per-image ``images``, each naming its
    ``map`` and ``overlay``) into ``out`` at the end of a run, successful or not, so that the folder
    holds one run: once a run succeeds, the ``earlier`` run's files it did not rewrite are removed; a
    partial run lists what is left of the earlier one as ``stale_outputs``, for the next run to remove,
    with any of its ``planned`` names that exist but made no entry (a map written just before the
    interruption, its overlay not), so that no file of ours is left that a rerun would have to refuse;
    a run that wrote nothing leaves the earlier run's files and record as they were (``checkpoints``,
    the run's :class:`RecordCheckpoints`, puts back the record it replaced). Returns one note line per
    stale file it could not remove (a folder in their place, no permission)."""
    written = {out / n for n in _entry_names(doc)}
    orphans = {out / n for n in planned} - written - earlier
    leftover = sorted(p for p in (earlier | orphans) - written if os.path.lexists(p))
    if not doc["complete"]:
        if not doc["images"] and not any(p in orphans for p in leftover):
            if checkpoints is not None:
                checkpoints.undo()
            return []
        doc["stale_outputs"] = [p.name for p in leftover]
    _write_record(out / RECORDS[command], doc)
    kept: list[str] = []
    if doc["complete"]:
        for stale in leftover:  # only now: a failed run must not cost the earlier run's results
            try:
                if stale.is_symlink() or stale.is_file():
                    stale.unlink(missing_ok=True)
                else:
                    kept.append(f"{stale} (not a file)")
            except OSError as exc:
                kept.append(f"{stale} ({exc.strerror or type(exc).__name__})")
    return [f"left {k}, which the earlier run listed" for k in kept]


def _entry_names(doc: dict) -> set[str]:
    """The file names a run record's per-image entries name (each image's map and overlay)."""
    return {n for r in doc["images"] for n in (r["map"], r["overlay"])}


def _write_record(index: Path, doc: dict) -> None:
    with write_atomically(index) as f:
        f.write(json.dumps(doc, indent=2).encode())


#: Seconds between two checkpoints of a run record (:class:`RecordCheckpoints`).
CHECKPOINT_INTERVAL = 60.0


class RecordCheckpoints:
    """Keeps ``command``'s record in ``out`` true while a run writes, for a run that ends without its
    ``finally`` (SIGKILL, the kernel's out-of-memory killer, a lost machine): call it before each batch
    writes its files, and :meth:`finish` in the run's ``finally``. The first call (before the run's
    first file) and then one at most every ``interval`` seconds write the record so far
    (``"complete": false``) with, as ``stale_outputs``, the earlier run's files and every name this run
    may still write, so the files such an end leaves are listed and the rerun takes them back instead
    of refusing them as the user's. The record is rewritten a few times per hour, never per batch (a
    50,000-image record is ~20 MB); a run that writes nothing leaves the earlier record as it was, as
    :func:`finish_run_record` does."""

    def __init__(
        self,
        out: Path,
        command: str,
        doc: dict,
        earlier: set[Path],
        planned: Iterable[str],
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out, self.command, self.doc, self.clock = out, command, doc, clock
        self.earlier, self.planned = earlier, list(planned)
        self.interval = CHECKPOINT_INTERVAL if interval is None else interval
        self.claimed = {p.name for p in earlier} | set(self.planned)
        self.last: float | None = None
        self.writes = 0
        self.original: bytes | None = None

    def __call__(self) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        index = self.out / RECORDS[self.command]
        if self.writes == 0:  # the earlier run's record, for a run that ends having written nothing
            self.original = index.read_bytes() if index.is_file() else None
        doc = {**self.doc, "complete": False, "stale_outputs": sorted(self.claimed - _entry_names(self.doc))}
        # counted first: Ctrl-C or SIGTERM can land after the rename, before this line would run
        self.writes += 1
        _write_record(index, doc)

    def finish(self) -> list[str]:
        """The run's final record: :func:`finish_run_record` with this run's folder, record, earlier
        files and planned names (and this checkpointer to undo, should the run write nothing)."""
        return finish_run_record(self.out, self.command, self.doc, self.earlier, self.planned, self)

    def undo(self) -> None:
        """Put back the record the first checkpoint replaced (none if there was none)."""
        if not self.writes:
            return
        index = self.out / RECORDS[self.command]
        if (index.read_bytes() if index.is_file() else None) == self.original:  # the checkpoint never landed
            return
        if self.original is None:
            index.unlink(missing_ok=True)
        else:
            with write_atomically(index) as f:
                f.write(self.original)


def writable_output(path: Path) -> Path:
    """``path`` ready to be written: a symlink there (only one a record lists gets this far) is removed
    first, so that writing replaces the link, never the file it points to outside the folder."""
    if path.is_symlink():
        path.unlink()
    return path


def json_safe(value: object) -> object:
    """NaN and infinities as null, through dicts, lists and tuples: ``json.dumps`` would write ``NaN``,
    which is not JSON, into a report (a non-finite measure fails its check anyway); paths as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):  # a library caller's Path where the report names a file
        return os.fspath(value)
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
