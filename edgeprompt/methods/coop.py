"""CoOp (context optimisation) with a choice of loss, and DSPT (CoOp + double-softmax cross-entropy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeprompt.backbone import FrozenCLIP, cosine_logits
from edgeprompt.errors import ConfigError
from edgeprompt.losses import LOSSES, get_loss
from edgeprompt.methods.base import METHODS, FeatureBatch, PromptMethod
from edgeprompt.methods.prompt_learner import POSITIONS, PromptLearner


@dataclass(frozen=True)
class CoOpConfig:
    """CoOp's prompt and loss settings (defaults: the CoOp / NLPrompt protocol)."""

    n_ctx: int = 16  # context vectors M
    ctx_init: str = "a photo of a"  # the last vectors start as these words (the zero-shot template); "" = random
    position: str = "end"  # class token position: end | middle | front
    class_specific: bool = False  # one context per class (CSC)
    loss: str = "ce"  # ce | gce | mae (| dspt for the dspt method)
    gce_q: float = 0.7  # GCE's q (Zhang & Sabuncu's default)

    def validate(self) -> None:
        if self.position not in POSITIONS:
            raise ConfigError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.loss not in LOSSES:
            get_loss(self.loss)  # raises with suggestions
        if not 0 < self.gce_q <= 1:
            raise ConfigError(f"gce_q must be in (0, 1], got {self.gce_q}")


@METHODS.register("coop", help="CoOp: learned context tokens; loss ce | gce | mae")
class CoOp(PromptMethod):
    """CoOp: M learnable context vectors shared by (or specific to) the classes, on a frozen CLIP."""

    name = "coop"
    Config = CoOpConfig

    def __init__(self, backbone: FrozenCLIP, classnames: list[str], cfg: CoOpConfig) -> None:
        super().__init__(backbone, classnames, cfg)
        self.prompt = PromptLearner(
            backbone, classnames, cfg.n_ctx, cfg.ctx_init, cfg.position, cfg.class_specific
        )
        self._loss = get_loss(cfg.loss, cfg.gce_q)
        self.scale = backbone.logit_scale

    def text_features(self) -> torch.Tensor:
        return self.prompt()

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return cosine_logits(batch.pooled, self.prompt(), self.scale)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        return {"loss": self._loss(logits, target)}


@dataclass(frozen=True)
class DSPTConfig(CoOpConfig):
    """CoOp's prompt with the double-softmax loss; the loss is fixed (DSPT has no loss hyperparameters)."""

    loss: str = "dspt"

    def validate(self) -> None:
        if self.loss != "dspt":
            raise ConfigError("the dspt method always uses the double-softmax loss: drop --loss, or use --method coop")
        super().validate()


@METHODS.register("dspt", help="DSPT: CoOp prompt + double-softmax CE (hyperparameter-free gradient suppression)")
class DSPT(CoOp):
    """DSPT: CoOp's learner trained with ``CE(softmax(logits), y)``; inference uses plain CLIP logits."""

    name = "dspt"
    Config = DSPTConfig
