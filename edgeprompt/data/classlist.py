"""A class list and its rows, torch-free: what ``edgeprompt classes`` checks and computes on a run or a bundle."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeprompt.data.folder import display_name
from edgeprompt.errors import ConfigError


def changed_classnames(
    current: Sequence[str], add: Sequence[str], remove: Sequence[str], source: str = "run"
) -> list[str]:
    """The new class list: ``current`` without ``remove``, then ``add`` in the order given (checked).

    ``source`` ("run" or "bundle") is what the messages say the classes belong to.
    """
    add_names, remove_names = [display_name(a) for a in add], [display_name(r) for r in remove]
    unknown = [r for r in remove_names if r not in current]
    if unknown:
        raise ConfigError(f"--remove {', '.join(map(repr, unknown))}: not a class of this {source}; its classes are "
                          f"{', '.join(current)}")
    kept = [c for c in current if c not in remove_names]
    present = [a for a in add_names if a in kept]
    if present:
        raise ConfigError(f"--add {', '.join(map(repr, present))}: already a class of this {source}")
    if len(set(add_names)) != len(add_names) or any(not a for a in add_names):
        raise ConfigError("--add: give each new class once, with a non-empty name")
    names = kept + add_names
    if len(names) < 2:
        raise ConfigError(f"the changed run would have {len(names)} class(es): a classifier needs at least 2")
    return names


def class_rows(features: np.ndarray, n_templates: int, scale: float) -> np.ndarray:
    """(C * T, E) normalised text features, class-major -> (C, E) class rows:
    ``scale * normalize(mean over the T templates)``, what an export folds into its class matrix."""
    f = features.reshape(-1, n_templates, features.shape[-1]).mean(axis=1)
    return (scale * f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float32)
