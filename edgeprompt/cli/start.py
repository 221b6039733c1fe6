"""``edgeprompt demo`` and ``edgeprompt data``: the offline world, start to finish. Each verb parses its options,
calls one api function and renders the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprompt.cli.ui import JSON, command, emit, pct, reporter, table

data_app = typer.Typer(help="Generate datasets: the offline shapes world.", no_args_is_help=True)


@data_app.command("shapes")
@command
def data_shapes(
    out: Annotated[Path, typer.Argument(help="Folder to create: OUT/train, OUT/val, OUT/test (labeled PNG folders).")],
    task: Annotated[str, typer.Option(help="shape | color | shape-color.")] = "shape",
    per_class: Annotated[int, typer.Option(help="Training images per class (val and test sizes are fixed).")] = 32,
    domain: Annotated[str, typer.Option(help="downstream (shifted, renamed classes) | pretrain.")] = "downstream",
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same bytes.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    as_json: JSON = False,
) -> None:
    """Procedural labeled images (shapes, colours, textures) for offline tuning, tests and benchmarks."""
    from edgeprompt import api

    with reporter() as rep:
        result = api.data_shapes(out, task=task, per_class=per_class, domain=domain, seed=seed,
                                 image_size=image_size, overwrite=overwrite, reporter=rep)
    emit(result, as_json, lambda r: table(f"wrote {out}", ["name", "value"],
                                          [[k, v] for k, v in r.items() if not isinstance(v, (list, dict))]))


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Working folder (data, runs, bundle).")] = Path("edgeprompt-demo"),
    noise: Annotated[str, typer.Option(help="Label noise of the noisy rows.")] = "sym:0.5",
    shots: Annotated[int, typer.Option(help="Samples per class.")] = 16,
    epochs: Annotated[int | None, typer.Option(help="Epochs per method (default: the default protocol's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    export: Annotated[bool, typer.Option("--export/--no-export", help="Export the run of the method recommended for noisy labels and check the bundle.")] = True,
    as_json: JSON = False,
) -> None:
    """The whole story offline on the shipped tiny CLIP: zero-shot, CoOp clean and noisy, DSPT, NLPrompt and
    VisPrompt, export."""
    from edgeprompt import api

    with reporter() as rep:
        result = api.demo(out, noise=noise, shots=shots, epochs=epochs, seed=seed, export=export, reporter=rep)

    def render(r: dict[str, Any]) -> None:
        table(demo_caption(r), ["method", "labels", "test top-1 %", "gain kept %", "tuning acc, clean %",
                                "flipped memorised %", "tune s"],
              [[x["label"], x["noise"], pct(x["test_top1"]), pct(x["gain_kept"]), pct(x["train_acc_clean"]),
                pct(x["flipped_memorized"]), x["tune_s"]] for x in r["rows"]])
        ex = r.get("export")
        if ex and "skipped" not in ex:
            print(f"exported {ex['method']} -> {ex['bundle']}: {ex['backend']} test top-1 {pct(ex['bundle_test_top1'])} % "
                  f"(torch {pct(ex['torch_test_top1'])} %)")
        elif ex:
            print(f"export skipped: {ex['skipped']}")
        print(f"done in {r['time_s']} s; everything is in {r['out']}/")

    emit(result, as_json, render)


def demo_caption(r: dict[str, Any]) -> str:
    """What the demo's table shows, said from its own numbers (never a fixed claim)."""
    rows = r["rows"]
    zs = next(x for x in rows if x["method"] == "zeroshot")
    clean = next(x for x in rows if x["method"] == "coop" and x["noise"] == "none")
    noisy = [x for x in rows if x["noise"] != "none"]
    ce = next((x for x in noisy if x["method"] == "coop"), None)
    robust = [x for x in noisy if x["method"] != "coop" and x["gain_kept"] is not None]
    best = max(robust, key=lambda x: x["gain_kept"], default=None)
    text = (f"Clean test top-1 on the shapes world ({len(r['classes'])} classes, {clean['n_train']} tuning images). "
            f"Tuning on clean labels gains {100 * (clean['test_top1'] - zs['test_top1']):+.1f} points over zero-shot")
    if ce is not None and ce["gain_kept"] is not None:
        text += (f"; at {r['noise']} ({ce['n_flipped']} labels flipped) CoOp's cross-entropy keeps "
                 f"{100 * ce['gain_kept']:.0f} % of that gain")
    from edgeprompt.config import RECOMMENDED_NOISY_METHOD

    rec = next((x for x in robust if x["method"] == RECOMMENDED_NOISY_METHOD), None)
    if rec is not None:  # the exported one; the recommendation rests on every noise rate, not this one cell
        text += f", {rec['label']} (recommended for noisy labels, exported below) keeps {100 * rec['gain_kept']:.0f} %"
    if best is not None and best is not rec and (rec is None or best["gain_kept"] > rec["gain_kept"]):
        text += f", {best['label']} {100 * best['gain_kept']:.0f} % here"
    return text + " (gain kept: (top-1 - zero-shot) / (clean CoOp - zero-shot))."


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the app."""
    app.command(rich_help_panel="Start here")(command(demo))
    app.add_typer(data_app, name="data", rich_help_panel="Start here")
