"""Frozen per-stage configs. Torch-free; the resolved config is saved with every run (``config.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgeprompt.errors import ConfigError
from edgeprompt.registry import suggest

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are CoOp's (SGD 0.002, momentum 0.9, wd 5e-4, batch 32, cosine, 1 warm-up
    epoch at a constant 1e-5)."""

    epochs: int = 50  # CoOp uses 200 for 16 shots on real data; the offline world converges much sooner
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant-lr warm-up epochs
    warmup_lr: float = 1e-5
    eval_every: int = 5  # evaluate on the validation split every N epochs (and at the end); 0 = only at the end
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 0, batch size >= 1 and lr > 0")


@dataclass(frozen=True)
class TuneConfig:
    """Everything ``edgeprompt tune`` needs; saved resolved as ``config.json`` in the run directory."""

    train: str  # labeled folder or CSV manifest
    out: str  # run directory to create
    method: str = "dspt"
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"loss": "gce", "n_ctx": 16}
    model: str = "edgeprompt-tiny"
    pretrained: str = "shapes"
    shots: int = 16  # per class; 0 = all
    noise: str = "none"  # none | sym:R | asym:R | map:FILE:R
    val: str | None = None
    views: int = 8  # augmented views per training image in the feature cache
    crop_scale: float = 0.08  # smallest random-resized-crop area (CoOp's 0.08; raise it for tiny or centred images)
    cache_dir: str | None = None  # default: $EDGEPROMPT_CACHE or ~/.cache/edgeprompt
    strict: bool = False  # unreadable images are fatal instead of skipped
    classnames_file: str | None = None
    overwrite: bool = False
    train_cfg: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneConfig:
        d = dict(d)
        train_cfg = from_dict(TrainConfig, d.pop("train_cfg", {}))
        return from_dict(cls, {**d, "train_cfg": train_cfg})


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from ``d``; unknown keys raise ConfigError with close matches."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for k in d:
        if k not in names:
            raise ConfigError(f"unknown {cls.__name__} key {k!r}.{suggest(k, names)}")
    return cls(**d)
