"""export --deepstream: nvinfer's classifier config parses as its key-file format, names files that exist, and feeds the
graph the pixels it expects."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeprompt
from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.export.deepstream import CONFIG_FILE, LABELS_FILE, write_deepstream
from edgeprompt.manifest import ENGINE_FILE
from tests.tiny_bundle import CLASSES, SIZE, write_tiny_bundle


def _props(folder: Path) -> configparser.SectionProxy:
    """Parse the config as nvinfer does (GLib key file: '#' comments, [group], key=value, keys case-sensitive)."""
    parser = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((folder / CONFIG_FILE).read_text())
    assert parser.sections() == ["property"]
    return parser["property"]


def test_the_config_is_a_classifier_over_files_that_exist(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "b")
    out = write_deepstream(tmp_path / "b", tmp_path / "ds", batch_size=4)
    props = _props(tmp_path / "ds")
    assert props["network-type"] == "1" and props["process-mode"] == "1" and props["output-blob-names"] == "probs"
    assert props["infer-dims"] == f"3;{SIZE};{SIZE}" and props["batch-size"] == "4" and props["network-mode"] == "0"
    assert props["model-color-format"] == "0" and "model-engine-file" not in props  # no engine in this bundle
    for key in ("onnx-file", "labelfile-path"):
        assert (tmp_path / "ds" / props[key]).is_file(), key
    labels = (tmp_path / "ds" / LABELS_FILE).read_text().splitlines()
    assert labels == [";".join(CLASSES)]  # nvinfer's classifier labels: one line per output, ';' between classes
    assert (tmp_path / "ds" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert sorted(out["files"]) == sorted(os.listdir(tmp_path / "ds"))


def test_nvinfer_scaling_gives_the_graph_its_own_input(tmp_path: Path) -> None:
    """nvinfer feeds y = net-scale-factor * (x - offsets) for 0..255 pixels; the graph wants x / 255 (it normalises
    itself), which is exactly what edgeprompt's preprocessing hands it."""
    from edgeprompt.export.deepstream import nvinfer_config
    from edgeprompt.manifest import read_bundle_manifest

    write_tiny_bundle(tmp_path / "b")
    props = nvinfer_config(read_bundle_manifest(tmp_path / "b"), engine=False, batch_size=1)
    x = np.arange(256, dtype=np.float32)
    scale, offsets = float(props["net-scale-factor"]), [float(v) for v in props["offsets"].split(";")]
    for o in offsets:
        np.testing.assert_allclose(scale * (x - o), x / 255, rtol=0, atol=1e-7)


def test_an_engine_is_used_and_its_profile_bounds_the_batch(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["precision"] = "fp16"
    manifest["extra"]["export"] = {"profile": {"min_batch": 1, "opt_batch": 4, "max_batch": 8}}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "b" / ENGINE_FILE).write_bytes(b"engine bytes")
    write_deepstream(tmp_path / "b", tmp_path / "ds", batch_size=8)
    props = _props(tmp_path / "ds")
    assert props["model-engine-file"] == ENGINE_FILE and (tmp_path / "ds" / ENGINE_FILE).is_file()
    assert props["network-mode"] == "2"  # fp16
    with pytest.raises(ConfigError, match="above the engine's profile"):
        write_deepstream(tmp_path / "b", tmp_path / "ds2", batch_size=9)


def test_pad_scaling_and_bundles_nvinfer_cannot_run(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "b")
    write_deepstream(tmp_path / "b", tmp_path / "ds", scaling="pad")
    assert _props(tmp_path / "ds")["maintain-aspect-ratio"] == "1"
    write_tiny_bundle(tmp_path / "outside", normalize_in_graph=False)
    with pytest.raises(ArtifactError, match="normalises outside its graph"):
        write_deepstream(tmp_path / "outside", tmp_path / "ds-outside")
    write_tiny_bundle(tmp_path / "logits", probs=False)
    with pytest.raises(ArtifactError, match="probabilities"):
        write_deepstream(tmp_path / "logits", tmp_path / "ds-logits")
    assert not (tmp_path / "ds-outside").exists() and not (tmp_path / "ds-logits").exists()


def test_existing_folders_need_overwrite_and_only_deepstream_ones_are_replaced(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "b")
    write_deepstream(tmp_path / "b", tmp_path / "ds")
    with pytest.raises(ConfigError, match="already exists"):
        write_deepstream(tmp_path / "b", tmp_path / "ds")
    write_deepstream(tmp_path / "b", tmp_path / "ds", overwrite=True, batch_size=2)
    assert _props(tmp_path / "ds")["batch-size"] == "2"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not an edgeprompt DeepStream folder"):
        write_deepstream(tmp_path / "b", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_writes_it_from_a_bundle_without_torch(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "b")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgeprompt.cli.main import main\n"
            f"main(['export', {str(tmp_path / 'b')!r}, '--deepstream', {str(tmp_path / 'ds')!r}, '--opt-batch', '2'])")
    env = {**os.environ, "PYTHONPATH": str(Path(edgeprompt.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert _props(tmp_path / "ds")["batch-size"] == "2" and CONFIG_FILE in proc.stdout
