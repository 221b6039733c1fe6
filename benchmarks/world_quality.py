"""The offline world's quality bar (issue: the embedded default), rerunnable by anyone, offline, on a CPU.

On the downstream test split of the shape task, with the shipped edgeprompt-tiny / shapes model:
  1. zero-shot top-1 between 40 % and 85 % (a prior, not a solved task);
  2. 16-shot CoOp on clean labels at least 10 points above zero-shot;
  3. 16-shot CoOp with 75 % symmetric noise clearly below its clean result.
Also prints DSPT and CoOp at 50 % symmetric noise. Seeds are averaged; exit code 1 if the bar is missed.

    python benchmarks/world_quality.py [--seeds 3] [--epochs 200] [--out /tmp/world-quality]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from edgeprompt import api
from edgeprompt.config import TrainConfig, TuneConfig

CELLS = [("zeroshot", "none"), ("coop", "none"), ("coop", "sym:0.75"), ("coop", "sym:0.5"), ("dspt", "sym:0.5")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-world-quality")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--crop-scale", type=float, default=None, help="default: by image size (0.5 for the world)")
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "test").is_dir():
        api.data_shapes(data, task="shape", per_class=16, seed=0, overwrite=True)
    results: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for method, noise in CELLS:
            run = out / "runs" / f"{method}-{noise}-s{seed}"
            api.tune(TuneConfig(train=str(data / "train"), out=str(run), method=method, shots=16, noise=noise,
                                crop_scale=args.crop_scale, cache_dir=str(out / "cache"), overwrite=True,
                                train_cfg=TrainConfig(epochs=args.epochs, seed=seed, eval_every=0)))
            top1 = api.evaluate(run, data / "test", cache_dir=str(out / "cache"))["top1"]
            results.setdefault(f"{method} {noise}", []).append(100 * top1)
            print(f"seed {seed}  {method:8s} {noise:9s} {100 * top1:5.1f}", flush=True)
    mean = {k: statistics.fmean(v) for k, v in results.items()}
    zs, clean, noisy = mean["zeroshot none"], mean["coop none"], mean["coop sym:0.75"]
    checks = {
        "zero-shot in [40, 85]": 40 <= zs <= 85,
        "CoOp clean >= zero-shot + 10": clean >= zs + 10,
        "CoOp 75% sym clearly below clean (>= 10 points)": noisy <= clean - 10,
    }
    print(f"\nmean over {args.seeds} seeds ({time.perf_counter() - t0:.0f} s):")
    for k, v in mean.items():
        print(f"  {k:16s} {v:5.1f} ± {statistics.pstdev(results[k]):.1f}")
    for k, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {k}")
    print(json.dumps({"mean": mean, "runs": results, "checks": checks}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
