"""The C++ example (examples/cpp, OpenVINO runtime) against the Python ``ort-cpu`` backend.

Builds the program once per session with CMake exactly as examples/cpp/README.md says, runs it on
images this test writes (one at the graph's size, others not, a grey one, RGBA, palette, a JPEG),
and checks its maps match ONNX Runtime's ``cam`` on Python's pre-processing of the same files.
Set BAGCAMS_CPP_BUILD_DIR to keep the build between runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cpp"
SIZE = 128
NUM_CLASSES = 10


def _missing_toolchain() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake not found (apt-get install cmake)"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        return "no C++ compiler found (apt-get install g++)"
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not importable (pip install openvino)"
    return None


pytestmark = pytest.mark.skipif(_missing_toolchain() is not None, reason=str(_missing_toolchain()))


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def binary(module_tmp) -> Path:
    """Configure and build examples/cpp once (Release, -j2)."""
    build = Path(os.environ.get("BAGCAMS_CPP_BUILD_DIR") or module_tmp("cpp_build"))
    prefix = _run([sys.executable, "-m", "bagcams_deploy.cpp_support", "--cmake-prefix"])
    assert prefix.returncode == 0, prefix.stderr
    configure = _run(
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={prefix.stdout.strip()}"]
    )  # fmt: skip
    assert configure.returncode == 0, f"cmake configure failed:\n{configure.stdout[-3000:]}\n{configure.stderr[-3000:]}"
    compiled = _run(["cmake", "--build", str(build), "-j2"])
    assert compiled.returncode == 0, f"build failed:\n{compiled.stdout[-4000:]}\n{compiled.stderr[-4000:]}"
    exe = build / "bagcams_localize"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def graph(module_tmp) -> Path:
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model

    model = build_model("resnet18", NUM_CLASSES, seed=0, randomize_batchnorm=True)
    path = module_tmp("cpp_graph") / "resnet18_bagcams.onnx"
    export_onnx(model, path, method="bagcams", target_layer="layer3", input_size=SIZE)
    return path


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour blobs plus noise: activations that are not degenerate."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int32)
    return np.clip(big + rng.integers(-25, 25, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(module_tmp) -> list[Path]:
    from PIL import Image

    d = module_tmp("cpp_images")
    files = {
        "at_size.png": Image.fromarray(_scene(SIZE, SIZE, 0)),
        "wide.png": Image.fromarray(_scene(301, 457, 1)),  # shrink: antialiased resampling
        "grey.png": Image.fromarray(_scene(90, 70, 2)[..., 0]),  # grey, and enlarged
        "alpha.png": Image.fromarray(
            np.dstack([_scene(160, 240, 3), np.random.default_rng(4).integers(0, 256, (160, 240), dtype=np.uint8)]),
            "RGBA",
        ),
        "palette.png": Image.fromarray(_scene(200, 150, 5)).convert("P", palette=Image.ADAPTIVE),
        "photo.jpg": Image.fromarray(_scene(240, 320, 6)),
    }
    paths = []
    for name, im in files.items():
        im.save(d / name, quality=90) if name.endswith(".jpg") else im.save(d / name)
        paths.append(d / name)
    return paths


def _python_side(graph: Path, paths: list[Path], class_id: int | None = None):
    from bagcams_deploy.preprocessing import load_image, preprocess
    from bagcams_deploy.runtime.ort_backend import OrtBackend

    x = preprocess([load_image(p) for p in paths], (SIZE, SIZE)).numpy()
    ids = None if class_id is None else np.full(len(paths), class_id, np.int64)
    out = OrtBackend(str(graph), threads=2).infer(x, ids)
    return x, out


def _assert_maps_agree(ref: np.ndarray, got: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32, (what, got.shape, got.dtype)
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    pearson = float(np.corrcoef(r, g)[0, 1]) if r.std() > 0 and g.std() > 0 else float(np.allclose(r, g))
    off = float((np.abs(r - g) > 0.01).mean())
    a, b = ref >= 0.5, got >= 0.5
    union = np.logical_or(a, b).sum()
    iou = 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
    assert pearson >= 0.9995, f"{what}: Pearson {pearson:.6f}"
    assert off <= 0.01, f"{what}: {off:.2%} of pixels off by > 0.01"
    assert iou >= 0.99, f"{what}: IoU of 0.5-thresholded maps {iou:.4f}"


def test_cpp_maps_match_python(binary, graph, images, tmp_path):
    out = tmp_path / "out"
    r = _run([str(binary), "--model", str(graph), "--out", str(out), "--threads", "2", "--batch-size", "4",
              "--save-input", *map(str, images)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    x, ref = _python_side(graph, images)

    # pre-processing: bit-identical for PNGs (Pillow's resampler reimplemented, with the pass order
    # of Pillow 13, where this was checked; older Pillow always resizes horizontally first and may
    # round some pixels one grey level differently). JPEG decoders of
    # different libjpeg builds may also differ by one grey level: there only the maps are compared.
    import PIL

    one_level = 1.0 / 255.0 / 0.224 + 1e-6
    exact = int(PIL.__version__.split(".")[0]) >= 13
    cpp_x = np.concatenate([np.load(out / "input_0.npy"), np.load(out / "input_1.npy")])
    assert cpp_x.shape == x.shape
    for i, p in enumerate(images):
        if p.suffix == ".png" and exact:
            np.testing.assert_array_equal(cpp_x[i], x[i], err_msg=f"pre-processing of {p.name}")
        else:
            assert np.abs(cpp_x[i] - x[i]).max() <= one_level, f"pre-processing of {p.name}"

    for i, p in enumerate(images):
        got = np.load(out / f"{p.stem}.npy")
        assert got.shape == (SIZE, SIZE)
        _assert_maps_agree(ref["cam"][i, 0], got, p.name)
        info = json.loads((out / f"{p.stem}.json").read_text())
        assert info["class_id"] == int(ref["class_id_used"][i])
        assert info["score"] == pytest.approx(float(ref["logits"][i, info["class_id"]]), abs=1e-3)
        assert info["map_size"] == [SIZE, SIZE] and info["method"] == "bagcams"
        assert len(info["boxes"]) <= 1
        for x0, y0, x1, y1 in info["boxes"]:
            w, h = info["image_size"]
            assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        assert (out / f"{p.stem}_overlay.png").stat().st_size > 0


def test_cpp_class_id_and_bench_line(binary, graph, images, tmp_path):
    out = tmp_path / "out"
    chosen = images[:2]
    r = _run([str(binary), "--model", str(graph), "--out", str(out), "--threads", "2", "--class-id", "7",
              "--warmup", "1", "--repeat", "2", "--quiet", *map(str, chosen)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    bench = [json.loads(line[len("bench ") :]) for line in r.stdout.splitlines() if line.startswith("bench ")]
    assert len(bench) == 1 and bench[0]["batch"] == 2 and len(bench[0]["times_ms"]) == 2
    _, ref = _python_side(graph, chosen, class_id=7)
    for i, p in enumerate(chosen):
        assert json.loads((out / f"{p.stem}.json").read_text())["class_id"] == 7
        _assert_maps_agree(ref["cam"][i, 0], np.load(out / f"{p.stem}.npy"), f"{p.name} class 7")


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cpp_errors(binary, graph, images, tmp_path):
    import onnx

    def localize(model: Path, *args: str) -> subprocess.CompletedProcess:
        return _run([str(binary), "--model", str(model), "--out", str(tmp_path / "out"), *args])

    img = str(images[0])
    _one_line_error(localize(tmp_path / "nope.onnx", img), "model not found", "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    _one_line_error(localize(junk, img), "not an ONNX model")

    # a graph without our outputs: the message names them
    proto = onnx.load(str(graph))
    keep = [o for o in proto.graph.output if o.name not in ("logits", "features")]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, str(stripped))
    _one_line_error(localize(stripped, img), "not a bagcams-deploy graph", "output 'logits'", "output 'features'")

    bad = tmp_path / "broken.png"
    bad.write_bytes(images[0].read_bytes()[:200])
    _one_line_error(localize(graph, str(bad)), "cannot read image", "broken.png")
    _one_line_error(localize(graph, str(tmp_path / "gone.png")), "image not found", "gone.png")
    _one_line_error(localize(graph, "--class-id", str(NUM_CLASSES), img), "out of range")
    usage = _run([str(binary), "--model", str(graph), img])
    assert usage.returncode == 2 and usage.stderr.startswith("error: --out is required")


def test_cpp_refuses_what_python_refuses(binary, graph, images, tmp_path):
    """Found by an adversarial pass: each used to give exit 0 and a wrong or overwritten result."""
    import onnx
    from PIL import Image

    def localize(model: Path, *args: str) -> subprocess.CompletedProcess:
        return _run([str(binary), "--model", str(model), "--out", str(tmp_path / "out"), "--quiet", *args])

    # a cut-off JPEG is an error (libjpeg would pad it with grey), as in Pillow
    jpeg = tmp_path / "whole.jpg"
    Image.open(images[0]).convert("RGB").save(jpeg, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    _one_line_error(localize(graph, str(cut)), "cut.jpg", "truncated")
    assert localize(graph, str(jpeg)).returncode == 0

    # two files with one stem would overwrite each other's outputs; one file named twice runs once
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / images[0].name).write_bytes(images[0].read_bytes())
    _one_line_error(localize(graph, str(images[0]), str(twin / images[0].name)), "would both write")
    r = localize(graph, str(images[0]), str(images[0].parent / "." / images[0].name))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").glob(f"{images[0].stem}*.npy"))) == 1

    # metadata no export writes is the model's fault (exit 1), not a usage error
    for key, value, needle in (("std", "0,0,0", "std > 0"), ("mean", "inf,0.4,0.4", "finite"),
                               ("num_classes", "0", "num_classes must be in [1,")):  # fmt: skip
        proto = onnx.load(str(graph))
        for p in proto.metadata_props:
            if p.key == key:
                p.value = value
        edited = tmp_path / f"edited_{key}.onnx"
        onnx.save(proto, str(edited))
        _one_line_error(localize(edited, str(images[0])), needle)

    # bf16 graphs are for TensorRT: on a CPU their maps miss the reduced-precision bars
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model

    bf16 = tmp_path / "bf16.onnx"
    export_onnx(build_model("resnet18", NUM_CLASSES, seed=1), bf16, input_size=64, precision="bf16")
    _one_line_error(localize(bf16, str(images[0])), "bf16 graph")

    # integer options that do not fit are refused, not truncated
    for flag, value in (("--batch-size", "4294967297"), ("--threads", "4294967297"), ("--class-id", "-5")):
        r = localize(graph, flag, value, str(images[0]))
        assert r.returncode == 2 and f"{flag} must be in" in r.stderr, r.stderr
