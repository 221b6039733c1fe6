"""``export --open-classes`` and ``edgeprompt classes BUNDLE``: the text side as a graph, class rows as data, classes
changed on the device with onnxruntime alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeprompt
from edgeprompt.errors import ConfigError, ExportError
from edgeprompt.manifest import CLASS_ROWS_FILE, ENGINE_FILE, ONNX_FILE, TEXT_ONNX_FILE, Manifest
from tests.conftest import COLOURS, make_folder
from tests.helpers import BLOCK_TORCH, export_run, torch_leaks, tune_run

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def setup(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("open")
    data = make_folder(root / "data", per_class=4, size=32)
    run = tune_run(tiny_model, "coop", data, root / "run", root / "cache", n_ctx=4, class_specific=False)
    export_run(run, root / "bundle", n_check=4, open_classes=True)
    return {"root": root, "data": data, "run": run, "bundle": root / "bundle"}


def _images(data: Path) -> list[Path]:
    return sorted(data.glob("*/*.png"))


def test_the_tokenizer_gives_open_clips_ids() -> None:
    open_clip = pytest.importorskip("open_clip")
    from open_clip.tokenizer import default_bpe

    from edgeprompt.data.tokenizer import ClipTokenizer
    from edgeprompt.world import shapes

    texts = [f"X X X X {n}." for n in shapes.classnames("shape")] + [
        "a photo of a sand timer.", "Hello,   World!! it's 2026_x__y", "café au lait", "naïve résumé 123", "&amp; x",
        "", "a " * 100, "emoji 🙂 test", "UPPER Case", "snake_case_name", "tab\tnew\nline", "日本語 テキスト",
        "don't you'll we've I'M"]
    ours = ClipTokenizer(default_bpe())(texts)
    theirs = open_clip.get_tokenizer("ViT-B-32")(texts).numpy()
    assert ours.dtype == np.int64 and ours.shape == theirs.shape == (len(texts), 77)
    for text, a, b in zip(texts, ours, theirs, strict=True):
        assert np.array_equal(a, b), text


def test_the_bundle_carries_the_text_graph_and_its_rows_match_the_folded_graph(setup: dict[str, Path]) -> None:
    from edgeprompt.runtime import load_bundle

    bundle = setup["bundle"]
    manifest = Manifest.read(bundle)
    entry = manifest.extra["open_classes"]
    assert entry["n_ctx"] == 4 and entry["max_abs_row_diff"] <= 1e-4
    for name in (TEXT_ONNX_FILE, CLASS_ROWS_FILE, entry["vocab"]):
        assert (bundle / name).is_file() and name in manifest.files
    rows = np.load(bundle / CLASS_ROWS_FILE)
    assert rows.shape == (len(COLOURS), 32)  # the test CLIP's embedding width
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), manifest.logit_scale, rtol=1e-5)
    # the rows applied outside the graph give the graph's own logits
    predictor = load_bundle(bundle, backend="ort-cpu", threads=1)
    from edgeprompt.preprocess import load_image, preprocess_batch

    pixels = preprocess_batch([load_image(p) for p in _images(setup["data"])], manifest.preprocess)
    raw = predictor.runtime.run(pixels)
    out = predictor.run(pixels)
    np.testing.assert_allclose(out["logits"], raw["logits"], atol=1e-3)
    assert (out["logits"].argmax(1) == raw["logits"].argmax(1)).all()


def test_on_the_device_removing_then_re_adding_a_class_reproduces_its_row(setup: dict[str, Path]) -> None:
    """The whole device path in a fresh interpreter where torch cannot be imported: the CLI, twice."""
    root, bundle = setup["root"], setup["bundle"]
    gone = sorted(COLOURS)[0]
    script = BLOCK_TORCH + (
        "from edgeprompt.cli.main import main\n"
        "import sys\n"
        "for argv in (sys.argv[1:6], sys.argv[6:]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        + torch_leaks())
    env = {**os.environ, "PYTHONPATH": str(Path(edgeprompt.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    argv = ["classes", str(bundle), "--remove", gone, f"--out={root / 'less'}",
            "classes", str(root / "less"), "--add", gone, f"--out={root / 'again'}"]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    before, after = Manifest.read(bundle), Manifest.read(root / "again")
    assert after.classnames == (*[c for c in before.classnames if c != gone], gone)
    old = dict(zip(before.classnames, np.load(bundle / CLASS_ROWS_FILE), strict=True))
    new = dict(zip(after.classnames, np.load(root / "again" / CLASS_ROWS_FILE), strict=True))
    for name in before.classnames:
        np.testing.assert_allclose(new[name], old[name], rtol=0, atol=1e-6)
    assert (root / "again" / ONNX_FILE).read_bytes() == (bundle / ONNX_FILE).read_bytes()  # the graph is reused
    assert after.extra["classes_changed"]["added"] == [gone]


def test_an_added_class_is_predicted_and_matches_a_run_that_has_it(setup: dict[str, Path], tmp_path: Path) -> None:
    """A new name's row from the device path equals the row torch computes for a run changed the same way."""
    from edgeprompt.api import classes
    from edgeprompt.artifact import load_run
    from edgeprompt.runtime import load_bundle

    result = classes(setup["bundle"], tmp_path / "b", add=["magenta square"])
    assert result["added"] == ["magenta square"] and ONNX_FILE in result["reused"]
    classes(setup["run"], tmp_path / "r", add=["magenta square"])
    import torch

    with torch.no_grad():
        ref = torch.nn.functional.normalize(load_run(tmp_path / "r").method.text_features(), dim=-1).numpy()
    rows = np.load(tmp_path / "b" / CLASS_ROWS_FILE)
    np.testing.assert_allclose(rows / np.linalg.norm(rows, axis=1, keepdims=True), ref, atol=1e-4)
    predictor = load_bundle(tmp_path / "b", backend="ort-cpu", threads=1)
    assert predictor.predict(_images(setup["data"])[:2], top_k=10)[0][0].label in predictor.classnames
    assert len(predictor.classnames) == len(COLOURS) + 1


