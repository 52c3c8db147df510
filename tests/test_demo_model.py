"""The shipped demo model: packing, the shipped weights and record, the training script, and ``demo``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bagcams_deploy.demo_model import (
    DEMO_DATA_SEED,
    DEMO_INPUT_SIZE,
    demo_config,
    load_demo_model,
    load_packed,
    pack_state,
    quantize_per_channel,
    save_packed,
    unpack_state,
    write_demo_checkpoint,
)
from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.models import build_model, load_model
from bagcams_deploy.scenes import CLASS_NAMES, generate_scene, scene_seed
from bagcams_deploy.scenes.train import to_input


def test_per_channel_int8_error_is_half_a_step():
    w = torch.randn(16, 8, 3, 3) * torch.logspace(-3, 1, 16).view(16, 1, 1, 1)
    w[3] = 0.0
    q, scale = quantize_per_channel(w)
    assert q.dtype == np.int8 and scale.shape == (16,) and scale[3] == 1.0 and not q[3].any()
    back = q.astype(np.float32) * scale[:, None, None, None]
    err = np.abs(back - w.numpy()).reshape(16, -1).max(axis=1)
    assert (err <= scale * 0.5 + 1e-12).all()
    assert np.abs(q).max() == 127


def test_pack_round_trip_keeps_non_conv_tensors_exact_and_refuses_other_formats():
    model = build_model("resnet18", 10, seed=3, randomize_batchnorm=True)
    state = {f"extractor.{k}": v for k, v in model.extractor.state_dict().items()}
    back = unpack_state(pack_state(state))
    assert set(back) == set(state)
    for name, t in state.items():
        if t.ndim == 4:
            step = t.abs().amax(dim=(1, 2, 3)).view(-1, 1, 1, 1) / 127
            assert ((back[name] - t).abs() <= step * 0.5 + 1e-7).all(), name
        else:
            assert torch.equal(back[name], t), name
    arrays = pack_state(state)
    arrays["__format__"] = np.array("something-else")
    with pytest.raises(BagcamsError, match="format"):
        unpack_state(arrays)


def test_packed_file_reloads_strictly(tmp_path):
    model = build_model("resnet18", 10, seed=5, randomize_batchnorm=True)
    path = save_packed(model, tmp_path / "m.npz")
    again = load_packed(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), rtol=0.05, atol=0.05)
    with pytest.raises(BagcamsError, match="not found"):
        load_packed(tmp_path / "missing.npz")


def test_shipped_model_is_small_recorded_and_good_enough():
    from bagcams_deploy.demo_model import _asset

    weights = _asset("scenes_resnet18.npz")
    assert weights.stat().st_size <= 20 * 2**20
    cfg = demo_config()
    assert cfg["config"]["data_seed"] == DEMO_DATA_SEED
    assert cfg["class_names"] == list(CLASS_NAMES)
    assert cfg["results"]["test_accuracy_packed"] >= 90.0
    assert cfg["results"]["total_minutes"] <= 60.0


def test_shipped_model_classifies_fresh_scenes():
    """Scenes from the test split beyond the ones it was scored on: never seen in training or testing."""
    model = load_demo_model()
    assert model.class_names == CLASS_NAMES and model.architecture == "resnet18"
    start = demo_config()["config"]["num_test"] + 1000
    scenes = [generate_scene(scene_seed(DEMO_DATA_SEED, "test", start + i), DEMO_INPUT_SIZE) for i in range(20)]
    x = to_input(np.stack([s.image for s in scenes])).contiguous()
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    right = int((pred == np.array([s.label for s in scenes])).sum())
    assert right >= 17, f"{right}/20 fresh scenes classified right"


def test_demo_checkpoint_is_an_ordinary_dawsol_checkpoint(tmp_path):
    path = write_demo_checkpoint(tmp_path / "demo.pth")
    model = load_model(path)
    assert model.architecture == "resnet18" and model.num_classes == len(CLASS_NAMES)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), load_demo_model()(x))


def _old_outputs(folder):
    """Stand-ins for a good earlier model and record, to check a run leaves them alone."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scenes_resnet18.npz").write_bytes(b"old weights")
    (folder / "scenes_resnet18.json").write_text('{"old": true}')
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_training_script_failing_the_bar_leaves_the_old_model_and_record(tmp_path, capsys):
    from bagcams_deploy.scenes.train import main

    old = _old_outputs(tmp_path)
    code = main(["--out-dir", str(tmp_path), "--num-train", "16", "--num-val", "10", "--num-test", "10",
                 "--steps-low", "2", "--steps-high", "1", "--data-seed", "7"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1  # a 3-step run is far below the 90% bar
    assert _contents(tmp_path) == old  # untouched, and no temporary files left
    assert "under the 90%" in err and "not changed" in err and "Traceback" not in err


def _quick_train(monkeypatch, bar=0.0):
    """Replace the long training by an untrained model (and optionally the bar): the script's file handling
    is what is under test."""
    from bagcams_deploy.scenes import train as train_mod

    def fake_train(cfg, log=print):
        model = build_model("resnet18", len(CLASS_NAMES), large_feature_map=True, seed=cfg.init_seed)
        model.class_names = CLASS_NAMES
        history = [{"step": 1, "size": 128, "img_per_s": 1.0}]
        return model.eval(), {"history": history, "timings": {"train_s": 0.0}}

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(train_mod, "ACCURACY_BAR", bar)
    return train_mod


_TINY = ["--num-train", "16", "--num-val", "10", "--num-test", "10", "--steps-low", "2", "--steps-high", "1",
         "--data-seed", "7"]  # fmt: skip


def test_training_script_writes_a_loadable_model_and_its_record(tmp_path, monkeypatch):
    train_mod = _quick_train(monkeypatch)
    _old_outputs(tmp_path)
    assert train_mod.main(["--out-dir", str(tmp_path), *_TINY]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes_resnet18.json", "scenes_resnet18.npz"]
    info = json.loads((tmp_path / "scenes_resnet18.json").read_text())
    assert info["config"]["data_seed"] == 7 and info["config"]["phases"] == [[128, 2], [224, 1]]
    assert 0 <= info["results"]["test_accuracy_packed"] <= 100 and info["results"]["num_test"] == 10
    # every step could only use the 16 training scenes: the record says so
    assert info["config"]["batch_size"] == 16 and info["config"]["num_train"] == 16
    assert info["history_note"] == train_mod.IMG_PER_S and "val" in info["history_note"]
    model = load_packed(tmp_path / "scenes_resnet18.npz")
    assert model.num_classes == len(CLASS_NAMES)


def test_training_loop_refuses_a_batch_larger_than_the_training_set():
    """train() itself: a step could not use the recorded batch_size (the script lowers it to --num-train)."""
    from bagcams_deploy.scenes.train import TrainConfig, train

    cfg = TrainConfig(num_train=12, num_val=10, num_test=10, phases=[(64, 1), (64, 0)], warmup_steps=1)
    with pytest.raises(BagcamsError, match="batch size 32"):
        train(cfg, log=lambda m: None)


def test_training_script_interrupted_after_packing_changes_nothing(tmp_path, monkeypatch, capsys):
    train_mod = _quick_train(monkeypatch)
    old = _old_outputs(tmp_path)
    real_scenes = train_mod._scenes

    def scenes(split, n, seed, size=224):
        if split == "test":  # the packed weights exist by now; the record does not
            raise KeyboardInterrupt
        return real_scenes(split, n, seed, size)

    monkeypatch.setattr(train_mod, "_scenes", scenes)
    assert train_mod.main(["--out-dir", str(tmp_path), *_TINY]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and len(err.strip().splitlines()) == 1, err
    assert _contents(tmp_path) == old


def test_training_script_disk_full_changes_nothing(tmp_path, monkeypatch, capsys):
    import errno

    from bagcams_deploy import demo_model

    train_mod = _quick_train(monkeypatch)
    old = _old_outputs(tmp_path)

    def half_written(file, **arrays):  # what a full disk does: some bytes, then ENOSPC
        (file if hasattr(file, "write") else open(file, "wb")).write(b"PK\x03\x04 truncated")  # noqa: SIM115
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(demo_model.np, "savez_compressed", half_written)
    assert train_mod.main(["--out-dir", str(tmp_path), *_TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "No space left" in err and "Traceback" not in err
    assert _contents(tmp_path) == old


def test_save_packed_is_atomic(tmp_path, monkeypatch):
    from bagcams_deploy import demo_model

    model = build_model("resnet18", 10, seed=5)
    path = save_packed(model, tmp_path / "m.npz")
    good = path.read_bytes()

    def half_written(file, **arrays):
        (file if hasattr(file, "write") else open(file, "wb")).write(b"PK\x03\x04 truncated")  # noqa: SIM115
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo_model.np, "savez_compressed", half_written)
    with pytest.raises(OSError):
        save_packed(model, path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    monkeypatch.undo()
    assert load_packed(path).num_classes == 10


def test_damaged_packed_file_is_a_bagcams_error_naming_it(tmp_path):
    model = build_model("resnet18", 10, seed=5)
    good = save_packed(model, tmp_path / "good.npz").read_bytes()
    no_fc = tmp_path / "no_fc.npz"
    arrays = pack_state({f"extractor.{k}": v for k, v in model.extractor.state_dict().items()})
    np.savez(no_fc, **arrays)
    cases = {"truncated.npz": good[: len(good) // 2], "empty.npz": b"", "text.npz": b"not a zip at all\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "no_fc.npz"]:
        with pytest.raises(BagcamsError, match="not a readable packed model") as info:
            load_packed(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


def test_training_set_larger_than_memory_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    train_mod = _quick_train(monkeypatch)
    monkeypatch.setattr(train_mod, "available_memory", lambda: 8 * 2**30)
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("training started"))
    assert train_mod.main(["--out-dir", str(tmp_path / "o"), "--num-train", "10000000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "GiB" in err and "--num-train" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # the default recipe fits, and where the available memory cannot be told nothing is refused
    assert train_mod.memory_needed(6000, 300, 500) < 2 * 2**30
    monkeypatch.setattr(train_mod, "available_memory", lambda: None)
    train_mod._check_memory(10**9, 1, 1)


def test_demo_command_end_to_end(cli, tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--out", out, "--num-test", "10", "--num-localize", "2", "--skip-bench", "--cam-interval", "0.01")
    assert r.code == 0, r.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verify"]["passed"]
    assert set(summary["evaluation"]) == {"cam", "gradcam", "gradcampp", "pcs", "bagcams"}
    for row in summary["evaluation"].values():
        assert 0 <= row["GT-known Loc"] <= 100 and 0 <= row["PxAP"] <= 100
    assert len(list((out / "localize").glob("*.png"))) == 2
    assert "BagCAMs" in (out / "evaluation.md").read_text()
