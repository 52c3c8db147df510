"""End-to-end evaluation: maps from any backend (or precomputed files) scored image by image.

wsolevaluation's protocol: the map of each image is computed for its ground-truth class (that is what
"GT-known" means), Top-1 Loc additionally needs the predicted class to be right, and maps are scored
at 224x224. Memory stays flat: one batch of images and the evaluators' counters at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..checks import NonFiniteOutputError, name_non_finite
from ..errors import BagcamsError
from ..outputs import output_dir
from ..preprocessing import preprocess
from ..runtime.base import Backend, run_input_size, score_maps
from .box_metrics import BoxEvaluator, BoxMetrics, box_metric_name
from .boxes import RESIZE_LENGTH
from .mask_metrics import MaskEvaluator, MaskMetrics
from .metadata import WSOLMetadata, align_mask_ids, load_gt_mask, load_image


@dataclass
class EvaluationResult:
    """Box and/or mask metrics of one run, plus classification accuracy when predictions exist."""

    boxes: BoxMetrics | None
    masks: MaskMetrics | None
    count: int
    top1_cls: float | None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    #: one-line remarks on the run (e.g. image files whose size differs from image_sizes.txt)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        """The paper's table row: Top-1 Loc, GT-known Loc, MaxBoxAccV2 (named for its contour mode by
        :func:`box_metric_name`), pIoU, PxAP (in %)."""
        b, m = self.boxes, self.masks
        return {
            "Top-1 Cls": self.top1_cls,
            "Top-1 Loc": b.top1_loc if b else None,
            "GT-known Loc": b.gt_known_loc.get(50) if b else None,
            box_metric_name(b.multi_contour if b else True): b.max_box_acc_v2 if b else None,
            "pIoU": m.piou if m else None,
            "PxAP": m.pxap if m else None,
        }

    def to_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "count": self.count,
            "seconds": self.seconds,
            "boxes": self.boxes.to_dict() if self.boxes else None,
            "masks": self.masks.to_dict() if self.masks else None,
            "notes": self.notes,
            **self.extra,
        }


def to_eval_size(score_map: np.ndarray, what: str = "score map") -> np.ndarray:
    """Maps are scored at 224x224 (wsolevaluation); other graph sizes are resized bilinearly. A
    float64 map stays float64, so its uint8 binarisation is the one the published code computes."""
    m = np.asarray(score_map)
    if m.dtype.kind not in "fiub":
        raise BagcamsError(f"{what} holds {m.dtype} values, not real numbers")
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2 or min(m.shape) == 0:
        raise BagcamsError(f"{what} has shape {m.shape}; expected (H, W) or (1, H, W) with H, W > 0")
    m = m if m.dtype == np.float64 else m.astype(np.float32)
    if m.ndim == 2 and m.shape != (RESIZE_LENGTH, RESIZE_LENGTH):
        m = cv2.resize(m, (RESIZE_LENGTH, RESIZE_LENGTH), interpolation=cv2.INTER_LINEAR)
    return m  # bilinear resizing keeps [0, 1]; the evaluators validate the range


class Scorer:
    """The evaluators for one run: boxes when the metadata has boxes, masks when masks are given."""

    def __init__(
        self,
        meta: WSOLMetadata,
        mask_meta: WSOLMetadata | None = None,
        mask_root: str | Path | None = None,
        interval: float = 0.001,
        multi_contour: bool = True,
    ):
        self.meta = meta
        self.mask_meta = meta if meta.kind == "masks" and mask_meta is None else mask_meta
        if self.mask_meta is not None:
            self.mask_meta = align_mask_ids(meta.image_ids, self.mask_meta)
        self.mask_root = Path(mask_root) if mask_root else None
        if self.mask_meta is not None and self.mask_root is None:
            raise BagcamsError("mask metadata given without --mask-root (the folder the mask paths are relative to)")
        self.box_eval = BoxEvaluator(interval=interval, multi_contour=multi_contour) if meta.kind == "boxes" else None
        self.mask_eval = MaskEvaluator(interval=interval) if self.mask_meta is not None else None
        self.count = 0
        self.seconds = 0.0  #: set by evaluate_backend for an extra backend's scorer
        self.correct = 0
        self.with_predictions = 0
        self.size_mismatches: list[tuple[str, tuple[int, int], tuple[int, int]]] = []

    def check_size(self, image_id: str, width: int, height: int) -> None:
        """Record an image file whose size is not ``image_sizes.txt``'s: its GT boxes are rescaled from
        the listed size (as wsolevaluation does), which is wrong if the file was resized since."""
        listed = self.meta.image_sizes.get(image_id) if self.box_eval is not None else None
        if listed is not None and listed != (width, height):
            self.size_mismatches.append((image_id, listed, (width, height)))

    def add(self, image_id: str, score_map: np.ndarray, predicted: int | None) -> None:
        m = to_eval_size(score_map, f"score map of {image_id}")
        try:
            self._accumulate(image_id, m, predicted)
        except BagcamsError as exc:
            if image_id in str(exc):
                raise
            raise BagcamsError(f"image {image_id}: {exc}") from None
        self.count += 1

    def _accumulate(self, image_id: str, m: np.ndarray, predicted: int | None) -> None:
        label = self.meta.class_labels[image_id]
        correct = None if predicted is None else int(predicted) == int(label)
        if correct is not None:
            self.with_predictions += 1
            self.correct += int(correct)
        if self.box_eval is not None:
            self.box_eval.accumulate(m, self.meta.resized_boxes(image_id), pred_correct=correct)
        if self.mask_eval is not None:
            mm = self.mask_meta
            assert mm is not None and self.mask_root is not None
            if image_id not in mm.mask_paths:
                raise BagcamsError(f"no mask for image {image_id} in {mm.root}/localization.txt")
            self.mask_eval.accumulate(
                m, load_gt_mask(self.mask_root, mm.mask_paths[image_id], mm.ignore_paths.get(image_id))
            )

    def result(self, seconds: float | None = None) -> EvaluationResult:
        """The metrics so far; ``seconds`` defaults to the time :func:`evaluate_backend` recorded."""
        if self.count == 0:
            raise BagcamsError("no image was evaluated")
        top1 = 100.0 * self.correct / self.with_predictions if self.with_predictions == self.count else None
        return EvaluationResult(
            boxes=self.box_eval.compute() if self.box_eval else None,
            masks=self.mask_eval.compute() if self.mask_eval else None,
            count=self.count,
            top1_cls=top1,
            seconds=self.seconds if seconds is None else seconds,
            notes=self._notes(),
        )

    def _notes(self) -> list[str]:
        if not self.size_mismatches:
            return []
        image_id, (lw, lh), (w, h) = self.size_mismatches[0]
        return [
            f"{len(self.size_mismatches)} image file(s) differ in size from {self.meta.root}/image_sizes.txt, "
            f"whose sizes rescale the GT boxes (first: {image_id} is {w}x{h}, listed as {lw}x{lh})"
        ]


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def map_path(maps_dir: Path, image_id: str) -> Path:
    """``DIR/<image_id>.npy`` (wsolevaluation's layout), or the same without the image suffix."""
    first = maps_dir / f"{image_id}.npy"
    if first.is_file():
        return first
    second = (maps_dir / image_id).with_suffix(".npy")
    if second.is_file():
        return second
    raise BagcamsError(
        f"no score map for image {image_id}: expected {first} (the layout evaluate --save-maps writes;"
        " localize's maps are for the predicted class at the image's own size, not this)"
    )


def check_split_files(
    scorer: Scorer, ids: list[str], data_root: str | Path | None = None, maps_dir: Path | None = None
) -> None:
    """Refuse a split whose files are not all there before the first image is scored, as ``localize``
    does: a missing or unreadable image (its header is read, not its pixels), mask or precomputed map
    used to stop the run where it was met, after every image before it (an hour into ImageNet val)."""
    from ..images import check_images

    if data_root is not None:
        check_images([Path(data_root) / i for i in ids], min_side=1)
    if maps_dir is not None:
        for image_id in ids:
            map_path(maps_dir, image_id)
    mm = scorer.mask_meta
    if scorer.mask_eval is not None and mm is not None and scorer.mask_root is not None:
        checked: set[str] = set()
        for image_id in ids:
            if image_id not in mm.mask_paths:
                raise BagcamsError(f"no mask for image {image_id} in {mm.root}/localization.txt")
            ignore = mm.ignore_paths.get(image_id)
            named = [(n, "mask") for n in mm.mask_paths[image_id]] + ([(ignore, "ignore mask")] if ignore else [])
            for name, what in named:
                if name not in checked:  # one ignore mask often serves every image
                    checked.add(name)
                    if not (scorer.mask_root / name).is_file():  # load_gt_mask's words, for image_id
                        raise BagcamsError(f"{scorer.mask_root / name}: cannot read {what} of image {image_id} "
                                           "(no such file)")  # fmt: skip


def evaluate_backend(
    backend: Backend,
    scorer: Scorer,
    data_root: str | Path,
    batch_size: int = 32,
    save_maps: str | Path | None = None,
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    extra_backends: list[tuple[Backend, Scorer]] | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> EvaluationResult:
    """Run ``backend`` over the split (GT class per image) and score; ``extra_backends`` (e.g. the
    reference for ``--compare-reference``) see exactly the same images and class ids; each one's
    scorer records its own time (``scorer.seconds``: shared decoding plus its inference and scoring).
    ``input_size`` (an int is H = W) is for dynamic-size graphs (default 224x224; maps are scored at
    224x224 whatever the size); a fixed-size graph refuses any but its own
    (:func:`~bagcams_deploy.runtime.base.run_input_size`)."""
    import time

    if not isinstance(batch_size, int) or batch_size < 1:
        raise BagcamsError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1):
        raise BagcamsError(f"limit must be a positive integer (or None for all), got {limit!r}")
    output_dir(Path(save_maps) if save_maps else None, "save_maps")
    spec = backend.spec
    size, _ = run_input_size(spec, input_size, getattr(backend, "path", None) or backend.name)
    ids = scorer.meta.image_ids[:limit] if limit else scorer.meta.image_ids
    check_split_files(scorer, ids, data_root=data_root)
    out_dir = Path(save_maps) if save_maps else None
    runs = [(backend, scorer), *(extra_backends or [])]
    # Each run is timed as if alone: the shared decoding plus its own inference and scoring.
    shared, own = 0.0, [0.0] * len(runs)
    for chunk in _batches(ids, batch_size):
        t0 = time.perf_counter()
        rgbs = [load_image(data_root, i) for i in chunk]
        for image_id, rgb in zip(chunk, rgbs, strict=True):
            for _, sc in runs:
                sc.check_size(image_id, rgb.shape[1], rgb.shape[0])
        x = preprocess(rgbs, size, spec.mean, spec.std).numpy()
        labels = np.array([scorer.meta.class_labels[i] for i in chunk], dtype=np.int64)
        bad = labels[labels >= spec.num_classes]
        if bad.size:
            raise BagcamsError(f"label {int(bad[0])} in the metadata but the model has {spec.num_classes} classes")
        shared += time.perf_counter() - t0
        for r, (b, sc) in enumerate(runs):
            t0 = time.perf_counter()
            try:
                out = b.infer(x, labels)
            except NonFiniteOutputError as exc:
                raise name_non_finite(exc, list(chunk)) from None
            preds = out["logits"].argmax(1)
            maps = score_maps(b.spec, out, x.shape[2:])
            for k, image_id in enumerate(chunk):
                sc.add(image_id, maps[k], int(preds[k]))
                if out_dir is not None and b is backend:
                    path = out_dir / f"{image_id}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, to_eval_size(maps[k]))
            own[r] += time.perf_counter() - t0
        if on_batch:
            on_batch(len(chunk))
    for (_, sc), seconds in zip(runs[1:], own[1:], strict=True):
        sc.seconds = shared + seconds
    return scorer.result(shared + own[0])


def read_predictions(path: str | Path) -> dict[str, int]:
    """``image_id,predicted_label`` per line (for Top-1 Loc of precomputed maps)."""
    preds: dict[str, int] = {}
    p = Path(path)
    if not p.is_file():
        raise BagcamsError(f"predictions file not found: {p}")
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [s.strip() for s in line.split(",")]
        if len(parts) != 2:
            raise BagcamsError(f"{p}:{n}: expected 'image_id,predicted_label', got {line!r}")
        try:
            preds[parts[0]] = int(parts[1])
        except ValueError:
            raise BagcamsError(f"{p}:{n}: predicted label {parts[1]!r} is not an integer") from None
    return preds


def evaluate_maps(
    maps_dir: str | Path,
    scorer: Scorer,
    predictions: dict[str, int] | None = None,
    on_image: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> EvaluationResult:
    """Score precomputed maps (any tool's) in wsolevaluation's ``DIR/<image_id>.npy`` layout
    (the first ``limit`` images of the split only, when given)."""
    import time

    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise BagcamsError(f"maps folder not found: {maps_dir}")
    ids = scorer.meta.image_ids[:limit] if limit else scorer.meta.image_ids
    check_split_files(scorer, ids, maps_dir=maps_dir)
    t0 = time.perf_counter()
    for image_id in ids:
        path = map_path(maps_dir, image_id)
        try:
            m = np.load(path)
        except Exception as exc:
            raise BagcamsError(f"cannot read score map {path}: {str(exc).splitlines()[0]}") from None
        pred = predictions.get(image_id) if predictions is not None else None
        if predictions is not None and pred is None:
            raise BagcamsError(f"no prediction for image {image_id} in the predictions file")
        scorer.add(image_id, m, pred)
        if on_image:
            on_image(1)
    return scorer.result(time.perf_counter() - t0)
