"""Accuracy, per-class accuracy and confusion matrix; on a noisy training set, clean and flipped samples apart."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_report(pred: np.ndarray, target: np.ndarray, classnames: list[str]) -> dict[str, Any]:
    """Top-1, per-class accuracy and the confusion matrix (rows = true class, columns = predicted)."""
    c = len(classnames)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (target, pred), 1)
    support = conf.sum(1)
    per_class = {classnames[i]: (float(conf[i, i] / support[i]) if support[i] else None) for i in range(c)}
    return {
        "n": int(len(target)),
        "top1": float((pred == target).mean()) if len(target) else 0.0,
        "per_class": per_class,
        "confusion": conf.tolist(),
        "classnames": list(classnames),
    }


def noisy_train_report(pred: np.ndarray, given: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """On the tuning set: accuracy against the true labels on clean and on flipped samples, and how many flipped
    samples the model memorised (predicts their wrong, given label)."""
    clean = given == true
    flipped = ~clean
    out: dict[str, Any] = {
        "n_clean": int(clean.sum()),
        "n_flipped": int(flipped.sum()),
        "acc_clean": float((pred[clean] == true[clean]).mean()) if clean.any() else None,
        "acc_flipped": float((pred[flipped] == true[flipped]).mean()) if flipped.any() else None,
        "memorized_flipped": float((pred[flipped] == given[flipped]).mean()) if flipped.any() else None,
    }
    return out
