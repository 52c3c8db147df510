"""Load DA-WSOL / wsolevaluation checkpoints strictly and safely.

A checkpoint is untrusted input: it is read with ``torch.load(..., weights_only=True)``, which
unpickles tensors and plain containers only and never executes code from the file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..errors import BagcamsError
from .wsol import ARCHITECTURES, WSOLModel

EXTRACTOR_KEY = "state_dict_extractor"
CLASSIFIER_KEY = "state_dict_classifier"
META_KEY = "bagcams_meta"  # optional: {"architecture", "large_feature_map", "class_names"}


def check_checkpoint_file(path: str | Path) -> None:
    """That the checkpoint file is there (no folder): what a command checks before its other options,
    and what :func:`load_model` checks first."""
    path = Path(path)
    if not path.exists():
        raise BagcamsError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise BagcamsError(f"checkpoint path is a directory, not a file: {path}")


def _read(path: Path) -> object:
    check_checkpoint_file(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except PermissionError:
        raise BagcamsError(f"checkpoint is not readable (permission denied): {path}") from None
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise BagcamsError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise BagcamsError(f"checkpoint is not readable (permission denied): {path}") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BagcamsError(f"{path} is not a PyTorch checkpoint ({msg})") from None
    except Exception as exc:  # pickle.UnpicklingError from weights_only: code or foreign objects
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise BagcamsError(
            f"{path} is refused: it holds pickled objects other than tensors, and loading it would run code"
            + (f" ({detail[:120]})" if detail else "")
            + "; re-save it as a plain state dict"
        ) from None


def _strip_module(sd: Mapping[str, object]) -> dict[str, object]:
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:
        raise BagcamsError(f"state dict key {odd[0]!r} is not a tensor name (a {type(odd[0]).__name__})")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def _shape(v: object) -> str:
    return str(tuple(v.shape)) if isinstance(v, Tensor) else f"(a {type(v).__name__}, not a tensor)"


def split_state_dicts(obj: object, path: Path | str = "checkpoint") -> tuple[dict, dict, dict]:
    """Return (extractor, classifier, meta) state dicts from any accepted checkpoint layout."""
    if not isinstance(obj, Mapping):
        raise BagcamsError(f"{path} holds a {type(obj).__name__}, not a state dict or DA-WSOL checkpoint")
    meta = dict(obj.get(META_KEY, {}) or {}) if isinstance(obj.get(META_KEY, {}), Mapping) else {}
    if EXTRACTOR_KEY in obj or CLASSIFIER_KEY in obj:
        for key in (EXTRACTOR_KEY, CLASSIFIER_KEY):
            if key not in obj or not isinstance(obj[key], Mapping):
                raise BagcamsError(f"{path}: DA-WSOL checkpoint without a '{key}' state dict")
        return _strip_module(obj[EXTRACTOR_KEY]), _strip_module(obj[CLASSIFIER_KEY]), meta
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    flat = _strip_module(obj)
    tensors = {k: v for k, v in flat.items() if isinstance(v, Tensor)}
    if not tensors:
        raise BagcamsError(f"{path} contains no tensors: not a checkpoint")
    extractor, classifier = {}, {}
    for k, v in tensors.items():
        if k.startswith("extractor."):
            extractor[k[len("extractor.") :]] = v
        elif k.startswith("classifier."):
            classifier[k[len("classifier.") :]] = v
        elif k.startswith("fc."):
            classifier[k] = v
        else:
            extractor[k] = v
    return extractor, classifier, meta


def infer_architecture(extractor_sd: Mapping[str, object]) -> str:
    """The architecture whose extractor key set matches best (exact match first)."""
    keys = set(extractor_sd)
    best, best_score = None, -1.0
    for name in ARCHITECTURES:
        expected = set(WSOLModel(name, 1).extractor.state_dict())
        if keys == expected:
            return name
        score = len(keys & expected) / max(len(keys | expected), 1)
        if score > best_score:
            best, best_score = name, score
    if best is None or best_score < 0.5:
        raise BagcamsError(
            "cannot recognise the architecture from the checkpoint's tensor names; "
            f"pass --arch (valid: {', '.join(ARCHITECTURES)})"
        )
    return best


def _describe_names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_state_strict(module: torch.nn.Module, sd: Mapping[str, object], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names missing/extra/mis-shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    bad_shape = [
        f"{k} {_shape(sd[k])} != expected {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(sd))
        if not isinstance(sd[k], Tensor) or tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_describe_names(missing)}")
    if extra:
        problems.append(f"unexpected {_describe_names(extra)}")
    if bad_shape:
        problems.append(f"mis-shaped {_describe_names(bad_shape, 3)}")
    if problems:
        raise BagcamsError(f"{what} does not match: " + "; ".join(problems))
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise BagcamsError(f"{what}: tensor {k} contains NaN or Inf")
        if k.endswith("running_var") and (v < 0).any():
            raise BagcamsError(f"{what}: tensor {k} has negative entries (a BatchNorm variance is >= 0)")
    module.load_state_dict({k: v for k, v in sd.items()}, strict=True)


def _checked_meta(meta: Mapping | None, source: str) -> dict:
    """The optional ``bagcams_meta`` entry, with each known field of the type it must have."""
    meta = dict(meta or {})
    kinds = {"architecture": str, "large_feature_map": bool, "class_names": (list, tuple)}
    for key, kind in kinds.items():
        if key in meta and meta[key] is not None and not isinstance(meta[key], kind):
            name = kind.__name__ if isinstance(kind, type) else "list"
            raise BagcamsError(f"{source}: {META_KEY}[{key!r}] must be a {name}, got {meta[key]!r}"[:300])
    return meta


def model_from_state_dicts(
    extractor_sd: Mapping[str, object],
    classifier_sd: Mapping[str, object],
    meta: Mapping[str, object] | None = None,
    architecture: str | None = None,
    num_classes: int | None = None,
    large_feature_map: bool | None = None,
    source: str = "checkpoint",
) -> WSOLModel:
    meta = _checked_meta(meta, source)
    arch = architecture or meta.get("architecture") or infer_architecture(extractor_sd)
    if arch not in ARCHITECTURES:
        raise BagcamsError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    fc = classifier_sd.get("fc.weight")
    if not isinstance(fc, Tensor) or fc.dim() != 4:
        raise BagcamsError(f"{source}: classifier has no 1x1-conv 'fc.weight' [C,K,1,1]; cannot infer classes")
    inferred = int(fc.shape[0])
    classes = num_classes if num_classes is not None else inferred
    if classes != inferred:
        raise BagcamsError(f"{source}: --num-classes {classes} but fc.weight has {inferred} classes")
    lfm = large_feature_map if large_feature_map is not None else bool(meta.get("large_feature_map", True))
    names = meta.get("class_names")
    class_names = tuple(str(n) for n in names) if isinstance(names, list | tuple) and len(names) == classes else None
    notes: list[str] = []
    if isinstance(names, list | tuple) and class_names is None:  # still loads: names are a label, not the model
        count = f"{len(names)} class names for {classes} classes"
        notes.append(f"{source}: {META_KEY} has {count}; ignored (outputs say 'class N')")
    model = WSOLModel(arch, classes, lfm, class_names=class_names)
    load_state_strict(model.extractor, extractor_sd, f"{source}: extractor ({arch})")
    load_state_strict(model.classifier, classifier_sd, f"{source}: classifier")
    model.load_notes = tuple(notes)  # what loading ignored, for a caller (the CLI) to report as note: lines
    return model.eval()


def load_model(
    path: str | Path,
    architecture: str | None = None,
    num_classes: int | None = None,
    large_feature_map: bool | None = None,
) -> WSOLModel:
    """Load a checkpoint file (a DA-WSOL dict or plain state dict) into an eval-mode :class:`WSOLModel`;
    the demo's packed ``.npz`` weights load too.

    Architecture and number of classes are inferred from the tensors unless given. Loading is strict:
    any missing, unexpected or mis-shaped tensor is an error naming it. Optional metadata that cannot
    be used (class names whose count is not the class count) is dropped, and ``model.load_notes``
    says so in one line each.
    """
    if not isinstance(path, str | os.PathLike):  # Path() of a state dict is a TypeError traceback
        what = "a state dict" if isinstance(path, Mapping) else f"a {type(path).__name__}"
        raise BagcamsError(
            f"load_model takes a checkpoint file path, got {what}: save it with torch.save (or "
            "models.save_checkpoint) and pass the file"
        )
    path = Path(path)
    from ..demo_model import is_packed

    if path.is_file() and is_packed(path):
        return _load_packed(path, architecture, num_classes, large_feature_map)
    extractor_sd, classifier_sd, meta = split_state_dicts(_read(path), path)
    return model_from_state_dicts(
        extractor_sd, classifier_sd, meta, architecture, num_classes, large_feature_map, source=str(path)
    )


def _load_packed(
    path: Path, architecture: str | None, num_classes: int | None, large_feature_map: bool | None
) -> WSOLModel:
    """The demo's packed weights (``bagcams_deploy/assets/scenes_resnet18.npz``, what ``train.py``
    writes) load like a checkpoint, so every command takes the shipped model as it is; what the
    caller asserts about the model is checked, as for a checkpoint."""
    from ..demo_model import load_packed_model

    model = load_packed_model(path)
    wanted = {"architecture": architecture, "classes": num_classes, "large_feature_map": large_feature_map}
    have = {
        "architecture": model.architecture,
        "classes": model.num_classes,
        "large_feature_map": model.large_feature_map,
    }
    for key, value in wanted.items():
        if value is not None and value != have[key]:
            got = (
                f"{have['architecture']} with {have['classes']} classes, large_feature_map {have['large_feature_map']}"
            )
            raise BagcamsError(f"{path}: packed weights of a {got}; {key} {value} was asked for")
    return model


def save_checkpoint(
    model: WSOLModel, path: str | Path, module_prefix: bool = False, extra: Mapping[str, object] | None = None
) -> Path:
    """Write a DA-WSOL-format checkpoint (what the published training code saves)."""

    def prefixed(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {("module." + k if module_prefix else k): v for k, v in sd.items()}

    obj: dict[str, object] = {
        EXTRACTOR_KEY: prefixed(model.extractor.state_dict()),
        CLASSIFIER_KEY: prefixed(model.classifier.state_dict()),
        META_KEY: {
            "architecture": model.architecture,
            "large_feature_map": model.large_feature_map,
            "class_names": list(model.class_names) if model.class_names else None,
        },
    }
    obj.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path
