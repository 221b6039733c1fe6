"""The run directory: what ``tune`` writes and ``eval`` / ``export`` read back.

```
RUN_DIR/
  manifest.json        schema version, method, backbone + weights hash, class names, preprocessing, logit scale
  config.json          the resolved TuneConfig
  state.safetensors    trainable tensors only (absent for zero-shot); loaded with strict key and shape checks
  metrics.jsonl        one JSON record per epoch
  train_split.json     tuning samples: paths, given (noisy) labels, true labels
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprompt.errors import ArtifactError
from edgeprompt.manifest import Manifest

STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.json"
SPLIT_FILE = "train_split.json"


def run_data(run_dir: str | Path) -> dict[str, str | None]:
    """The data a run was tuned on, as an output check names it (``config.json``; empty when unreadable)."""
    try:
        cfg = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
        return {"the run's training data": cfg.get("train"), "the run's validation data": cfg.get("val")}
    except (OSError, ValueError, AttributeError):
        return {}


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved ``config.json`` ({} when absent); a damaged one is an ArtifactError naming the file."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{path} is damaged ({type(e).__name__}): re-run `edgeprompt tune` for this run") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} is damaged (a JSON object was expected): re-run `edgeprompt tune` for this run")
    return config


@dataclass
class LoadedRun:
    """A run rebuilt in memory."""

    manifest: Manifest
    config: dict[str, Any]
    method: Any  # PromptMethod
    backbone: Any  # FrozenCLIP


def save_state(method: Any, directory: Path) -> dict[str, str]:
    """Write the method's trainable state; returns {file: sha256} for the manifest."""
    from safetensors.torch import save_file

    from edgeprompt.fileio import sha256_file

    state = method.trainable_state_dict()
    if not state:
        return {}
    path = directory / STATE_FILE
    save_file(state, str(path))
    return {STATE_FILE: sha256_file(path)}


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Rebuild the method of ``run_dir`` on its backbone (checking the weights hash) with strict state loading."""
    from safetensors.torch import load_file

    from edgeprompt.backbone import create_backbone
    from edgeprompt.fileio import sha256_file
    from edgeprompt.methods import create_method
    from edgeprompt.methods.base import stored_options

    run_dir = Path(run_dir)
    manifest = Manifest.read(run_dir)
    if manifest.kind != "run":
        raise ArtifactError(f"{run_dir} is a {manifest.kind}, not a run directory from `edgeprompt tune`")
    config = read_run_config(run_dir)
    backbone = create_backbone(manifest.backbone.model, manifest.backbone.pretrained, device)
    if manifest.backbone.weights_sha256 and backbone.ref.weights_sha256 != manifest.backbone.weights_sha256:
        raise ArtifactError(
            f"the weights of {manifest.backbone.model} ({manifest.backbone.pretrained}) differ from the ones this run "
            f"was tuned on (hash {backbone.ref.weights_sha256[:12]} != {manifest.backbone.weights_sha256[:12]})"
        )
    method = create_method(manifest.method, backbone, list(manifest.classnames),
                           **stored_options(manifest.method, manifest.extra.get("method_config", {})))
    state_path = run_dir / STATE_FILE
    if STATE_FILE in manifest.files:
        if not state_path.is_file():
            raise ArtifactError(f"{run_dir} is missing {STATE_FILE}")
        if sha256_file(state_path) != manifest.files[STATE_FILE]:
            raise ArtifactError(f"{state_path} does not match the hash in the manifest (file changed or corrupt)")
        method.load_trainable_state_dict(load_file(str(state_path)))
    method.to(device).eval()
    return LoadedRun(manifest, config, method, backbone)


def read_split(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``train_split.json`` (paths are absolute; runs from before that are resolved against the CWD): the
    one reader of that file (eval --train, the export's parity images, INT8 calibration)."""
    path = Path(run_dir) / SPLIT_FILE
    try:
        split = json.loads(path.read_text())
        ok = len(split["paths"]) == len(split["given_labels"]) == len(split["true_labels"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path} is missing or damaged ({type(e).__name__}): re-run `edgeprompt tune`") from None
    if not ok:
        raise ArtifactError(f"{path} is damaged (paths and labels differ in length): re-run `edgeprompt tune`")
    return split
