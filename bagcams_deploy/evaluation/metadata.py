"""Reading a wsolevaluation metadata folder, GT masks and images, with errors naming file and line.

Layout (one split's folder)::

    image_ids.txt      <path>                      one image per line
    class_labels.txt   <path>,<label>
    image_sizes.txt    <path>,<w>,<h>              original image size in pixels (box sets only)
    localization.txt   <path>,<x0>,<y0>,<x1>,<y1>  boxes (CUB, ILSVRC): one line per box
                  or   <path>,<mask>,<ignore>      masks (OpenImages): one line per instance mask

Images are ``data_root/<path>``; mask files are ``mask_root/<mask>``. Whether ``localization.txt``
holds boxes or masks is detected from its first line (5 columns of which the last 4 are integers:
boxes; 3 columns: masks) and every other line must agree. Mask sets need no ``image_sizes.txt``
(wsolevaluation's OpenImages folders have none: masks are resized, not boxes).

A folder given only for its masks (``--mask-metadata``, e.g. BagCAMs' ``CUBMask``) needs only
``localization.txt`` (:func:`load_mask_metadata`); its ids may carry one extra leading folder, which
:func:`align_mask_ids` strips as BagCAMs' CUB mask loader does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation.boxes import RESIZE_LENGTH
from bagcams_deploy.evaluation.mask_metrics import IGNORE_VALUE

Box = tuple[int, int, int, int]


@dataclass
class WSOLMetadata:
    """One split's annotations. ``kind`` is ``"boxes"`` or ``"masks"``; boxes are in original-image
    pixels (use :meth:`resized_boxes` for the 224x224 map frame). ``ignore_paths[id]`` is ``None``
    where the image has no ignore mask."""

    root: Path
    image_ids: list[str]
    class_labels: dict[str, int]
    image_sizes: dict[str, tuple[int, int]]
    kind: str
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    mask_paths: dict[str, list[str]] = field(default_factory=dict)
    ignore_paths: dict[str, str | None] = field(default_factory=dict)
    #: one-line remarks a user should see (boxes kept past the image edge, ids remapped)
    notes: list[str] = field(default_factory=list)

    def resized_boxes(self, image_id: str, size: int = RESIZE_LENGTH) -> np.ndarray:
        """The image's GT boxes (n, 4) int64 rescaled to a ``size`` x ``size`` map (see resize_box)."""
        w, h = self.image_sizes[image_id]
        return np.array([resize_box(b, (w, h), (size, size)) for b in self.boxes[image_id]], dtype=np.int64)


def resize_box(box: Sequence[float], image_size: tuple[int, int], resize_size: tuple[int, int]) -> Box:
    """Rescale an x0y0x1y1 box from ``image_size`` (w, h) to ``resize_size`` (w, h).

    Like wsolevaluation's ``resize_bbox``: ``x * new_w / w`` in float, then ``int()`` truncation
    (not rounding), so published numbers are reproduced exactly.
    """
    x0, y0, x1, y1 = map(float, box)
    w, h = map(float, image_size)
    new_w, new_h = map(float, resize_size)
    return int(x0 * new_w / w), int(y0 * new_h / h), int(x1 * new_w / w), int(y1 * new_h / h)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) for every non-blank line of a metadata file."""
    if not path.is_file():
        raise BagcamsError(f"{path}: metadata file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first id
    except (OSError, UnicodeDecodeError) as exc:
        raise BagcamsError(f"{path}: cannot read metadata file ({exc})") from exc
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _int(path: Path, n: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BagcamsError(f"{path}:{n}: {what} must be an integer, got {text!r}") from None


def _fields(path: Path, n: int, line: str, count: int, layout: str) -> list[str]:
    parts = [p.strip() for p in line.split(",")]  # stray spaces around commas are not meaningful
    if len(parts) != count or not parts[0]:
        raise BagcamsError(f"{path}:{n}: malformed line {line!r}, expected '{layout}'")
    return parts


def _is_box_line(parts: list[str]) -> bool:
    if len(parts) != 5:
        return False
    try:
        [int(p) for p in parts[1:]]
    except ValueError:
        return False
    return True


def load_metadata(metadata_dir: str | Path) -> WSOLMetadata:
    """Read and cross-check one split's metadata folder (see the module docstring for its layout)."""
    root = _folder(metadata_dir)

    ids_file = root / "image_ids.txt"
    image_ids: list[str] = []
    id_lines: dict[str, int] = {}
    for n, line in _read_lines(ids_file):
        image_id = line.strip()
        if "," in image_id:
            raise BagcamsError(f"{ids_file}:{n}: malformed line {line!r}, expected '<path>'")
        if image_id in id_lines:
            raise BagcamsError(f"{ids_file}:{n}: duplicate image id {image_id!r} (first on line {id_lines[image_id]})")
        id_lines[image_id] = n
        image_ids.append(image_id)
    if not image_ids:
        raise BagcamsError(f"{ids_file}: no image ids")

    labels_file = root / "class_labels.txt"
    class_labels: dict[str, int] = {}
    for n, line in _read_lines(labels_file):
        image_id, label = _fields(labels_file, n, line, 2, "<path>,<label>")
        class_labels[image_id] = _int(labels_file, n, label, "class label")
        if class_labels[image_id] < 0:
            raise BagcamsError(f"{labels_file}:{n}: class label must be >= 0, got {label}")

    meta, box_lines = _read_localization(root)
    meta.image_ids, meta.class_labels = image_ids, class_labels
    sizes_file = root / "image_sizes.txt"
    if meta.kind == "boxes" or sizes_file.exists():
        meta.image_sizes = _read_sizes(sizes_file)
    if meta.kind == "boxes":
        _note_boxes_past_edge(meta, box_lines)

    for image_id in image_ids:
        n = id_lines[image_id]
        if image_id not in class_labels:
            raise BagcamsError(f"{ids_file}:{n}: image {image_id!r} has no class label in {labels_file}")
        if meta.kind == "boxes" and image_id not in meta.image_sizes:
            raise BagcamsError(f"{ids_file}:{n}: image {image_id!r} has no size in {sizes_file}")
        if image_id not in (meta.boxes if meta.kind == "boxes" else meta.mask_paths):
            what = "box" if meta.kind == "boxes" else "mask"
            raise BagcamsError(f"{ids_file}:{n}: image {image_id!r} has no {what} in {root / 'localization.txt'}")
    return meta


