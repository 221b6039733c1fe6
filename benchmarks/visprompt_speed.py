"""VisPrompt's per-image text encoding: the plain 77-token path against edgeprompt's, measured in one run.

VisPrompt gives every image its own context, so the text encoder runs once per (image, class) pair, forward and
backward, at every training step. Three ways to compute the same (B, C, E) text features:

  plain      B·C sequences of 77 tokens, context spliced in after [SOS]    (the released code)
  truncated  B·C sequences cut after the longest real prompt's EOT          (exact: causal mask)
  shared     truncated, and the [SOS] + context prefix encoded once per image, each class running only its
             own suffix against the prefix keys/values                       (exact; edgeprompt's default)

Each path is timed forward + backward (CE on cosine logits, gradient to the per-image context), median of
``--repeats`` after one warm-up; the outputs are checked against the plain path. Random weights: speed does not
depend on the weights. Timings share the CPU with whatever else runs: compare ratios within one run, not
absolute times across runs.

    python benchmarks/visprompt_speed.py                           # ViT-B-16 (10 classes, batch 2) + tiny model
    python benchmarks/visprompt_speed.py --classes 37 --batch 4 --json
    python benchmarks/visprompt_speed.py --ot                      # also: OT split quality on synthetic logits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from edgeprompt.backbone import cosine_logits, create_backbone
from edgeprompt.methods import create_method

# 1-3 word names so prompt lengths vary like a real dataset's (Pets, Flowers, Caltech)
NOUNS = ("cat dog bird horse sheep cow bear zebra giraffe owl frog snake tulip rose daisy orchid lily maple oak "
         "pine cactus kettle teapot guitar violin piano camera laptop bicycle tractor canoe").split()
ADJECTIVES = ("spotted striped tiny giant wild garden mountain desert golden silver black white").split()


def classnames(n: int) -> list[str]:
    """``n`` distinct names of one to three words."""
    out = []
    for i in range(n):
        noun = NOUNS[i % len(NOUNS)]
        words = [ADJECTIVES[(i * 5 + j) % len(ADJECTIVES)] for j in range(i % 3)]
        out.append(" ".join([*words, noun, str(i // len(NOUNS))]) if i >= len(NOUNS) else " ".join([*words, noun]))
    return out


def plain_features(method: Any, ctx: torch.Tensor, full_emb: torch.Tensor, eot77: torch.Tensor) -> torch.Tensor:
    """The reference: (B·C, 77, D) sequences through the plain text path; returns (B, C, E)."""
    b, m = ctx.shape[0], ctx.shape[1]
    c = full_emb.shape[0]
    emb = torch.cat([full_emb[None, :, :1].expand(b, -1, -1, -1), ctx[:, None].expand(-1, c, -1, -1),
                     full_emb[None, :, 1 + m :].expand(b, -1, -1, -1)], dim=2)  # (B, C, 77, D)
    return method.prompt.text(emb.flatten(0, 1), eot77.repeat(b)).unflatten(0, (b, c))


def run_once(fn: Any, ctx: torch.Tensor, img: torch.Tensor, labels: torch.Tensor,
             scale: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds of one forward + backward; also the features and the context gradient."""
    ctx.grad = None
    t0 = time.perf_counter()
    feats = fn(ctx)
    F.cross_entropy(cosine_logits(img, feats, scale), labels).backward()
    return time.perf_counter() - t0, feats.detach(), ctx.grad.detach().clone()


