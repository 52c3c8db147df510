"""The README's library example runs as printed (only its two file names swapped for test files), its
comment's output names are the backend's, and the entry points it names exist: a renamed function
must fail here, not in a user's first session."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
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
