"""Pretrain ``edgeprompt-tiny`` on the shapes world (the maintainer's command that makes the shipped weights).

    python -m edgeprompt.world.pretrain --out edgeprompt/world/weights/edgeprompt-tiny-shapes.safetensors

CLIP-style contrastive training on fresh ``pretrain``-domain batches. A caption such as "a hexagon" is true of
every hexagon in the batch, so the targets are multi-positive: each row of the logit matrix gets a uniform target
over all captions that describe the image (and each column over all images the caption describes); one-hot
targets would push true pairs apart.

Half of the captions get 1-16 random vectors right after SOT, where a CoOp prompt puts its learned context
(:func:`encode_with_noise_prefix`). Without this the text encoder only ever sees short captions: a 16-vector
context then lands on untrained positions and out-of-distribution inputs, and cross-entropy CoOp from a random
init was measured to fall below zero-shot.

Speed (exact, nothing changes the result): only the embedding rows of caption words are trained, so the
optimiser never touches the 49,408-row table; and the text transformer runs on the first L tokens (L = longest
caption + EOT), which the causal mask makes identical to the 77-token pass (the library's ``TextEncoder``).

Reproducible and resumable: batch t is a pure function of (seed, t), so a run that was stopped continues from
its last ``.resume.pt`` with the same data it would have seen.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeprompt.text_encoder import TextEncoder
from edgeprompt.world import shapes, tiny

log = logging.getLogger("edgeprompt.world.pretrain")
# The settings the shipped weights were trained with; the CLI's defaults are these.
STEPS, LR = 9000, 1e-3
# A logit-scale floor: unclamped, the learned scale settles near 21 on this world, and DSPT's suppression needs a
# peaked softmax (CLIP's scale is 100); see docs/world.md.
SCALE_FLOOR = 50.0
SCALE_INIT, SCALE_RAMP = 1 / 0.07, 3000  # CLIP's start; the floor reaches SCALE_FLOOR after SCALE_RAMP steps
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # open_clip's default preprocessing
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


RENDER_SIZE = 64  # world images are drawn at the dataset size, then resized like a user's PNGs


def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> normalised (n, 3, size, size) float32, as open_clip's transform makes it.

    A bicubic PIL resize to the model's input size, exactly what the default transform does to the 64 px PNGs of
    ``write_dataset``, so pretraining sees the same pixel statistics as tuning and zero-shot evaluation.
    """
    if images.shape[1] != size:
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def encode_with_noise_prefix(
    model: torch.nn.Module, ids: torch.Tensor, embed: torch.Tensor, prefix: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Text features with ``prefix[i]`` random vectors inserted right after SOT of caption i (exact when all 0).

    This is where a CoOp prompt puts its learned context. Trained this way, the text encoder has seen every
    position a 16-token context needs and has learned that meaningless vectors there carry no meaning, so
    tuning starts from a sensible point whatever the context's initialisation.

    Args:
        model: an open_clip ``CLIP``.
        ids: (n, 77) token ids.
        embed: (n, 77, width) their embeddings.
        prefix: (n,) number of random vectors to insert per caption (0 = the caption unchanged).
        noise: (n, max(prefix), width) the vectors to insert.
    """
    eot = ids.argmax(-1)
    length = int((eot + prefix).max()) + 1
    j = torch.arange(length)[None, :]  # (1, L) output positions
    m = prefix[:, None]  # (n, 1)
    width = embed.shape[-1]
    # position j holds SOT (j = 0), inserted vector j - 1 (1 <= j <= m), else caption token j - m; past EOT the
    # values do not matter (causal), so one gather per source and a select build the whole batch
    from_tokens = embed.gather(1, (j - m).clamp(0, embed.shape[1] - 1)[..., None].expand(-1, -1, width))
    if noise.shape[1]:
        from_noise = noise.gather(
            1, (j - 1).clamp(0, noise.shape[1] - 1).expand(len(ids), -1)[..., None].expand(-1, -1, width)
        )
        seq = torch.where(((j >= 1) & (j <= m))[..., None], from_noise, from_tokens)
    else:
        seq = from_tokens
    return TextEncoder(model)(seq, eot + prefix)  # the library's (truncated) text path: exact for any L


def multi_positive_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with soft targets spread over every true (image, caption) pair."""
    target = match.float()
    i2t = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target.T / target.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


@torch.no_grad()
def zeroshot_accuracy(
    model: torch.nn.Module, task: str = "shape", domain: str = "pretrain", per_class: int = 20, seed: int = 12345
) -> float:
    """Top-1 of the prompt "a photo of a {}." over ``classnames(task, domain)`` on freshly rendered images."""
    import open_clip

    tiny.register()
    tokenizer = open_clip.get_tokenizer(tiny.MODEL_NAME)
    names = shapes.classnames(task, domain)
    text = F.normalize(model.encode_text(tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in names])), dim=-1)
    attrs = shapes.class_attributes(task, domain)
    correct = 0
    for label, name in enumerate(names):
        imgs = [
            shapes.render(
                shapes.sample_spec(np.random.default_rng([seed, label, k]), domain, **attrs[name]), RENDER_SIZE
            )
            for k in range(per_class)
        ]
        images = to_tensor(np.stack([np.asarray(i) for i in imgs]), model.visual.image_size[0])
        feats = F.normalize(model.encode_image(images), dim=-1)
        correct += int(((feats @ text.T).argmax(1) == label).sum())
    return correct / (per_class * len(names))


