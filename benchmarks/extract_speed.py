"""Feature extraction at dataset scale, measured in one run on this CPU (issue: outgrowing one machine).

1. Throughput of the extractor (``FeatureCache.features``: hashing, parallel decoding in DataLoader workers,
   encoding, writing shards) against the bound, the encoder alone on pre-decoded tensors, on ViT-B-32 (random
   weights; speed does not depend on them) and 224-px centre views of real JPEG files. Goal: >= 0.8x the bound with
   two workers.
2. The time to open a warm cache of 10,000 images (freshness check by path, size and mtime; shard index; gathering
   the features) with a fresh ``FeatureCache``, as ``tune`` does. Goal: under 2 s.

    python benchmarks/extract_speed.py [--images 256] [--warm 10000] [--workers 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, size: tuple[int, int], fmt: str) -> list[Path]:
    """``n`` photo-sized noisy images with a coloured box each, in two class folders."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        d = folder / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        arr[20:90, 30:120] = rng.integers(0, 255, 3)
        p = d / f"{i:05d}.{fmt}"
        Image.fromarray(arr).save(p, quality=90) if fmt == "jpg" else Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def bound_images_per_s(backbone, paths: list[Path], batch: int) -> float:  # noqa: ANN001
    """The encoder alone: every image decoded and transformed beforehand, only ``encode_image`` timed."""
    from edgeprompt.features.cache import FeatureCache

    tf = FeatureCache(backbone, tempfile.mkdtemp(), workers=0)._eval_tf
    with torch.no_grad():
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        backbone.encode_image(x[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            backbone.encode_image(x[i : i + batch])
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--warm", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from edgeprompt.backbone import create_backbone
    from edgeprompt.features.cache import FeatureCache

    out: dict[str, object] = {"threads": args.threads, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root / "photos", args.images, (320, 240), "jpg")
        vit = create_backbone("ViT-B-32", "none")
        bound = bound_images_per_s(vit, paths, args.batch)
        t0 = time.perf_counter()
        cache = FeatureCache(vit, root / "cache", batch_size=args.batch, workers=args.workers)
        cache.features(paths)
        extractor = args.images / (time.perf_counter() - t0)
        out.update(model="ViT-B-32", images=args.images, bound_images_per_s=round(bound, 1),
                   extractor_images_per_s=round(extractor, 1), ratio=round(extractor / bound, 3))
        print(f"ViT-B-32, {args.images} JPEGs 320x240, centre view: encoder alone {bound:.1f} img/s, extractor "
              f"({args.workers} workers) {extractor:.1f} img/s = {extractor / bound:.2f}x the bound", flush=True)

        tiny = create_backbone("edgeprompt-tiny", "shapes")
        many = write_images(root / "many", args.warm, (32, 32), "png")
        FeatureCache(tiny, root / "cache", workers=args.workers).features(many)  # cold: fills the cache
        t0 = time.perf_counter()
        warm = FeatureCache(tiny, root / "cache", workers=args.workers)
        feats, _ = warm.features(many)
        opened = time.perf_counter() - t0
        assert warm.misses == 0 and feats.shape[0] == args.warm
        out.update(warm_images=args.warm, warm_open_s=round(opened, 3),
                   shards=len(list(warm.dir.glob("shards/*/*.npz"))))
        print(f"warm cache of {args.warm} images opened in {opened:.2f} s ({out['shards']} shard files)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
