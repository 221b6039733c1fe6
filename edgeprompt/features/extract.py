"""``edgeprompt extract``: compute a dataset's frozen features into the cache before tuning, on one or many processes.

Every process takes the images whose path hashes to ``i mod n`` (``--shard i/n``, or torchrun's RANK / WORLD_SIZE),
so the split needs the folder's listing only: each process checks, hashes and encodes its own share, and writes its
own shards into the shared cache; any later ``tune``, ``eval``, ``sweep``
or ``audit`` on the same backbone and views reads them all as one cache (docs/scale-out.md).

    torchrun --nproc-per-node 4 -m edgeprompt.cli.main extract food101n/train --model ViT-B-16 --pretrained openai
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

from edgeprompt.backbone import create_backbone, resolve_device
from edgeprompt.config import COOP_CROP, SMALL_IMAGE_CROP, SMALL_IMAGE_SIDE, ExtractConfig, parse_shard
from edgeprompt.data import load_labeled
from edgeprompt.data.folder import handle_problem, image_side
from edgeprompt.features.cache import AugmentSpec, FeatureCache, check_cache_dir, image_checks
from edgeprompt.progress import NullReporter, Reporter


def path_rank(path: Path, world: int) -> int:
    """Which of ``world`` processes extracts ``path``: a stable hash of its resolved path, the same in every process
    (Python's ``hash`` of a string is salted per process)."""
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % world


def extract(cfg: ExtractConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Fill the feature cache with this process's share of ``cfg.data``; returns counts and images/s."""
    import os

    rep = reporter or NullReporter()
    cfg.validate()
    rank, world = parse_shard(cfg.shard)
    check_cache_dir(cfg.cache_dir, {"the data": cfg.data})
    listed = load_labeled(cfg.data, check_images=False)  # a listing; each rank checks only its share below
    share = [i for i, p in enumerate(listed.paths) if path_rank(p, world) == rank]
    mine_all = listed.subset(share)
    reasons = image_checks(cfg.cache_dir).reasons(list(mine_all.paths), rep.task("checking images"))
    problems: list[tuple[str, str]] = []
    mine = []
    for p, why in zip(mine_all.paths, reasons, strict=True):
        if why:
            handle_problem(problems, p, why, strict=False)  # skipped with a warning, as every command does
        else:
            mine.append(p)
    device = cfg.device
    if device == "auto" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process when there are GPUs
        import torch

        device = f"cuda:{os.environ['LOCAL_RANK']}" if torch.cuda.is_available() else "cpu"
    backbone = create_backbone(cfg.model, cfg.pretrained, resolve_device(device))
    cache = FeatureCache(backbone, cfg.cache_dir, batch_size=cfg.batch_size, workers=cfg.workers)
    crop = cfg.crop_scale
    if crop is None:
        side = image_side(listed.paths)  # the whole folder's, so every rank chooses the same crop
        crop = SMALL_IMAGE_CROP if side is not None and side < SMALL_IMAGE_SIDE else COOP_CROP
    t0 = time.perf_counter()
    before = cache.misses
    cache.features(mine, None, cfg.tokens, rep.task(f"centre views (shard {rank}/{world})"))
    if cfg.views:
        aug = AugmentSpec(views=cfg.views, scale=(crop, 1.0))
        cache.features(mine, aug, cfg.tokens, rep.task(f"{cfg.views} augmented views (shard {rank}/{world})"))
    seconds = time.perf_counter() - t0
    encoded = cache.misses - before
    return {"data": cfg.data, "shard": f"{rank}/{world}", "images": len(mine), "skipped": len(problems),
            "entries_encoded": encoded,
            "entries_cached": cache.hits, "views": cfg.views, "crop_scale": crop, "seconds": round(seconds, 2),
            "images_per_s": round(len(mine) / seconds, 1) if seconds > 0 and encoded else None,
            "cache_dir": str(cache.dir), "config": dataclasses.asdict(cfg)}