def _vocab_rows(tokenizer) -> torch.Tensor:
    """Token ids a pretraining caption can contain (plus SOT, EOT and padding)."""
    ids = tokenizer(shapes.caption_words("pretrain")).flatten()  # one word per row: a joined list overflows 77
    return torch.unique(torch.cat([ids, torch.tensor([0, tokenizer.sot_token_id, tokenizer.eot_token_id])]))


def _build(seed: int, lr: float, weight_decay: float) -> tuple:
    """Model (seeded init), tokenizer, the seeded embedding table, trained rows, their lookup, and the optimiser."""
    import open_clip

    tiny.register()
    torch.manual_seed(seed)
    model = open_clip.create_model(tiny.MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(tiny.MODEL_NAME)
    vocab, width = model.token_embedding.weight.shape
    table = torch.from_numpy(tiny.embedding_init(vocab, width, seed))
    rows = _vocab_rows(tokenizer)
    lookup = torch.full((vocab,), -1, dtype=torch.long)
    lookup[rows] = torch.arange(len(rows))
    # Only caption words are trained: a compact table stands in for the embedding during pretraining.
    words = torch.nn.Parameter(table[rows].clone())
    model.token_embedding.weight.requires_grad_(False)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for n, p in params.items() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and "embedding" not in n)] + [words]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    return model, tokenizer, table, rows, lookup, words, opt


def _write_back(model: torch.nn.Module, table: torch.Tensor, rows: torch.Tensor, words: torch.Tensor) -> None:
    """Put the compact trained rows into the model's full embedding table."""
    with torch.no_grad():
        model.token_embedding.weight.copy_(table)
        model.token_embedding.weight[rows] = words.detach()


