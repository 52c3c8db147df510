#!/usr/bin/env python3
"""How ``localize`` and ``evaluate`` scale with the number of images (CPU only).

For each N it writes N test scenes (``python -m bagcams_deploy.scenes``, small images so that thousands
fit in minutes), then runs, each as its own process, ``bagcams-deploy localize`` over the folder and
``bagcams-deploy evaluate`` over the split (boxes and masks), and records wall time, seconds per image,
peak RSS (the child's ``ru_maxrss``), localize's time to its first output file, the size of
``boxes.json`` and the time of localize's checks of the folder alone (listing, duplicate stems, earlier
outputs, image headers). The model is the shipped demo model exported at ``--input-size``. Memory
must not grow with N beyond the run record (~1 KB per image): evaluate keeps counters and histograms,
localize streams each batch to disk.

    python benchmarks/scale.py                              # N = 100, 1000 at 64 px
    python benchmarks/scale.py --sizes 100,1000,10000 --work /tmp/scale-bench

Everything it generates lies under ``--work`` and is deleted at the end (``--keep`` keeps it).
Results: ``benchmarks/results/scale_cpu<N>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-c", "from bagcams_deploy.cli import main; main()"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000", help="comma-separated image counts")
    p.add_argument("--image-size", type=int, default=64, help="scene side in pixels")
    p.add_argument("--input-size", type=int, default=64, help="graph input side")
    p.add_argument("--threads", type=int, default=1, help="backend threads (--threads)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    return p.parse_args(argv)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_measured(args: list[str], first_output: Path | None = None) -> dict:
    """Run a command; wall seconds, peak RSS (MB) and, with ``first_output``, seconds until that
    folder holds a file other than the record."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    first = None
    while first_output is not None and proc.poll() is None and first is None:
        if first_output.is_dir() and any(e.name.endswith(".npy") for e in os.scandir(first_output)):
            first = time.perf_counter() - t0
        time.sleep(0.05)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{stderr}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "first_output_s": None if first is None else round(first, 2)}  # fmt: skip


def checks_alone(folder: Path, out: Path) -> float:
    """Seconds of localize's checks before its first batch (listing, stems, earlier outputs, headers)."""
    from bagcams_deploy.images import check_images
    from bagcams_deploy.localize import check_run_outputs
    from bagcams_deploy.outputs import check_distinct_stems
    from bagcams_deploy.preprocessing import expand_image_paths

    t0 = time.perf_counter()
    paths = expand_image_paths([folder])
    check_distinct_stems(paths)
    check_run_outputs(paths, out, "localize")
    check_images(paths)
    return round(time.perf_counter() - t0, 3)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    work = a.work or Path(tempfile.mkdtemp(prefix="bagcams-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        model = work / f"demo_{a.input_size}.onnx"
        ckpt = ROOT / "bagcams_deploy" / "assets" / "scenes_resnet18.npz"
        run_measured([*CLI, "export", ckpt, "-o", model, "--input-size", a.input_size])
        threads = ["--threads", a.threads]
        for n in sizes:
            data = work / f"scenes{n}"
            run_measured([sys.executable, "-m", "bagcams_deploy.scenes", "--out", data, "--train", 0, "--val", 0,
                          "--test", n, "--size", a.image_size])  # fmt: skip
            images, out = data / "images" / "test", work / f"localize{n}"
            listing = checks_alone(images, out)
            loc = run_measured([*CLI, "localize", images, "--model", model, "--out", out, *threads], out)
            record_mb = (out / "boxes.json").stat().st_size / 1e6
            ev = run_measured([*CLI, "evaluate", "--model", model, "--metadata", data / "metadata" / "test",
                               "--data-root", data / "images", "--mask-metadata", data / "metadata_masks" / "test",
                               "--mask-root", data / "masks", *threads])  # fmt: skip
            for command, r in (("localize", loc), ("evaluate", ev)):
                row = {"command": command, "n": n, **r, "s_per_image": round(r["wall_s"] / n, 4)}
                if command == "localize":
                    row.update(checks_s=listing, boxes_json_mb=round(record_mb, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(out)
            shutil.rmtree(data)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    cpus = os.cpu_count()
    dest = a.out or ROOT / "benchmarks" / "results" / f"scale_cpu{cpus}.json"
    doc = {
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "logical_cpus": cpus,
        "image_size": a.image_size,
        "input_size": a.input_size,
        "threads": a.threads,
        "note": "wall_s includes start-up (imports, model load, ~4 s); first_output_s is localize's first .npy",
        "rows": rows,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| command | N | wall s | s/image | peak RSS MB | first output s | checks s | boxes.json MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        cells = [r["command"], r["n"], r["wall_s"], r["s_per_image"], r["peak_rss_mb"], r.get("first_output_s"),
                 r.get("checks_s"), r.get("boxes_json_mb")]  # fmt: skip
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    dest.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {dest} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
