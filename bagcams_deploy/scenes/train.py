"""Train the demo WSOL model on generated scenes: ``python -m bagcams_deploy.scenes.train``.

Image-level labels only (as WSOL requires): the network never sees a box or a mask. The recipe is built
for 2 CPU cores and a 60-minute budget: most steps run at a reduced resolution (a resnet18 step at 128 px
costs about a quarter of one at 224 px), then a short phase at the deployment size (224) adapts the
weights and the BatchNorm statistics to it. One cosine learning-rate schedule spans both phases.

The train/val/test scenes are exactly the splits ``write_dataset(root, counts, seed=data_seed)`` writes
(same per-image seeds), so the test split the accuracy is measured on is the one ``demo`` and
``evaluate`` score. Output: the packed weights and a JSON config with the recipe, the data seed, the
timings and the measured accuracies (float and packed), in ``--out-dir``. Both are written to temporary
names and renamed into place together, and only when the packed model reaches the 90% test-accuracy
bar: a failed, interrupted or out-of-space run leaves ``--out-dir`` as it was.

``history[*].img_per_s`` (see ``IMG_PER_S``): images trained per second over the optimizer steps since
the previous record, the validation pass excluded. ``config.batch_size`` is the number of images every
step used (``--num-train`` when that is below 32). The training set lives in memory (about 0.2 MB a
scene), so a ``--num-train`` that needs more than the available memory is refused before any work.

The run is seeded (data, initial weights, shuffling, flips); CPU kernels may still differ in the last
bits between machines, so a rerun elsewhere gives a model of the same quality, not the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..demo_model import DEMO_DATA_SEED
from ..errors import BagcamsError
from ..models import WSOLModel, build_model
from ..preprocessing import MEAN, STD
from .generator import CLASS_NAMES, generate_scene
from .writer import scene_seed

IMG_PER_S = (
    "img_per_s: images trained per second over the optimizer steps since the previous record "
    "(wall time of the training steps only; the validation pass is excluded)"
)
ACCURACY_BAR = 90.0  # % packed test accuracy a demo model needs


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in the output JSON)."""

    data_seed: int = DEMO_DATA_SEED
    num_train: int = 6000
    num_val: int = 300
    num_test: int = 500
    init_seed: int = 0
    architecture: str = "resnet18"
    batch_size: int = 32
    # (input size, optimizer steps) per phase, in order
    phases: list[tuple[int, int]] = field(default_factory=lambda: [(128, 1400), (224, 100)])
    lr: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    threads: int = 2
    eval_every: int = 250

    @property
    def total_steps(self) -> int:
        return sum(s for _, s in self.phases)


def _scenes(split: str, n: int, seed: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """The split's images (N, size, size, 3) uint8 and labels, generated as ``write_dataset`` does."""
    imgs = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        sc = generate_scene(scene_seed(seed, split, i), size, label=i % len(CLASS_NAMES))
        imgs[i], labels[i] = sc.image, sc.label
    return imgs, labels


def _resized(imgs: np.ndarray, size: int) -> np.ndarray:
    if imgs.shape[1] == size:
        return imgs
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in imgs])


_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1)


