"""On-disk cache of frozen image features: V augmented views per training image, one centre view for evaluation.

Prompt tuning never changes the image encoder, so its outputs are computed once and reused across methods,
noise rates and seeds. An entry is keyed by the backbone (name + weights hash), the transform (eval, or the
augmentation recipe with V and its seed) and the image file's content hash, and lives in a shard of many images
(:mod:`edgeprompt.features.shards`): ``<cache_dir>/features-v2/<backbone key>/shards/<transform key>/*.safetensors``.
A file's content hash is recomputed only when its size or modification time changed.

Extraction at dataset scale: images are decoded and augmented by DataLoader workers while the main process
encodes (FP16 autocast on CUDA), so the encoder is the bound; ``--shard i/n`` (or torchrun's RANK / WORLD_SIZE)
splits the images across processes that all write into the same cache (docs/scale-out.md).

The augmentation is CoOp's: random resized crop (scale 0.08–1, ratio 3/4–4/3, bicubic) and horizontal flip, with
the crop parameters drawn from a generator seeded by (file hash, view, seed), so a view is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprompt.backbone import FrozenCLIP
from edgeprompt.data.folder import ImageChecks
from edgeprompt.errors import ConfigError
from edgeprompt.features.shards import FileHashes, ShardStore
from edgeprompt.fileio import atomic_write_bytes

Progress = Callable[..., None]  # tick(done, total, **fields), as edgeprompt.progress.Reporter.task returns


def default_cache_dir() -> Path:
    """``$EDGEPROMPT_CACHE`` or ``~/.cache/edgeprompt``."""
    return Path(os.environ.get("EDGEPROMPT_CACHE") or Path.home() / ".cache" / "edgeprompt")


def files_db(root: str | os.PathLike[str] | None) -> Path:
    """The per-file table (content hashes, image checks) of a cache folder, shared by every backbone in it."""
    return Path(root or default_cache_dir()) / "features-v2" / "files.sqlite"


def image_checks(root: str | os.PathLike[str] | None) -> ImageChecks:
    """Image verdicts remembered in the cache folder ``root`` (None: the default cache)."""
    return ImageChecks(files_db(root))


def check_cache_dir(cache_dir: str | os.PathLike[str] | None, inputs: dict[str, str | os.PathLike[str] | None]) -> None:
    """Refuse a feature cache on, over or inside the command's data (the next scan would find it as a class)."""
    from edgeprompt.fileio import check_not_inside

    check_not_inside(cache_dir or default_cache_dir(), inputs, "--cache-dir" if cache_dir else "$EDGEPROMPT_CACHE")


@dataclass(frozen=True)
class AugmentSpec:
    """The training-view recipe (part of the cache key)."""

    views: int = 8
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    seed: int = 0

    def key(self) -> str:
        return f"train-v{self.views}-s{self.seed}-sc{self.scale[0]:g}_{self.scale[1]:g}-f{int(self.flip)}"


