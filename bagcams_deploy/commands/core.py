"""``info`` and ``cam``: look at a checkpoint; compute reference maps for image files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer

from ..errors import BagcamsError, CheckpointNotGraphError, plural
from ..methods.names import METHODS


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("cam")(cam)


# Shared by every command that loads a checkpoint: the same option reads the same everywhere.
ARCH_HELP = "architecture: resnet50, resnet18 or inception_v3 (inferred from the tensor names when omitted)"
NUM_CLASSES_HELP = "number of classes (inferred from fc.weight when omitted)"
TARGET_LAYER_HELP = (
    "layer to map: valid layers depend on the architecture (`info` lists them); --method cam maps the "
    "classifier's input only"
)
TARGET_LAYER_DEFAULT = "layer3 for ResNets, SPG_A3_1b for Inception-v3"
THREADS_HELP = "intra-op threads of the backend (default: the runtime's own)"
MODEL_BACKEND_DEFAULT = (
    "ort-cuda with a GPU, else ort-cpu, for .onnx; tensorrt for .plan; torch-reference for a checkpoint"
)


INPUT_SIZE_HELP = (
    "H = W fed to the model: a checkpoint, or a graph exported with --dynamic-size (a fixed-size graph runs only "
    "at its own size)"
)
INPUT_SIZE_DEFAULT = "224, or the graph's own size"

EXPORT_COMMAND = "bagcams-deploy export CKPT -o model.onnx"


def graph_first_hint(command: str) -> str:
    """How ``verify`` and ``bench`` take a checkpoint: beside the graph, not in its place."""
    return (
        f"the graph goes first, the checkpoint as --checkpoint (bagcams-deploy {command} model.onnx --checkpoint "
        f"CKPT; {EXPORT_COMMAND} writes the graph)"
    )


BUILD_FROM_GRAPH_HINT = f"export it first ({EXPORT_COMMAND}) and build from the .onnx"


def model_option_hint() -> str:
    """How ``localize`` and ``evaluate`` take a checkpoint as ``--model``: by its suffix."""
    from ..runtime.open import CHECKPOINT_SUFFIXES

    torch_suffixes = [s for s in CHECKPOINT_SUFFIXES if s != ".npz"]  # .npz: the demo's packed weights
    return (
        f"a checkpoint is taken as --model when named {', '.join(torch_suffixes[:-1])} or {torch_suffixes[-1]}, "
        f"or export it first ({EXPORT_COMMAND})"
    )


@contextmanager
def checkpoint_hint(hint: str) -> Iterator[None]:
    """Add this command's way of taking a checkpoint to the library's neutral "X is a PyTorch checkpoint,
    not an ONNX graph": only the command knows its options."""
    try:
        yield
    except CheckpointNotGraphError as exc:
        raise BagcamsError(f"{exc}: {hint}") from None


def info(
    checkpoint: Path = typer.Argument(..., help="DA-WSOL checkpoint or state dict (.pth/.pt)"),
    arch: str = typer.Option(None, "--arch", help=ARCH_HELP),
    num_classes: int = typer.Option(None, "--num-classes", help=NUM_CLASSES_HELP),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of text"),
    small_feature_map: bool = typer.Option(
        False, "--small-feature-map", help="checkpoint trained without the large feature map (e.g. OpenImages)"
    ),
) -> None:
    """Architecture, classes (and their first names), target layers and parameter count of a checkpoint."""
    from ..models import load_model

    model = load_model(checkpoint, arch, num_classes, large_feature_map=False if small_feature_map else None)
    print_load_notes(model)
    d = model.describe()
    if json_out:
        typer.echo(json.dumps(d.to_dict(), indent=2))
        return
    typer.echo(f"checkpoint:        {checkpoint}")
    typer.echo(f"architecture:      {d.architecture} (large_feature_map={d.large_feature_map})")
    typer.echo(f"classes:           {d.num_classes}")
    typer.echo(f"class names:       {_first_names(d.class_names)}")
    typer.echo(f"feature channels:  {d.feature_channels}")
    typer.echo(f"parameters:        {d.parameter_count:,}")
    layers = ", ".join(f"{n} ({d.layer_channels.get(n, '?')}ch)" for n in d.target_layers)
    typer.echo(f"target layers:     {layers}")
    typer.echo(f"default target:    {d.default_target_layer}")


SHOWN_CLASS_NAMES = 5


def _first_names(names: tuple[str, ...] | None, limit: int = SHOWN_CLASS_NAMES) -> str:
    """The first few class names on one line (a 1000-class list would bury the rest of ``info``)."""
    if not names:
        return "none (outputs say 'class N')"
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def print_load_notes(*loaded: object) -> list[str]:
    """What loading a checkpoint ignored (e.g. class names of the wrong count), as ``note:`` lines on
    stderr, each once: ``loaded`` are models or backends (both carry ``load_notes``), and one file
    opened twice (``evaluate --model CKPT --checkpoint CKPT``) is noted once. Returns the notes."""
    notes = list(dict.fromkeys(n for item in loaded for n in getattr(item, "load_notes", ())))
    for note in notes:
        print_note(note)
    return notes