def to_input(batch: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (channels-last memory, faster on CPU)."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - _MEAN) / _STD).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model: WSOLModel, imgs: np.ndarray, labels: np.ndarray, batch: int = 50) -> float:
    """Top-1 classification accuracy (%) in eval mode."""
    was_training = model.training
    model.eval()
    right = 0
    for i in range(0, len(imgs), batch):
        logits = model(to_input(imgs[i : i + batch]))
        right += int((logits.argmax(1).numpy() == labels[i : i + batch]).sum())
    model.train(was_training)
    return 100.0 * right / len(imgs)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + np.cos(np.pi * min(1.0, t)))


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> tuple[WSOLModel, dict]:
    """Run the recipe; returns the trained float model (eval mode) and the run's record."""
    if not 1 <= cfg.batch_size <= cfg.num_train:
        raise BagcamsError(f"batch size {cfg.batch_size} must be in [1, num_train={cfg.num_train}]")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng([cfg.data_seed, cfg.init_seed])

    train_224, y_train = _scenes("train", cfg.num_train, cfg.data_seed)
    val_224, y_val = _scenes("val", cfg.num_val, cfg.data_seed)
    timings["generate_s"] = time.perf_counter() - t0
    log(f"generated {cfg.num_train} train / {cfg.num_val} val scenes in {timings['generate_s']:.0f}s")

    model = build_model(cfg.architecture, len(CLASS_NAMES), large_feature_map=True, seed=cfg.init_seed)
    model.class_names = CLASS_NAMES
    model = model.to(memory_format=torch.channels_last).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )

    history: list[dict] = []
    step = 0
    for size, steps in cfg.phases:
        data = _resized(train_224, size)
        val = _resized(val_224, size)
        order = rng.permutation(len(data))
        pos = 0
        t_phase = t_window = time.perf_counter()
        seen, loss_sum, right = 0, 0.0, 0
        for k in range(steps):
            if pos + cfg.batch_size > len(order):
                order, pos = rng.permutation(len(data)), 0
            idx = np.sort(order[pos : pos + cfg.batch_size])
            pos += cfg.batch_size
            batch = data[idx]
            flip_h = rng.random(len(idx)) < 0.5
            flip_v = rng.random(len(idx)) < 0.5
            batch = np.where(flip_h[:, None, None, None], batch[:, :, ::-1], batch)
            batch = np.ascontiguousarray(np.where(flip_v[:, None, None, None], batch[:, ::-1], batch))
            x, y = to_input(batch), torch.from_numpy(y_train[idx])
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            right += int((logits.argmax(1) == y).sum())
            if (k + 1) % cfg.eval_every == 0 or k + 1 == steps:
                rate = seen / (time.perf_counter() - t_window)  # see IMG_PER_S: before the val pass
                val_acc = accuracy(model, val, y_val)
                rec = {
                    "step": step,
                    "size": size,
                    "train_loss": loss_sum / seen,
                    "train_acc": 100.0 * right / seen,
                    "val_acc": val_acc,
                    "img_per_s": rate,
                    "elapsed_min": (time.perf_counter() - t0) / 60,
                }
                history.append(rec)
                log(
                    f"step {step}/{cfg.total_steps} @{size}px  loss {rec['train_loss']:.3f}  "
                    f"train {rec['train_acc']:.1f}%  val {val_acc:.1f}%  {rate:.1f} img/s  "
                    f"{rec['elapsed_min']:.1f} min"
                )
                seen, loss_sum, right = 0, 0.0, 0
                t_window = time.perf_counter()
        timings[f"phase_{size}px_s"] = time.perf_counter() - t_phase
    timings["train_s"] = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, {"history": history, "timings": timings}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bagcams_deploy.scenes.train", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="where the packed weights and config go (bagcams_deploy/assets replaces the shipped model)",
    )
    p.add_argument("--data-seed", type=int, default=DEMO_DATA_SEED)
    p.add_argument("--num-train", type=int, default=TrainConfig.num_train)
    p.add_argument("--num-val", type=int, default=TrainConfig.num_val)
    p.add_argument("--num-test", type=int, default=TrainConfig.num_test)
    p.add_argument("--steps-low", type=int, default=None, help="steps of the low-resolution phase")
    p.add_argument("--steps-high", type=int, default=None, help="steps of the 224 px phase")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--float-checkpoint",
        type=Path,
        default=None,
        help="also save the unpacked float model (with the others, only when the bar is met)",
    )
    a = p.parse_args(argv)
    try:
        return _run(a, argv)
    except (BagcamsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"error: out of memory (--num-train {a.num_train}, --num-test {a.num_test}); {a.out_dir} not changed",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; {a.out_dir} not changed", file=sys.stderr)
        return 130


def _check_options(a: argparse.Namespace) -> None:
    """Every option before the long run, not after it."""
    from ..outputs import output_dir, output_file

    for name in ("num_train", "num_val", "num_test", "threads"):
        if getattr(a, name) < 1:
            raise BagcamsError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("steps_low", "steps_high", "data_seed"):
        value = getattr(a, name)
        if value is not None and value < 0:
            raise BagcamsError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if (a.steps_low, a.steps_high) == (0, 0):
        raise BagcamsError("--steps-low 0 --steps-high 0 trains nothing")
    output_dir(a.out_dir, "--out-dir")
    if a.float_checkpoint is not None:
        from ..demo_model import DEMO_CONFIG, DEMO_WEIGHTS

        fixed = {"the packed weights": a.out_dir / DEMO_WEIGHTS, "the record": a.out_dir / DEMO_CONFIG}
        for what, path in fixed.items():  # the same file twice would overwrite one output with the other
            if Path(a.float_checkpoint).absolute() == path.absolute():
                raise BagcamsError(
                    f"--float-checkpoint {a.float_checkpoint} is {what} --out-dir gets; name another file"
                )
        output_file(a.float_checkpoint, "--float-checkpoint", fixed)
    _check_memory(a.num_train, a.num_val, a.num_test)


def _scene_bytes(size: int) -> int:
    return size * size * 3


def memory_needed(num_train: int, num_val: int, num_test: int) -> int:
    """Bytes of the scene arrays the run holds at once: train and val at 224 px plus their low-resolution
    copy (the first phase), then the test split (after training, when the others are freed)."""
    low = TrainConfig().phases[0][0]
    per_scene = _scene_bytes(224) + _scene_bytes(low)
    return max((num_train + num_val) * per_scene, num_test * _scene_bytes(224))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), or None where it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(num_train: int, num_val: int, num_test: int) -> None:
    need, have = memory_needed(num_train, num_val, num_test), available_memory()
    if have is not None and need > have:
        raise BagcamsError(
            f"the scenes alone need {need / 2**30:.1f} GiB of memory (the training scenes are all held in "
            f"memory, about 0.2 MB each), more than the {have / 2**30:.1f} GiB available: lower --num-train"
        )


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    from ..demo_model import DEMO_CONFIG, DEMO_WEIGHTS, load_packed, save_packed

    _check_options(a)
    cfg = TrainConfig(data_seed=a.data_seed, num_train=a.num_train, num_val=a.num_val, num_test=a.num_test,
                      threads=a.threads)  # fmt: skip
    (low, n_low), (high, n_high) = cfg.phases
    steps_low = a.steps_low if a.steps_low is not None else n_low
    steps_high = a.steps_high if a.steps_high is not None else n_high  # 0 means none, not the default
    cfg.phases = [(low, steps_low), (high, steps_high)]

    def log(msg: str) -> None:
        print(msg, flush=True)

    if cfg.batch_size > cfg.num_train:
        log(f"batch size {cfg.num_train}, not {cfg.batch_size}: --num-train is below it")
        cfg.batch_size = cfg.num_train  # what every step then uses, and what the record says

    t0 = time.perf_counter()
    model, record = train(cfg, log)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    final = {"weights": a.out_dir / DEMO_WEIGHTS, "config": a.out_dir / DEMO_CONFIG}
    if a.float_checkpoint:
        final["float"] = a.float_checkpoint
    staged = {k: p.with_name(f".{p.name}.{k}.{os.getpid()}.staged") for k, p in final.items()}
    try:
        weights = save_packed(model, staged["weights"])
        packed = load_packed(weights, class_names=CLASS_NAMES)
        test, y_test = _scenes("test", cfg.num_test, cfg.data_seed)
        acc_float = accuracy(model, test, y_test)
        acc_packed = accuracy(packed, test, y_test)
        del test
        total_min = (time.perf_counter() - t0) / 60
        size_mb = weights.stat().st_size / 1e6
        log(f"test accuracy at 224 px on {cfg.num_test} scenes: float {acc_float:.2f}%, packed int8 {acc_packed:.2f}%")
        if acc_packed < ACCURACY_BAR:
            print(f"error: the packed model reached {acc_packed:.2f}% test accuracy, under the {ACCURACY_BAR:.0f}% a "
                  f"demo model needs: train longer (--steps-low/--steps-high); {a.out_dir} not changed",
                  file=sys.stderr)  # fmt: skip
            return 1
        info = _record(cfg, record, acc_float, acc_packed, total_min, argv)
        staged["config"].write_text(json.dumps(info, indent=2) + "\n")
        if "float" in staged:
            from ..models import save_checkpoint

            save_checkpoint(model, staged["float"])
        _replace_together([(staged[k], final[k]) for k in final])
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    log(f"total {total_min:.1f} min; weights {final['weights']} ({size_mb:.1f} MB), record {final['config']}")
    return 0


