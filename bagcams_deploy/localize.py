"""Images -> maps, boxes and pictures with any backend (the library behind ``localize``)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from .checks import NonFiniteOutputError, name_non_finite
from .errors import BagcamsError
from .evaluation.boxes import object_boxes
from .images import check_images
from .outputs import (
    RECORDS,
    RecordCheckpoints,
    check_distinct_stems,
    output_dir,
    output_names,
    planned_output_names,
    read_records_leniently,
    read_run_record,
    writable_output,
)
from .preprocessing import image_path_list, load_image, preprocess
from .runtime.base import Backend, run_input_size, score_maps
from .visualize import render_overlay, resize_map, save_png


def softmax(z: np.ndarray) -> np.ndarray:
    """Probabilities of one logit vector (the value ``localize`` and ``cam`` overlays print)."""
    e = np.exp(z - z.max())
    return e / e.sum()


def otsu_threshold(score_map: np.ndarray) -> float:
    """Otsu's threshold of the map's uint8 histogram, as a fraction of the map's maximum."""
    img = np.uint8(np.clip(score_map, 0, 1) * 255)
    if img.max() == 0:
        return 1.0
    level, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    peak = float(img.max())
    t = float(level) / peak
    # The boxes binarise at int(t * peak), which must give Otsu's level back (foreground: > level);
    # level / peak * peak can round to just below it (15 / 22 * 22 = 14.999...), which would make the
    # pixels at exactly the level foreground too. One ulp up restores it.
    if int(t * peak) < level:
        t = math.nextafter(t, math.inf)
    return t


BOX_FORMAT = "x0,y0,x1,y1: inclusive pixel edges in the original image"


def refuse_inputs_among_outputs(paths: Sequence[Path], out: Path, extra: Sequence[str] = ()) -> None:
    """Refuse a run into ``out`` whose per-image outputs (:func:`~bagcams_deploy.outputs.output_names`,
    plus ``extra`` file names) include one of its inputs: writing would destroy that input. (A folder's
    files an earlier run wrote are not inputs at all: :func:`~bagcams_deploy.preprocessing.expand_image_paths`
    skips them.) Shared by ``localize`` and ``cam``."""
    planned = {(out / n).resolve() for n in planned_output_names(paths)}
    planned |= {(out / n).resolve() for n in extra}
    for p in paths:
        if Path(p).resolve() in planned:
            raise BagcamsError(f"{p} would be overwritten by an output of this run; write to another folder")


def earlier_outputs(out: Path, command: str = "localize") -> set[Path]:
    """The files an earlier ``command`` run wrote into ``out``, as its record (``boxes.json`` for
    localize, ``cam.json`` for cam) lists them; a file of that name that is not the record is refused."""
    index = out / RECORDS[command]
    try:
        names = read_run_record(out, command)
    except OSError as exc:
        raise BagcamsError(f"cannot read {index}: {exc.strerror or exc}") from None
    except ValueError:
        raise BagcamsError(f"{index} was not written by {command}; choose another output folder") from None
    return {out / n for n in names or ()}


def check_run_outputs(paths: Sequence[Path], out: Path, command: str = "localize") -> set[Path]:
    """Refuse a ``command`` run into ``out`` that would overwrite one of its inputs, read an earlier
    run's outputs as images, or overwrite a file that ``command``'s own record in ``out`` does not list
    (the user's own, or another command's outputs); return the earlier run's files (removed once this
    run succeeds, so the folder holds one run). Shared by ``localize`` and ``cam``."""
    record = RECORDS[command]
    earlier = earlier_outputs(out, command)
    earlier_real = {q.resolve() for q in earlier}
    for p in paths:
        if Path(p).resolve() in earlier_real:
            raise BagcamsError(f"{p} is an output of an earlier {command} run in {out}; write to another folder")
    refuse_inputs_among_outputs(paths, out, (record,))
    planned = planned_output_names(paths)
    for other, listed in read_records_leniently(out).items():
        clash = [n for n in planned if n in listed] if other != command else []
        if clash:
            raise BagcamsError(
                f"{out} holds a {other} run ({RECORDS[other]}) whose files this {command} run would overwrite "
                f"(first: {clash[0]}); use another --out"
            )
    own = {q.name for q in earlier}
    for n in planned:
        if n not in own and os.path.lexists(out / n):
            raise BagcamsError(
                f"{out / n} exists and no earlier {command} run's {record} in {out} lists it; this run would "
                f"overwrite it: use another --out (or move the file; outputs of a {command} older than its "
                f"{record} are not recognised)"
            )
    if os.path.lexists(out / record) and not (out / record).is_file():
        raise BagcamsError(f"{out / record} is not a file, and this run writes its record there; use another --out")
    return earlier