def print_note(text: str) -> None:
    """One ``note:`` line on stderr: a remark on what the run did (e.g. files skipped), not an error."""
    typer.echo(f"note: {text}", err=True)


def cam(
    checkpoint: Path = typer.Argument(..., help="DA-WSOL checkpoint or state dict"),
    images: list[Path] = typer.Argument(..., help="image files or folders"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    method: str = typer.Option("bagcams", "--method", help="|".join(METHODS)),
    target_layer: str = typer.Option(None, "--target-layer", help=TARGET_LAYER_HELP, show_default=TARGET_LAYER_DEFAULT),
    class_id: int = typer.Option(None, "--class-id", min=0, help="class to explain (default: the predicted class)"),
    arch: str = typer.Option(None, "--arch", help=ARCH_HELP),
    num_classes: int = typer.Option(None, "--num-classes", help=NUM_CLASSES_HELP),
    input_size: int = typer.Option(
        224, "--input-size", min=1, max=4096, help="H = W the images are resized to (and the size of the .npy maps)"
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="images per forward and backward pass"),
    small_feature_map: bool = typer.Option(
        False, "--small-feature-map", help="checkpoint trained without the large feature map (e.g. OpenImages)"
    ),
) -> None:
    """PyTorch-reference maps for image files: per image an overlay PNG (class and probability) and the
    normalised map (.npy) at --input-size; one cam.json listing them."""
    from ..outputs import (
        RecordCheckpoints,
        check_distinct_stems,
        output_dir,
        output_names,
        planned_output_names,
        writable_output,
    )

    output_dir(out, "--out")
    from ..checks import NonFiniteOutputError, name_non_finite
    from ..images import check_images
    from ..localize import check_run_outputs, softmax
    from ..models import load_model
    from ..preprocessing import expand_image_paths, load_image, preprocess
    from ..progress import progress_bar
    from ..reference import compute_cams
    from ..reference.cams import resolve_target
    from ..visualize import render_overlay, save_png

    if method not in METHODS:
        raise BagcamsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    notes: list[str] = []
    paths = expand_image_paths(images, on_note=notes.append)  # skips an earlier run's overlays, with a note
    check_distinct_stems(paths)
    # localize's rules: no input is overwritten or re-read, no file cam.json does not list is overwritten
    earlier = check_run_outputs(paths, out, "cam")
    check_images(paths)  # headers only: an unreadable image fails before the first file is written
    for note in notes:  # only now: before a refusal, a note would make it two lines
        print_note(note)
    model = load_model(checkpoint, arch, num_classes, large_feature_map=False if small_feature_map else None)
    print_load_notes(model)
    _, layer = resolve_target(model, method, target_layer)
    out.mkdir(parents=True, exist_ok=True)
    flagged = []
    records: list[dict] = []
    doc = {
        "command": "cam",
        "checkpoint": str(checkpoint),
        "method": method,
        "target_layer": layer,
        "input_size": [input_size, input_size],
        "complete": False,
        "images": records,
    }
    keep_record = RecordCheckpoints(out, "cam", doc, earlier, planned_output_names(paths))
    try:
        with progress_bar(len(paths), f"{method} maps") as advance:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                rgbs = [load_image(p) for p in chunk]
                x = preprocess(rgbs, (input_size, input_size))
                ids = None if class_id is None else [class_id] * len(chunk)
                try:
                    r = compute_cams(model, x, method, target_layer, ids)
                except NonFiniteOutputError as exc:
                    raise name_non_finite(exc, [str(p) for p in chunk]) from None
                keep_record()  # the record lists every file a hard kill may leave
                for i, (p, rgb) in enumerate(zip(chunk, rgbs, strict=True)):
                    m = r.maps[i, 0].numpy()
                    c = int(r.class_ids[i])
                    map_name, overlay_name = output_names(p)
                    np.save(writable_output(out / map_name), m.astype(np.float32))
                    name = model.class_names[c] if model.class_names else f"class {c}"
                    prob = float(softmax(r.logits[i].detach().cpu().numpy())[c])  # localize's label
                    save_png(writable_output(out / overlay_name), render_overlay(rgb, m, label=f"{name} {prob:.2f}"))
                    records.append({"image": str(p), "class_id": c, "class_name": name, "probability": prob,
                                    "map": map_name, "overlay": overlay_name})  # fmt: skip
                    if method == "bagcams" and float(r.scores[i]) <= 0:
                        flagged.append(p.name)
                advance(len(chunk))
        doc["complete"] = True
    finally:  # the record, as localize's boxes.json: a rerun replaces this run's files and reads none
        for note in keep_record.finish():
            print_note(note)
    wrote = f"{plural(len(paths), 'overlay')} and {plural(len(paths), 'map')}"
    typer.echo(f"wrote {wrote} to {out}, listed in {out / 'cam.json'}")
    if flagged:
        typer.echo(
            f"note: target logit <= 0 (log undefined; BagCAMs sign-flipped) for: {', '.join(flagged)}",
            err=True,
        )
