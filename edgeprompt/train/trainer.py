"""The training loop: cached features in, a tuned method out. Small enough to read in one screen.

Each epoch: the method's ``epoch_start`` hook (VisPrompt's OT split), then shuffled batches where every sample
uses one of its V cached augmented views, one AMP path, SGD/AdamW with a constant warm-up then cosine decay (CoOp's
schedule, stepped per epoch). Validation every ``eval_every`` epochs; the last epoch is kept (no selection on any
evaluation split). A checkpoint after each epoch makes an interrupted run resumable.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeprompt.backbone import resolve_device
from edgeprompt.config import TrainConfig
from edgeprompt.fileio import atomic_write_bytes
from edgeprompt.methods.base import FeatureBatch, PromptMethod, batched_logits

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainSet:
    """Cached training features. ``pooled`` (N, V, E); ``tokens`` (N, V, T, E) or None; given (possibly noisy)
    ``labels`` (N,); ``true_labels`` (N,) when known (synthetic noise), used only for logging."""

    pooled: torch.Tensor
    labels: torch.Tensor
    tokens: torch.Tensor | None = None
    true_labels: torch.Tensor | None = None
    eval_pooled: torch.Tensor | None = None  # (N, E) centre view, for hooks that score the training set
    eval_tokens: torch.Tensor | None = None


@dataclass
class EvalSet:
    """Centre-view features (N, E) [+ tokens (N, T, E)] and labels (N,)."""

    pooled: torch.Tensor
    labels: torch.Tensor
    tokens: torch.Tensor | None = None


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Constant ``warmup_lr`` for the warm-up epochs, then cosine from ``lr`` over all epochs (CoOp / Dassl)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))


def _gather(data: TrainSet, idx: torch.Tensor, views: torch.Tensor, device: torch.device) -> FeatureBatch:
    pooled = data.pooled[idx, views[idx]].to(device)  # (B, E)
    tokens = data.tokens[idx, views[idx]].to(device).float() if data.tokens is not None else None  # (B, T, E)
    return FeatureBatch(pooled, tokens, idx.to(device))


def fit(
    method: PromptMethod,
    data: TrainSet,
    cfg: TrainConfig,
    workdir: Path,
    val: EvalSet | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``method`` on ``data``; metrics go to ``workdir/metrics.jsonl``; returns the per-epoch records.

    Resumes from ``workdir/checkpoint.pt`` when present (the caller checks the config matches).
    """
    if cfg.lr is None or cfg.epochs is None:
        raise ValueError("fit needs a resolved TrainConfig (learning rate and epochs): see config.resolve_tune")
    device = resolve_device(cfg.device)
    method.to(device)
    params = method.trainable_parameters()
    if not params or cfg.epochs == 0:
        return []
    assert not any(p.requires_grad for p in method.backbone.parameters()), "backbone must stay frozen"
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp, init_scale=8192.0)  # 65536 overflowed with DSPT (dspt.md)
    gen = torch.Generator().manual_seed(cfg.seed)  # the batch order
    # dropout (VisPrompt's block) draws from the global generator: reseed it here, so training does not depend on
    # what ran before it in the process (a feature-cache miss's DataLoader draws from it; a warm cache does not)
    torch.manual_seed(cfg.seed)
    start, history = 0, []
    ckpt_path, metrics_path = workdir / CHECKPOINT, workdir / "metrics.jsonl"
    if ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
            method.load_trainable_state_dict(ck["method"])
            opt.load_state_dict(ck["opt"])
            scaler.load_state_dict(ck["scaler"])
            gen.set_state(ck["gen"])
            start, history = ck["epoch"] + 1, list(ck["history"])
        except Exception as e:  # noqa: BLE001 - any damage (truncated, foreign, garbage) means the same thing here
            from edgeprompt.errors import ArtifactError

            raise ArtifactError(f"the resume checkpoint {ckpt_path} is damaged ({type(e).__name__}): delete it "
                                f"(or its folder {workdir}) to start this run over") from None
        # the metrics file may hold an epoch written after the last checkpoint: rewrite it from the checkpoint
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
        log.info("resuming from epoch %d", start + 1)
    labels = data.labels.to(device)
    n = len(labels)
    ctx: dict[str, Any] = {"data": data, "device": device}
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch, cfg)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        record.update(method.epoch_start({**ctx, "epoch": epoch}))
        method.train()
        perm = torch.randperm(n, generator=gen)
        views = torch.randint(data.pooled.shape[1], (n,), generator=gen)
        # drop the last partial batch when there is more than one batch (CoOp / Dassl behaviour)
        stop = n - n % cfg.batch_size if n > cfg.batch_size else n
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, stop, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            batch = _gather(data, idx, views, device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = method(batch)
            out = method.loss(logits.float(), labels[idx.to(device)], batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += float(out["loss"].detach()) * len(idx)
            correct += int((logits.argmax(-1) == labels[idx.to(device)]).sum())
            seen += len(idx)
        record.update(loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1), time_s=time.perf_counter() - t0)
        last = epoch + 1 == cfg.epochs
        if val is not None and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            pred = batched_logits(method, val.pooled, val.tokens).argmax(-1)
            record["val_acc"] = float((pred == val.labels).float().mean())
        history.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        _save_checkpoint(ckpt_path, method, opt, scaler, gen, epoch, history)
        if on_epoch:
            on_epoch(record)
    return history


def _save_checkpoint(path: Path, method: PromptMethod, opt: torch.optim.Optimizer, scaler: Any,
                     gen: torch.Generator, epoch: int, history: list[dict[str, Any]]) -> None:
    import io

    buf = io.BytesIO()
    state = {"method": method.trainable_state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
             "gen": gen.get_state(), "epoch": epoch, "history": history}
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
