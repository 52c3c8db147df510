"""The README calls ``bagcams_deploy/assets/scenes_resnet18.npz`` the shipped model: every command that
takes a checkpoint takes it as it is (a new user's first ``info`` on it failed), with its class names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bagcams_deploy
from bagcams_deploy.demo_model import DEMO_WEIGHTS, load_demo_model, save_packed
from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.models import build_model, load_model, save_checkpoint
from bagcams_deploy.scenes import CLASS_NAMES
from tests.conftest import run_cli

SHIPPED = str(Path(bagcams_deploy.__file__).parent / "assets" / DEMO_WEIGHTS)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_shipped_weights_load_as_the_demo_model_with_class_names():
    model = load_model(SHIPPED)
    assert _same_weights(model, load_demo_model())
    assert model.class_names == tuple(CLASS_NAMES) and not model.training
    r = run_cli("info", SHIPPED)
    assert r.code == 0, r.err
    assert "resnet18 (large_feature_map=True)" in r.out and CLASS_NAMES[0] in r.out


def test_other_packed_weights_load_without_names_and_claims_are_checked(tmp_path):
    model = build_model("resnet18", 4, seed=9, randomize_batchnorm=True)
    path = save_packed(model, tmp_path / "mine.npz")
    again = load_model(path)
    assert again.class_names is None and again.num_classes == 4
    assert load_model(path, "resnet18", 4, True).num_classes == 4
    for kwargs, what in (({"architecture": "resnet50"}, "architecture resnet50"), ({"num_classes": 5}, "classes 5")):
        with pytest.raises(BagcamsError, match=f"packed weights of a resnet18 with 4 classes.*; {what} was asked"):
            load_model(path, **kwargs)


def test_a_torch_checkpoint_named_npz_still_loads_as_one(tmp_path):
    model = build_model("resnet18", 3, seed=2)
    path = save_checkpoint(model, tmp_path / "odd.npz")
    assert _same_weights(load_model(path), model)


def test_localize_takes_the_shipped_weights(tmp_path):
    from PIL import Image

    Image.new("RGB", (90, 70), (200, 40, 40)).save(tmp_path / "a.png")
    r = run_cli("localize", str(tmp_path / "a.png"), "--model", SHIPPED, "--out", str(tmp_path / "out"))
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "boxes.json").is_file()
