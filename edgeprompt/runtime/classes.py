"""``edgeprompt classes BUNDLE --add NAME --remove NAME --out OUT`` on the device: onnxruntime, no torch.

A bundle exported with ``--open-classes`` carries the text side (``text.onnx`` with the learned context folded in,
the tokenizer's vocabulary) and keeps its class rows as data (``classes.npy``, (C, E), normalised and scaled): the
predictor multiplies the image graph's ``features`` output by them. Adding a class is one tokenizer call and one
text-graph run per template; removing one drops its row. ``model.onnx`` and any ``model.engine`` are copied as they
are, so a TensorRT engine is reused without a rebuild or a refit (chosen over a refittable engine: a refit still
needs TensorRT's builder on the device and a fixed class count, this needs neither; docs/classes.md).

The rows of the classes a bundle already has are kept bit for bit; a class added again after being removed gets
the row the export computed for it (same graph, same ids).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt.data.classlist import changed_classnames, class_rows
from edgeprompt.data.folder import display_name
from edgeprompt.data.tokenizer import ClipTokenizer
from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.fileio import guard_output, output_lock, replace_dir, sha256_file
from edgeprompt.manifest import CLASS_ROWS_FILE, Manifest, read_bundle_manifest


def open_classes(manifest: Manifest) -> dict[str, Any] | None:
    """The bundle's ``--open-classes`` entry (text graph, vocabulary, rows, prompt spec), or None."""
    entry = manifest.extra.get("open_classes")
    return entry if isinstance(entry, dict) else None


def _checked_file(bundle_dir: Path, manifest: Manifest, name: str) -> Path:
    """``bundle_dir / name``, present and matching its manifest hash (else one line, not a reader's traceback)."""
    path, expected = bundle_dir / name, manifest.files.get(name)
    if not path.is_file() or (expected and sha256_file(path) != expected):
        raise ArtifactError(f"{path} is missing or does not match manifest.json: copy the bundle again")
    return path


def load_class_rows(bundle_dir: str | os.PathLike[str], manifest: Manifest) -> np.ndarray | None:
    """The (C, E) float32 class rows the predictor applies, or None for a bundle whose rows are in its graph.

    Raises:
        ArtifactError: the rows file is missing, changed since the manifest was written, or has the wrong shape.
    """
    entry = open_classes(manifest)
    if entry is None:
        return None
    path = _checked_file(Path(bundle_dir), manifest, entry["rows"])
    rows = np.load(path, allow_pickle=False)
    if rows.ndim != 2 or rows.shape[0] != manifest.num_classes:
        raise ArtifactError(f"{path} holds {rows.shape} rows for {manifest.num_classes} classes: re-export the bundle")
    return rows.astype(np.float32, copy=False)


def encode_classes(bundle_dir: str | os.PathLike[str], entry: dict[str, Any], names: Sequence[str],
                   threads: int | None = None) -> np.ndarray:
    """(len(names), E) class rows for ``names`` from the bundle's text graph, with its learned context."""
    from edgeprompt._optional import require

    ort = require("onnxruntime", why="changing a bundle's classes")
    bundle_dir = Path(bundle_dir)
    templates = list(entry["templates"])
    prompts = [t.format(display_name(n).replace("_", " ")) for n in names for t in templates]
    ids = ClipTokenizer(bundle_dir / entry["vocab"])(prompts)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    try:
        session = ort.InferenceSession(str(bundle_dir / entry["text_graph"]), opts,
                                       providers=["CPUExecutionProvider"])
        features = session.run(None, {entry["input"]: ids})[0]  # (N * T, E) normalised
    except Exception as e:  # onnxruntime raises its own exception types for a bad or damaged graph
        raise ArtifactError(f"onnxruntime cannot run {bundle_dir / entry['text_graph']}: "
                            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}: "
                            f"copy the bundle again, or re-export it with --open-classes") from None
    return class_rows(features, len(templates), float(entry["scale"]))


def change_bundle_classes(bundle: str | os.PathLike[str], out: str | os.PathLike[str], add: Sequence[str] = (),
                          remove: Sequence[str] = (), overwrite: bool = False,
                          threads: int | None = None) -> dict[str, Any]:
    """Write ``out``: the bundle with classes added and removed, its graphs (and engine) unchanged.

    Raises:
        ConfigError: nothing to change, a bundle exported without ``--open-classes``, unknown or repeated names, or
            an output that overlaps the input.
    """
    t0 = time.perf_counter()
    if not add and not remove:
        raise ConfigError("nothing to change: pass --add NAME and/or --remove NAME")
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle)
    entry = open_classes(manifest)
    if entry is None:
        raise ConfigError(f"{bundle} keeps its classes inside model.onnx: export the run again with --open-classes "
                          f"(or change the run's classes: edgeprompt classes RUN_DIR --add NAME --out NEW_RUN)")
    for key in ("text_graph", "vocab"):  # before onnxruntime or the tokenizer reads them
        _checked_file(bundle, manifest, entry[key])
    target = guard_output(out, "bundle", {"the bundle": bundle}, overwrite=overwrite)
    names = changed_classnames(manifest.classnames, add, remove, source="bundle")
    rows = load_class_rows(bundle, manifest)
    assert rows is not None  # an open-classes bundle always has rows
    old = list(manifest.classnames)
    kept = [rows[old.index(n)] for n in names if n in old]
    new = [n for n in names if n not in old]
    t_enc = time.perf_counter()
    added = encode_classes(bundle, entry, new, threads) if new else np.zeros((0, rows.shape[1]), np.float32)
    encode_s = time.perf_counter() - t_enc
    with output_lock(target):
        work = target.with_name(f".{target.name}.classes.partial")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("manifest.json", CLASS_ROWS_FILE))
        np.save(work / entry["rows"], np.concatenate([np.stack(kept), added]) if kept else added)
        change = {"from": str(bundle.resolve()), "added": new,
                  "removed": [display_name(r) for r in remove]}
        files = {**manifest.files, entry["rows"]: sha256_file(work / entry["rows"])}
        extra = {**manifest.extra, "classes_changed": change}
        replace(manifest, classnames=tuple(names), files=files, extra=extra).write(work)
        replace_dir(work, target)
    return {"bundle": str(target), "classes": names, **change, "reused": sorted(set(manifest.files) - {entry["rows"]}),
            "encode_s": round(encode_s, 4), "time_s": round(time.perf_counter() - t0, 3)}

