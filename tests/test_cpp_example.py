"""The C++ example (examples/cpp, OpenVINO runtime) against the Python ``ort-cpu`` backend.

Builds the program once per session with CMake exactly as examples/cpp/README.md says, runs it on
images this test writes (one at the graph's size, others not, a grey one, RGBA, palette, a JPEG),
and checks its maps match ONNX Runtime's ``cam`` on Python's pre-processing of the same files, and
that its boxes are exactly the Python ``localize`` command's boxes of its own maps. The box rule
alone is checked on crafted and random maps through the build's small ``bagcams_boxes`` tool.
Set BAGCAMS_CPP_BUILD_DIR to keep the build between runs.
"""

from __future__ import annotations

import functools
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
        return "openvino is not importable (pip install -e '.[openvino]')"
    return None


pytestmark = pytest.mark.skipif(_missing_toolchain() is not None, reason=str(_missing_toolchain()))


def _run(cmd: list[str], timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


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
    assert exe.is_file() and (build / "bagcams_boxes").is_file()
    return exe


def _python_boxes(score_map: np.ndarray, size: tuple[int, int], threshold: float, multi: bool = False) -> list:
    """What the Python ``localize`` command reports for a map at the graph's size and an image (h, w)."""
    from bagcams_deploy.evaluation.boxes import object_boxes
    from bagcams_deploy.visualize import resize_map

    return object_boxes(resize_map(score_map, size), threshold, multi)


@functools.cache
def _cv2_resizes_like_cpp() -> bool:
    """Whether cv2.resize (what Python's resize_map runs) follows the rule examples/cpp/src/boxes.cpp
    reproduces: the opencv-python wheels' Intel IPP path on an x86-64 CPU with AVX2 (fused
    multiply-adds). Without IPP, or on IPP's SSE4.2 path, a few pixels round one float step apart,
    and only maps at their own size can be compared exactly. Probed on a small map whose values have
    10 bits, so that float64 holds each fused multiply-add's exact result."""
    import cv2

    src = (np.random.default_rng(7).integers(0, 1025, (7, 5)) / 1024).astype(np.float32)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(x)
        frac = (x - lo).astype(np.float32)
        lo = lo.astype(np.int64)
        frac[(lo < 0) | (lo >= n_in - 1)] = 0.0
        lo = np.clip(lo, 0, n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), frac

    def lerp(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
        return (f.astype(np.float64) * (b - a).astype(np.float64) + a).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = axis(7, 31), axis(5, 23)
    rows = lerp(src[:, x0], src[:, x1], fx[None, :])
    expected = lerp(rows[y0], rows[y1], fy[:, None])
    return bool(np.array_equal(cv2.resize(src, (23, 31), interpolation=cv2.INTER_LINEAR), expected))


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
        # the box: exactly Python localize's box of the same (C++) map, resized to the image
        w, h = info["image_size"]
        if (w, h) == (SIZE, SIZE) or _cv2_resizes_like_cpp():
            assert info["threshold"] == 0.5
            assert info["boxes"] == _python_boxes(got, (h, w), info["threshold"]), p.name


def test_cpp_class_id_and_bench_line(binary, graph, images, tmp_path):
    out = tmp_path / "out"
    chosen = images[:2]
    r = _run([str(binary), "--model", str(graph), "--out", str(out), "--threads", "2", "--class-id", "7",
              "--warmup", "1", "--repeat", "2", "--quiet", "--threshold", "0.75", "--multi-contour",
              *map(str, chosen)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    bench = [json.loads(line[len("bench ") :]) for line in r.stdout.splitlines() if line.startswith("bench ")]
    assert len(bench) == 1 and bench[0]["batch"] == 2 and len(bench[0]["times_ms"]) == 2
    _, ref = _python_side(graph, chosen, class_id=7)
    for i, p in enumerate(chosen):
        info = json.loads((out / f"{p.stem}.json").read_text())
        assert info["class_id"] == 7 and info["threshold"] == 0.75
        got = np.load(out / f"{p.stem}.npy")
        _assert_maps_agree(ref["cam"][i, 0], got, f"{p.name} class 7")
        w, h = info["image_size"]
        if (w, h) == (SIZE, SIZE) or _cv2_resizes_like_cpp():
            assert info["boxes"] == _python_boxes(got, (h, w), 0.75, multi=True), p.name


def _spiral(n: int) -> np.ndarray:
    """A 1-pixel-wide square spiral with 1-pixel gaps in an n x n map: a long walk with many turns."""
    m = np.zeros((n, n), np.float32)
    y = x = 0
    m[0, 0] = 1.0
    lengths = [n - 1, n - 1, n - 1] + [k for k in range(n - 3, 0, -2) for _ in range(2)]
    for i, length in enumerate(lengths):
        dy, dx = ((0, 1), (1, 0), (0, -1), (-1, 0))[i % 4]
        for _ in range(length):
            y, x = y + dy, x + dx
            m[y, x] = 1.0
    return m


def _crafted_maps() -> dict[str, np.ndarray]:
    """Maps where the box rule is easy to get subtly wrong."""
    maps = {}
    # more pixels is not more area: a 30-pixel diagonal line and an L of 1-pixel lines (area 0, met
    # first in raster order) against a filled 5x5 square (25 pixels, contourArea 16)
    m = np.zeros((40, 60), np.float32)
    for k in range(30):
        m[1 + k, 2 + k] = 1.0
    m[2:30, 40] = m[29, 40:58] = 1.0
    m[33:38, 10:15] = 1.0
    maps["square_vs_lines"] = m
    # equal contour areas from different pixel counts (3x9: 27 px, 2x17: 34 px, 5x5: 25 px; all area
    # 16), and near-equal ones below them in raster order (4x6: 24 px and 2x16: 32 px, area 15; a plus
    # of 21 px, area 14)
    m = np.zeros((48, 40), np.float32)
    m[2:5, 2:11] = m[8:10, 3:20] = m[15:20, 25:30] = 1.0
    m[24:28, 2:8] = m[32:34, 10:26] = 1.0
    m[38:43, 20:23] = m[39:42, 19:24] = 1.0
    maps["area_ties"] = m
    # isolated single pixels only: every area is 0, the tie decides
    m = np.zeros((31, 29), np.float32)
    rng = np.random.default_rng(11)
    for y in range(1, 31, 3):
        for x in range(0, 29, 2):
            if rng.random() < 0.4:
                m[y, x] = 0.6 + 0.4 * rng.random()
    maps["single_pixels"] = m
    # 1-pixel lines only, horizontal, vertical, diagonal and anti-diagonal (area 0 each)
    m = np.zeros((32, 32), np.float32)
    m[3, 2:20] = m[6:28, 25] = 1.0
    for k in range(12):
        m[10 + k, 2 + k] = m[10 + k, 20 - k] = 1.0
    maps["lines_only"] = m
    # a 1-pixel ring (40 px, area 100) with a blob in its hole (not an external contour) against a
    # filled 8x8 (64 px, area 49), and a thick ring with a hole against a solid square
    m = np.zeros((40, 44), np.float32)
    m[2:13, 2:13] = 1.0
    m[3:12, 3:12] = 0.0
    m[6:9, 6:9] = 1.0
    m[20:28, 2:10] = 1.0
    m[16:36, 18:38] = 1.0
    m[20:32, 22:34] = 0.0
    m[24:28, 26:30] = 0.8
    maps["rings"] = m
    # blobs touching every edge and corner, a full-height line
    m = np.zeros((30, 50), np.float32)
    m[0:4, 0:6] = m[24:, 44:] = m[0:2, 20:35] = m[12:20, 0:3] = m[27:, 10:16] = 1.0
    m[:, 40] = 0.9
    maps["edges"] = m
    # a checkerboard patch (one 8-connected component full of 1-pixel holes) and a spiral
    m = np.zeros((36, 36), np.float32)
    m[1:12, 1:12] = (np.indices((11, 11)).sum(axis=0) % 2 == 0).astype(np.float32)
    m[14:35, 14:35] = _spiral(21)
    maps["checker_and_spiral"] = m
    # flat maps: nothing passes, or everything does
    maps["zeros"] = np.zeros((20, 30), np.float32)
    maps["flat"] = np.full((20, 30), 0.7, np.float32)
    maps["ones"] = np.ones((16, 16), np.float32)
    # values on 8-bit steps, where float32 * 255 may truncate one level down
    maps["steps"] = (np.arange(24 * 24, dtype=np.float32).reshape(24, 24) % 256) / np.float32(255)
    return maps


def _random_maps(seed: int, count: int) -> list[np.ndarray]:
    """Fresh random maps of several kinds and sizes (seeded)."""
    import cv2

    rng = np.random.default_rng(seed)
    maps = []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(8, 97, 2))
        kind = i % 5
        if kind == 0:  # noise: many components, ties, holes and nested ones
            m = rng.random((h, w))
        elif kind == 1:  # sparse noise
            m = (rng.random((h, w)) < 0.25) * rng.random((h, w))
        elif kind == 2:  # smooth blobs, as a CAM looks
            small = rng.random((int(rng.integers(2, 9)), int(rng.integers(2, 9))))
            m = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        elif kind == 3:  # a few flat levels: large flat regions and exact area ties
            m = rng.integers(0, 4, (h, w)) / 3.0
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        else:  # blocky blobs
            m = np.kron(rng.random((h // 4 + 1, w // 4 + 1)) > 0.6, np.ones((4, 4)))[:h, :w] * 1.0
        m = np.asarray(m, np.float64)
        m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.clip(m, 0, 1)
        maps.append(m.astype(np.float32))
    return maps


def test_cpp_box_rule_matches_opencv(binary, tmp_path):
    """bagcams_boxes (the C++ resize + box rule) against resize_map + object_boxes (cv2): the same
    resized map bit for bit, the same boxes exactly, in single- and multi-contour mode."""
    from bagcams_deploy.evaluation.boxes import object_boxes
    from bagcams_deploy.visualize import resize_map

    tool = binary.parent / "bagcams_boxes"
    resized_ok = _cv2_resizes_like_cpp()
    rng = np.random.default_rng(2024)
    cases = []
    for name, m in _crafted_maps().items():
        h, w = m.shape
        for size in ((h, w), (3 * h + 1, 2 * w + 3), (max(8, h // 2 + 1), max(8, (2 * w) // 3))):
            for t in (0.5, 0.0, 0.99):
                cases.append((name, m, size, t))
    for k, m in enumerate(_random_maps(int(rng.integers(1 << 30)), 40)):
        h, w = m.shape
        size = (h, w) if k % 4 == 0 else tuple(int(v) for v in rng.integers(8, 400, 2))
        cases.append((f"random {k}", m, size, float(np.round(rng.random(), 3))))

    src, full_path = tmp_path / "map.npy", tmp_path / "full.npy"
    checked = 0
    for name, m, (h, w), t in cases:
        if (h, w) != m.shape and not resized_ok:
            continue
        np.save(src, m)
        ref_full = resize_map(m, (h, w))
        for multi in (False, True):
            args = [str(tool), str(src), "--size", str(h), str(w), "--threshold", repr(t), "--save-map", str(full_path)]
            r = _run(args + (["--multi-contour"] if multi else []))
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            what = f"{name} {m.shape} -> {(h, w)} t={t} multi={multi}"
            np.testing.assert_array_equal(np.load(full_path), ref_full, err_msg=what)
            assert got["boxes"] == object_boxes(ref_full, t, multi), what
            checked += 1
    assert checked >= (len(cases) if resized_ok else 60)
    if not resized_ok:
        pytest.skip("cv2.resize rounds unlike IPP with FMA here: only maps at their own size were compared")


def test_cpp_box_rule_cases(binary, tmp_path):
    """A few expected boxes spelled out, so that the rule is pinned even if cv2 changed."""
    tool = binary.parent / "bagcams_boxes"
    maps = _crafted_maps()

    def boxes(name: str, *args: str) -> list:
        np.save(tmp_path / "m.npy", maps[name])
        r = _run([str(tool), str(tmp_path / "m.npy"), *args])
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["boxes"]

    assert boxes("square_vs_lines") == [[10, 33, 14, 37]]  # area, not pixel count
    assert boxes("area_ties") == [[25, 15, 29, 19]]  # a tie of area 16: the one found last in raster order
    assert boxes("rings") == [[18, 16, 37, 35]]  # the outer contour's area includes its hole
    rings = boxes("rings", "--multi-contour")  # no box for the blob in the hole or for the holes
    assert rings == [[2, 20, 9, 27], [18, 16, 37, 35], [2, 2, 12, 12]]  # OpenCV's order: reverse raster
    assert boxes("zeros") == [] and boxes("flat") == [[0, 0, 29, 19]] and boxes("ones", "--threshold", "1") == []
    y, x = np.nonzero(maps["single_pixels"])
    assert boxes("single_pixels") == [[int(x[-1]), int(y[-1]), int(x[-1]), int(y[-1])]]
    r = _run([str(tool), str(tmp_path / "m.npy"), "--threshold", "2"])
    assert r.returncode == 2 and "error: --threshold" in r.stderr


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


def test_cpp_double_dash_ends_the_options(binary, graph, images, tmp_path):
    """An image whose name starts with '-' is an unknown option before `--` and an image after it."""
    dashed = tmp_path / "-dashed.png"
    dashed.write_bytes(images[0].read_bytes())
    out = tmp_path / "out"
    refused = _run([str(binary), "--model", str(graph), "--out", str(out), "-dashed.png"], cwd=tmp_path)
    assert refused.returncode == 2 and "unknown option -dashed.png" in refused.stderr
    done = _run([str(binary), "--model", str(graph), "--out", str(out), "--quiet", "--", "-dashed.png"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    with Image.open(dashed) as im:
        assert np.load(out / "-dashed.npy").shape == im.size[::-1]


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


def test_cpp_refuses_a_dynamic_input_below_the_architectures_minimum(binary, images, tmp_path):
    """A dynamic-size graph fed below its architecture's minimum runs but gives meaningless maps: the
    Python backends refuse such an --input-size, and so does the program (it wrote a 16x16 map, exit 0)."""
    import re

    from bagcams_deploy.architectures import MIN_INPUT_SIZE
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model

    source = (EXAMPLE / "src" / "bagcams_localize.cpp").read_text()
    table = re.search(r"kMinInputSize = \{(.*?)\};", source).group(1)
    assert {k: int(v) for k, v in re.findall(r'\{"(\w+)", (\d+)\}', table)} == MIN_INPUT_SIZE

    graph = tmp_path / "dynamic.onnx"
    export_onnx(build_model("resnet18", NUM_CLASSES, seed=2), graph, input_size=64, dynamic_size=True)

    def localize(size: int) -> subprocess.CompletedProcess:
        args = ["--model", str(graph), "--out", str(tmp_path / f"out{size}"), "--quiet", "--input-size", str(size)]
        return _run([str(binary), *args, str(images[0])])

    _one_line_error(localize(16), "--input-size 16", "resnet18 takes inputs of 32x32 or more")
    assert not (tmp_path / "out16").exists()
    r = localize(32)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "out32" / f"{images[0].stem}.npy").shape == (32, 32)

    # without its 'architecture' key the minimum is unknown: refused, as Python's read_graph_info does
    import onnx

    proto = onnx.load(str(graph))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != "architecture"]
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dict(kept))
    onnx.save(proto, str(graph))
    _one_line_error(localize(64), "metadata 'architecture' missing")
