"""Dataset-level commands: ``audit`` (which labels are wrong) and ``extract`` (fill the feature cache at scale).

Each parses options, calls one api function, renders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprompt.cli.commands_tune import JSON, PROTOCOL_HELP, parse_options
from edgeprompt.cli.ui import command, emit, reporter, table
from edgeprompt.config import AuditConfig, ExtractConfig, defaults

_AUDIT = defaults(AuditConfig)
_EXTRACT = defaults(ExtractConfig)


def audit(
    train: Annotated[Path, typer.Argument(help="Labeled folder (root/<class>/images) or CSV manifest whose labels to check (never modified).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to create (issues.csv, audit.json, report.md, pictures).")],
    run: Annotated[Path | None, typer.Option(help="Reuse a tuned run's backbone, method and options (re-fitted per fold, so scores stay out of sample).")] = None,
    scorer: Annotated[str, typer.Option(help="The out-of-sample classifier: probe (logistic regression on the frozen features, the default) | prompt (--method tuned per fold).")] = _AUDIT["scorer"],
    probe_c: Annotated[float, typer.Option(help="The probe's inverse regularisation strength (scikit-learn's C).")] = _AUDIT["probe_c"],
    method: Annotated[str, typer.Option("--method", "-m", help="With --scorer prompt: the robust prompt tuned on the other folds.")] = _AUDIT["method"],
    opt: Annotated[list[str] | None, typer.Option("--opt", help="A method option as KEY=VALUE (repeatable).")] = None,
    protocol: Annotated[str, typer.Option(help=PROTOCOL_HELP)] = _AUDIT["protocol"],
    folds: Annotated[int, typer.Option(help="K of the K-fold cross-fitting (each sample is scored by a prompt that never saw it).")] = _AUDIT["folds"],
    epochs: Annotated[int | None, typer.Option(help="Epochs per fold (default: the protocol's).")] = None,
    prior_weight: Annotated[float, typer.Option(help="Weight of the zero-shot prior mixed with the fold predictions.")] = _AUDIT["prior_weight"],
    write_fixed: Annotated[Path | None, typer.Option(help="Write a corrected path,label CSV here (flagged samples relabelled or dropped).")] = None,
    relabel_threshold: Annotated[float, typer.Option(help="With --write-fixed: relabel a flagged sample when its suggestion is at least this probable, else drop it.")] = _AUDIT["relabel_threshold"],
    drop: Annotated[bool, typer.Option("--drop", help="With --write-fixed: drop every flagged sample instead of relabelling.")] = False,
    force_fixed: Annotated[bool, typer.Option("--force-fixed", help="Write --write-fixed even when the audit finds its classifier too weak to judge the labels.")] = False,
    model: Annotated[str, typer.Option(help="open_clip model name.")] = _AUDIT["model"],
    pretrained: Annotated[str, typer.Option(help="Pretrained tag, checkpoint path, or 'shapes'.")] = _AUDIT["pretrained"],
    top: Annotated[int, typer.Option(help="Suspects on the contact sheet.")] = _AUDIT["top"],
    seed: Annotated[int, typer.Option(help="Seed of the folds and the tuning.")] = _AUDIT["seed"],
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache directory.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report (and --write-fixed file).")] = False,
    as_json: JSON = False,
) -> None:
    """Find the labels that are likely wrong, suggest the right ones, estimate the noise rate and noise matrix.

    Example: edgeprompt audit data/train --out audit --write-fixed fixed.csv  then  edgeprompt tune fixed.csv --out runs/r
    """
    from edgeprompt import api

    cfg = AuditConfig(train=str(train), out=str(out), run=str(run) if run else None, method=method,
                      method_options=parse_options(opt or []), protocol=protocol, folds=folds, epochs=epochs,
                      prior_weight=prior_weight, write_fixed=str(write_fixed) if write_fixed else None,
                      relabel_threshold=relabel_threshold, drop=drop, force_fixed=force_fixed, scorer=scorer,
                      probe_c=probe_c, model=model, pretrained=pretrained, top=top,
                      seed=seed, cache_dir=str(cache_dir) if cache_dir else None, overwrite=overwrite)
    with reporter() as rep:
        result = api.audit(cfg, rep)

    def render(r: dict[str, Any]) -> None:
        table(f"{r['n']} labels, {len(r['classes'])} classes: {r['verdict']} (most likely wrong first)",
              ["name", "given", "suggested", "p", "score"],
              [[Path(x["path"]).name, x["given"], x["suggested"], x["suggested_prob"], x["score"]]
               for x in r["top_issues"]])
        if r.get("fixed"):
            f = r["fixed"]
            print(f"wrote {f['file']}: {f['rows']} rows, {f['relabelled']} relabelled, {f['dropped']} dropped")
        print(f"report: {out}/report.md")

    emit(result, as_json, render)


def extract(
    data: Annotated[Path, typer.Argument(help="Labeled folder or CSV manifest whose features to compute.")],
    model: Annotated[str, typer.Option(help="open_clip model name.")] = _EXTRACT["model"],
    pretrained: Annotated[str, typer.Option(help="Pretrained tag, checkpoint path, or 'shapes'.")] = _EXTRACT["pretrained"],
    views: Annotated[int, typer.Option(help="Augmented views per image (0: only the centre view); use tune's --views.")] = _EXTRACT["views"],
    crop_scale: Annotated[float | None, typer.Option(help="Smallest crop area of the views (default: by image size, as tune).")] = None,
    tokens: Annotated[bool, typer.Option("--tokens", help="Also cache patch tokens (VisPrompt).")] = False,
    shard: Annotated[str | None, typer.Option(help="This process's part, i/n (default: torchrun's RANK/WORLD_SIZE, else all).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding workers (default: one per spare core, at most 8).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per encoder call.")] = _EXTRACT["batch_size"],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK).")] = _EXTRACT["device"],
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache directory (share it between processes).")] = None,
    as_json: JSON = False,
) -> None:
    """Compute a dataset's frozen features into the cache ahead of tuning, split across processes or GPUs.

    Example: torchrun --nproc-per-node 4 -m edgeprompt.cli.main extract data/train --model ViT-B-16 --pretrained openai
    """
    from edgeprompt import api

    cfg = ExtractConfig(data=str(data), model=model, pretrained=pretrained, views=views, crop_scale=crop_scale,
                        tokens=tokens, shard=shard, workers=workers, batch_size=batch_size, device=device,
                        cache_dir=str(cache_dir) if cache_dir else None)
    with reporter() as rep:
        result = api.extract(cfg, rep)
    emit(result, as_json, lambda r: table(f"features of {r['data']} (shard {r['shard']})", ["name", "value"],
                                          [[k, v] for k, v in r.items() if not isinstance(v, (dict, list))]))


def register(app: typer.Typer) -> None:
    """Attach ``audit`` and ``extract`` to ``app``."""
    app.command(rich_help_panel="Tune")(command(audit))
    app.command(rich_help_panel="Tune")(command(extract))
