"""The README's library example runs as printed (only its two file names swapped for test files), its
comment's output names are the backend's, and the entry points it names exist: a renamed function
must fail here, not in a user's first session."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _library_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]


def _python_block(section: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Library section should hold one python example"
    return blocks[0]


def test_the_library_example_runs_and_its_map_is_the_references(checkpoints, tmp_path, monkeypatch):
    code = _python_block(_library_section())
    assert '"dawsol_resnet50_cub.pth"' in code and '"bird.jpg"' in code
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (150, 190, 3), dtype=np.uint8)).save(tmp_path / "bird.jpg")
    code = code.replace('"dawsol_resnet50_cub.pth"', repr(str(checkpoints["resnet18"])))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own code

    out, ref = scope["out"], scope["ref"]
    promised = re.search(r"# \{(.*?)\}", code).group(1)
    assert set(out) == {name.strip().strip('"') for name in promised.split(",")}
    assert out["cam"].shape == (1, 1, 224, 224) and np.isfinite(out["cam"]).all()
    assert (tmp_path / "bagcams.onnx").is_file()
    pearson = np.corrcoef(out["cam"].ravel(), ref.maps.numpy().ravel())[0, 1]
    assert pearson > 0.999, pearson
    assert int(out["class_id_used"][0]) == int(scope["model"](scope["x"]).argmax(1)[0])


def test_the_other_entry_points_the_readme_names_exist():
    section = _library_section()
    names = re.findall(r"`(bagcams_deploy(?:\.\w+)+)`", section)
    names += [f"bagcams_deploy.evaluation.{n}" for n in re.findall(r"`(\w+Evaluator|load_metadata)`", section)]
    assert len(names) >= 7, names
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        try:
            obj = importlib.import_module(dotted)
        except ModuleNotFoundError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, f"README names {dotted}, which does not exist"


def _metadata_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n### What `evaluate --metadata` reads\n", 1)[1].split("\n## ", 1)[0]


def _readme_metadata_files() -> dict[str, list[str]]:
    """The README's example files, from its ``head``-style block: ``{relative path: lines}``."""
    blocks = re.findall(r"```text\n(.*?)```", _metadata_section(), flags=re.S)
    assert len(blocks) == 1, "the metadata section should hold one example block"
    files: dict[str, list[str]] = {}
    current = None
    for line in blocks[0].splitlines():
        header = re.fullmatch(r"==> (.+) <==", line)
        if header:
            current = files.setdefault(header.group(1), [])
        elif line:
            assert current is not None, f"a line before the first file header: {line!r}"
            current.append(line)
    return files