def _record(cfg: TrainConfig, record: dict, acc_float: float, acc_packed: float, total_min: float,
            argv: list[str] | None) -> dict:  # fmt: skip
    return {
        "model": {"architecture": cfg.architecture, "large_feature_map": True, "num_classes": len(CLASS_NAMES)},
        "class_names": list(CLASS_NAMES),
        "input_size": 224,
        "config": asdict(cfg),
        "results": {
            "test_accuracy_float": acc_float,
            "test_accuracy_packed": acc_packed,
            "num_test": cfg.num_test,
            "total_minutes": total_min,
            **record["timings"],
        },
        "history": record["history"],
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
            "threads": cfg.threads,
        },
        "command": "python -m bagcams_deploy.scenes.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "weights_format": "int8 per output channel (conv), float32 otherwise; see bagcams_deploy/demo_model.py",
        "history_note": IMG_PER_S,
    }


def _replace_together(moves: list[tuple[Path, Path]]) -> None:
    """``os.replace`` each (staged, final) pair with Ctrl-C held off, so the files change together.

    An interrupt that arrives meanwhile is taken after the last rename (the run has finished by then)."""
    held: list[int] = []
    previous = None
    with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        for src, dst in moves:
            os.replace(src, dst)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held:
        print("note: interrupt received while the files were renamed into place; they were all written",
              file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
