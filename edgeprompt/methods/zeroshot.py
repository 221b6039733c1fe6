"""Zero-shot CLIP: a fixed template (or an ensemble of templates), nothing trained."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeprompt.backbone import FrozenCLIP, cosine_logits
from edgeprompt.errors import ConfigError
from edgeprompt.methods.base import METHODS, FeatureBatch, PromptMethod, batched_logits

# A small generic ensemble (our own wording); CoOp's single template "a photo of a {}." is the default.
ENSEMBLE = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)


@dataclass(frozen=True)
class ZeroShotConfig:
    """Template settings."""

    template: str = "a photo of a {}."  # must contain '{}'
    ensemble: bool = False  # average normalised features over ENSEMBLE instead

    def validate(self) -> None:
        if "{}" not in self.template:
            raise ConfigError(f"template {self.template!r} needs a '{{}}' where the class name goes")


@METHODS.register("zeroshot", help="zero-shot CLIP with a fixed template (optional ensemble); nothing trained")
class ZeroShot(PromptMethod):
    """Class features from hand-written templates; the text features are a constant."""

    name = "zeroshot"
    Config = ZeroShotConfig
    trainable = False

    def __init__(self, backbone: FrozenCLIP, classnames: list[str], cfg: ZeroShotConfig) -> None:
        super().__init__(backbone, classnames, cfg)
        templates = ENSEMBLE if cfg.ensemble else (cfg.template,)
        names = [n.replace("_", " ") for n in classnames]
        feats = torch.stack(
            [F.normalize(backbone.encode_text([t.format(n) for n in names]).float(), dim=-1) for t in templates]
        ).mean(0)  # (C, E)
        self.register_buffer("class_features", feats, persistent=False)
        self.scale = backbone.logit_scale

    def text_features(self) -> torch.Tensor:
        return self.class_features

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return cosine_logits(batch.pooled, self.class_features, self.scale)


def zero_shot_logits(backbone: FrozenCLIP, classnames: list[str], centre: torch.Tensor) -> torch.Tensor:
    """(N, C) logits of the default template for (N, E) centre-view features: the prior that has seen no label
    (the audit mixes it in; ``tune`` reads from it which class names the model does not know)."""
    return batched_logits(ZeroShot(backbone, list(classnames), ZeroShotConfig()), centre)