def test_the_metadata_example_is_what_evaluate_reads(cli, checkpoints, tmp_path, monkeypatch):
    """The README's example folders, written line for line, load as described and evaluate as printed:
    precomputed maps equal to the GT masks score PxAP 100, the CUBMask ids lose their extra folder, and
    the same lines as an OpenImages split (masks in its own localization.txt) score the same."""
    from bagcams_deploy.evaluation import load_mask_metadata, load_metadata

    files = _readme_metadata_files()
    split = {f"metadata/test/{n}.txt" for n in ("image_ids", "class_labels", "image_sizes", "localization")}
    assert set(files) == split | {"masks/test/localization.txt"}
    for rel, lines in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("\n".join(lines) + "\n")
    meta = load_metadata(tmp_path / "metadata/test")
    ids = files["metadata/test/image_ids.txt"]
    assert meta.kind == "boxes" and meta.image_ids == ids
    boxes = [line.split(",") for line in files["metadata/test/localization.txt"]]
    assert sum(len(v) for v in meta.boxes.values()) == len(boxes) == 3
    assert meta.boxes[ids[0]][1] == tuple(int(v) for v in boxes[1][1:])
    assert meta.image_sizes[ids[1]] == (100, 100) and meta.class_labels == {ids[0]: 0, ids[1]: 1}
    masks = load_mask_metadata(tmp_path / "masks/test")
    assert masks.kind == "masks" and masks.ignore_paths["CUB/test/bird2.jpg"] is None

    # the mask files the lines name (224x224: no resizing to reason about), and maps equal to them
    rng = np.random.default_rng(0)
    fg: dict[str, np.ndarray] = {i: np.zeros((224, 224), bool) for i in ids}
    for line in files["masks/test/localization.txt"]:
        image_id, mask, ignore = line.split(",")
        image_id = image_id.split("/", 1)[1]  # the CUBMask extra folder
        y, x = rng.integers(20, 120, 2)
        m = np.zeros((224, 224), np.uint8)
        m[y : y + 80, x : x + 60] = 255
        fg[image_id] |= m > 0
        for name, pixels in ((mask, m), (ignore, np.pad(np.full((10, 10), 255, np.uint8), ((0, 214), (0, 214))))):
            if name:
                (tmp_path / "mask_files" / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(tmp_path / "mask_files" / name)
    for image_id in ids:
        (tmp_path / "maps" / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "maps" / f"{image_id}.npy", fg[image_id].astype(np.float32))

    monkeypatch.chdir(tmp_path)
    command = re.findall(r"```sh\n(.*?)```", _metadata_section(), flags=re.S)[0].replace("\\\n", " ").split()
    assert command[:2] == ["bagcams-deploy", "evaluate"] and command[2:4] == ["--model", "model.onnx"]
    args = [*command[4:], "--cam-interval", "0.01"]
    r = cli("evaluate", "--maps", "maps", *[a for a in args if a not in ("--data-root", "images")],
            "--report", "r.json")  # fmt: skip
    assert r.code == 0, r.err
    assert "without their first folder" in r.err
    run = next(iter(json.loads((tmp_path / "r.json").read_text())["runs"].values()))
    assert run["count"] == 2 and run["summary"]["PxAP"] == pytest.approx(100.0)
    assert run["summary"]["MaxBoxAccV2"] is not None

    # as an OpenImages split: the same ids and labels, the mask lines in its own localization.txt
    oi = tmp_path / "openimages"
    oi.mkdir()
    for name in ("image_ids", "class_labels"):
        (oi / f"{name}.txt").write_text((tmp_path / f"metadata/test/{name}.txt").read_text())
    lines = [line.split("/", 1)[1] for line in files["masks/test/localization.txt"]]
    (oi / "localization.txt").write_text("\n".join(lines) + "\n")
    r = cli("evaluate", "--maps", "maps", "--metadata", oi, "--mask-root", "mask_files", "--cam-interval", "0.01",
            "--report", "oi.json")  # fmt: skip
    assert r.code == 0, r.err
    summary = next(iter(json.loads((tmp_path / "oi.json").read_text())["runs"].values()))["summary"]
    assert summary["PxAP"] == pytest.approx(100.0) and summary["MaxBoxAccV2"] is None

    # and the printed command itself, with a checkpoint for model.onnx and images of the listed sizes
    for image_id in ids:
        w, h = meta.image_sizes[image_id]
        (tmp_path / "images" / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / image_id)
    command[command.index("model.onnx")] = str(checkpoints["resnet18"])
    r = cli(*command[1:], "--cam-interval", "0.01")
    assert r.code == 0, r.err


def _contract_block() -> str:
    """The python block of "The ONNX I/O contract": a consumer with numpy, Pillow and onnxruntime alone."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The ONNX I/O contract\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the contract section should hold one python example"
    return blocks[0]


def _contract_images(folder: Path) -> list[Path]:
    """Scenes in the modes and sizes a consumer meets: shrunk, enlarged, grey, alpha, palette, 16-bit, float."""
    from bagcams_deploy.scenes.generator import generate_scene

    def scene(seed: int, h: int, w: int) -> Image.Image:
        return Image.fromarray(generate_scene(seed, size=max(h, w)).image).resize((w, h))

    grey16 = np.asarray(scene(5, 120, 110).convert("L"), np.uint16) * 97 + 11
    rgba = np.dstack([np.asarray(scene(3, 100, 140)), np.random.default_rng(4).integers(0, 256, (100, 140), np.uint8)])
    files = {
        "wide.png": scene(1, 150, 230),
        "small.png": scene(2, 50, 70),
        "grey.png": scene(6, 90, 80).convert("L"),
        "alpha.png": Image.fromarray(rgba, "RGBA"),
        "palette.png": scene(7, 80, 100).convert("P", palette=Image.ADAPTIVE),
        "grey16.png": Image.fromarray(grey16),
        "float.tif": Image.fromarray(np.asarray(scene(8, 70, 90).convert("L"), np.float32) / 300.0, "F"),
    }
    paths = []
    for name, im in files.items():
        im.save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def contract_graphs(module_tmp) -> dict[str, Path]:
    """The shipped model's graphs (trained weights: realistic gradients, where GradCAM++'s 1e-7 matters),
    one per gradient method, GradCAM++ with a gradient scale that the host formula must divide out."""
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import load_model

    model = load_model(ROOT / "bagcams_deploy/assets/scenes_resnet18.npz")
    folder = module_tmp("contract")
    graphs = {}
    for method, scale in (("bagcams", None), ("gradcam", None), ("gradcampp", 2.0**20), ("pcs", None)):
        graphs[method] = folder / f"{method}.onnx"
        export_onnx(model, graphs[method], method=method, input_size=96, gradient_scale=scale)
    return graphs


def _run_contract_block(graph: Path, image: Path) -> dict:
    code = _contract_block()
    assert '"model.onnx"' in code and '"bird.jpg"' in code
    code = code.replace('"model.onnx"', repr(str(graph))).replace('"bird.jpg"', repr(str(image)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own code
    return scope


def test_the_contract_consumer_decodes_and_preprocesses_as_the_package(contract_graphs, tmp_path):
    """The README's package-free decoding and pre-processing give the package's input tensor, bit for bit."""
    from bagcams_deploy.images import load_image
    from bagcams_deploy.preprocessing import load_images

    paths = _contract_images(tmp_path)
    scope = _run_contract_block(contract_graphs["bagcams"], paths[0])
    meta = scope["meta"]
    assert meta["input_size"] == (96, 96) and meta["method"] == "bagcams" and len(meta["class_names"]) == 10
    for p in paths:
        assert np.array_equal(scope["decode"](str(p)), load_image(p)), p.name
        x = scope["preprocess"](scope["decode"](str(p)), (96, 96), meta)
        assert x.dtype == np.float32 and np.array_equal(x, load_images(p, 96)[0].numpy()), p.name


def test_the_contract_consumer_refuses_a_float_image_with_nan_pixels(contract_graphs, tmp_path):
    """Every command refuses such a file; a decoder said to decode "as every command" must not turn
    the NaN pixels into black ones (numpy casts NaN to 0 with only a warning)."""
    import warnings

    from bagcams_deploy.errors import BagcamsError
    from bagcams_deploy.images import load_image

    arr = np.full((16, 16), 0.5, np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "nan.tif")
    with pytest.raises(BagcamsError, match="NaN or Inf"):
        load_image(tmp_path / "nan.tif")
    scope = _run_contract_block(contract_graphs["bagcams"], _contract_images(tmp_path)[0])
    with warnings.catch_warnings(), pytest.raises(ValueError, match="NaN or Inf"):
        warnings.simplefilter("ignore", RuntimeWarning)
        scope["decode"](str(tmp_path / "nan.tif"))


def test_the_contract_host_map_is_the_graphs_map_for_every_method(contract_graphs, tmp_path):
    """``host_map`` on a graph's features and gradients is its own ``cam`` (within 1e-5), gradient scale
    included; and ``full`` is ``localize``'s .npy of the same image."""
    from bagcams_deploy.localize import localize_images
    from bagcams_deploy.runtime.ort_backend import OrtBackend

    paths = _contract_images(tmp_path)
    for method, graph in contract_graphs.items():
        scope = _run_contract_block(graph, paths[0])
        meta, host_map = scope["meta"], scope["host_map"]
        assert meta["gradient_scale"] == (2.0**20 if method == "gradcampp" else 1.0)
        x = np.stack([scope["preprocess"](scope["decode"](str(p)), (96, 96), meta) for p in paths])
        ids = np.full(len(paths), -1, np.int64)
        names = [o.name for o in scope["session"].get_outputs()]
        out = dict(zip(names, scope["session"].run(None, {"image": x, "class_id": ids}), strict=True))
        ours = host_map(method, out["features"], out["gradients"], meta["gradient_scale"], (96, 96))
        assert ours.shape == out["cam"].shape and ours.dtype == np.float32
        assert np.abs(ours - out["cam"]).max() < 1e-5, (method, float(np.abs(ours - out["cam"]).max()))
        assert ours.max() == pytest.approx(1.0) and ours.min() == 0.0
    with OrtBackend(str(contract_graphs["gradcampp"]), threads=2) as backend:
        localize_images(backend, paths, tmp_path / "loc")
    for p in paths:
        scope = _run_contract_block(contract_graphs["gradcampp"], p)
        full, theirs = scope["full"], np.load(tmp_path / "loc" / f"{p.stem}.npy")
        assert full.shape == theirs.shape == scope["rgb"].shape[:2]
        assert np.abs(full - theirs).max() < 1e-5, (p.name, float(np.abs(full - theirs).max()))


