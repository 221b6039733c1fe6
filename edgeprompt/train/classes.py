"""``edgeprompt classes RUN --add NAME --remove NAME --out OUT``: change a tuned run's class list without retuning.

For zero-shot, CoOp, DSPT and NLPrompt with a shared context, a class's text feature is the text encoder applied to
``[SOS] context name . [EOT]``: the learned context does not depend on the class list, so a new class is one more
encoding of its name with the same context, and a removed class is a row left out (CoOp's and CoCoOp's
base-to-new setting). Nothing is retrained and the other rows are bit-identical. Two cases cannot work this way, and
say so in one line: class-specific context (a new class has no context of its own) and VisPrompt (its context is
computed per image, so the class rows are not constants; it keeps every class it was tuned on).

The new run directory is an ordinary run: ``eval`` and ``export`` read it like any other; its manifest records
where it came from and what changed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeprompt.artifact import CONFIG_FILE, STATE_FILE, load_run, run_data, save_state
from edgeprompt.data.classlist import changed_classnames
from edgeprompt.data.folder import display_name
from edgeprompt.errors import ConfigError
from edgeprompt.fileio import guard_output, output_lock, replace_dir
from edgeprompt.manifest import Manifest

SHARED_CONTEXT = ("zeroshot", "coop", "dspt", "nlprompt")


def change_classes(run_dir: str | Path, out: str | Path, add: Sequence[str] = (), remove: Sequence[str] = (),
                   overwrite: bool = False) -> dict[str, Any]:
    """Write ``out``: the run ``run_dir`` with classes added and removed, its learned context unchanged.

    Raises:
        ConfigError: nothing to change, a class added to a class-specific run, an image-conditioned method,
            unknown or repeated names, or an output that overlaps an input.
    """
    t0 = time.perf_counter()
    if not add and not remove:
        raise ConfigError("nothing to change: pass --add NAME and/or --remove NAME")
    run_dir = Path(run_dir)
    target = guard_output(out, "run directory", {"the run directory": run_dir, **run_data(run_dir)},
                          overwrite=overwrite)
    run = load_run(run_dir)
    from edgeprompt.methods.base import stored_options

    method = run.manifest.method
    opts = stored_options(method, dict(run.manifest.extra.get("method_config", {})))
    if method not in SHARED_CONTEXT:
        raise ConfigError(f"{method} computes its context per image, so its class rows are not constants: tune it "
                          f"again with the new classes (shared-context methods can change classes: "
                          f"{', '.join(SHARED_CONTEXT)})")
    names = changed_classnames(run.manifest.classnames, add, remove)  # bad names first: they are the user's typo
    if opts.get("class_specific") and add:
        raise ConfigError("this run learned one context per class (class-specific context): a new class has no "
                          "context of its own; tune again, or use a run with a shared context (--remove works)")
    from edgeprompt.methods import create_method

    changed = create_method(method, run.backbone, names, **opts)
    if method != "zeroshot":
        state = run.method.trainable_state_dict()
        if opts.get("class_specific"):  # removal only: keep the kept classes' own contexts, (C, n_ctx, width) rows
            old = list(run.manifest.classnames)
            keep = [old.index(n) for n in names]
            state = {k: v[keep] if v.ndim and v.shape[0] == len(old) else v for k, v in state.items()}
        changed.load_trainable_state_dict(state)  # the same learned context
    with output_lock(target):
        work = target.with_name(f".{target.name}.classes.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        files = save_state(changed, work) if method != "zeroshot" else {}
        if (run_dir / CONFIG_FILE).is_file():
            shutil.copyfile(run_dir / CONFIG_FILE, work / CONFIG_FILE)
        change = {"from": str(run_dir.resolve()), "added": [display_name(a) for a in add],
                  "removed": [display_name(r) for r in remove]}
        manifest = Manifest(kind="run", method=method, backbone=run.manifest.backbone, classnames=tuple(names),
                            preprocess=run.manifest.preprocess, logit_scale=run.manifest.logit_scale, files=files,
                            extra={**run.manifest.extra, "classes_changed": change})
        manifest.write(work)
        replace_dir(work, target)
    return {"run_dir": str(target), "method": method, "classes": names, **change,
            "state": STATE_FILE if files else None, "time_s": round(time.perf_counter() - t0, 2)}
