"""Models match the DA-WSOL checkpoint manifest; the loader is strict, safe and explains itself."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.models import build_model, load_model, save_checkpoint
from bagcams_deploy.models.checkpoint import CLASSIFIER_KEY, EXTRACTOR_KEY


def manifest() -> dict:
    return json.loads(resources.files("bagcams_deploy.data").joinpath("dawsol_checkpoint_manifest.json").read_text())


@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_state_dict_names_and_shapes_match_manifest(arch):
    spec = manifest()[arch]
    model = build_model(arch, spec["num_classes"], large_feature_map=spec["large_feature_map"])
    got = {k: list(v.shape) for k, v in model.extractor.state_dict().items()}
    assert got == spec["extractor"]
    assert {k: list(v.shape) for k, v in model.classifier.state_dict().items()} == spec["classifier"]


@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_manifest_checkpoint_loads_strictly_and_layer_shapes_match(arch, tmp_path):
    """A checkpoint written from the manifest alone (DataParallel names) loads and gives its shapes."""
    spec = manifest()[arch]
    gen = torch.Generator().manual_seed(3)
    fake = {
        EXTRACTOR_KEY: {"module." + k: torch.randn(v, generator=gen).abs() + 0.5 for k, v in spec["extractor"].items()},
        CLASSIFIER_KEY: {"module." + k: torch.randn(v, generator=gen) * 0.01 for k, v in spec["classifier"].items()},
        "state_dict_domain_classifier": {"w": torch.zeros(1)},
        "epoch": 12,
    }
    fake[EXTRACTOR_KEY] = {
        k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in fake[EXTRACTOR_KEY].items()
    }
    path = tmp_path / "ckpt.pth.tar"
    torch.save(fake, path)
    model = load_model(path)
    d = model.describe()
    assert d.architecture == arch and d.num_classes == spec["num_classes"]
    with torch.no_grad():
        for layer, shape in spec["layer_output_shapes_at_224"].items():
            f, logits = model.features_and_logits(torch.zeros(1, 3, 224, 224), layer)
            assert list(f.shape[1:]) == shape[1:]
            assert logits.shape == (1, spec["num_classes"])


@pytest.mark.parametrize("prefix", [False, True])
def test_checkpoint_round_trip_reproduces_outputs(models, tmp_path, prefix):
    model = models["resnet50"]
    path = save_checkpoint(model, tmp_path / "m.pth", module_prefix=prefix)
    loaded = load_model(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.architecture == "resnet50" and loaded.num_classes == 7


def test_plain_state_dict_is_accepted(models, tmp_path):
    model = models["resnet18"]
    sd = {**model.extractor.state_dict(), **model.classifier.state_dict()}
    torch.save(sd, tmp_path / "plain.pt")
    loaded = load_model(tmp_path / "plain.pt")
    assert loaded.architecture == "resnet18"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_architecture_and_classes_can_be_overridden_and_are_checked(checkpoints):
    assert load_model(checkpoints["resnet18"], architecture="resnet18", num_classes=7).num_classes == 7
    with pytest.raises(BagcamsError, match=r"--num-classes 9 but fc\.weight has 7 classes"):
        load_model(checkpoints["resnet18"], num_classes=9)
    with pytest.raises(BagcamsError, match=r"extractor \(resnet50\) does not match: missing .*conv3"):
        load_model(checkpoints["resnet18"], architecture="resnet50")
    with pytest.raises(BagcamsError, match="unknown architecture 'vgg16'; valid: resnet50, resnet18, inception_v3"):
        load_model(checkpoints["resnet18"], architecture="vgg16")


def _ckpt(model):
    return {
        EXTRACTOR_KEY: dict(model.extractor.state_dict()),
        CLASSIFIER_KEY: dict(model.classifier.state_dict()),
    }


def test_missing_extra_and_misshaped_tensors_are_named(models, tmp_path):
    base = _ckpt(models["resnet18"])
    missing = _ckpt(models["resnet18"])
    del missing[EXTRACTOR_KEY]["layer2.1.bn2.running_var"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(BagcamsError, match=r"missing layer2\.1\.bn2\.running_var"):
        load_model(tmp_path / "missing.pth")
    extra = _ckpt(models["resnet18"])
    extra[EXTRACTOR_KEY]["layer9.weight"] = torch.zeros(3)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(BagcamsError, match=r"unexpected layer9\.weight"):
        load_model(tmp_path / "extra.pth")
    bad = _ckpt(models["resnet18"])
    bad[EXTRACTOR_KEY]["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BagcamsError, match=r"mis-shaped conv1.weight \(64, 3, 5, 5\) != expected \(64, 3, 7, 7\)"):
        load_model(tmp_path / "bad.pth")
    nan = _ckpt(models["resnet18"])
    nan[CLASSIFIER_KEY]["fc.bias"] = torch.full_like(base[CLASSIFIER_KEY]["fc.bias"], float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(BagcamsError, match=r"fc\.bias contains NaN"):
        load_model(tmp_path / "nan.pth")


def test_unreadable_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(BagcamsError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(BagcamsError, match="is not a PyTorch checkpoint"):
        load_model(tmp_path / "text.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(BagcamsError, match="holds a list, not a state dict"):
        load_model(tmp_path / "list.pth")
    torch.save({"a": 1}, tmp_path / "empty.pth")
    with pytest.raises(BagcamsError, match="contains no tensors"):
        load_model(tmp_path / "empty.pth")
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(BagcamsError, match="is a directory"):
        load_model(tmp_path / "dir.pth")


class Payload:
    """Unpickling this would import and run test code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    torch.save({EXTRACTOR_KEY: Payload(), CLASSIFIER_KEY: {}}, tmp_path / "evil.pth")
    with pytest.raises(BagcamsError, match="refused: it holds pickled objects other than tensors"):
        load_model(tmp_path / "evil.pth")
    assert "code ran" not in capsys.readouterr().out


def test_describe_lists_target_layers_and_channels(models):
    d = models["inception_v3"].describe()
    assert d.default_target_layer == "SPG_A3_1b" and d.last_layer == "SPG_A3_2b"
    assert d.layer_channels["Mixed_6e"] == 768 and d.layer_channels["SPG_A3_1b"] == 1024
    r = models["resnet50"].describe()
    assert r.layer_channels == {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert r.parameter_count == sum(p.numel() for p in models["resnet50"].parameters())


@pytest.mark.parametrize(
    ("arch", "layer", "large", "side"),
    [("inception_v3", "Mixed_6a", True, 28), ("inception_v3", "Mixed_6a", False, 14),
     ("inception_v3", "SPG_A3_2b", False, 14), ("resnet50", "layer3", True, 28), ("resnet50", "layer3", False, 14),
     ("resnet50", "layer4", False, 14)],
)  # fmt: skip
def test_small_feature_map_downsamples_once_more(arch, layer, large, side):
    """SPEC: without the large map ResNet's layer3 has stride 2 and Inception gains one max-pool before
    Mixed_6a (whose stride stays 1): both halve the 28x28 map once, to 14x14 at 224 input."""
    model = build_model(arch, 5, large_feature_map=large)
    with torch.no_grad():
        f, _ = model.features_and_logits(torch.zeros(1, 3, 224, 224), layer)
    assert tuple(f.shape[2:]) == (side, side)