def test_the_contract_snippet_uses_only_numpy_pillow_and_onnxruntime():
    """What the README promises an edge consumer: no import of this package (or torch, cv2) at run time."""
    imports = re.findall(r"^(?:import|from) (\w+)", _contract_block(), flags=re.M)
    assert set(imports) == {"json", "numpy", "onnxruntime", "PIL"}, imports


def _github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("readme", ["README.md", "kernels/README.md", "examples/cpp/README.md"])
def test_every_in_page_link_of_the_readmes_has_its_heading(readme):
    """The contents line and the cross-references are links a reader clicks; a renamed heading must
    fail here rather than leave a dead link on the front page."""
    text = (ROOT / readme).read_text()
    text_outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", text_outside_code, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text_outside_code)
    missing = sorted(set(links) - anchors)
    assert not missing, f"{readme}: links to missing headings {missing}"
    if readme == "README.md":
        assert {"set-up", "the-onnx-io-contract", "gpu-path"} <= set(links)


def test_the_contracts_bagcams_gradient_row_says_what_a_negative_score_does():
    """For s_c < 0 the graph back-propagates the seed 1/s_c through the guided ReLUs, which is not the
    guided d(s_c)/dF times 1/s_c (the guided rule is only positively homogeneous): the contract row must
    not tell a consumer that it is a sign flip of that gradient."""
    import torch

    from bagcams_deploy.export.analytic import AnalyticCAM
    from bagcams_deploy.models import build_model
    from bagcams_deploy.reference.cams import guided_relu_modules

    model = build_model("resnet18", 5, seed=3, randomize_batchnorm=True).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    net = AnalyticCAM(model, "bagcams", "layer3", with_cam=False)
    logits = net.run(x)["logits"][0]
    c = int(logits.argmin())
    s = float(logits[c])
    assert s < 0
    graph = net.run(x, torch.tensor([c]))["gradients"]
    with torch.enable_grad(), guided_relu_modules(model, True):
        features, out = model.features_and_logits(x.clone().requires_grad_(True), "layer3")
        (seeded,) = torch.autograd.grad(out[0, c] / s, features, retain_graph=True)  # seed 1/s_c, then back
        (plain,) = torch.autograd.grad(out[0, c], features)  # guided d(s_c)/dF
    torch.testing.assert_close(graph, seeded, rtol=1e-4, atol=1e-7)
    assert (graph - plain / s).abs().max() > 0.1 * graph.abs().max()  # not a sign-flipped copy

    row = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| output `gradients`"))
    bagcams = row.split("for BagCAMs", 1)[1]
    assert "seed 1/s_c" in bagcams and "(a sign flip)" not in bagcams, bagcams
