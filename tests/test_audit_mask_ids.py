"""A mask-only folder (``--mask-metadata``) whose ids MIX prefixed and unprefixed ones is not aligned.

``align_mask_ids`` strips BagCAMs' extra leading folder only when no id matches as written and every
id has a folder to strip. A file mixing both kinds is returned as it is, without a note, so no mask
is silently re-keyed or dropped: the images it does not cover are named by ``evaluate`` before the
run and by the scorer. A mutation audit removed each of these two guards unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation import WSOLMetadata, align_mask_ids, load_mask_metadata, load_metadata
from bagcams_deploy.evaluation.runner import Scorer

from .test_cli import assert_one_line_error

IMAGE_IDS = ["a/1.jpg", "a/2.jpg"]
SPLIT = {  # a box split (CUB-like) whose pIoU/PxAP masks come from --mask-metadata
    "image_ids": "a/1.jpg\na/2.jpg\n",
    "class_labels": "a/1.jpg,0\na/2.jpg,1\n",
    "image_sizes": "a/1.jpg,224,224\na/2.jpg,224,224\n",
    "localization": "a/1.jpg,10,10,100,100\na/2.jpg,20,20,120,120\n",
}
#: one id with BagCAMs' extra folder, one with no folder at all (nothing to strip)
FOLDERLESS = "test/a/1.jpg,a/i1.png,\n2.jpg,a/i2.png,\n"
#: one id with BagCAMs' extra folder, one already as the split writes it
AS_WRITTEN = "test/a/1.jpg,a/i1.png,\na/2.jpg,a/i2.png,\n"
#: every id with the extra folder: the layout that is aligned
ALL_PREFIXED = "test/a/1.jpg,a/i1.png,\ntest/a/2.jpg,a/i2.png,\n"


def _folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / f"{name}.txt").write_text(text)
    return path


def _masks(tmp_path: Path, localization: str) -> WSOLMetadata:
    return load_mask_metadata(_folder(tmp_path / "masks_meta", localization=localization))


def _matched(masks: WSOLMetadata) -> list[str]:
    """The split's images that have a mask under their own id."""
    return [i for i in IMAGE_IDS if i in masks.mask_paths]


def test_all_prefixed_ids_are_aligned_with_a_note(tmp_path):
    """The control: without the odd line out, the same kind of file is re-keyed and noted."""
    masks = _masks(tmp_path, ALL_PREFIXED)
    aligned = align_mask_ids(IMAGE_IDS, masks)
    assert aligned is not masks and _matched(aligned) == IMAGE_IDS
    assert aligned.mask_paths == {"a/1.jpg": ["a/i1.png"], "a/2.jpg": ["a/i2.png"]}
    assert aligned.notes == [
        f"{masks.root}/localization.txt: mask ids matched to the split's ids without their first folder "
        "('test/a/1.jpg' -> 'a/1.jpg')"
    ]


@pytest.mark.parametrize(
    ("localization", "matched", "first_id"),
    [
        (FOLDERLESS, [], "test/a/1.jpg"),  # '2.jpg' has no folder: not every id can be stripped
        (AS_WRITTEN, ["a/2.jpg"], "test/a/1.jpg"),  # 'a/2.jpg' matches as written: ids are kept
    ],
    ids=["folderless", "as-written"],
)
def test_mixed_ids_are_left_as_written(tmp_path, localization, matched, first_id):
    masks = _masks(tmp_path, localization)
    kept = align_mask_ids(IMAGE_IDS, masks)
    assert kept is masks and kept.notes == []  # not re-keyed, and no note claiming it was
    assert list(kept.mask_paths) == [first_id, localization.splitlines()[1].split(",")[0]]
    assert _matched(kept) == matched
    # the scorer (which aligns again) names the image left without a mask
    meta = load_metadata(_folder(tmp_path / "split", **SPLIT))
    scorer = Scorer(meta, masks, tmp_path, interval=0.01)
    assert scorer.mask_meta is masks
    with pytest.raises(BagcamsError) as err:
        scorer.add("a/1.jpg", np.zeros((224, 224), np.float32), None)
    assert str(err.value) == f"no mask for image a/1.jpg in {masks.root}/localization.txt"


@pytest.mark.parametrize(
    ("localization", "lacking"), [(FOLDERLESS, 2), (AS_WRITTEN, 1)], ids=["folderless", "as-written"]
)
def test_evaluate_names_the_images_a_mixed_file_leaves_without_masks(cli, tmp_path, localization, lacking):
    """Refused before the run (no model or maps are read), with no stripping note printed."""
    split = _folder(tmp_path / "split", **SPLIT)
    mask_meta = _folder(tmp_path / "mask_meta", localization=localization)
    r = cli("evaluate", "--metadata", split, "--mask-metadata", mask_meta, "--mask-root", tmp_path,
            "--maps", tmp_path / "no_maps")  # fmt: skip
    assert_one_line_error(
        r,
        f"error: {lacking} of 2 images have no mask in {mask_meta}/localization.txt "
        "(first: 'a/1.jpg'; its ids look like 'test/a/1.jpg')",
    )
    assert "note:" not in r.err and "first folder" not in r.err
