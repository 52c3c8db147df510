"""``python -m bagcams_deploy.scenes --out DIR --train N --val M --test K --seed S``."""

from __future__ import annotations

import argparse
import sys
import time

from .writer import write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bagcams_deploy.scenes", description=__doc__)
    p.add_argument("--out", required=True, help="data-set root to write")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args(argv)

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