def pretrain(
    out_path: str | Path,
    steps: int = STEPS,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = LR,
    warmup: int = 200,
    weight_decay: float = 0.1,
    threads: int | None = 2,
    log_every: int = 50,
    eval_every: int = 1000,
    resume: bool = True,
    eval_per_class: int = 50,
    prefix_frac: float = 0.5,
    max_prefix: int = 16,
    scale_init: float | None = SCALE_INIT,
    scale_min: float = SCALE_FLOOR,
    scale_ramp: int = SCALE_RAMP,
) -> dict[str, float]:
    """Train ``edgeprompt-tiny`` from scratch and write the compact checkpoint to ``out_path``.

    Args:
        out_path: the ``.safetensors`` file to write (``<out_path>.resume.pt`` holds resumable state meanwhile).
        steps: optimiser steps.
        seed: model init, embedding init and data seed.
        batch_size: images (and captions) per step.
        lr: peak AdamW learning rate (linear warmup, cosine decay to 0).
        warmup: warmup steps.
        weight_decay: AdamW decay on matrices (not on embeddings, norms, biases or the logit scale).
        threads: torch CPU threads (None leaves torch's default).
        log_every: steps between progress lines.
        eval_every: steps between zero-shot checks on the pretrain domain and resume points (0 = neither).
        resume: continue from ``<out_path>.resume.pt`` when it exists.
        eval_per_class: images per class for the final zero-shot numbers stored in the checkpoint's metadata.
        prefix_frac: fraction of captions that get 1..``max_prefix`` random vectors after SOT (see
            :func:`encode_with_noise_prefix`); 0 turns this off.
        max_prefix: most random vectors inserted; CoOp's default context length is 16.
        scale_init: the logit scale at step 0 (None: open_clip's 1/0.07).
        scale_min: the floor the logit scale is clamped to after every step once the ramp is over (``SCALE_FLOOR``).
        scale_ramp: steps over which the floor rises linearly from ``scale_init`` to ``scale_min`` (0: the floor
            holds from step 0). A peaked softmax over random features at step 0 slows early learning.

    Returns:
        Final metrics: zero-shot top-1 on the shape task in both domains, wall time, steps.
    """
    from safetensors.torch import save_file

    from edgeprompt.fileio import atomic_write_bytes

    if threads:
        torch.set_num_threads(threads)
    out_path = Path(out_path)
    state_path = out_path.with_name(out_path.name + ".resume.pt")
    model, tokenizer, table, rows, lookup, words, opt = _build(seed, lr, weight_decay)
    if scale_init is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(scale_init))
    start, spent = 0, 0.0
    if resume and state_path.exists():
        ckpt = torch.load(state_path, weights_only=True)
        model.load_state_dict(ckpt["model"], strict=True)
        words.data.copy_(ckpt["words"])
        opt.load_state_dict(ckpt["opt"])
        start, spent = int(ckpt["step"]), float(ckpt["wall_s"])
        log.info("resumed from %s at step %d", state_path, start)
    size = model.visual.image_size[0]
    model.train()
    t0 = time.time() - spent  # wall time counts across resumes
    t_run = time.time()
    for step in range(start, steps):
        now = lr * (min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = now
        batch = shapes.pretrain_batch(np.random.default_rng([seed, step]), batch_size, RENDER_SIZE)
        ids = tokenizer(batch.captions)
        compact = lookup[ids]
        if (compact < 0).any():
            raise RuntimeError("a caption token is missing from shapes.caption_words(); add the word there")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)  # a pure function of (seed, step): resumable
        prefix = torch.randint(1, max_prefix + 1, (len(ids),), generator=gen)
        prefix = prefix * (torch.rand(len(ids), generator=gen) < prefix_frac)
        noise = torch.randn(len(ids), max_prefix, words.shape[1], generator=gen) * tiny.EMBED_STD
        text = F.normalize(encode_with_noise_prefix(model, ids, words[compact], prefix, noise), dim=-1)
        image = F.normalize(model.encode_image(to_tensor(batch.images, size)), dim=-1)
        loss = multi_positive_loss(model.logit_scale.exp() * image @ text.T, torch.from_numpy(batch.match))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        with torch.no_grad():
            floor = scale_min if done >= scale_ramp or scale_init is None else (
                scale_init + (scale_min - scale_init) * done / scale_ramp)
            model.logit_scale.clamp_(math.log(floor), math.log(100))
        if done % log_every == 0 or done == steps:
            el = time.time() - t0
            log.info("step %d/%d loss %.4f lr %.2e scale %.1f  %.0fs (%.2fs/step)", done, steps, loss.item(), now,
                     model.logit_scale.exp().item(), el, (time.time() - t_run) / (done - start))  # fmt: skip
        if eval_every and done % eval_every == 0 and done < steps:
            _write_back(model, table, rows, words)
            model.eval()
            log.info("step %d zero-shot shape (pretrain domain): %.3f", done, zeroshot_accuracy(model))
            model.train()
            state = {"model": model.state_dict(), "words": words.detach(), "opt": opt.state_dict(), "step": done}
            torch.save({**state, "wall_s": time.time() - t0}, state_path)
    wall = time.time() - t0
    _write_back(model, table, rows, words)
    model.eval()
    metrics = {
        "steps": float(steps),
        "wall_s": round(wall, 1),
        "threads": float(torch.get_num_threads()),
        "zeroshot_shape_pretrain": zeroshot_accuracy(model, domain="pretrain", per_class=eval_per_class),
        "zeroshot_shape_downstream": zeroshot_accuracy(model, domain="downstream", per_class=eval_per_class),
    }
    meta = {"model": tiny.MODEL_NAME, "embedding_seed": str(seed), "seed": str(seed), "batch_size": str(batch_size),
            "lr": str(lr), "prefix_frac": str(prefix_frac), "max_prefix": str(max_prefix),
            "scale_init": str(scale_init), "scale_min": str(scale_min), "scale_ramp": str(scale_ramp),
            **{k: str(v) for k, v in metrics.items()}}  # fmt: skip
    tensors, meta = tiny.pack_state_dict(model.state_dict(), rows, meta)
    tmp = out_path.with_name(out_path.name + ".tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata=meta)  # safetensors writes a path; make the final rename atomic
    atomic_write_bytes(out_path, tmp.read_bytes())
    tmp.unlink()
    state_path.unlink(missing_ok=True)
    log.info("wrote %s (%.2f MB): %s", out_path, out_path.stat().st_size / 1e6, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see ``--help``."""
    default_out = tiny.WEIGHTS_DIR / tiny.TINY_PRETRAINED[tiny.MODEL_NAME]["shapes"]
    p = argparse.ArgumentParser(prog="python -m edgeprompt.world.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=default_out, help=f"checkpoint to write (default: {default_out})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimiser steps (default: {STEPS})")
    p.add_argument("--seed", type=int, default=0, help="init and data seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--lr", type=float, default=LR, help=f"peak learning rate (default: {LR:g})")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2; use 1 on shared cores)")
    p.add_argument("--eval-every", type=int, default=1000, help="steps between zero-shot checks and resume points")
    p.add_argument("--no-resume", action="store_true", help="start over even if a .resume.pt file exists")
    p.add_argument("--scale-init", type=float, default=SCALE_INIT, help=f"initial logit scale ({SCALE_INIT:g})")
    p.add_argument("--scale-min", type=float, default=SCALE_FLOOR, help=f"logit scale floor ({SCALE_FLOOR:g})")
    p.add_argument("--scale-ramp", type=int, default=SCALE_RAMP,
                   help=f"steps over which the floor rises from --scale-init to --scale-min ({SCALE_RAMP})")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    pretrain(a.out, steps=a.steps, seed=a.seed, batch_size=a.batch_size, lr=a.lr, threads=a.threads,
             eval_every=a.eval_every, resume=not a.no_resume, scale_init=a.scale_init,
             scale_min=a.scale_min, scale_ramp=a.scale_ramp)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