def bench_model(model: str, pretrained: str, n_classes: int, batch: int, n_ctx: int, repeats: int) -> dict[str, Any]:
    bb = create_backbone(model, pretrained)
    names = classnames(n_classes)
    method = create_method("visprompt", bb, names, n_ctx=n_ctx, kv="pooled")
    p = method.prompt
    tokens = bb.tokenize([" ".join(["X"] * n_ctx) + f" {n}." for n in names])  # the learner's own placeholder prompt
    full_emb, eot77 = bb.embed_tokens(tokens).float(), bb.eot_positions(tokens)
    g = torch.Generator().manual_seed(0)
    ctx = (0.02 * torch.randn(batch, n_ctx, bb.text.width, generator=g)).requires_grad_(True)  # per-image context
    img = torch.randn(batch, bb.embed_dim, generator=g)
    labels = torch.randint(n_classes, (batch,), generator=g)

    def fast(shared: bool):  # noqa: ANN202
        def fn(c: torch.Tensor) -> torch.Tensor:
            p.share_prefix = shared
            return method.encode_prompts(c)

        return fn

    paths = {
        "plain": (lambda c: plain_features(method, c, full_emb, eot77), 77),
        "truncated": (fast(False), p.token_suffix.shape[1] + 1 + n_ctx),
        "shared": (fast(True), p.token_suffix.shape[1]),
    }
    # one warm-up each, then round-robin repeats: a load spike from another process hits every path alike
    outputs = {name: run_once(fn, ctx, img, labels, bb.logit_scale)[1:] for name, (fn, _) in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, (fn, _) in paths.items():
            times[name].append(run_once(fn, ctx, img, labels, bb.logit_scale)[0])
    ref_ms = 1000 * statistics.median(times["plain"])
    rows = []
    for name, (_, per_class) in paths.items():
        ms, best = 1000 * statistics.median(times[name]), 1000 * min(times[name])
        rows.append({
            "path": name, "tokens_per_class": per_class, "ms": ms, "min_ms": best, "speedup": ref_ms / ms,
            "speedup_min": 1000 * min(times["plain"]) / best,
            "max_abs_diff_features": float((outputs[name][0] - outputs["plain"][0]).abs().max()),
            "max_abs_diff_grad": float((outputs[name][1] - outputs["plain"][1]).abs().max()),
        })
    p.share_prefix = True
    return {"model": model, "classes": n_classes, "batch": batch, "n_ctx": n_ctx, "text_width": bb.text.width,
            "sequences": batch * n_classes, "prefix_len": 1 + n_ctx, "rows": rows,
            "ratio": rows[0]["ms"] / rows[-1]["ms"], "ratio_min": rows[0]["min_ms"] / rows[-1]["min_ms"]}


def ot_quality(ks: list[int], shots: int, seeds: int) -> list[dict[str, Any]]:
    """Global OT split on synthetic CLIP-like logits (scale 100) at 50 % symmetric noise."""
    from edgeprompt.methods.ot import ot_split, split_quality

    out = []
    for k in ks:
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            y = torch.arange(k).repeat_interleave(shots)
            n = len(y)
            cos = 0.25 + 0.01 * torch.randn(n, k, generator=g)
            cos[torch.arange(n), y] += 0.03  # top-1 accuracy ~0.7-0.9, like a decent CLIP on a few-shot set
            given = y.clone()
            flip = torch.randperm(n, generator=g)[: n // 2]
            given[flip] = (y[flip] + torch.randint(1, k, (len(flip),), generator=g)) % k
            t0 = time.perf_counter()
            clean, pseudo, info = ot_split((100 * cos).log_softmax(-1), given)
            q = split_quality(clean, given == y)
            out.append({"K": k, "N": n, "seed": seed, "model_acc": float(((100 * cos).argmax(-1) == y).float().mean()),
                        "precision": q["precision"], "recall": q["recall"], "clean_frac": q["clean_frac"],
                        "pseudo_acc": float((pseudo == y).float().mean()), "iters": info["iterations"],
                        "err_rows": info["err_rows"], "sinkhorn_s": time.perf_counter() - t0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    ap.add_argument("--pretrained", default="none", help="weights tag or path; 'none' = random (speed only)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2, help="images per step (each gets its own context)")
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadier on a busy machine)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the edgeprompt-tiny model")
    ap.add_argument("--ot", action="store_true", help="also report OT split quality on synthetic logits")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f} (other processes skew absolute times, and oversubscribed threads can skew the "
          "ratios too: try --threads 1 on a busy machine)")
    results: dict[str, Any] = {"threads": args.threads, "load_average": load, "models": []}
    models = [(args.model, args.pretrained, args.classes, args.batch)]
    if not args.no_tiny:
        models.append(("edgeprompt-tiny", "none", max(args.classes, 20), max(args.batch, 8)))
    for model, pretrained, n_cls, batch in models:
        r = bench_model(model, pretrained, n_cls, batch, args.n_ctx, args.repeats)
        results["models"].append(r)
        print(f"\n{model}: {r['sequences']} (image, class) sequences = {batch} images x {n_cls} classes, "
              f"width {r['text_width']}, prefix [SOS]+{args.n_ctx}; forward+backward, median of {args.repeats}")
        print(f"  {'path':<10} {'tok/class':>9} {'median ms':>10} {'speedup':>8} {'min ms':>10} {'speedup':>8} "
              f"{'max|dfeat|':>11} {'max|dgrad|':>11}")
        for row in r["rows"]:
            print(f"  {row['path']:<10} {row['tokens_per_class']:>9} {row['ms']:>10.1f} {row['speedup']:>7.2f}x "
                  f"{row['min_ms']:>10.1f} {row['speedup_min']:>7.2f}x "
                  f"{row['max_abs_diff_features']:>11.2e} {row['max_abs_diff_grad']:>11.2e}")
        print(f"  ratio plain / shared: {r['ratio']:.2f}x (medians), {r['ratio_min']:.2f}x (minima)")
    if args.ot:
        rows = ot_quality([10, 20, 100], 16, 3)
        results["ot"] = rows
        print("\nOT split, synthetic CLIP-like logits, 50 % symmetric noise, 16 shots, eps 0.01, 1000 iterations")
        print(f"  {'K':>4} {'N':>5} {'seed':>4} {'acc':>6} {'prec':>6} {'recall':>6} {'clean':>6} {'pseudo':>6} "
              f"{'iters':>5} {'row err':>8} {'s':>6}")
        for o in rows:
            print(f"  {o['K']:>4} {o['N']:>5} {o['seed']:>4} {o['model_acc']:>6.3f} {o['precision']:>6.3f} "
                  f"{o['recall']:>6.3f} {o['clean_frac']:>6.3f} {o['pseudo_acc']:>6.3f} {o['iters']:>5} "
                  f"{o['err_rows']:>8.1e} {o['sinkhorn_s']:>6.2f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