def test_what_cannot_change_classes_says_so(setup: dict[str, Path], tiny_model: str, tmp_path: Path) -> None:
    from edgeprompt.api import classes
    from edgeprompt.export.triton import write_repository

    plain = tmp_path / "plain"
    export_run(setup["run"], plain, n_check=2)
    with pytest.raises(ConfigError, match="--open-classes"):
        classes(plain, tmp_path / "x", add=["grey"])
    assert not (tmp_path / "x").exists()
    csc = tune_run(tiny_model, "coop", setup["data"], tmp_path / "csc", setup["root"] / "cache", n_ctx=4,
                   class_specific=True)
    with pytest.raises(ExportError, match="class-specific"):
        export_run(csc, tmp_path / "csc-bundle", n_check=2, open_classes=True)
    assert not (tmp_path / "csc-bundle").exists()
    changed = tmp_path / "changed"
    classes(setup["bundle"], changed, add=["grey"])
    with pytest.raises(ConfigError, match="changed since"):
        write_repository(changed, tmp_path / "repo")
    with pytest.raises(ConfigError, match="already a class of this bundle"):
        classes(setup["bundle"], tmp_path / "y", add=[sorted(COLOURS)[0]])


def test_a_changed_rows_file_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from edgeprompt.errors import ArtifactError
    from edgeprompt.runtime import load_bundle

    copy = tmp_path / "copy"
    shutil.copytree(setup["bundle"], copy)
    rows = np.load(copy / CLASS_ROWS_FILE)
    np.save(copy / CLASS_ROWS_FILE, rows[::-1].copy())  # swapped classes: wrong labels without the hash check
    with pytest.raises(ArtifactError, match="does not match"):
        load_bundle(copy, backend="ort-cpu")
    assert json.loads((copy / "manifest.json").read_text())["files"][CLASS_ROWS_FILE]
    assert not (copy / ENGINE_FILE).exists()


@pytest.mark.parametrize("damage", ["text graph missing", "text graph changed", "vocabulary truncated"])
def test_a_damaged_bundle_is_one_line_and_nothing_is_written(setup: dict[str, Path], tmp_path: Path,
                                                             damage: str) -> None:
    import shutil

    from edgeprompt.api import classes
    from edgeprompt.errors import ArtifactError

    copy = tmp_path / "copy"
    shutil.copytree(setup["bundle"], copy)
    entry = Manifest.read(copy).extra["open_classes"]
    if damage == "text graph missing":
        (copy / TEXT_ONNX_FILE).unlink()
    elif damage == "text graph changed":
        (copy / TEXT_ONNX_FILE).write_bytes(b"not a graph")
    else:
        vocab = copy / entry["vocab"]
        vocab.write_bytes(vocab.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="missing or does not match"):
        classes(copy, tmp_path / "out", add=["grey"])
    assert not (tmp_path / "out").exists()
