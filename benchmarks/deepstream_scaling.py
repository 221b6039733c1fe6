"""What DeepStream's scaling costs against edgeprompt's centre crop, measured on the offline world.

nvinfer cannot centre-crop: it scales the whole frame to the network's square, squashing it
(``maintain-aspect-ratio=0``) or padding it with black bars (``maintain-aspect-ratio=1``, ``symmetric-padding=1``),
bilinear; or it is handed the centre square (``nvvideoconvert src-crop``, as the written README's pipeline does).
This script emulates the three with PIL (bilinear, as ``scaling-filter=1``; nvinfer's GPU/VIC scaler is not
bit-identical) and compares them with the bundle's own preprocessing on the world's test images, as they are
(square) and widened to 4:3 and 16:9 frames by mirroring the background at the sides (the shape stays in the centre,
where a camera would frame it). Each variant runs through the same bundle on onnxruntime-CPU.

    python benchmarks/deepstream_scaling.py [--bundle B --data TEST_FOLDER]

Without --bundle it builds one: world data (seed 0, 16 per class), CoOp --csc on 16 shots, export (about a minute here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgeprompt.data import load_labeled
from edgeprompt.preprocess import preprocess_batch
from edgeprompt.runtime import load_bundle

ASPECTS = {"1:1": 1.0, "4:3": 4 / 3, "16:9": 16 / 9}


def widen(img: Image.Image, aspect: float) -> Image.Image:
    """The image in the centre of a wider frame whose sides mirror its background."""
    w, h = img.size
    extra = round(h * aspect) - w
    if extra <= 0:
        return img
    arr = np.asarray(img)
    left, right = extra // 2, extra - extra // 2
    return Image.fromarray(np.pad(arr, ((0, 0), (left, right), (0, 0)), mode="symmetric"))


def nvinfer_pixels(img: Image.Image, size: int, scaling: str) -> np.ndarray:
    """(3, size, size) in [0, 1] as nvinfer feeds a graph with net-scale-factor 1/255: squash, or pad (letterbox)."""
    if scaling == "crop":  # nvvideoconvert src-crop to the centre square, then nvinfer scales a square
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        out = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    elif scaling == "squash":
        out = img.resize((size, size), Image.Resampling.BILINEAR)
    else:
        w, h = img.size
        s = size / max(w, h)
        inner = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
        out = ImageOps.pad(inner, (size, size), color=(0, 0, 0), centering=(0.5, 0.5))
    return np.asarray(out, dtype=np.float32).transpose(2, 0, 1) / 255


def build(out: Path) -> tuple[Path, Path]:
    from edgeprompt.config import ExportConfig, TrainConfig, TuneConfig
    from edgeprompt.export import export_run
    from edgeprompt.train.run import tune
    from edgeprompt.world import shapes

    data = out / "data"
    if not (data / "test").is_dir():
        shapes.write_dataset(data, task="shape", per_class=16, seed=0, overwrite=True)
    run = out / "run"
    if not (run / "manifest.json").is_file():
        tune(TuneConfig(train=str(data / "train"), out=str(run), method="coop",
                        method_options={"class_specific": True}, shots=16, cache_dir=str(out / "cache"),
                        overwrite=True, train_cfg=TrainConfig(seed=1, eval_every=0)))
    bundle = out / "bundle"
    if not (bundle / "manifest.json").is_file():
        export_run(ExportConfig(source=str(run), out=str(bundle), overwrite=True))
    return bundle, data / "test"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--data", type=Path, help="labeled test folder (with --bundle)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgeprompt-deepstream-scaling"))
    args = ap.parse_args()
    bundle, test = (args.bundle, args.data) if args.bundle else build(args.out)
    ds = load_labeled(test)
    labels = np.asarray(ds.labels)
    images = [Image.open(p).convert("RGB") for p in ds.paths]
    rows = []
    with load_bundle(bundle, backend="ort-cpu") as predictor:
        spec = predictor.manifest.preprocess

        def top1(pixels: np.ndarray) -> np.ndarray:
            return predictor.run(pixels)["probs"].argmax(1)

        for name, aspect in ASPECTS.items():
            frames = [widen(im, aspect) for im in images]
            ours = top1(preprocess_batch(frames, spec))
            row = {"frame": name, "edgeprompt (crop)": 100 * float((ours == labels).mean())}
            for scaling in ("squash", "pad", "crop"):
                got = top1(np.stack([nvinfer_pixels(f, spec.image_size, scaling) for f in frames]))
                row[f"nvinfer {scaling}"] = 100 * float((got == labels).mean())
                row[f"agree {scaling}"] = 100 * float((got == ours).mean())
            rows.append(row)
    cols = list(rows[0])
    print(f"{len(labels)} test images, bundle {bundle}, top-1 % (agreement: % of frames with edgeprompt's top-1)")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) if c == "frame" else f"{r[c]:.1f}" for c in cols) + " |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
