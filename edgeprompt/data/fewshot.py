"""Seeded k-shot-per-class sampling."""

from __future__ import annotations

import logging
import random

from edgeprompt.data.folder import LabeledSet

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
