"""On-disk cache of frozen image features: V augmented views per training image, one centre view for evaluation.

Prompt tuning never changes the image encoder, so its outputs are computed once and reused across methods,
noise rates and seeds. Each entry is keyed by the backbone (name + weights hash), the transform (eval, or the
augmentation recipe with V and its seed) and the image file's content hash; files live under
``<cache_dir>/features/<backbone key>/<xx>/<file sha>.<transform key>.npz``.

The augmentation is CoOp's: random resized crop (scale 0.08–1, ratio 3/4–4/3, bicubic) and horizontal flip, with
the crop parameters drawn from a generator seeded by (file hash, view, seed), so a view is reproducible.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprompt.backbone import FrozenCLIP
from edgeprompt.errors import ConfigError
from edgeprompt.fileio import atomic_write_bytes, sha256_file

Progress = Callable[[int, int], None]


def default_cache_dir() -> Path:
    """``$EDGEPROMPT_CACHE`` or ``~/.cache/edgeprompt``."""
    return Path(os.environ.get("EDGEPROMPT_CACHE") or Path.home() / ".cache" / "edgeprompt")


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


class FeatureCache:
    """Encodes images with a frozen backbone, reading and writing cached features.

    Args:
        backbone: the frozen CLIP.
        root: cache directory (``features/`` is created inside).
        batch_size: images per encoder call.
    """

    def __init__(self, backbone: FrozenCLIP, root: str | Path | None = None, batch_size: int = 64) -> None:
        import open_clip

        self.backbone = backbone
        spec = backbone.preprocess
        ident = json.dumps([backbone.ref.model, backbone.ref.weights_sha256, spec.to_dict()], sort_keys=True)
        self.dir = Path(root or default_cache_dir()) / "features" / hashlib.sha256(ident.encode()).hexdigest()[:16]
        try:  # fail now, in one line, rather than after encoding the first batch
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = atomic_write_bytes(self.dir / ".write-test", b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"the feature cache {root or default_cache_dir()} cannot be written ({e.strerror}): "
                              f"pass --cache-dir with a writable folder, or set EDGEPROMPT_CACHE") from None
        self.batch_size = batch_size
        self._eval_tf = open_clip.image_transform(
            spec.image_size, is_train=False, mean=spec.mean, std=spec.std,
            resize_mode=spec.resize, interpolation=spec.interpolation,
        )
        self.hits = self.misses = 0

    def _entry(self, file_sha: str, key: str) -> Path:
        return self.dir / file_sha[:2] / f"{file_sha}.{key}.npz"

    def _load(self, path: Path, with_tokens: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                if with_tokens and "tokens" not in z:
                    return None
                return z["pooled"], (z["tokens"] if with_tokens else None)
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed

    def _save(self, path: Path, pooled: np.ndarray, tokens: np.ndarray | None) -> None:
        buf = io.BytesIO()
        arrays = {"pooled": pooled} if tokens is None else {"pooled": pooled, "tokens": tokens}
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    def _views(self, path: Path, file_sha: str, aug: AugmentSpec | None) -> list[torch.Tensor]:
        """Preprocessed input tensors: [eval view] or V augmented views."""
        import torchvision.transforms.functional as TF
        from PIL import Image

        with Image.open(path) as im:
            img = im.convert("RGB")
        if aug is None:
            return [self._eval_tf(img)]
        spec = self.backbone.preprocess
        size = spec.image_size
        mode = TF.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
        out = []
        for v in range(aug.views):
            rng = np.random.default_rng([int(file_sha[:15], 16), v, aug.seed])
            top, left, h, w = _crop_params(img.width, img.height, aug, rng)
            view = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=mode, antialias=True)
            if aug.flip and rng.random() < 0.5:
                view = TF.hflip(view)
            out.append(TF.normalize(TF.to_tensor(view), spec.mean, spec.std))
        return out

    @torch.no_grad()
    def _encode(self, inputs: list[torch.Tensor], with_tokens: bool) -> tuple[np.ndarray, np.ndarray | None]:
        device = self.backbone.model.logit_scale.device
        pooled, tokens = [], []
        for i in range(0, len(inputs), self.batch_size):
            x = torch.stack(inputs[i : i + self.batch_size]).to(device)
            out = self.backbone.encode_image(x, with_tokens=with_tokens)
            if with_tokens:
                p, t = out
                tokens.append(t.half().cpu().numpy())  # fp16 halves the largest part of the cache
            else:
                p = out
            pooled.append(p.float().cpu().numpy())
        return np.concatenate(pooled), (np.concatenate(tokens) if with_tokens else None)

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
        pooled: list[np.ndarray] = []
        tokens: list[np.ndarray | None] = []
        pending: list[tuple[int, Path, Path]] = []
        for i, p in enumerate(paths):
            sha = sha256_file(p)
            entry = self._entry(sha, key)
            hit = self._load(entry, with_tokens)
            pooled.append(hit[0] if hit else np.empty(0))
            tokens.append(hit[1] if hit else None)
            if hit:
                self.hits += 1
            else:
                pending.append((i, p, entry))
        chunk = max(1, self.batch_size // (1 if aug is None else aug.views))
        for start in range(0, len(pending), chunk):
            group = pending[start : start + chunk]
            inputs = [t for _, p, e in group for t in self._views(p, e.name.split(".")[0], aug)]
            enc_p, enc_t = self._encode(inputs, with_tokens)
            per = 1 if aug is None else aug.views
            for j, (i, _, entry) in enumerate(group):
                p_i = enc_p[j * per : (j + 1) * per]
                t_i = enc_t[j * per : (j + 1) * per] if enc_t is not None else None
                if aug is None:
                    p_i, t_i = p_i[0], (t_i[0] if t_i is not None else None)
                self._save(entry, p_i, t_i)
                pooled[i], tokens[i] = p_i, t_i
            self.misses += len(group)
            if progress:
                progress(min(start + chunk, len(pending)), len(pending))
        pooled_t = torch.from_numpy(np.stack(pooled)) if pooled else torch.empty(0)
        tokens_t = torch.from_numpy(np.stack(tokens)) if with_tokens and tokens else None  # type: ignore[arg-type]
        return pooled_t, tokens_t
