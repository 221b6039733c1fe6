"""Seeded k-shot-per-class sampling."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

from edgeprompt.data.folder import ImageChecks, LabeledSet, finish_set, handle_problem

log = logging.getLogger(__name__)


def sample_few_shot(data: LabeledSet, shots: int | None, seed: int) -> LabeledSet:
    """Keep ``shots`` samples per class, chosen with ``random.Random(seed)``; None or 0 keeps everything.

    Classes with fewer than ``shots`` samples keep all of theirs (with a warning). Output order is by class, then
    by the original order, so the result does not depend on set iteration order.
    """
    if not shots:
        return data
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {c: [] for c in range(data.num_classes)}
    for i, y in enumerate(data.labels):
        by_class[y].append(i)
    keep: list[int] = []
    for c, idx in by_class.items():
        if len(idx) < shots:
            log.warning("class %r has %d samples, fewer than %d shots: using all", data.classnames[c], len(idx), shots)
            keep.extend(idx)
        else:
            keep.extend(sorted(rng.sample(idx, shots)))
    return data.subset(keep)


def sample_checked(data: LabeledSet, shots: int | None, seed: int, *, strict: bool = False,
                   checks: ImageChecks | None = None, progress: Callable[[int, int], None] | None = None) -> LabeledSet:
    """:func:`sample_few_shot` on a set indexed without checking its images (``check_images=False``), checking
    only the images it picks: an unreadable pick is reported (fatal with ``strict``) and redrawn from the rest of
    its class. With every image readable the result is exactly ``sample_few_shot(data, shots, seed)``, so a folder's
    size costs a listing, not a decode per file. A class left with no readable image is dropped, with a warning.
    """
    bad: set[Path] = set()
    problems = list(data.skipped)
    while True:
        pool = data if not bad else data.subset([i for i, p in enumerate(data.paths) if p not in bad])
        few = sample_few_shot(pool, shots, seed)
        reasons = (checks or ImageChecks()).reasons(list(few.paths), progress)
        found = [(p, r) for p, r in zip(few.paths, reasons, strict=True) if r]
        if not found:
            break
        for p, reason in found:
            handle_problem(problems, p, reason, strict)
            bad.add(p)
    return finish_set(list(few.paths), list(few.labels), few.classnames, data.root, problems, str(data.root))
