"""The method interface: a module from cached frozen features to logits that owns its loss."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from edgeprompt.backbone import FrozenCLIP
from edgeprompt.errors import ConfigError
from edgeprompt.registry import Registry, suggest

METHODS: Registry[type[PromptMethod]] = Registry("method")


@dataclass
class FeatureBatch:
    """What a method sees for a batch of images.

    Attributes:
        pooled: (B, E) pooled image embeddings from the frozen image encoder (not normalised).
        tokens: (B, T, E) patch tokens, only for methods with ``needs_tokens``.
        index: (B,) positions of the samples in the training set (for per-sample state such as OT splits).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    index: torch.Tensor | None = None


class PromptMethod(nn.Module):
    """Base class. Subclasses set ``name``, ``Config`` (a frozen dataclass) and implement ``forward``.

    Contract:
        - ``forward(batch) -> logits (B, C)``, already scaled by the logit scale;
        - ``loss(logits, target, batch) -> {'loss': scalar, …}`` (the method owns its loss);
        - ``trainable_parameters()`` is all the optimizer ever sees; the backbone stays frozen;
        - ``text_features()`` returns the constant (C, E) class matrix when the text side does not depend on the
          image (``foldable``), which is what export folds into the graph;
        - ``epoch_start(ctx)`` runs before every epoch (VisPrompt's OT split) and returns metrics to log.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    needs_tokens: bool = False  # patch tokens in the feature cache; a method may decide per instance (VisPrompt)
    foldable: ClassVar[bool] = True
    trainable: ClassVar[bool] = True

    def __init__(self, backbone: FrozenCLIP, classnames: list[str], cfg: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.classnames = list(classnames)
        self.cfg = cfg

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (never the backbone's)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, for the run directory (constants are rebuilt from the config)."""
        names = {id(p): n for n, p in self.named_parameters()}
        return {names[id(p)]: p.detach().cpu().contiguous() for p in self.trainable_parameters()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load of :meth:`trainable_state_dict` output: missing or unexpected keys are errors."""
        own = dict(self.named_parameters())
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            raise ConfigError(f"trainable state mismatch: missing {sorted(expected - set(state))}, "
                              f"unexpected {sorted(set(state) - expected)}")
        with torch.no_grad():
            for k, v in state.items():
                if own[k].shape != v.shape:
                    raise ConfigError(f"trainable state {k}: shape {tuple(v.shape)} != {tuple(own[k].shape)}")
                own[k].copy_(v)

    def forward(self, batch: FeatureBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        """Cross-entropy by default; methods override."""
        from edgeprompt.losses import ce

        return {"loss": ce(logits, target)}

    def text_features(self) -> torch.Tensor:
        """(C, E) class text features, not normalised; only for ``foldable`` methods."""
        raise NotImplementedError(f"{self.name} text features depend on the image")

    def epoch_start(self, ctx: dict[str, Any]) -> dict[str, float]:
        """Hook before each epoch; ``ctx`` has the trainer's view of the data (see train.trainer)."""
        return {}

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg) if dataclasses.is_dataclass(self.cfg) else {}


@torch.no_grad()
def batched_logits(method: PromptMethod, pooled: torch.Tensor, tokens: torch.Tensor | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """Logits (N, C) on the CPU for centre-view features (N, E) [+ tokens (N, T, E)], in eval mode, batched.

    The one evaluation loop: the trainer, VisPrompt's OT scoring, ``eval`` and the export parity gate all use it.
    """
    was_training = method.training
    method.eval()
    device = next(iter(method.buffers()), pooled).device
    out = []
    try:
        for i in range(0, len(pooled), batch_size):
            tok = tokens[i : i + batch_size].to(device).float() if tokens is not None else None
            out.append(method(FeatureBatch(pooled[i : i + batch_size].to(device).float(), tok)).float().cpu())
    finally:
        method.train(was_training)
    return torch.cat(out) if out else torch.empty(0, method.num_classes)


def method_catalog() -> dict[str, dict[str, Any]]:
    """Method name -> its one-line help and its options with their defaults (what ``edgeprompt models`` lists)."""
    return {name: {"help": doc, "options": {f.name: f.default for f in dataclasses.fields(METHODS.get(name).Config)}}
            for name, doc in list_methods().items()}


def method_config_class(name: str) -> type:
    """The frozen Config dataclass of method ``name``."""
    return METHODS.get(name).Config


def build_config(name: str, options: dict[str, Any]) -> Any:
    """``Config(**options)`` for method ``name``; unknown option names raise with close matches."""
    cls = method_config_class(name)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in fields:
            raise ConfigError(f"method {name!r} has no option {key!r}.{suggest(key, fields)} "
                              f"Options: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        check_option_type(name, key, value, hints[key])
    cfg = cls(**options)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def check_option_type(method: str, key: str, value: Any, hint: Any) -> None:
    """Refuse an option value that is not of its field's type (``class_specific=maybe``, ``n_ctx=4.5``)."""
    import math

    kind = hint if hint in _KINDS else None
    ok = (kind is None or (kind is bool and isinstance(value, bool))
          or (kind is int and isinstance(value, int) and not isinstance(value, bool))
          or (kind is float and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
          or (kind is str and isinstance(value, str)))
    if not ok:
        raise ConfigError(f"method {method!r} option {key} must be {_KINDS[kind]}, got {value!r} "
                          f"(--opt {key}=VALUE)")


def stored_options(name: str, stored: dict[str, Any]) -> dict[str, Any]:
    """A run's stored method config as options for :func:`create_method`. An option the method gained after the run
    was written takes the value that reproduces the run (the Config's ``ADDED``), not today's default."""
    added: dict[str, Any] = getattr(method_config_class(name), "ADDED", {})
    return {**{k: v for k, v in added.items() if k not in stored}, **stored}


def create_method(name: str, backbone: FrozenCLIP, classnames: list[str], **options: Any) -> PromptMethod:
    """Build method ``name`` on ``backbone`` for ``classnames`` with config overrides ``options``."""
    cls = METHODS.get(name)
    return cls(backbone, list(classnames), build_config(name, options))


def list_methods() -> dict[str, str]:
    """Method name -> one-line description."""
    return METHODS.describe()
