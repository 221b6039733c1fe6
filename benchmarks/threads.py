"""How many threads should edgeprompt use? tune, extract and predict at 1 and 2 threads (``--threads``) and at the
libraries' default (no option), on a quiet machine and beside one competing CPU-bound process (a busy loop, as
another job on a shared machine), measured in one run, best of two per cell.

    python benchmarks/threads.py [--data DIR]

The world's data (seed 0, 16 per class) and a CoOp bundle are made first when not given.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("/tmp/edgeprompt-threads")


def busy(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1_000_003


def settle(limit_s: float = 240) -> None:
    """Wait for the load average to fall below 0.3 (earlier commands' load decays over minutes)."""
    t0 = time.time()
    while os.getloadavg()[0] > 0.3 and time.time() - t0 < limit_s:
        time.sleep(5)


def run(args: list[str], threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "EDGEPROMPT_THREADS")}
    root = ["-q"] + (["--threads", str(threads)] if threads else [])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeprompt.cli.main", *root, *args], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{args} failed: {proc.stderr[-400:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--jobs", default="tune,extract,predict", help="which of tune, extract, predict to time")
    a = ap.parse_args()
    data = a.data or WORK / "data"
    if not (data / "train").is_dir():
        run(["data", "shapes", str(data), "--per-class", "16", "--overwrite"], None)
    cache = WORK / "cache"
    tune = ["tune", str(data / "train"), "--method", "coop", "--out", str(WORK / "run"), "--overwrite",
            "--cache-dir", str(cache)]
    run(tune, None)  # fills the cache: the timed tunes are warm
    bundle = WORK / "bundle"
    if not (bundle / "manifest.json").is_file():
        run(["export", str(WORK / "run"), "--out", str(bundle), "--overwrite"], None)
    jobs = {
        "tune (warm, 50 epochs)": tune,
        "extract (cold, 960 images, 8 views)": ["extract", str(data / "train"), "--cache-dir", str(WORK / "xcache"),
                                                "--views", "8"],
        "predict (800 images)": ["predict", str(bundle), str(data / "test"), "--format", "jsonl"],
    }
    jobs = {k: v for k, v in jobs.items() if k.split()[0] in a.jobs.split(",")}
    rows = []
    for load in ("quiet", "one busy process"):
        stop = multiprocessing.Event()
        hog = multiprocessing.Process(target=busy, args=(stop,), daemon=True) if load != "quiet" else None
        if hog:
            hog.start()
            time.sleep(60)  # the 1-minute load average, which the default reads, takes about this long to see it
        else:
            settle()
        try:
            for name, args in jobs.items():
                for threads in (None, 1, 2):
                    times = []
                    for _ in range(2):
                        if name.startswith("extract"):
                            subprocess.run(["rm", "-rf", str(WORK / "xcache")], check=True)
                        times.append(run(args, threads))
                    rows.append({"machine": load, "job": name, "threads": threads or "default",
                                 "seconds": round(min(times), 2)})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stop.set()
            if hog:
                hog.join()
    print(f"\n{os.cpu_count()} cores; seconds, best of two (whole command, start-up included); default: no option "
          f"(every core on a quiet machine, fewer when the load average says cores are busy)\n")
    print("| machine | job | default | --threads 1 | --threads 2 |\n|---|---|---|---|---|")
    for load in ("quiet", "one busy process"):
        for name in jobs:
            cell = {r["threads"]: r["seconds"] for r in rows if r["machine"] == load and r["job"] == name}
            print(f"| {load} | {name} | {cell['default']} | {cell[1]} | {cell[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
