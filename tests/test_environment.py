"""``backends``: what runs here and what is missing; the shipped fatbin read from its own headers."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.kernels.fatbin import FatbinContents, kernel_route, read_fatbin
from bagcams_deploy.kernels.launcher import FATBIN
from bagcams_deploy.runtime.environment import backend_statuses

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_fatbin_holds_what_build_sh_builds():
    script = (ROOT / "kernels" / "build.sh").read_text()
    archs = tuple(int(a) for a in re.search(r'archs="\$\{BAGCAMS_ARCHS:-([\d ]+)\}"', script).group(1).split())
    ptx = int(re.search(r'ptx_arch="\$\{BAGCAMS_PTX_ARCH:-(\d+)\}"', script).group(1))
    assert read_fatbin(FATBIN) == FatbinContents(sass=archs, ptx=(ptx,))


def test_broken_fatbins_are_refused(tmp_path):
    bad = tmp_path / "x.fatbin"
    bad.write_bytes(b"\x7fELF" + bytes(20))
    with pytest.raises(BagcamsError, match="not a CUDA fatbin"):
        read_fatbin(bad)
    bad.write_bytes(FATBIN.read_bytes()[:5000])
    with pytest.raises(BagcamsError, match="truncated"):
        read_fatbin(bad)


@pytest.mark.parametrize(
    ("cc", "route"),
    [((9, 0), "prebuilt machine code (sm_90)"), ((8, 7), "prebuilt machine code (sm_86)"),
     ((8, 9), "prebuilt machine code (sm_89)"), ((12, 0), "PTX compute_90, JIT"), ((10, 0), "PTX compute_90"),
     ((7, 0), "no usable image: compiled from the shipped CUDA source")],
)  # fmt: skip
def test_kernel_route_follows_cuda_compatibility_rules(cc, route):
    assert kernel_route(FatbinContents(sass=(75, 80, 86, 89, 90), ptx=(90,)), cc).startswith(route)


def test_backends_command_says_what_runs_and_what_is_missing(cli):
    r = cli("backends")
    assert r.code == 0, r.err
    rows = {s.name: s for s in backend_statuses()}
    assert rows["ort-cpu"].available and rows["torch-reference"].available
    assert "sm_75 sm_80 sm_86 sm_89 sm_90; PTX compute_90" in r.out
    if importlib.util.find_spec("tensorrt") is None:
        assert not rows["tensorrt"].available and "tensorrt not installed" in rows["tensorrt"].detail
    if importlib.util.find_spec("pycuda") is None and "CUDA device: none" in r.out:
        assert "pycuda not installed" in r.out


def test_backends_prints_install_hints_verbatim(cli, monkeypatch):
    """Square brackets in pip extras are text, not console markup: the hint must be copy-pasteable."""
    from bagcams_deploy.runtime import environment

    hint = "openvino not installed (pip install 'bagcams-deploy[openvino]')"
    monkeypatch.setattr(
        environment, "backend_statuses", lambda: [environment.BackendStatus("ov-cpu", False, "x", hint)]
    )
    r = cli("backends")
    assert r.code == 0, r.err
    assert "bagcams-deploy[openvino]" in " ".join(r.out.split())
