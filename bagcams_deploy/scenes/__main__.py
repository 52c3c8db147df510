"""``python -m bagcams_deploy.scenes --out DIR --train N --val M --test K --seed S``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

from ..errors import BagcamsError
from .writer import MAX_SIZE, write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bagcams_deploy.scenes", description=__doc__)
    p.add_argument("--out", required=True, help="data-set root to write")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args(argv)
    try:
        return _write(a)
    except (BagcamsError, OSError, ValueError) as exc:  # bad options or an unwritable place: one line
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 1
    except (MemoryError, cv2.error) as exc:  # an image too large for this machine's memory
        print(f"error: could not make {a.size} px scenes ({_first_line(exc)}); use a smaller --size", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; {a.out} is incomplete (classes.json says \"complete\": false, and the split "
              "being written has no metadata): rerun to finish it", file=sys.stderr)  # fmt: skip
        return 130


def _first_line(exc: BaseException) -> str:
    """One line of an exception's text; for OpenCV's, the part after its source location."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return "out of memory" if isinstance(exc, MemoryError) else type(exc).__name__
    return lines[0].split(" error: ", 1)[-1] if isinstance(exc, cv2.error) else lines[0]


def _write(a: argparse.Namespace) -> int:
    from ..outputs import output_dir

    for name in ("train", "val", "test", "seed"):
        if getattr(a, name) < 0:
            raise BagcamsError(f"--{name} must be >= 0, got {getattr(a, name)}")
    if a.train + a.val + a.test == 0:
        raise BagcamsError("nothing to write: --train, --val and --test are all 0")
    if a.size < 32:
        raise BagcamsError(f"--size must be >= 32, got {a.size}")
    if a.size > MAX_SIZE:
        raise BagcamsError(
            f"--size must be <= {MAX_SIZE}, got {a.size} (each object is rasterised at 3x the size while it "
            "is placed, so memory grows with 9 x size^2 per image; WSOL models run at 224)"
        )
    if not str(a.out).strip():
        raise BagcamsError("--out is empty")
    output_dir(Path(a.out), "--out")

    def progress(split: str, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            print(f"{split}: {done}/{total}", file=sys.stderr)

    t0 = time.perf_counter()
    counts = {"train": a.train, "val": a.val, "test": a.test}
    root = write_dataset(a.out, counts, seed=a.seed, size=a.size, progress=progress)
    print(f"wrote {sum(counts.values())} images to {root} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
