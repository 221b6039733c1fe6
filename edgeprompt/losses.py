"""Loss functions, each ``(logits, target) -> scalar`` (mean over the batch; ``reduction="none"`` gives the
per-sample values), computed in fp32.

``logits`` are CLIP logits, i.e. already multiplied by the logit scale (exp(logit_scale), 100 for OpenAI CLIP).

- :func:`ce`: cross-entropy (CoOp).
- :func:`gce`: generalized cross-entropy ``(1 - p_y^q) / q`` (Zhang & Sabuncu 2018); q -> 0 is CE, q = 1 is MAE.
- :func:`mae`: ``1 - p_y``, NLPrompt's "PromptMAE" form (half of the textbook L1 ``2(1 - p_y)``; same minimiser).
- :func:`dspt`: double-softmax cross-entropy ``CE(softmax(logits), y)``: the logit scale is applied once, before the
  first softmax; the second softmax (CE's internal log-softmax) acts on the probabilities with temperature 1.
  Gradient w.r.t. the logits: ``p_k * [(q_k - 1[k=y]) - (<p, q> - p_y)]`` with ``q = softmax(p)``, which vanishes
  as ``p_y -> 0``: confidently mislabeled samples are suppressed (see research/dspt.md §1.3, our reconstruction;
  the paper's own equation was not available).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "gce", "mae", "dspt")


REDUCTIONS = ("mean", "none")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return per_sample.mean() if reduction == "mean" else per_sample


def _p_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(dim=-1).gather(1, target[:, None]).squeeze(1)  # (B,)


def ce(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy ``-log p_y``."""
    return _reduce(F.cross_entropy(logits.float(), target, reduction="none"), reduction)


def gce(logits: torch.Tensor, target: torch.Tensor, q: float = 0.7, reduction: str = "mean") -> torch.Tensor:
    """Generalized cross-entropy ``(1 - p_y^q) / q``; the 1e-6 keeps the gradient finite at p_y = 0 (as in NLPrompt)."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"GCE needs 0 < q <= 1, got {q}")
    return _reduce((1.0 - (_p_target(logits, target) + 1e-6) ** q) / q, reduction)


def mae(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error in NLPrompt's form ``1 - p_y``."""
    return _reduce(1.0 - _p_target(logits, target), reduction)


def dspt(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Double-softmax cross-entropy ``-log softmax(softmax(logits))_y``; bounded in a 1-nat band."""
    return _reduce(F.cross_entropy(logits.float().softmax(dim=-1), target, reduction="none"), reduction)


def dspt_grad_closed_form(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Closed-form d(sum of per-sample DSPT losses)/d(logits), (B, C): ``p ⊙ [(q - e_y) - (<p,q> - p_y)]``."""
    p = logits.double().softmax(-1)
    q = p.softmax(-1)
    onehot = F.one_hot(target, p.shape[-1]).double()
    p_y = (p * onehot).sum(-1, keepdim=True)
    pq = (p * q).sum(-1, keepdim=True)
    return p * ((q - onehot) - (pq - p_y))


def get_loss(name: str, gce_q: float = 0.7):  # noqa: ANN201 - returns one of the functions above
    """The loss function for ``name`` in LOSSES (GCE bound to ``gce_q``)."""
    from edgeprompt.errors import ConfigError
    from edgeprompt.registry import suggest

    if name == "gce":
        return lambda logits, target, reduction="mean": gce(logits, target, gce_q, reduction)
    table = {"ce": ce, "mae": mae, "dspt": dspt}
    if name not in table:
        raise ConfigError(f"unknown loss {name!r}.{suggest(name, list(LOSSES))} Choose from {', '.join(LOSSES)}")
    return table[name]
