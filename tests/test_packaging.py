"""What a user installs: the sdist and the wheel built from it, and the paths that only a checkout has.

The distributions are built as ``python -m build`` builds them (sdist first, the wheel from the
unpacked sdist), from the files git tracks, with the test environment's own setuptools.
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bagcams_deploy import __version__

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the distributions are checked against the files git tracks")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def _build(backend_call: str, source: Path, out: Path) -> Path:
    code = f"import sys; from setuptools import build_meta; print(build_meta.{backend_call}(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out / r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than the 77 that pyproject.toml builds with")
    tracked = _tracked()
    base = tmp_path_factory.mktemp("dist")
    clone = base / "clone"
    for name in tracked:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    sdist = _build("build_sdist", clone, base)
    with tarfile.open(sdist) as tar:
        tar.extractall(base / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        sdist_files = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    wheel = _build("build_wheel", base / "unpacked" / sdist.name.removesuffix(".tar.gz"), base)
    with zipfile.ZipFile(wheel) as zf:
        wheel_files = set(zf.namelist())
        metadata = email.parser.Parser().parsestr(zf.read(f"bagcams_deploy-{__version__}.dist-info/METADATA").decode())
        entry_points = zf.read(f"bagcams_deploy-{__version__}.dist-info/entry_points.txt").decode()
    return {
        "tracked": set(tracked),
        "sdist": sdist_files,
        "wheel": wheel_files,
        "metadata": metadata,
        "entry_points": entry_points,
    }


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(dists):
    """The fatbin and its stamp, the CUDA sources, the demo model, the checkpoint manifest: all that the
    package loads from beside its modules, and nothing from outside the package."""
    package = {name for name in dists["tracked"] if name.startswith("bagcams_deploy/")}
    assert package - dists["wheel"] == set()
    for name in (
        "bagcams_deploy/kernels/bagcams_kernels.fatbin",
        "bagcams_deploy/kernels/bagcams_kernels.fatbin.sha256",
        "bagcams_deploy/kernels/bagcams_kernels.cu",
        "bagcams_deploy/kernels/bagcams_kernels.cuh",
        "bagcams_deploy/kernels/bagcams_kernels.h",
        "bagcams_deploy/assets/scenes_resnet18.npz",
        "bagcams_deploy/assets/scenes_resnet18.json",
        "bagcams_deploy/data/dawsol_checkpoint_manifest.json",
    ):
        assert name in dists["wheel"], name
    outside = {n for n in dists["wheel"] if not n.startswith(("bagcams_deploy/", f"bagcams_deploy-{__version__}."))}
    assert outside == set()


@pytest.mark.slow
def test_the_sdist_is_the_repository(dists):
    """Everything git tracks, so the wheel builds from it and the tests run from it as from a clone
    (they read kernels/, examples/, benchmarks/, tools/ and the README)."""
    assert dists["tracked"] - dists["sdist"] == set()
    assert "tests/conftest.py" in dists["sdist"] and "tests/data/tensorrt_onnx_support.json" in dists["sdist"]
    extra = dists["sdist"] - dists["tracked"]
    assert {n for n in extra if not n.startswith("bagcams_deploy.egg-info/")} == {"PKG-INFO", "setup.cfg"}


@pytest.mark.slow
def test_the_wheel_metadata(dists):
    meta = dists["metadata"]
    assert meta["Name"] == "bagcams-deploy" and meta["Version"] == __version__
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert f"bagcams_deploy-{__version__}.dist-info/licenses/LICENSE" in dists["wheel"]
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "bagcams-deploy = bagcams_deploy.cli:main" in dists["entry_points"]


def test_version_option_prints_the_package_version(cli):
    r = cli("--version")
    assert r.code == 0, r.err
    assert r.out.strip() == f"bagcams-deploy {__version__}"


def test_cpp_example_dir_outside_a_checkout_is_one_line(capsys, monkeypatch, tmp_path):
    """Installed from a wheel there is no examples/cpp beside the package: say so in one line, never
    print a folder that does not exist."""
    from bagcams_deploy import cpp_support

    assert cpp_support.main(["--example-dir"]) == 0  # a checkout's own
    assert (Path(capsys.readouterr().out.strip()) / "CMakeLists.txt").is_file()
    monkeypatch.setattr(cpp_support, "EXAMPLE_DIR", tmp_path / "site-packages" / "examples" / "cpp")
    assert cpp_support.main(["--example-dir"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: the C++ example's sources (examples/cpp) are not installed"), err
    assert err.count("\n") == 1
