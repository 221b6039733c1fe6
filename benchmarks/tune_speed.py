"""A CoOp tuning epoch: the reference design against edgeprompt's, measured in one run.

Reference (CoOp's code): every step encodes the batch's images with the frozen image encoder and runs the text
encoder on all C class prompts at the full 77-token length, forward and backward.
edgeprompt: image features come from the cache, prompts are truncated to the longest real prompt, and the shared
[SOS] + context prefix is computed once per step.

Variants, each timed over full epochs on the same data:
  A  reference            images every step  + plain 77-token text
  B  + cached features    cached features    + plain 77-token text
  C  + truncation         cached features    + truncated text
  D  + prefix sharing     cached features    + truncated, prefix-shared text   (= edgeprompt)

Each factor's share of the total is log(factor) / log(A/D). All variants compute the same loss and gradient (checked
on the first batch: max abs differences printed). Random weights: speed does not depend on the weights.

    python benchmarks/tune_speed.py --model ViT-B-32 --classes 100 --shots 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from edgeprompt.backbone import cosine_logits, create_backbone
from edgeprompt.methods.prompt_learner import PromptLearner

WORDS = ("red green blue small large striped spotted wooden metal glass paper round square tall short old new "
         "golden silver dark light wild domestic river mountain desert forest city garden kitchen ocean").split()


def classnames(n: int) -> list[str]:
    """Distinct 1–3 word names, like real datasets' (so prompt lengths vary)."""
    out = []
    for i in range(n):
        k = 1 + i % 3
        out.append(" ".join(WORDS[(i * 7 + j * 11) % len(WORDS)] for j in range(k)) + f" {i}")
    return out


def plain_text(learner: PromptLearner, full_embeddings: torch.Tensor) -> torch.Tensor:
    """CoOp's reference path: all 77 positions, context spliced in, no sharing."""
    c, m = full_embeddings.shape[0], learner.n_ctx
    x = torch.cat([full_embeddings[:, :1], learner.ctx.unsqueeze(0).expand(c, -1, -1), full_embeddings[:, 1 + m :]], 1)
    return learner.text(x, learner.eot)


def run_epoch(variant: str, bb, learner, full_emb, images, feats, labels, batch: int) -> float:  # noqa: ANN001
    opt = torch.optim.SGD([learner.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    t0 = time.perf_counter()
    for i in range(0, len(labels) - len(labels) % batch, batch):
        if variant == "A":
            with torch.no_grad():
                f = bb.encode_image(images[i : i + batch])
        else:
            f = feats[i : i + batch]
        if variant in ("A", "B"):
            text = plain_text(learner, full_emb)
        else:
            learner.share_prefix = variant == "D"
            text = learner()
        loss = torch.nn.functional.cross_entropy(cosine_logits(f, text, bb.logit_scale), labels[i : i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def check_same(bb, learner, full_emb, feats, labels) -> dict[str, float]:  # noqa: ANN001
    """Loss and context-gradient differences of B, C, D against the plain path on one batch."""
    out, ref = {}, None
    for v in ("B", "C", "D"):
        learner.ctx.grad = None
        if v == "B":
            text = plain_text(learner, full_emb)
        else:
            learner.share_prefix = v == "D"
            text = learner()
        loss = torch.nn.functional.cross_entropy(cosine_logits(feats, text, bb.logit_scale), labels)
        loss.backward()
        cur = (loss.item(), learner.ctx.grad.clone())
        if ref is None:
            ref = cur
        else:
            out[f"{v}_loss_diff"] = abs(cur[0] - ref[0])
            out[f"{v}_grad_maxdiff"] = (cur[1] - ref[1]).abs().max().item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shots", type=int, default=1, help="images per class in the epoch (shrunk to fit a CPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--views", type=int, default=8, help="cached views per image, for the amortised figure")
    ap.add_argument("--epochs", type=int, default=50, help="run length, for the amortised figure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bb = create_backbone(args.model, "none")
    names = classnames(args.classes)
    learner = PromptLearner(bb, names, n_ctx=args.n_ctx)
    tokens = bb.tokenize([" ".join(["X"] * args.n_ctx) + f" {n}." for n in names])
    full_emb = bb.embed_tokens(tokens)  # (C, 77, D)
    n = args.classes * args.shots
    size = bb.preprocess.image_size
    images = torch.randn(n, 3, size, size)
    labels = torch.arange(n) % args.classes
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([bb.encode_image(images[i : i + 64]) for i in range(0, n, 64)])
    encode_once = time.perf_counter() - t0  # one pass over the images = one cached view
    same = check_same(bb, learner, full_emb, feats[: args.batch], labels[: args.batch])
    times = {v: run_epoch(v, bb, learner, full_emb, images, feats, labels, args.batch) for v in "ABCD"}
    total = times["A"] / times["D"]
    factors = {"cache": times["A"] / times["B"], "truncation": times["B"] / times["C"],
               "prefix_sharing": times["C"] / times["D"]}
    shares = {k: math.log(f) / math.log(total) for k, f in factors.items()}
    cache_cost = encode_once * args.views / args.epochs  # building V views once, spread over the run
    amortised = times["A"] / (times["D"] + cache_cost)
    result = {
        "model": args.model, "classes": args.classes, "images_per_epoch": n, "batch": args.batch,
        "steps_per_epoch": n // args.batch, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "epoch_s": times, "speedup_total": total, "factors": factors, "log_shares": shares,
        "amortised_speedup": amortised, "cache_build_s_per_view": encode_once, "exactness": same,
    }
    print(f"{args.model}, {args.classes} classes, {n} images/epoch, batch {args.batch}, {args.threads} threads")
    labels_ = {"A": "reference (images every step, 77-token text)", "B": "+ cached image features",
               "C": "+ truncated text", "D": "+ prefix sharing (edgeprompt)"}
    for v in "ABCD":
        print(f"  {v}  {labels_[v]:<48} {times[v]:8.2f} s/epoch  {times['A'] / times[v]:6.1f}x")
    print(f"total speed-up A/D: {total:.1f}x")
    for k in factors:
        print(f"  {k:<15} x{factors[k]:5.2f}   share of the speed-up (log): {100 * shares[k]:4.0f} %")
    print(f"with the cache build ({args.views} views) amortised over {args.epochs} epochs: {amortised:.1f}x")
    print("same results: " + ", ".join(f"{k} {v:.1e}" for k, v in same.items()))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
