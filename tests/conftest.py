"""Shared fixtures: small random-weight models (BN statistics randomised so folding matters),
their checkpoints on disk, and an in-process CLI runner that goes through the real error edge."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bagcams_deploy.models import build_model, save_checkpoint

# Small inputs keep the suite fast; each is the smallest comfortable size for the architecture.
TEST_SIZE = {"resnet50": 64, "resnet18": 64, "inception_v3": 96}


def cuda_device_available() -> bool:
    """A CUDA device through torch or, with a CPU-only torch, through PyCUDA."""
    if torch.cuda.is_available():
        return True
    try:
        import pycuda.driver as drv

        drv.init()
        return drv.Device.count() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    """GPU tests skip with a reason where there is no CUDA device."""
    if any("gpu" in item.keywords for item in items) and not cuda_device_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch or pycuda here)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def models() -> dict[str, torch.nn.Module]:
    torch.set_num_threads(2)
    return {
        arch: build_model(arch, 7, seed=11 + i, randomize_batchnorm=True)
        for i, arch in enumerate(("resnet50", "inception_v3", "resnet18"))
    }


@pytest.fixture(scope="session")
def checkpoints(models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: save_checkpoint(m, root / f"{arch}.pth") for arch, m in models.items()}


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """``module_tmp(name)`` makes a fresh folder for one module's shared files, deleted when the
    module ends: an exported graph is 40-180 MB, and a suite that kept every module's graphs to the
    end once filled CI's disk."""
    root = tmp_path_factory.mktemp("module")
    yield lambda name: Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run ``bagcams-deploy ARGS`` in-process through ``cli.main`` (the real error handling)."""
    from bagcams_deploy import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["bagcams-deploy", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli
