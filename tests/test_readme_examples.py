"""The README's library example runs as printed (only its two file names swapped for test files), its
comment's output names are the backend's, and the entry points it names exist: a renamed function
must fail here, not in a user's first session."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _library_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]


def _python_block(section: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Library section should hold one python example"
    return blocks[0]


def test_the_library_example_runs_and_its_map_is_the_references(checkpoints, tmp_path, monkeypatch):
    code = _python_block(_library_section())
    assert '"dawsol_resnet50_cub.pth"' in code and '"bird.jpg"' in code
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (150, 190, 3), dtype=np.uint8)).save(tmp_path / "bird.jpg")
    code = code.replace('"dawsol_resnet50_cub.pth"', repr(str(checkpoints["resnet18"])))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own code

    out, ref = scope["out"], scope["ref"]
    promised = re.search(r"# \{(.*?)\}", code).group(1)
    assert set(out) == {name.strip().strip('"') for name in promised.split(",")}
    assert out["cam"].shape == (1, 1, 224, 224) and np.isfinite(out["cam"]).all()
    assert (tmp_path / "bagcams.onnx").is_file()
    pearson = np.corrcoef(out["cam"].ravel(), ref.maps.numpy().ravel())[0, 1]
    assert pearson > 0.999, pearson
    assert int(out["class_id_used"][0]) == int(scope["model"](scope["x"]).argmax(1)[0])


def test_the_other_entry_points_the_readme_names_exist():
    section = _library_section()
    names = re.findall(r"`(bagcams_deploy(?:\.\w+)+)`", section)
    names += [f"bagcams_deploy.evaluation.{n}" for n in re.findall(r"`(\w+Evaluator|load_metadata)`", section)]
    assert len(names) >= 7, names
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        try:
            obj = importlib.import_module(dotted)
        except ModuleNotFoundError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, f"README names {dotted}, which does not exist"


def _metadata_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n### What `evaluate --metadata` reads\n", 1)[1].split("\n## ", 1)[0]


def _readme_metadata_files() -> dict[str, list[str]]:
    """The README's example files, from its ``head``-style block: ``{relative path: lines}``."""
    blocks = re.findall(r"```text\n(.*?)```", _metadata_section(), flags=re.S)
    assert len(blocks) == 1, "the metadata section should hold one example block"
    files: dict[str, list[str]] = {}
    current = None
    for line in blocks[0].splitlines():
        header = re.fullmatch(r"==> (.+) <==", line)
        if header:
            current = files.setdefault(header.group(1), [])
        elif line:
            assert current is not None, f"a line before the first file header: {line!r}"
            current.append(line)
    return files


def test_the_metadata_example_is_what_evaluate_reads(cli, checkpoints, tmp_path, monkeypatch):
    """The README's example folders, written line for line, load as described and evaluate as printed:
    precomputed maps equal to the GT masks score PxAP 100, the CUBMask ids lose their extra folder, and
    the same lines as an OpenImages split (masks in its own localization.txt) score the same."""
    from bagcams_deploy.evaluation import load_mask_metadata, load_metadata

    files = _readme_metadata_files()
    split = {f"metadata/test/{n}.txt" for n in ("image_ids", "class_labels", "image_sizes", "localization")}
    assert set(files) == split | {"masks/test/localization.txt"}
    for rel, lines in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("\n".join(lines) + "\n")
    meta = load_metadata(tmp_path / "metadata/test")
    ids = files["metadata/test/image_ids.txt"]
    assert meta.kind == "boxes" and meta.image_ids == ids
    boxes = [line.split(",") for line in files["metadata/test/localization.txt"]]
    assert sum(len(v) for v in meta.boxes.values()) == len(boxes) == 3
    assert meta.boxes[ids[0]][1] == tuple(int(v) for v in boxes[1][1:])
    assert meta.image_sizes[ids[1]] == (100, 100) and meta.class_labels == {ids[0]: 0, ids[1]: 1}
    masks = load_mask_metadata(tmp_path / "masks/test")
    assert masks.kind == "masks" and masks.ignore_paths["CUB/test/bird2.jpg"] is None

    # the mask files the lines name (224x224: no resizing to reason about), and maps equal to them
    rng = np.random.default_rng(0)
    fg: dict[str, np.ndarray] = {i: np.zeros((224, 224), bool) for i in ids}
    for line in files["masks/test/localization.txt"]:
        image_id, mask, ignore = line.split(",")
        image_id = image_id.split("/", 1)[1]  # the CUBMask extra folder
        y, x = rng.integers(20, 120, 2)
        m = np.zeros((224, 224), np.uint8)
        m[y : y + 80, x : x + 60] = 255
        fg[image_id] |= m > 0
        for name, pixels in ((mask, m), (ignore, np.pad(np.full((10, 10), 255, np.uint8), ((0, 214), (0, 214))))):
            if name:
                (tmp_path / "mask_files" / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(tmp_path / "mask_files" / name)
    for image_id in ids:
        (tmp_path / "maps" / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "maps" / f"{image_id}.npy", fg[image_id].astype(np.float32))

    monkeypatch.chdir(tmp_path)
    command = re.findall(r"```sh\n(.*?)```", _metadata_section(), flags=re.S)[0].replace("\\\n", " ").split()
    assert command[:2] == ["bagcams-deploy", "evaluate"] and command[2:4] == ["--model", "model.onnx"]
    args = [*command[4:], "--cam-interval", "0.01"]
    r = cli("evaluate", "--maps", "maps", *[a for a in args if a not in ("--data-root", "images")],
            "--report", "r.json")  # fmt: skip
    assert r.code == 0, r.err
    assert "without their first folder" in r.err
    run = next(iter(json.loads((tmp_path / "r.json").read_text())["runs"].values()))
    assert run["count"] == 2 and run["summary"]["PxAP"] == pytest.approx(100.0)
    assert run["summary"]["MaxBoxAccV2"] is not None

    # as an OpenImages split: the same ids and labels, the mask lines in its own localization.txt
    oi = tmp_path / "openimages"
    oi.mkdir()
    for name in ("image_ids", "class_labels"):
        (oi / f"{name}.txt").write_text((tmp_path / f"metadata/test/{name}.txt").read_text())
    lines = [line.split("/", 1)[1] for line in files["masks/test/localization.txt"]]
    (oi / "localization.txt").write_text("\n".join(lines) + "\n")
    r = cli("evaluate", "--maps", "maps", "--metadata", oi, "--mask-root", "mask_files", "--cam-interval", "0.01",
            "--report", "oi.json")  # fmt: skip
    assert r.code == 0, r.err
    summary = next(iter(json.loads((tmp_path / "oi.json").read_text())["runs"].values()))["summary"]
    assert summary["PxAP"] == pytest.approx(100.0) and summary["MaxBoxAccV2"] is None

    # and the printed command itself, with a checkpoint for model.onnx and images of the listed sizes
    for image_id in ids:
        w, h = meta.image_sizes[image_id]
        (tmp_path / "images" / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / image_id)
    command[command.index("model.onnx")] = str(checkpoints["resnet18"])
    r = cli(*command[1:], "--cam-interval", "0.01")
    assert r.code == 0, r.err
