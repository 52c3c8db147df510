"""The shipped demo model: a resnet18 WSOL classifier trained here on generated scenes.

Why packed: the float32 weights are ~45 MB and the package must stay small, so the checkpoint ships as
per-output-channel symmetric int8 convolution weights with float32 scales (BatchNorm and classifier
bias stay float32), in a plain ``.npz`` (no pickle: loading it runs no code). The *shipped model is the
dequantized one*: the training script measures its test accuracy after packing, and every demo number
comes from exactly these weights.

The training recipe, data seed and measured accuracies live beside it in ``scenes_resnet18.json``
(written by ``python -m bagcams_deploy.scenes.train``).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import BagcamsError
from .models import WSOLModel
from .models.checkpoint import save_checkpoint
from .outputs import write_atomically

DEMO_ARCHITECTURE = "resnet18"
DEMO_INPUT_SIZE = 224
DEMO_DATA_SEED = 2022  # the scenes data seed the shipped model was trained and tested on
DEMO_WEIGHTS = "scenes_resnet18.npz"
DEMO_CONFIG = "scenes_resnet18.json"
_FORMAT = "bagcams-int8-per-channel-v1"
_QMAX = 127.0


def _asset(name: str) -> Path:
    return Path(str(resources.files("bagcams_deploy") / "assets" / name))


def quantize_per_channel(weight: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: ``w ~= q * scale[:, None, ...]``; all-zero rows get scale 1."""
    w = weight.detach().to(torch.float32).cpu().numpy()
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(flat > 0, flat / _QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -_QMAX, _QMAX).astype(np.int8)
    return q, scale


def pack_state(state: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Arrays for ``np.savez``: conv weights (ndim 4) as int8+scale, everything else float32/int64 as is."""
    out: dict[str, np.ndarray] = {"__format__": np.array(_FORMAT)}
    for name, t in state.items():
        if t.dtype.is_floating_point and t.ndim == 4:
            q, s = quantize_per_channel(t)
            out[f"q8::{name}"] = q
            out[f"scale::{name}"] = s
        else:
            out[f"raw::{name}"] = t.detach().cpu().numpy()
    return out


def unpack_state(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Inverse of :func:`pack_state` (dequantized float32 tensors)."""
    fmt = str(arrays["__format__"]) if "__format__" in arrays else None
    if fmt != _FORMAT:
        raise BagcamsError(f"packed weights have format {fmt!r}; expected {_FORMAT!r}")
    state: dict[str, Tensor] = {}
    for key in arrays:
        kind, _, name = key.partition("::")
        if kind == "q8":
            q = arrays[key].astype(np.float32)
            s = arrays[f"scale::{name}"].astype(np.float32)
            state[name] = torch.from_numpy(q * s.reshape(-1, *([1] * (q.ndim - 1))))
        elif kind == "raw":
            state[name] = torch.from_numpy(np.array(arrays[key]))
    return state


def save_packed(model: WSOLModel, path: str | Path) -> Path:
    """Write the model's extractor+classifier state as a packed ``.npz``.

    Atomic: the archive goes to a temporary file beside ``path`` that replaces it only once complete, so
    an interruption or a full disk leaves the previous file (or none), never a truncated one.
    """
    state = {f"extractor.{k}": v for k, v in model.extractor.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    path = Path(path)
    with write_atomically(path) as f:  # a file object: np.savez would append ".npz" to a name without it
        np.savez_compressed(f, **pack_state(state))
    return path


# What a damaged or foreign file raises on the way in: a truncated or non-zip file (BadZipFile,
# EOFError, ValueError from np.load), a corrupt member (zlib.error), a missing array (KeyError), or
# an unreadable file (OSError).
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError)


def load_packed(path: str | Path, class_names: tuple[str, ...] | None = None) -> WSOLModel:
    """Rebuild the eval-mode resnet18 from a packed ``.npz`` (strict: every tensor must be present)."""
    from .models.checkpoint import load_state_strict

    path = Path(path)
    if not path.is_file():
        raise BagcamsError(f"packed weights not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            state = unpack_state({k: z[k] for k in z.files})
        n_cls = int(state["classifier.fc.weight"].shape[0])
    except _UNREADABLE as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, KeyError):
            detail = f"missing array {detail}"
        raise BagcamsError(f"{path}: not a readable packed model ({detail}); rewrite or reinstall it") from None
    model = WSOLModel(DEMO_ARCHITECTURE, n_cls, large_feature_map=True, class_names=class_names)
    ext = {k.removeprefix("extractor."): v for k, v in state.items() if k.startswith("extractor.")}
    cls = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
    load_state_strict(model.extractor, ext, f"{path}: extractor")
    load_state_strict(model.classifier, cls, f"{path}: classifier")
    return model.eval()


def is_packed(path: Path) -> bool:
    """Whether ``path`` is a packed ``.npz`` (a zip of ``.npy`` arrays), not a torch.save zip, whose
    members are ``archive/data.pkl`` and storages."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def load_packed_model(path: str | Path) -> WSOLModel:
    """A packed ``.npz`` as a model: the shipped file with its class names (the packed format holds
    tensors only), any other with none."""
    path = Path(path)
    shipped = _asset(DEMO_WEIGHTS)
    if shipped.is_file() and path.resolve() == shipped.resolve():
        return load_demo_model()
    return load_packed(path)


def demo_config() -> dict:
    """The training config and measured results recorded next to the shipped weights."""
    path = _asset(DEMO_CONFIG)
    if not path.is_file():
        raise BagcamsError(f"the demo model's config is missing from this installation: {path}")
    return json.loads(path.read_text())


def load_demo_model() -> WSOLModel:
    """The shipped scene model (dequantized), with its class names."""
    from .scenes import CLASS_NAMES

    weights = _asset(DEMO_WEIGHTS)
    if not weights.is_file():
        raise BagcamsError(f"the demo model's weights are missing from this installation: {weights}")
    return load_packed(weights, class_names=CLASS_NAMES)


def write_demo_checkpoint(path: str | Path) -> Path:
    """Write the shipped model as an ordinary DA-WSOL checkpoint, the file a user's own model would be."""
    return save_checkpoint(load_demo_model(), path, extra={"demo_config": demo_config()})
