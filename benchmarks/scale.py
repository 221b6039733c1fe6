"""Does a command's cost grow with the images it uses, or with the folder? Synthetic folders of 1k, 10k and 100k small
images (generated here, each one different), measured in one run:

  - warm 16-shot tune: `edgeprompt tune --method coop --shots 16 --epochs 1` after one run has cached the shots'
    features (best of two), and its end-to-end ratio to the 1k folder's (goal: <= 1.5x at 100k);
  - warm eval on the run's tuning images (`edgeprompt eval RUN --train`), best of two;
  - the feature store's bytes read against the bytes of features used in the warm tune (goal: <= 2x);
  - `edgeprompt extract` of the whole folder's centre views (cold cache) in images/s (goal: linear, i.e. flat
    images/s), into the cache the tune then uses (--extract-max skips the largest sizes).

Every command runs as a subprocess of the CLI, as a user runs it. `--python` and `--src` time another checkout (the
"before" of a change): `--src /path/to/old/checkout` puts that tree first on PYTHONPATH.

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--extract-max 10000] [--src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 20
SIDE = 32


def make_folder(root: Path, n: int) -> Path:
    """``n`` different 32-px PNGs in 20 class folders (smooth random colour fields; kept between runs)."""
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(n)
    for c in range(CLASSES):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((SIDE, SIDE), Image.Resampling.BILINEAR).save(
            root / f"class_{i % CLASSES:02d}" / f"{i:06d}.png", compress_level=1)
    done.write_text("")
    return root


def cli(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Run ``edgeprompt ARGS --json``; (wall seconds, the JSON result)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeprompt.cli.main", "-q", *args, "--json"], capture_output=True,
                          text=True, env=env, check=False, cwd="/")  # not a checkout's root: --src must win
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"edgeprompt {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--extract-max", type=int, default=10000, help="extract only folders up to this size")
    ap.add_argument("--data", type=Path, default=Path("/tmp/edgeprompt-scale/data"), help="kept between runs")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgeprompt-scale/out"))
    ap.add_argument("--src", type=Path, help="a checkout to time instead of the installed edgeprompt")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if args.src:
        env["PYTHONPATH"] = f"{args.src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        folder = make_folder(args.data / f"n{n}", n)
        print(f"{n} images ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        out = args.out / f"n{n}"
        cache = out / "cache"
        row: dict = {"images": n}
        if n <= args.extract_max:  # the whole folder's centre views first: the tune then reads 320 rows of them
            xs, _ = cli(["extract", str(folder), "--cache-dir", str(cache), "--views", "0"], env)
            row["extract_img_per_s"] = round(n / xs, 1)
        tune = ["tune", str(folder), "--method", "coop", "--shots", "16", "--epochs", "1", "--cache-dir",
                str(cache), "--out", str(out / "run"), "--overwrite"]
        cli(tune, env)  # cold: caches the sampled shots' augmented views
        warm = [cli(tune, env) for _ in range(2)]
        wall, res = min(warm, key=lambda w: w[0])
        ev = min(cli(["eval", str(out / "run"), "--train", "--cache-dir", str(cache)], env)[0]
                 for _ in range(2))
        store = res.get("cache", {})
        row.update({"tune_warm_s": round(wall, 2), "eval_warm_s": round(ev, 2),
                    "bytes_read": store.get("bytes_read"), "bytes_used": store.get("bytes_used")})
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["tune_warm_s"]
    print(f"\n| images | warm 16-shot tune (s) | x {rows[0]['images']} | warm eval --train (s) | feature bytes read / "
          f"used | extract (images/s, incl. start-up) |\n|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['bytes_read'] / r['bytes_used']:.2f}" if r.get("bytes_read") and r.get("bytes_used") else "n/a"
        print(f"| {r['images']} | {r['tune_warm_s']} | {r['tune_warm_s'] / base:.2f} | {r['eval_warm_s']} | {ratio} | "
              f"{r.get('extract_img_per_s', '–')} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
