"""``edgeprompt tune``, ``eval``, ``sweep``, ``classes``, ``audit`` and ``extract``: the workstation verbs.

Each parses its options into a config, calls one api function and renders the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprompt.cli.ui import JSON, PROTOCOL_HELP, command, emit, parse_options, pct, reporter, table
from edgeprompt.config import (
    AuditConfig,
    ExtractConfig,
    SweepConfig,
    TrainConfig,
    TuneConfig,
    defaults,
)

_TUNE = defaults(TuneConfig)
_TRAIN = TrainConfig()
_SWEEP = defaults(SweepConfig)


def _render_tune(r: dict[str, Any]) -> None:
    rows = [[k, v] for k, v in r.items() if k not in ("cache",)]
    table(f"tuned {r['method']} -> {r['run_dir']}", ["name", "value"], rows)


def tune(
    train: Annotated[Path, typer.Argument(help="Labeled folder (root/<class>/images) or CSV manifest (path,label).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.", rich_help_panel="Run")],
    method: Annotated[str, typer.Option("--method", "-m", help="zeroshot | coop | dspt | visprompt (see `edgeprompt models`).", rich_help_panel="Method")] = _TUNE["method"],
    protocol: Annotated[str, typer.Option(help=PROTOCOL_HELP, rich_help_panel="Method")] = _TUNE["protocol"],
    loss: Annotated[str | None, typer.Option(help="CoOp's loss: ce | gce | mae.", rich_help_panel="Method")] = None,
    gce_q: Annotated[float | None, typer.Option(help="GCE's q (default: the method's; 0.7 for CoOp).", rich_help_panel="Method")] = None,
    n_ctx: Annotated[int | None, typer.Option(help="Context tokens M (default 16).", rich_help_panel="Method")] = None,
    ctx_init: Annotated[str | None, typer.Option(help="Words the context starts from, right before the class name (default 'a photo of a'; '' = random).", rich_help_panel="Method")] = None,
    position: Annotated[str | None, typer.Option(help="Class token position: end | middle | front.", rich_help_panel="Method")] = None,
    csc: Annotated[bool | None, typer.Option("--csc/--shared-ctx", help="Class-specific context.", rich_help_panel="Method")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="A method option, [METHOD.]KEY=VALUE (repeatable; see `edgeprompt models`).", rich_help_panel="Method")] = None,
    model: Annotated[str, typer.Option(help="open_clip model name.", rich_help_panel="Backbone")] = _TUNE["model"],
    pretrained: Annotated[str, typer.Option(help="Pretrained tag (downloads), local checkpoint path, 'shapes' for the shipped tiny model, or 'none'.", rich_help_panel="Backbone")] = _TUNE["pretrained"],
    shots: Annotated[int, typer.Option(help="Samples per class (0 = all).", rich_help_panel="Data")] = _TUNE["shots"],
    noise: Annotated[str, typer.Option(help="Synthetic label noise: none | sym:R | asym:R | map:FILE:R.", rich_help_panel="Data")] = _TUNE["noise"],
    val: Annotated[Path | None, typer.Option(help="Validation folder, evaluated every --eval-every epochs.", rich_help_panel="Data")] = None,
    classnames: Annotated[Path | None, typer.Option(help="File with one class name per line (sorted folder order).", rich_help_panel="Data")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on unreadable images instead of skipping them.", rich_help_panel="Data")] = False,
    views: Annotated[int, typer.Option(help="Augmented views per image in the feature cache.", rich_help_panel="Data")] = _TUNE["views"],
    crop_scale: Annotated[float | None, typer.Option(help="Smallest random-resized-crop area of the views (default: CoOp's 0.08 for photos, 0.5 for images under 160 px).", rich_help_panel="Data")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the protocol's, 50 or 200).", rich_help_panel="Optimisation")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.", rich_help_panel="Optimisation")] = _TRAIN.batch_size,
    optimizer: Annotated[str, typer.Option(help="sgd | adamw.", rich_help_panel="Optimisation")] = _TRAIN.optimizer,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (cosine schedule; default: the method's, docs/defaults.md).", rich_help_panel="Optimisation")] = _TRAIN.lr,
    seed: Annotated[int, typer.Option(help="Seed for shots, noise and training.", rich_help_panel="Optimisation")] = _TRAIN.seed,
    eval_every: Annotated[int, typer.Option(help="Validate every N epochs (0 = end only).", rich_help_panel="Optimisation")] = _TRAIN.eval_every,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.", rich_help_panel="Optimisation")] = _TRAIN.device,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache (default $EDGEPROMPT_CACHE or ~/.cache/edgeprompt).", rich_help_panel="Run")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.", rich_help_panel="Run")] = False,
    as_json: JSON = False,
) -> None:
    """Tune a prompt on a (partly mislabeled) labeled folder and write a run directory.

    An interrupted run resumes when the same command is run again.

    Example: edgeprompt tune data/train --method dspt --noise sym:0.5 --val data/val --out runs/dspt
    """
    from edgeprompt import api

    options = {k: v for k, v in dict(loss=loss, gce_q=gce_q, n_ctx=n_ctx, ctx_init=ctx_init, position=position,
                                     class_specific=csc).items() if v is not None}
    options.update(parse_options(opt or [], [method]).get(method, {}))
    cfg = TuneConfig(
        train=str(train), out=str(out), method=method, method_options=options, protocol=protocol, model=model,
        pretrained=pretrained, shots=shots, noise=noise, val=str(val) if val else None, views=views,
        crop_scale=crop_scale, cache_dir=str(cache_dir) if cache_dir else None, strict=strict,
        classnames_file=str(classnames) if classnames else None, overwrite=overwrite,
        train_cfg=TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed,
                              eval_every=eval_every, device=device),
    )
    with reporter() as rep:
        result = api.tune(cfg, rep)
    emit(result, as_json, _render_tune)


def _render_eval(r: dict[str, Any]) -> None:
    rows = [[name, pct(acc)] for name, acc in r["per_class"].items()]
    table(f"{r['method']} on {r['split']}: top-1 {pct(r['top1'])} % (n={r['n']})", ["class", "acc %"], rows)
    if "noisy" in r:
        nz = r["noisy"]
        table("tuning samples (against true labels)", ["name", "value"], [
            ["clean samples", nz["n_clean"]], ["acc on clean %", pct(nz["acc_clean"])],
            ["flipped samples", nz["n_flipped"]], ["acc on flipped %", pct(nz["acc_flipped"])],
            ["flipped memorised %", pct(nz["memorized_flipped"])],
        ])


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory from `edgeprompt tune`.")],
    test: Annotated[Path | None, typer.Argument(help="Labeled test folder or CSV (classes must match the run's).")] = None,
    train: Annotated[bool, typer.Option("--train", help="Evaluate on the run's own tuning samples; reports clean and flipped samples apart.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on unreadable images.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache directory.")] = None,
    as_json: JSON = False,
) -> None:
    """Top-1, per-class accuracy and confusion matrix of a tuned run."""
    from edgeprompt import api

    with reporter() as rep:
        result = api.evaluate(run_dir, test, on_train=train, strict=strict,
                              cache_dir=str(cache_dir) if cache_dir else None, reporter=rep)
    emit(result, as_json, _render_eval)


def sweep(
    train: Annotated[Path, typer.Argument(help="Labeled training folder (few-shot subsets are drawn from it).")],
    test: Annotated[Path, typer.Option("--test", help="Clean labeled test folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory (re-run the same command to resume).")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = ",".join(_SWEEP["methods"]),
    losses: Annotated[str, typer.Option(help="CoOp losses, one row each: ce,gce,mae.")] = ",".join(_SWEEP["losses"]),
    noise: Annotated[list[str] | None, typer.Option(help="Noise groups kind:r1,r2,… (repeatable), e.g. --noise sym:0,0.25,0.5,0.75 --noise asym:0.25,0.5.")] = None,
    protocol: Annotated[str, typer.Option(help=PROTOCOL_HELP)] = _SWEEP["protocol"],
    shots: Annotated[int, typer.Option(help="Samples per class.")] = _SWEEP["shots"],
    seeds: Annotated[int, typer.Option(help="Seeds per cell (1..N).")] = _SWEEP["seeds"],
    epochs: Annotated[int | None, typer.Option(help="Epochs per cell (default: the protocol's).")] = None,
    model: Annotated[str, typer.Option(help="open_clip model name.")] = _SWEEP["model"],
    pretrained: Annotated[str, typer.Option(help="Pretrained tag or checkpoint path.")] = _SWEEP["pretrained"],
    views: Annotated[int, typer.Option(help="Augmented views per image in the feature cache.")] = _SWEEP["views"],
    crop_scale: Annotated[float | None, typer.Option(help="Smallest random-resized-crop area (default: by image size).")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="A method option, [METHOD.]KEY=VALUE (repeatable): METHOD. for one method (visprompt.ot_warmup=2), bare for every method that has it.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache directory (on a cluster: a path every node reaches, see docs/scale-out.md).")] = None,
    jobs: Annotated[int, typer.Option(help="Cells at once, in local worker processes (2 on a 2-core machine is about twice as fast).")] = _SWEEP["jobs"],
    ray: Annotated[bool, typer.Option("--ray", help="Run each cell as a Ray task (needs the ray extra of edgeprompt).", rich_help_panel="Ray")] = _SWEEP["ray"],
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to use: auto, HOST:PORT or ray://HOST:10001 (implies --ray; default: $RAY_ADDRESS, a cluster on this host, or a new local one).", rich_help_panel="Ray")] = None,
    ray_cpus: Annotated[float, typer.Option(help="CPUs per cell task (fractions below 1 allowed).", rich_help_panel="Ray")] = _SWEEP["ray_cpus"],
    ray_gpus: Annotated[float, typer.Option(help="GPUs per cell task, e.g. 0.25 for four cells per GPU.", rich_help_panel="Ray")] = _SWEEP["ray_gpus"],
    as_json: JSON = False,
) -> None:
    """Accuracy of each method as label noise grows: every (method, noise, seed) cell, mean ± std table, plot.

    Re-run the same command to resume. With --ray the cells run in parallel as Ray tasks, with the same cell files
    and results.

    Example: edgeprompt sweep data/train --test data/test --out sweep --ray --ray-cpus 1 --ray-gpus 0.25
    """
    from edgeprompt import api
    from edgeprompt.config import split_list
    from edgeprompt.sweep.run import markdown

    per_method = parse_options(opt or [], split_list(methods, "--methods"))
    cfg = SweepConfig(
        train=str(train), test=str(test), out=str(out), methods=split_list(methods, "--methods"),
        losses=split_list(losses, "--losses"), noise=tuple(noise or _SWEEP["noise"]), protocol=protocol,
        shots=shots, seeds=seeds, model=model, pretrained=pretrained, epochs=epochs, views=views,
        crop_scale=crop_scale, cache_dir=str(cache_dir) if cache_dir else None, method_options=per_method,
        jobs=jobs, ray=ray or ray_address is not None, ray_address=ray_address, ray_cpus=ray_cpus, ray_gpus=ray_gpus,
    )
    with reporter() as rep:
        result = api.sweep(cfg, rep)

    def render(r: dict[str, Any]) -> None:
        print(markdown(r))
        print(f"{r['cells']} cells in {r['wall_s']} s; seconds per cell: "
              + ", ".join(f"{k} {v}" for k, v in r["seconds_per_cell"].items()))
        print(f"tables and plots in {out}/ (results.md, results.csv, results.json, accuracy_vs_noise_*.png)")

    emit(result, as_json, render)


def classes(
    run: Annotated[Path, typer.Argument(metavar="RUN_OR_BUNDLE", help="A tuned run directory (shared context: zeroshot, coop, dspt, nlprompt), or a bundle exported with --open-classes (then only onnxruntime is needed).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The changed run directory (or bundle) to create.")],
    add: Annotated[list[str] | None, typer.Option("--add", help="A class name to add (repeatable).")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="A class name to remove (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory at --out.")] = False,
    as_json: JSON = False,
) -> None:
    """Add or remove classes without retuning: new rows use the learned context.

    On a run (torch): edgeprompt classes runs/coop --add hexagon --out runs/coop-more, then export it. On a bundle
    exported with --open-classes (the device, onnxruntime only; the graph and any TensorRT engine are reused):
    edgeprompt classes bundle --add hexagon --out bundle-more
    """
    from edgeprompt import api

    result = api.classes(run, out, add=add or [], remove=remove or [], overwrite=overwrite)
    emit(result, as_json, lambda r: print(f"{r.get('run_dir') or r.get('bundle')}: {len(r['classes'])} classes "
                                          f"({', '.join(r['classes'])}); added {r['added'] or 'none'}, removed "
                                          f"{r['removed'] or 'none'}"))


_AUDIT = defaults(AuditConfig)


_EXTRACT = defaults(ExtractConfig)


def audit(
    train: Annotated[Path, typer.Argument(help="Labeled folder (root/<class>/images) or CSV manifest whose labels to check (never modified).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to create (issues.csv, audit.json, report.md, pictures).")],
    run: Annotated[Path | None, typer.Option(help="Reuse a tuned run's backbone, method and options (re-fitted per fold, so scores stay out of sample).")] = None,
    scorer: Annotated[str, typer.Option(help="The out-of-sample classifier: probe (logistic regression on the frozen features, the default) | prompt (--method tuned per fold).")] = _AUDIT["scorer"],
    probe_c: Annotated[float, typer.Option(help="The probe's inverse regularisation strength (scikit-learn's C).")] = _AUDIT["probe_c"],
    method: Annotated[str, typer.Option("--method", "-m", help="With --scorer prompt: the robust prompt tuned on the other folds.")] = _AUDIT["method"],
    opt: Annotated[list[str] | None, typer.Option("--opt", help="A method option, [METHOD.]KEY=VALUE (repeatable).")] = None,
    protocol: Annotated[str, typer.Option(help=PROTOCOL_HELP)] = _AUDIT["protocol"],
    folds: Annotated[int, typer.Option(help="K of the K-fold cross-fitting (each sample is scored by a prompt that never saw it).")] = _AUDIT["folds"],
    epochs: Annotated[int | None, typer.Option(help="Epochs per fold (default: the protocol's).")] = None,
    prior_weight: Annotated[float | None, typer.Option(help="Weight of the zero-shot prior mixed with the fold predictions (default: the weight whose mixture agrees best with the given labels, of 0, 0.1, 0.25, 0.5).")] = None,
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
                      method_options=parse_options(opt or [], [method]).get(method, {}), protocol=protocol, folds=folds, epochs=epochs,
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
    """Add this module's verbs to the app."""
    app.command(rich_help_panel="Tune")(command(tune))
    app.command("eval", rich_help_panel="Tune")(command(evaluate))
    app.command(rich_help_panel="Tune")(command(sweep))
    app.command(rich_help_panel="Tune")(command(classes))
    app.command(rich_help_panel="Tune")(command(audit))
    app.command(rich_help_panel="Tune")(command(extract))
