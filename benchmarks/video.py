"""`edgeprompt predict --source` on a video, measured: frames/s and per-frame latency of the world bundle on a 300-frame
video on this CPU (onnxruntime), batch 1 and batch 8, and frame-level agreement with classifying the same images as
files. The video is written here with OpenCV from the world's test images (MJPG in .avi and mp4v in .mp4, 10 frames/s,
each image held for one frame), so the agreement also measures what the codec's loss costs.

    python benchmarks/video.py [--bundle B --data TEST_FOLDER] [--frames 300]

Without --bundle it builds one as benchmarks/deepstream_scaling.py does (CoOp --csc, world data seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edgeprompt.data import load_labeled
from edgeprompt.runtime import load_bundle
from edgeprompt.runtime.stream import StreamStats, iter_stream_predictions


def write_video(paths: list[Path], out: Path, fourcc: str, side: int) -> Path:
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), 10.0, (side, side))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {fourcc} here")
    for p in paths:
        writer.write(cv2.resize(cv2.imread(str(p)), (side, side)))
    writer.release()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--data", type=Path, help="labeled test folder (with --bundle)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgeprompt-video"))
    args = ap.parse_args()
    if args.bundle:
        bundle, test = args.bundle, args.data
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from deepstream_scaling import build

        bundle, test = build(Path("/tmp/edgeprompt-deepstream-scaling"))
    args.out.mkdir(parents=True, exist_ok=True)
    paths = list(load_labeled(test).paths)
    frames = [paths[i % len(paths)] for i in range(args.frames)]
    side = cv2.imread(str(frames[0])).shape[0]
    with load_bundle(bundle, backend="ort-cpu") as p:
        want = [t[0].label for t in p.predict(frames, top_k=1)]
    rows = []
    for fourcc, ext in (("MJPG", "avi"), ("mp4v", "mp4")):
        video = write_video(frames, args.out / f"clip.{ext}", fourcc, side)
        for batch in (1, 8):
            runs = []
            for _ in range(2):  # best of two: the first run also pays onnxruntime's session start
                stats = StreamStats()
                got = [g["top"][0]["label"] for g in iter_stream_predictions(bundle, str(video), top_k=1,
                                                                              backend="ort-cpu", batch_size=batch,
                                                                              stats=stats)]
                runs.append((stats.summary(), got))
            summary, got = max(runs, key=lambda r: r[0]["fps"] or 0)
            agree = float(np.mean([g == w for g, w in zip(got, want, strict=True)]))
            rows.append({"video": f"{ext} ({fourcc})", "batch": batch, "frames": summary["frames"],
                         "fps": summary["fps"], "p50_ms": summary["latency_ms"]["p50"],
                         "p95_ms": summary["latency_ms"]["p95"], "agreement_%": round(100 * agree, 2)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.frames} frames of {side} x {side} px, bundle {bundle}, onnxruntime CPU; agreement: frames whose "
          f"top-1 equals the image file's")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
