#!/usr/bin/env python3
"""Benchmark the fused CUDA aggregation kernel (needs a CUDA GPU and pycuda; torch optional).

For every method, input dtype and batch size N (K=1024, h=w=28 -> H=W=224 by default) it reports:
  * the time of one whole map computation (the 4 kernels of one ``AggregationKernel.launch``),
    measured with CUDA events over many back-to-back launches after a warm-up;
  * the achieved bandwidth: (bytes of F + g read + bytes of the map written) / time;
  * the device-to-device copy bandwidth measured in the same run (cuMemcpyDtoD of a large buffer,
    counted as bytes read + bytes written), and the kernel's fraction of it;
  * the max abs error of the map against the torch formula (bagcams_deploy.methods.aggregation
    .gradient_map, on CUDA when torch has it, else on CPU) when torch is installed.
Results go to benchmarks/results/kernel_<device-name>.json (and a table on stdout).

    python benchmarks/bench_kernel.py                      # defaults above
    python benchmarks/bench_kernel.py --batches 1 8 --dtypes float16 --iters 200
Exits with status 2 and a one-line message when pycuda or a CUDA device is missing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_RESULTS = ROOT / "benchmarks" / "results"


def fail(message: str, code: int = 2) -> None:
    print(f"bench_kernel: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["bagcams", "gradcam", "gradcampp", "pcs"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--channels", type=int, default=1024, help="K")
    p.add_argument("--feature-size", type=int, default=28, help="h = w")
    p.add_argument("--out-size", type=int, default=224, help="H = W")
    p.add_argument("--gradient-scale", type=float, default=None, help="default: 1 for float32, 1024 for float16")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the D2D copy buffer")
    p.add_argument("--no-check", action="store_true", help="skip the accuracy check against torch")
    p.add_argument("--output", type=Path, default=None, help="JSON path (default: results/kernel_<device>.json)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_inputs(shape, dtype, gradient_scale, rng):
    """F >= 0 like post-ReLU features; per-channel gradient sign with a few small opposite entries."""
    n, k = shape[:2]
    f = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0.0)
    sign = np.where(rng.random((n, k, 1, 1)) < 0.5, -1.0, 1.0).astype(np.float32)
    g = sign * (0.25 + np.abs(rng.standard_normal(shape, dtype=np.float32)))
    flip = rng.random(shape, dtype=np.float32) < 0.1
    g = np.where(flip, -sign * rng.uniform(0.0, 0.3, shape).astype(np.float32), g) * gradient_scale
    return np.ascontiguousarray(f, dtype=dtype), np.ascontiguousarray(g, dtype=dtype)


def torch_oracle():
    try:
        import torch

        from bagcams_deploy.methods.aggregation import gradient_map
    except Exception as exc:
        return None, f"torch unavailable ({type(exc).__name__}: {exc})"
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def oracle(method, f, g, size, scale):
        tf = torch.from_numpy(f).to(device)
        tg = torch.from_numpy(g).to(device)
        with torch.no_grad():
            return gradient_map(method, tf, tg, size, scale).cpu().numpy()

    return oracle, f"torch {torch.__version__} on {device}, float32 gradient_map"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import pycuda.driver as drv
    except Exception as exc:
        fail(f"needs pycuda and a CUDA GPU: cannot import pycuda.driver ({type(exc).__name__}: {exc})")
    try:
        drv.init()
        count = drv.Device.count()
    except Exception as exc:
        fail(f"needs a CUDA GPU: the CUDA driver is not usable ({exc})")
    if count < 1:
        fail("needs a CUDA GPU: no CUDA device found")

    from bagcams_deploy.errors import BagcamsError
    from bagcams_deploy.kernels.cuda_context import PrimaryContext

    try:
        context = PrimaryContext(drv, what="bench_kernel")
    except BagcamsError as exc:
        fail(str(exc))
    with context:  # this script's own PyCUDA calls (streams, copies, events) run in the primary context
        return _run(args, drv)


def _run(args: argparse.Namespace, drv) -> int:
    from bagcams_deploy.errors import BagcamsError
    from bagcams_deploy.kernels.bandwidth import DeviceCopy, aggregation_bytes, time_events
    from bagcams_deploy.kernels.launcher import AggregationKernel

    try:
        kernels = {(m, d): AggregationKernel(m, d) for m in args.methods for d in args.dtypes}
    except BagcamsError as exc:
        fail(str(exc))
    first = next(iter(kernels.values()))
    dev = drv.Context.get_device()
    device_name = dev.name()
    stream = drv.Stream()

    try:
        spacer = DeviceCopy(drv, stream, args.copy_mib)
    except BagcamsError as exc:
        fail(str(exc))
    copy = spacer.measure(args.warmup, args.iters)
    print(f"device: {device_name}  (D2D copy {copy['gbps_read_plus_write']:.0f} GB/s read+write)")
    oracle, oracle_note = (None, "skipped (--no-check)") if args.no_check else torch_oracle()

    k, hw, out = args.channels, args.feature_size, args.out_size
    rng = np.random.default_rng(args.seed)
    rows = []
    header = f"{'method':<10} {'dtype':<8} {'N':>3} {'path':<5} {'ms':>9} {'GB/s':>8} {'%copy':>6} {'max err':>9}"
    print(header)
    print("-" * len(header))
    for dtype in args.dtypes:
        scale = args.gradient_scale if args.gradient_scale is not None else (1.0 if dtype == "float32" else 1024.0)
        for n in args.batches:
            shape = (n, k, hw, hw)
            f, g = make_inputs(shape, dtype, scale, rng)
            d_f = drv.to_device(f)
            d_g = drv.to_device(g)
            d_o = drv.mem_alloc(n * out * out * 4)
            try:
                for method in args.methods:
                    kernel = kernels[(method, dtype)]
                    plan = kernel.plan(n, k, hw, hw, out, out)

                    ptrs = (int(d_f), int(d_g), int(d_o))

                    def launch(kernel=kernel, ptrs=ptrs, n=n, scale=scale):
                        kernel.launch(*ptrs, n, k, hw, hw, out, out, scale, stream)

                    ms, host_us = time_events(drv, stream, launch, args.warmup, args.iters, spacer)
                    moved = aggregation_bytes(n, k, hw, hw, out, out, f.itemsize)
                    gbps = moved / (ms * 1e-3) / 1e9
                    err = None
                    if oracle is not None:
                        launch()
                        stream.synchronize()
                        got = np.empty((n, 1, out, out), dtype=np.float32)
                        drv.memcpy_dtoh(got, d_o)
                        err = float(np.abs(got - oracle(method, f, g, (out, out), scale)).max())
                    row = {
                        "method": method,
                        "dtype": dtype,
                        "n": n,
                        "k": k,
                        "h": hw,
                        "w": hw,
                        "out_h": out,
                        "out_w": out,
                        "gradient_scale": scale,
                        "partial_path": "smem" if kernel.uses_shared_memory(plan) else "gmem",
                        "channel_groups": plan.groups,
                        "channels_per_block": plan.channels_per_block,
                        "ms": ms,
                        "host_enqueue_us": host_us,
                        "bytes_moved": moved,
                        "gbps": gbps,
                        "fraction_of_copy_bandwidth": gbps / copy["gbps_read_plus_write"],
                        "max_abs_err": err,
                    }
                    rows.append(row)
                    err_s = f"{err:9.2e}" if err is not None else f"{'-':>9}"
                    print(
                        f"{method:<10} {dtype:<8} {n:>3} {row['partial_path']:<5} {ms:9.4f} {gbps:8.1f} "
                        f"{100 * row['fraction_of_copy_bandwidth']:5.1f}% {err_s}"
                    )
            finally:
                d_f.free()
                d_g.free()
                d_o.free()
    spacer.free()

    result = {
        "device": device_name,
        "compute_capability": list(dev.compute_capability()),
        "driver_version": drv.get_driver_version(),
        "pycuda_cuda_version": list(drv.get_version()),
        "module": first.module_origin,
        "python": platform.python_version(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "CUDA events around `iters` back-to-back launches of the 4 kernels (queued behind a D2D "
        "copy filler so host enqueue time is hidden), per launch",
        "bandwidth": "bytes of F + g read + bytes of the float32 map written, per launch time",
        "copy": copy,
        "oracle": oracle_note,
        "results": rows,
    }
    path = args.output or DEFAULT_RESULTS / f"kernel_{re.sub(r'[^A-Za-z0-9._-]+', '_', device_name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