def _crop_params(w: int, h: int, spec: AugmentSpec, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop; centre crop after 10 failed tries (as torchvision)."""
    area = w * h
    log_r = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*spec.scale)
        ar = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < spec.ratio[0]:
        cw, ch = w, round(w / spec.ratio[0])
    elif in_ratio > spec.ratio[1]:
        ch, cw = h, round(h * spec.ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def augmented_views(img: Any, file_sha: str, aug: AugmentSpec, size: int, interpolation: str,
                    mean: Sequence[float], std: Sequence[float]) -> list[torch.Tensor]:
    """V normalised (3, size, size) views of a PIL image, each a pure function of (file hash, view, seed)."""
    import torchvision.transforms.functional as TF

    mode = TF.InterpolationMode.BICUBIC if interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    out = []
    for v in range(aug.views):
        rng = np.random.default_rng([int(file_sha[:15], 16), v, aug.seed])
        top, left, h, w = _crop_params(img.width, img.height, aug, rng)
        view = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=mode, antialias=True)
        if aug.flip and rng.random() < 0.5:
            view = TF.hflip(view)
        out.append(TF.normalize(TF.to_tensor(view), list(mean), list(std)))
    return out


class ViewDataset(torch.utils.data.Dataset):
    """(path, sha) -> (V or 1, 3, S, S) input views; what the DataLoader workers decode and augment."""

    def __init__(self, items: Sequence[tuple[Path, str]], aug: AugmentSpec | None, eval_tf: Any, spec: Any) -> None:
        self.items, self.aug, self.eval_tf, self.spec = list(items), aug, eval_tf, spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path, sha = self.items[i]
        from edgeprompt.preprocess import to_rgb

        with Image.open(path) as im:
            img = to_rgb(im)
        if self.aug is None:
            return self.eval_tf(img)[None]
        s = self.spec
        return torch.stack(augmented_views(img, sha, self.aug, s.image_size, s.interpolation, s.mean, s.std))


def default_workers() -> int:
    """DataLoader workers for decoding: one per spare core (``--threads`` counts as the cores), at most 8 (0 on a
    single core)."""
    from edgeprompt._threads import cores

    return max(0, min(8, cores() - 1))


class FeatureCache:
    """Encodes images with a frozen backbone, reading and writing cached features.

    Args:
        backbone: the frozen CLIP.
        root: cache directory (``features-v2/`` is created inside).
        batch_size: images per encoder call (each image contributes its V views).
        workers: DataLoader workers decoding and augmenting in parallel (None: :func:`default_workers`).
    """

    def __init__(self, backbone: FrozenCLIP, root: str | Path | None = None, batch_size: int = 64,
                 workers: int | None = None) -> None:
        import open_clip

        self.backbone = backbone
        spec = backbone.preprocess
        ident = json.dumps([backbone.ref.model, backbone.ref.weights_sha256, spec.to_dict()], sort_keys=True)
        self.dir = files_db(root).parent / hashlib.sha256(ident.encode()).hexdigest()[:16]
        try:  # fail now, in one line, rather than after encoding the first batch
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = atomic_write_bytes(self.dir / ".write-test", b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"the feature cache {root or default_cache_dir()} cannot be written ({e.strerror}): "
                              f"pass --cache-dir with a writable folder, or set EDGEPROMPT_CACHE") from None
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        self.hashes = FileHashes(files_db(root))  # beside every backbone's folder
        self.store = ShardStore(self.dir)
        self._eval_tf = open_clip.image_transform(
            spec.image_size, is_train=False, mean=spec.mean, std=spec.std,
            resize_mode=spec.resize, interpolation=spec.interpolation,
        )
        self.hits = self.misses = 0
        self.bytes_used = 0  # feature bytes returned; self.store.bytes_read is what reading them cost

    @torch.no_grad()
    def encode(self, items: Sequence[tuple[Path, str]], aug: AugmentSpec | None, with_tokens: bool,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Features of ``items`` computed now: (n, [V,] E) float32 [+ (n, [V,] T, E) float16]."""
        device = self.backbone.model.logit_scale.device
        per = 1 if aug is None else aug.views
        loader = torch.utils.data.DataLoader(
            ViewDataset(items, aug, self._eval_tf, self.backbone.preprocess),
            batch_size=max(1, self.batch_size // per), num_workers=self.workers if len(items) > 1 else 0,
            pin_memory=device.type == "cuda", persistent_workers=False)
        pooled, tokens, done = [], [], 0
        amp = device.type == "cuda"
        t0 = time.perf_counter()
        for views in loader:  # (b, V, 3, S, S)
            b = views.shape[0]
            x = views.flatten(0, 1).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = self.backbone.encode_image(x, with_tokens=with_tokens)
            p, t = out if with_tokens else (out, None)
            pooled.append(p.float().cpu().numpy().reshape(b, per, -1))
            if t is not None:
                tokens.append(t.half().cpu().numpy().reshape(b, per, *t.shape[1:]))  # fp16 halves the cache
            done += b
            if progress:
                progress(done, len(items), img_per_s=round(done / max(time.perf_counter() - t0, 1e-9), 1))
        p_all = np.concatenate(pooled) if pooled else np.empty((0, per, 0), np.float32)
        t_all = np.concatenate(tokens) if tokens else None
        if aug is None:  # the centre view: (n, E), not (n, 1, E)
            p_all, t_all = p_all[:, 0], (t_all[:, 0] if t_all is not None else None)
        return p_all, t_all

    def features(
        self,
        paths: Sequence[Path],
        aug: AugmentSpec | None = None,
        with_tokens: bool = False,
        progress: Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features for ``paths``: eval view ``(N, E)`` [+ tokens ``(N, T, E)``] when ``aug`` is None,
        else ``(N, V, E)`` [+ ``(N, V, T, E)``]. Cached entries are reused; the rest is encoded and stored."""
        key = "eval" if aug is None else aug.key()
        shas = self.hashes.shas(paths)
        places = self.store.lookup(key, shas, with_tokens)
        missing = sorted({sha: i for i, (sha, at) in enumerate(zip(shas, places, strict=True)) if at is None}.items())
        if missing:
            items = [(Path(paths[i]), sha) for sha, i in missing]
            enc_p, enc_t = self.encode(items, aug, with_tokens, progress)
            self.store.write(key, [sha for sha, _ in missing], enc_p, enc_t)
            places = self.store.lookup(key, shas, with_tokens)
        self.misses += sum(1 for _ in missing)
        self.hits += len(paths) - len(missing)
        pooled, tokens = self.store.read(places, with_tokens)  # type: ignore[arg-type]
        self.bytes_used += sum(p.nbytes for p in pooled) + sum(t.nbytes for t in tokens if t is not None)
        pooled_t = torch.from_numpy(np.stack(pooled)) if pooled else torch.empty(0)
        tokens_t = torch.from_numpy(np.stack(tokens)) if with_tokens and tokens else None  # type: ignore[arg-type]
        return pooled_t, tokens_t