def localize_images(
    backend: Backend,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    threshold: float | None = 0.5,
    multi_contour: bool = False,
    class_id: int | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    input_size: int | tuple[int, int] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[dict]:
    """Per image: ``<stem>.npy`` (the map at the original image size), ``<stem>_overlay.png`` and a
    record (class, score, probability, boxes as :data:`BOX_FORMAT`); ``threshold=None`` = Otsu.
    Writes ``boxes.json`` with all records and returns them. The folder holds one run: once this run
    succeeds, the files an earlier run listed in its ``boxes.json`` are removed (only names of the
    shape localize writes); other files are left alone, and a failed run removes nothing.

    ``input_size`` (an int is H = W) is for dynamic-size graphs (default 224x224); a fixed-size graph
    refuses any size but its own (:func:`~bagcams_deploy.runtime.base.run_input_size`).

    ``paths`` may be one file, and a folder stands for its image files as on the command line
    (:func:`~bagcams_deploy.preprocessing.expand_image_paths`): each record names its image. A folder
    skips the files an earlier run's record in it lists; ``on_note`` gets one line saying so, once
    every check has passed (a refused run is its error alone, as on the command line).

    Files in ``out`` that this run would overwrite must be listed by an earlier localize run's
    ``boxes.json`` there: the user's own files and another command's (``cam.json``) are refused."""
    notes: list[str] = []
    paths = image_path_list(paths, "paths", expand_folders=True, on_note=notes.append)
    out = Path(out)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BagcamsError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threshold is not None:
        # a string or a bool would compare (or not) by accident; NaN fails the range test
        is_number = isinstance(threshold, int | float | np.integer | np.floating) and not isinstance(threshold, bool)
        if not is_number or not 0 <= threshold <= 1:
            raise BagcamsError(f"threshold must be a number in [0, 1] (or None for Otsu's), got {threshold!r}")
        threshold = float(threshold)
    if class_id is not None:
        value = np.asarray(class_id.detach().cpu() if hasattr(class_id, "detach") else class_id)
        if value.ndim != 0 or value.dtype.kind not in "iu":
            raise BagcamsError(f"class_id must be an integer, got {class_id!r}")
        class_id = int(value)
    size, _ = run_input_size(backend.spec, input_size, getattr(backend, "path", None) or backend.name)
    check_distinct_stems(paths)
    output_dir(out, "output folder")
    earlier = check_run_outputs(paths, out, "localize")
    check_images(paths)  # an unreadable image fails now, not after earlier batches were written
    for note in notes if on_note is not None else ():
        on_note(note)
    spec = backend.spec
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    doc = {
        "command": "localize",
        "method": spec.method,
        "target_layer": spec.target_layer,
        "backend": backend.name,
        "threshold": "otsu" if threshold is None else threshold,
        "multi_contour": bool(multi_contour),
        "input_size": list(size),
        "box_format": BOX_FORMAT,
        "complete": False,
        "images": records,
    }
    keep_record = RecordCheckpoints(out, "localize", doc, earlier, planned_output_names(paths))
    try:
        _localize(backend, paths, out, size, threshold, multi_contour, class_id, batch_size, on_batch, records,
                  keep_record)  # fmt: skip
        doc["complete"] = True
    finally:
        for note in keep_record.finish():
            if on_note is not None:
                on_note(note)
    return records


def _localize(
    backend: Backend,
    paths: list[Path],
    out: Path,
    size: tuple[int, int],
    threshold: float | None,
    multi_contour: bool,
    class_id: int | None,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
    records: list[dict],
    keep_record: Callable[[], None],
) -> None:
    """The batches of :func:`localize_images`, appending each image's record as its files are written
    (``keep_record`` is called before each batch writes: see :class:`~bagcams_deploy.outputs.RecordCheckpoints`)."""
    spec = backend.spec
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        rgbs = [load_image(p) for p in chunk]
        x = preprocess(rgbs, size, spec.mean, spec.std).numpy()
        ids = None if class_id is None else np.full(len(chunk), class_id, dtype=np.int64)
        try:
            res = backend.infer(x, ids)
        except NonFiniteOutputError as exc:
            raise name_non_finite(exc, [str(p) for p in chunk]) from None
        logits = res["logits"]
        maps = score_maps(spec, res, x.shape[2:])
        keep_record()
        for k, (p, rgb) in enumerate(zip(chunk, rgbs, strict=True)):
            h, w = rgb.shape[:2]
            full = resize_map(maps[k, 0], (h, w))
            t = otsu_threshold(full) if threshold is None else threshold
            boxes = object_boxes(full, t, multi_contour)
            c = int(res["class_id_used"][k])
            prob = float(softmax(logits[k])[c])
            name = spec.class_names[c] if spec.class_names and c < len(spec.class_names) else f"class {c}"
            map_name, overlay_name = output_names(p)
            np.save(writable_output(out / map_name), full.astype(np.float32))
            save_png(writable_output(out / overlay_name), render_overlay(rgb, full, boxes, f"{name} {prob:.2f}"))
            records.append({
                "image": str(p), "class_id": c, "class_name": name, "score": float(logits[k, c]),
                "probability": prob, "threshold": float(t), "boxes": boxes, "image_size": [w, h],
                "map": map_name, "overlay": overlay_name,
            })  # fmt: skip
        if on_batch:
            on_batch(len(chunk))