def load_mask_metadata(metadata_dir: str | Path) -> WSOLMetadata:
    """The masks of a folder given only for them (``--mask-metadata``): just ``localization.txt``,
    which must list masks; ids, labels and sizes come from the main split's metadata."""
    root = _folder(metadata_dir)
    meta, _ = _read_localization(root)
    if meta.kind != "masks":
        raise BagcamsError(f"{root / 'localization.txt'} lists boxes, not masks")
    meta.image_ids = list(meta.mask_paths)
    return meta


def align_mask_ids(image_ids: Sequence[str], masks: WSOLMetadata) -> WSOLMetadata:
    """``masks`` keyed by the split's ``image_ids``.

    Unchanged when some id matches as written. Otherwise, when every mask id has a leading folder
    whose removal makes ids match (BagCAMs' ``CUBMask`` metadata; its loader strips that folder the
    same way), a copy keyed by the stripped ids, with a note saying so. Ids that match neither way
    are left for the scorer to name.
    """
    if any(i in masks.mask_paths for i in image_ids):
        return masks
    stripped: dict[str, str] = {}
    for k in masks.mask_paths:
        if "/" in k:
            short = k.split("/", 1)[1]
            if short in stripped and any(i == short for i in image_ids):
                raise BagcamsError(
                    f"{masks.root}/localization.txt: mask ids {stripped[short]!r} and {k!r} both become "
                    f"{short!r} without their first folder; cannot tell which masks belong to that image"
                )
            stripped[short] = k
    if len(stripped) != len(masks.mask_paths) or not any(i in stripped for i in image_ids):
        return masks
    first = next(iter(masks.mask_paths))
    return replace(
        masks,
        image_ids=list(stripped),
        mask_paths={new: masks.mask_paths[old] for new, old in stripped.items()},
        ignore_paths={new: masks.ignore_paths.get(old) for new, old in stripped.items()},
        notes=[
            *masks.notes,
            f"{masks.root}/localization.txt: mask ids matched to the split's ids without their first folder "
            f"({first!r} -> {first.split('/', 1)[1]!r})",
        ],
    )


def _folder(metadata_dir: str | Path) -> Path:
    root = Path(metadata_dir)
    if not root.is_dir():
        raise BagcamsError(f"{root}: metadata folder not found")
    return root


def _read_sizes(sizes_file: Path) -> dict[str, tuple[int, int]]:
    image_sizes: dict[str, tuple[int, int]] = {}
    for n, line in _read_lines(sizes_file):
        image_id, ws, hs = _fields(sizes_file, n, line, 3, "<path>,<w>,<h>")
        w, h = _int(sizes_file, n, ws, "width"), _int(sizes_file, n, hs, "height")
        if w <= 0 or h <= 0:
            raise BagcamsError(f"{sizes_file}:{n}: image size must be positive, got {w}x{h}")
        image_sizes[image_id] = (w, h)
    return image_sizes


