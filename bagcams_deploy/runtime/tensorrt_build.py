"""Build TensorRT engines from our ONNX graphs, and the plan's sidecar that makes them safe to load.

A serialized TensorRT plan only runs on the TensorRT version that built it and is tuned for one GPU
model; loaded elsewhere it fails deep inside ``deserialize_cuda_engine`` or, worse, runs slowly. So
``build-engine`` writes ``<plan>.json`` beside the plan: the export's metadata (method, target layer,
mean/std, gradient scale, class names: everything a consumer needs without the ONNX file), the
optimization profile, the output dtypes, and the TensorRT version, GPU name and compute capability it
was built with. :func:`check_plan_compatible` compares that record with the running system before
anything is deserialized; it is a pure function so it is tested without a GPU.

Precision is not chosen here. TensorRT 11 builds strongly typed networks only (the FP16/BF16 builder
flags are gone), so every layer runs in the type the ONNX graph gives it: a ``--precision fp16`` export
builds a half-precision engine, a float32 export a float32 one (TF32 allowed on Ampere and later
unless ``--no-tf32``). On TensorRT 10 the network is created with the ``STRONGLY_TYPED`` flag for the
same behaviour.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BagcamsError, require
from ..export.contract import GraphInfo, class_names_of, float_triple, read_graph_info
from ..outputs import output_file, write_atomically
from .base import file_sha256
from .registry import PLAN_SUFFIXES

SIDECAR_FORMAT = "bagcams-deploy-plan-v1"
_TRT_HINT = "pip install 'tensorrt>=10.1' (TensorRT 10.1 or later, 11 included) on a machine with an NVIDIA GPU"
_PYCUDA_HINT = "pip install pycuda on a machine with an NVIDIA GPU"
# 10.1 added ICudaEngine.device_memory_size_v2, which TensorRT 11 keeps and the older
# device_memory_size does not survive into (tools/check_gpu_apis.py checks our calls per release).
MIN_TENSORRT = (10, 1)


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch sizes (H and W are fixed by the graph or ``--input-size``)."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def check(self) -> BatchProfile:
        if self.min_batch < 1:
            raise BagcamsError(f"--min-batch must be >= 1, got {self.min_batch}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise BagcamsError(
                f"batch profile must satisfy min <= opt <= max, got min {self.min_batch}, "
                f"opt {self.opt_batch}, max {self.max_batch}"
            )
        return self


@dataclass(frozen=True)
class SystemInfo:
    """What a plan is bound to: the TensorRT version and the GPU."""

    tensorrt_version: str
    device_name: str
    compute_capability: tuple[int, int]


def sidecar_path(plan: str | Path) -> Path:
    return Path(str(plan) + ".json")


def check_plan_compatible(sidecar: dict, system: SystemInfo, plan: str | Path = "plan") -> None:
    """Refuse a plan built for another TensorRT version or GPU, naming both sides and the fix."""
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise BagcamsError(f"{sidecar_path(plan)}: not a bagcams-deploy plan record (format {sidecar.get('format')!r})")
    built = sidecar.get("built_with")
    rebuild = f"rebuild it here: {rebuild_command(sidecar, plan)}"
    if not isinstance(built, dict):
        raise BagcamsError(f"{sidecar_path(plan)}: no 'built_with' record of the TensorRT and GPU; {rebuild}")
    if built.get("tensorrt_version") != system.tensorrt_version:
        raise BagcamsError(
            f"{plan} was built with TensorRT {built.get('tensorrt_version')} but this is TensorRT "
            f"{system.tensorrt_version}; plans only load on the version that built them; {rebuild}"
        )
    raw_cc = built.get("compute_capability")
    cc = tuple(raw_cc) if isinstance(raw_cc, list | tuple) else ()
    if built.get("device_name") != system.device_name or cc != tuple(system.compute_capability):
        raise BagcamsError(
            f"{plan} was built for {built.get('device_name')} (sm_{''.join(map(str, cc))}) but this GPU is "
            f"{system.device_name} (sm_{''.join(map(str, system.compute_capability))}); {rebuild}"
        )


def rebuild_command(sidecar: dict, plan: str | Path) -> str:
    """The ``build-engine`` command that rebuilds ``plan`` as its record says it was built (source
    graph, batch profile, input size, workspace, TF32), so following a rebuild hint changes nothing
    but the machine it is built for."""
    import shlex

    parts = ["bagcams-deploy", "build-engine", str(sidecar.get("source_onnx") or "MODEL.onnx"), "--output", str(plan)]
    profile = sidecar.get("profile")
    if isinstance(profile, dict):
        for key in ("min_batch", "opt_batch", "max_batch"):
            if isinstance(profile.get(key), int):
                parts += [f"--{key.replace('_', '-')}", str(profile[key])]
    graph = sidecar.get("graph")
    size = graph.get("input_size") if isinstance(graph, dict) else None
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1] and graph.get("dynamic_size") is not False:
        parts += ["--input-size", str(size[0])]  # a record older than dynamic_size: the size may be needed
    if isinstance(sidecar.get("workspace_gb"), int | float):
        parts += ["--workspace-gb", f"{sidecar['workspace_gb']:g}"]
    if sidecar.get("tf32") is False:
        parts.append("--no-tf32")
    return " ".join(shlex.quote(p) for p in parts)


def graph_info_of_plan(plan: str | Path, record: dict | None = None) -> GraphInfo:
    """The export metadata a plan was built from (its sidecar's copy), as for an ONNX graph.

    The record is JSON a user can edit (its sha256 covers the plan, not itself), so each field is held
    to the type ``build-engine`` writes: a string ``outputs`` would otherwise be split into letters."""
    record = record if record is not None else read_sidecar(plan)
    where = str(sidecar_path(plan))

    def field(key: str, kinds: tuple[type, ...], what: str, optional: bool = False):
        value = g.get(key) if optional else g[key]
        if value is None and optional:
            return None
        if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):  # JSON true is no number
            return value
        raise BagcamsError(f"{where}: metadata '{key}' must be {what}, got {value!r}")

    def number_triple(key: str) -> tuple[float, float, float]:
        value = g[key]  # JSON numbers: a string would be read digit by digit ("485"), true as 1.0
        numbers = isinstance(value, list) and all(type(v) in (int, float) for v in value)
        if not numbers:
            raise BagcamsError(f"{where}: metadata '{key}' is not a list of numbers: {value!r}")
        return float_triple(value, key, where)

    def int_pair(key: str) -> tuple[int, int]:
        value = g[key]
        if isinstance(value, list) and len(value) == 2 and all(type(v) is int and v > 0 for v in value):
            return value[0], value[1]
        raise BagcamsError(f"{where}: metadata '{key}' must be [height, width], got {value!r}")

    try:
        g = record["graph"]
        if not isinstance(g, dict):
            raise BagcamsError(f"{where}: 'graph' must be the export metadata, got {g!r}")
        outputs = field("outputs", (list,), "a list of output names")
        if not all(isinstance(name, str) for name in outputs):
            raise BagcamsError(f"{where}: metadata 'outputs' must be a list of output names, got {outputs!r}")
        return GraphInfo(
            path=str(plan),
            method=field("method", (str,), "a method name"),
            target_layer=field("target_layer", (str,), "a layer name"),
            architecture=field("architecture", (str,), "an architecture name"),
            num_classes=field("num_classes", (int,), "an integer"),
            input_size=int_pair("input_size"),
            mean=number_triple("mean"),
            std=number_triple("std"),
            gradient_scale=float(field("gradient_scale", (int, float), "a number")),
            precision=field("precision", (str,), "a precision name"),
            outputs=tuple(outputs),
            producer_version=str(g.get("producer_version", "")),
            large_feature_map=field("large_feature_map", (bool,), "true or false", optional=True),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BagcamsError(f"{where}: incomplete export metadata ({exc})") from None


def read_sidecar(plan: str | Path) -> dict:
    """The plan's record; a plan without one was not built by ``build-engine`` and is refused."""
    plan = Path(plan)
    if not plan.is_file():
        raise BagcamsError(f"TensorRT plan not found: {plan}")
    side = sidecar_path(plan)
    if not side.is_file() and (plan.suffix.lower() == ".onnx" or _looks_like_onnx(plan)):
        raise BagcamsError(f"{plan} is an ONNX graph, not a TensorRT plan: build one with bagcams-deploy build-engine")
    if not side.is_file():
        raise BagcamsError(
            f"{plan} has no {side.name} beside it (the export metadata and build record that "
            "bagcams-deploy build-engine writes); rebuild the plan with build-engine"
        )
    try:
        record = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BagcamsError(f"{side} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise BagcamsError(f"{side} is not a bagcams-deploy plan record")
    digest = file_sha256(plan)
    if record.get("plan_sha256") != digest:
        raise BagcamsError(f"{plan} does not match its record {side.name} (sha256 differs): rebuild the plan")
    return record


def _looks_like_onnx(path: Path) -> bool:
    """ONNX files start with the protobuf fields ``ir_version`` (tag 0x08, a one-byte varint) and
    ``producer_name`` (tag 0x12)."""
    with path.open("rb") as f:
        head = f.read(3)
    return len(head) == 3 and head[0] == 0x08 and head[2] == 0x12


def current_system() -> SystemInfo:
    """The running TensorRT version and the CUDA device engines will run on (needs tensorrt and pycuda):
    :func:`~bagcams_deploy.kernels.cuda_context.cuda_device`, the one the backend's context uses."""
    from ..kernels.cuda_context import cuda_device

    trt = require("tensorrt", "a TensorRT engine", _TRT_HINT)  # "a TensorRT engine needs 'tensorrt'"
    drv = require("pycuda.driver", "a TensorRT engine", _PYCUDA_HINT)
    dev = cuda_device(drv, "TensorRT")  # the device the backend will run on
    try:
        tensorrt_release(str(trt.__version__))
        return SystemInfo(str(trt.__version__), dev.name(), tuple(dev.compute_capability()))
    except drv.Error as exc:
        raise BagcamsError(f"cannot query the CUDA device: {exc}") from None


def tensorrt_release(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string; refuses releases older than :data:`MIN_TENSORRT`."""
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        raise BagcamsError(f"cannot read the TensorRT version {version!r}") from None
    if len(release) != 2 or release < MIN_TENSORRT:
        need = ".".join(map(str, MIN_TENSORRT))
        raise BagcamsError(f"TensorRT {version} is too old: bagcams-deploy needs TensorRT {need} or later "
                           f"(pip install -U 'tensorrt>={need}')")  # fmt: skip
    return release  # type: ignore[return-value]


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: BatchProfile = BatchProfile(),
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
    log: Callable[[str], None] | None = None,
    tf32: bool = True,
) -> dict:
    """Parse the graph, build a plan with one optimization profile, write plan + sidecar; returns the record.

    ``tf32`` (TensorRT's default) lets float32 convolutions and matrix products use TF32 on Ampere and
    later: faster, with ~1e-3 relative error in the gradients (masks stay exact: TF32 keeps float32's
    exponent range). ``tf32=False`` keeps them IEEE float32 for verification-grade agreement."""
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    info = read_graph_info(onnx_path)  # also: "not ours" / missing file errors, before TensorRT is needed
    if not plan_path.name.lower().endswith(PLAN_SUFFIXES):
        raise BagcamsError(
            f"--output {plan_path}: name the plan *{' or *'.join(PLAN_SUFFIXES)} (the suffixes every command opens "
            "as a TensorRT engine)"
        )
    output_file(plan_path, "--output", {"the ONNX graph": onnx_path})
    output_file(sidecar_path(plan_path), "--output's record", {"the ONNX graph": onnx_path})
    cache_path = Path(timing_cache) if timing_cache else None
    output_file(cache_path, "--timing-cache", {"the ONNX graph": onnx_path, "the plan": plan_path,
                                               "the plan's record": sidecar_path(plan_path)})  # fmt: skip
    if cache_path is not None and cache_path.absolute() in (plan_path.absolute(), sidecar_path(plan_path).absolute()):
        raise BagcamsError(f"--timing-cache {cache_path} is the plan or its record; give the cache its own file")
    if cache_path is not None and cache_path.exists() and not os.access(cache_path, os.R_OK):
        raise BagcamsError(f"--timing-cache {cache_path}: the file is not readable")
    # read before anything is written, so nothing the build writes can change them
    class_names = list(class_names_of(onnx_path) or []) or None
    onnx_sha256 = file_sha256(onnx_path)
    profile.check()
    if workspace_gb <= 0:
        raise BagcamsError(f"--workspace-gb must be > 0, got {workspace_gb}")
    size = info.input_size
    if size is None:
        if input_size is None:
            raise BagcamsError(f"{onnx_path} has a dynamic input size: give --input-size for the engine's profile")
        size = input_size
    elif input_size is not None and tuple(input_size) != tuple(size):
        raise BagcamsError(f"{onnx_path} takes {size[0]}x{size[1]} images; --input-size {input_size} disagrees")
    system = current_system()
    trt = require("tensorrt", "build-engine", _TRT_HINT)
    say = log or (lambda _m: None)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if tensorrt_release(str(trt.__version__)) < (11, 0):  # TensorRT 11: always strongly typed, the flag is deprecated
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BagcamsError(f"TensorRT could not parse {onnx_path}: " + " | ".join(errors[:3]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    h, w = size
    opt_profile.set_shape("image", (profile.min_batch, 3, h, w), (profile.opt_batch, 3, h, w),
                          (profile.max_batch, 3, h, w))  # fmt: skip
    opt_profile.set_shape("class_id", (profile.min_batch,), (profile.opt_batch,), (profile.max_batch,))
    config.add_optimization_profile(opt_profile)

    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            # refused (made on another GPU or TensorRT): fail now, not after minutes of building
            raise BagcamsError(
                f"TensorRT refused the timing cache {cache_path} (made with another GPU or TensorRT?): "
                "delete it or give another --timing-cache"
            )
        say(f"timing cache {cache_path} ({'read ' + str(len(blob)) + ' bytes' if blob else 'new'})")

    batches = f"{profile.min_batch}/{profile.opt_batch}/{profile.max_batch}"
    say(f"building {system.device_name} engine with TensorRT {system.tensorrt_version} "
        f"(batch {batches}, {h}x{w}, {info.precision} graph)")  # fmt: skip
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BagcamsError(f"TensorRT failed to build an engine from {onnx_path} (see the messages above)")
    seconds = time.perf_counter() - t0

    with write_atomically(plan_path) as f:
        f.write(memoryview(serialized))
    graph = {k: v for k, v in asdict(info).items() if k != "path"}
    graph["input_size"] = [h, w]
    graph["dynamic_size"] = info.input_size is None  # rebuild_command gives --input-size again
    record = {
        "format": SIDECAR_FORMAT,
        "graph": graph,
        "class_names": class_names,
        "source_onnx": str(onnx_path.resolve()),  # absolute: rebuild hints are read from anywhere
        "source_onnx_sha256": onnx_sha256,
        "plan_sha256": file_sha256(plan_path),
        "profile": asdict(profile),
        "workspace_gb": workspace_gb,
        "tf32": tf32,
        "build_seconds": seconds,
        "built_with": {
            "tensorrt_version": system.tensorrt_version,
            "device_name": system.device_name,
            "compute_capability": list(system.compute_capability),
        },
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    sidecar_path(plan_path).write_text(json.dumps(record, indent=2) + "\n")
    mb = plan_path.stat().st_size / 1e6
    say(f"wrote {plan_path} ({mb:.1f} MB) in {seconds:.0f}s and {sidecar_path(plan_path).name}")
    if cache_path is not None:  # last: a cache that cannot be written must not cost the engine
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        except OSError as exc:
            say(f"warning: timing cache {cache_path} not written ({exc.strerror or exc}); the engine is fine")
    return record