def _read_localization(root: Path) -> tuple[WSOLMetadata, dict[str, list[int]]]:
    """``localization.txt`` alone: its kind and boxes or masks, and each image's box line numbers."""
    loc_file = root / "localization.txt"
    loc_lines = _read_lines(loc_file)
    if not loc_lines:
        raise BagcamsError(f"{loc_file}: no localization lines")
    meta = WSOLMetadata(root=root, image_ids=[], class_labels={}, image_sizes={}, kind="")
    meta.kind = "boxes" if _is_box_line(loc_lines[0][1].split(",")) else "masks"
    box_lines: dict[str, list[int]] = {}
    for n, line in loc_lines:
        if meta.kind == "boxes":
            parts = _fields(loc_file, n, line, 5, "<path>,<x0>,<y0>,<x1>,<y1>")
            image_id = parts[0]
            x0, y0, x1, y1 = (_int(loc_file, n, p, "box coordinate") for p in parts[1:])
            if x1 < x0 or y1 < y0:
                raise BagcamsError(f"{loc_file}:{n}: box ({x0},{y0},{x1},{y1}) has x1 < x0 or y1 < y0")
            if x0 < 0 or y0 < 0:  # wsolevaluation refuses these too
                raise BagcamsError(f"{loc_file}:{n}: box ({x0},{y0},{x1},{y1}) has a negative coordinate")
            meta.boxes.setdefault(image_id, []).append((x0, y0, x1, y1))
            box_lines.setdefault(image_id, []).append(n)
        else:
            image_id, mask, ignore = _fields(loc_file, n, line, 3, "<path>,<mask_path>,<ignore_path>")
            if not mask:
                raise BagcamsError(f"{loc_file}:{n}: empty mask path")
            if image_id not in meta.mask_paths:
                meta.mask_paths[image_id] = [mask]
                meta.ignore_paths[image_id] = ignore or None
            else:
                meta.mask_paths[image_id].append(mask)
                if ignore and ignore != meta.ignore_paths[image_id]:
                    raise BagcamsError(
                        f"{loc_file}:{n}: second ignore mask {ignore!r} for {image_id!r} (one per image)"
                    )
    return meta, box_lines


def _note_boxes_past_edge(meta: WSOLMetadata, box_lines: dict[str, list[int]]) -> None:
    """Boxes reaching past their image's right or bottom edge are scored as given, as wsolevaluation
    does (clipping them would change the published numbers); a note counts them. ``x1 == w`` is
    within the edge: several published sets store exclusive right/bottom edges."""
    past = []
    for image_id, boxes in meta.boxes.items():
        size = meta.image_sizes.get(image_id)
        if size is None:
            continue
        for box, n in zip(boxes, box_lines[image_id], strict=True):
            if box[2] > size[0] or box[3] > size[1]:
                past.append((n, box, size))
    if past:
        n, box, size = min(past)
        meta.notes.append(
            f"{meta.root / 'localization.txt'}: {len(past)} box(es) reach past the image's right or bottom "
            f"edge, scored as given as wsolevaluation does (first: line {n}, {box} in a {size[0]}x{size[1]} image)"
        )


def _why_unreadable(path: Path) -> str:
    return "not a readable image" if path.is_file() else "no such file"


def _read_gray(path: Path, what: str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if image is None:
        raise BagcamsError(f"{path}: cannot read {what} ({_why_unreadable(path)})")
    return image


def _load_resized_mask(path: Path, what: str, size: int) -> np.ndarray:
    mask = np.float32(_read_gray(path, what))
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0.5


def load_gt_mask(
    mask_root: str | Path, mask_paths: Sequence[str], ignore_path: str | None, size: int = RESIZE_LENGTH
) -> np.ndarray:
    """GT mask (size, size) float32: 1 foreground (union of instance masks), 0 background, 255 ignore.

    As wsolevaluation's ``get_mask``: masks are read as grayscale, resized with nearest neighbour,
    thresholded at > 0.5; ignored pixels are the ignore mask minus the foreground.
    """
    root = Path(mask_root)
    if not mask_paths:
        raise BagcamsError("load_gt_mask needs at least one instance mask path")
    foreground = np.zeros((size, size), dtype=bool)
    for mask_path in mask_paths:
        foreground |= _load_resized_mask(root / mask_path, "mask", size)
    ignore = np.zeros((size, size), dtype=bool)
    if ignore_path:
        ignore = _load_resized_mask(root / ignore_path, "ignore mask", size) & ~foreground
    return foreground.astype(np.float32) + np.float32(IGNORE_VALUE) * ignore.astype(np.float32)


def load_image(data_root: str | Path, image_id: str) -> np.ndarray:
    """The image ``data_root/image_id`` as an RGB uint8 array (H, W, 3), decoded as ``localize`` does
    (:func:`bagcams_deploy.images.load_image`: the published ``convert('RGB')`` for the data sets'
    modes, no EXIF rotation, so boxes stay in its frame)."""
    from ..images import load_image as decode

    return decode(Path(data_root) / image_id, min_side=1)
