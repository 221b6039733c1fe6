"""The error catalogue: bad inputs to every command end in one clear line, exit code 2, no traceback, the stdout
contract kept (``--json``: one JSON object, or nothing without it) and nothing left at the output location.

Each case runs the real command line (``edgeprompt.cli.main.main``) in-process on tiny inputs. The twelve rows of
the hardening issue have their own tests below the catalogue, named after them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from edgeprompt.cli.ui import EXIT_CODES
from tests.conftest import make_folder
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> dict[str, Path]:
    """A data folder, a tuned run, its bundle and a few malformed files, built once for the catalogue."""
    from edgeprompt.config import ExportConfig, TrainConfig, TuneConfig
    from edgeprompt.export import export_run
    from edgeprompt.train.run import tune

    root = tmp_path_factory.mktemp("catalogue")
    data = make_folder(root / "data", per_class=4, size=32)
    cache = root / "cache"
    run = root / "run"
    tune(TuneConfig(train=str(data), out=str(run), method="coop", model=tiny_model, pretrained="none", shots=0,
                    views=1, cache_dir=str(cache), method_options={"n_ctx": 4},
                    train_cfg=TrainConfig(epochs=1, batch_size=4, eval_every=0)))
    bundle = root / "bundle"
    export_run(ExportConfig(source=str(run), out=str(bundle), n_check=4))
    files = root / "files"
    files.mkdir()
    (files / "notes.txt").write_text("hello")
    (files / "broken.pt").write_bytes(b"\x80\x04 not a checkpoint")
    (files / "bad.json").write_text("{not json")
    (files / "list.json").write_text("[1, 2]")
    (files / "one-name.txt").write_text("red\n")
    (files / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (files / "dangling").symlink_to(root / "no" / "such" / "place")
    damaged = root / "damaged"  # artifacts a disk, a copy or a hand edit broke, one folder each
    for name, manifest in (("manifest-bytes", b"\xff\xfe\x00\x81 not json"), ("manifest-list", b"[1, 2]"),
                           ("manifest-schema-string", None), ("manifest-scale-string", None)):
        shutil.copytree(bundle, damaged / name)
        d = json.loads((bundle / "manifest.json").read_text())
        if name == "manifest-schema-string":
            d["schema_version"] = "1"
        if name == "manifest-scale-string":
            d["logit_scale"] = "big"
        (damaged / name / "manifest.json").write_bytes(manifest if manifest is not None else json.dumps(d).encode())
    shutil.copytree(bundle, damaged / "other-graph")
    with (damaged / "other-graph" / "model.onnx").open("ab") as f:
        f.write(b"\x00")  # another graph than the manifest's hash names
    shutil.copytree(run, damaged / "run-config")
    (damaged / "run-config" / "config.json").write_text("{not json")
    shutil.copytree(run, damaged / "run-split")
    (damaged / "run-split" / "train_split.json").write_text('{"paths": ["a"], "given_labels": []}')
    other = make_folder(root / "other", per_class=2, size=32)
    (other / "green").rename(other / "yellow")
    return {"data": data, "cache": cache, "run": run, "bundle": bundle, "files": files, "other": other,
            "root": root, "damaged": damaged}


def _tune(w: dict[str, Path], model: str, out: Path, *extra: str, pretrained: str = "none") -> list[str]:
    return ["tune", str(w["data"]), "--out", str(out), "--model", model, "--pretrained", pretrained, "--shots", "0",
            "--views", "1", "--epochs", "1", "--cache-dir", str(w["cache"]), *extra]


# (id, argv builder (world, tiny model, out path) -> argv, a piece of the expected error line)
Case = tuple[str, Callable[[dict[str, Path], str, Path], list[str]], str]
CASES: list[Case] = [
    # tune: options
    ("tune-unknown-method", lambda w, m, o: _tune(w, m, o, "--method", "dsptt"), "Did you mean 'dspt'"),
    ("tune-unknown-protocol", lambda w, m, o: _tune(w, m, o, "--protocol", "papr"), "Did you mean 'paper'"),
    ("tune-negative-shots", lambda w, m, o: _tune(w, m, o, "--shots", "-1"), "--shots"),
    ("tune-zero-views", lambda w, m, o: _tune(w, m, o, "--views", "0"), "--views"),
    ("tune-noise-rate", lambda w, m, o: _tune(w, m, o, "--noise", "sym:1.5"), "rate must be in"),
    ("tune-noise-kind", lambda w, m, o: _tune(w, m, o, "--noise", "gauss:0.1"), "unknown noise"),
    ("tune-noise-not-a-number", lambda w, m, o: _tune(w, m, o, "--noise", "sym:half"), "not a number"),
    ("tune-noise-map-missing", lambda w, m, o: _tune(w, m, o, "--noise", f"map:{w['files']}/nope.json:0.3"),
     "does not exist"),
    ("tune-noise-map-not-json", lambda w, m, o: _tune(w, m, o, "--noise", f"map:{w['files']}/bad.json:0.3"),
     "cannot be read"),
    ("tune-noise-map-not-object", lambda w, m, o: _tune(w, m, o, "--noise", f"map:{w['files']}/list.json:0.3"),
     "JSON object"),
    ("tune-negative-epochs", lambda w, m, o: _tune(w, m, o, "--epochs", "-1"), "--epochs"),
    ("tune-zero-batch", lambda w, m, o: _tune(w, m, o, "--batch-size", "0"), "--batch-size"),
    ("tune-zero-lr", lambda w, m, o: _tune(w, m, o, "--lr", "0"), "--lr"),
    ("tune-nan-lr", lambda w, m, o: _tune(w, m, o, "--lr", "nan"), "--lr"),
    ("tune-unknown-optimizer", lambda w, m, o: _tune(w, m, o, "--optimizer", "adamx"), "Did you mean 'adamw'"),
    ("tune-unknown-device", lambda w, m, o: _tune(w, m, o, "--device", "gpu"), "--device"),
    ("tune-cuda-without-gpu", lambda w, m, o: _tune(w, m, o, "--device", "cuda"), "no CUDA GPU"),
    ("tune-crop-scale", lambda w, m, o: _tune(w, m, o, "--crop-scale", "1.5"), "--crop-scale"),
    ("tune-negative-seed", lambda w, m, o: _tune(w, m, o, "--seed", "-1"), "--seed"),
    ("tune-eval-every", lambda w, m, o: _tune(w, m, o, "--eval-every", "-2"), "--eval-every"),
    ("tune-n-ctx-zero", lambda w, m, o: _tune(w, m, o, "--method", "coop", "--n-ctx", "0", "--ctx-init", ""),
     "n_ctx"),
    ("tune-template-longer-than-context", lambda w, m, o: _tune(w, m, o, "--method", "coop", "--n-ctx", "2"),
     "more than --n-ctx"),
    ("tune-unknown-option", lambda w, m, o: _tune(w, m, o, "--opt", "n_cxt=4"), "Did you mean 'n_ctx'"),
    ("tune-option-without-value", lambda w, m, o: _tune(w, m, o, "--opt", "n_ctx"), "KEY=VALUE"),
    ("tune-unknown-loss", lambda w, m, o: _tune(w, m, o, "--method", "coop", "--loss", "huber"), "unknown loss"),
    ("tune-dspt-with-ce", lambda w, m, o: _tune(w, m, o, "--method", "dspt", "--loss", "ce"), "double-softmax"),
    ("tune-gce-q", lambda w, m, o: _tune(w, m, o, "--method", "coop", "--loss", "gce", "--gce-q", "2"), "gce_q"),
    ("tune-position", lambda w, m, o: _tune(w, m, o, "--method", "coop", "--position", "side"), "position"),
    ("tune-visprompt-kv", lambda w, m, o: _tune(w, m, o, "--method", "visprompt", "--opt", "kv=patches"), "kv"),
    ("tune-unknown-model", lambda w, m, o: _tune(w, "ViT-B-33", o), "Did you mean"),
    ("tune-missing-checkpoint", lambda w, m, o: _tune(w, m, o, pretrained="/no/such/w.pt"), "does not exist"),
    ("tune-corrupt-checkpoint", lambda w, m, o: _tune(w, m, o, pretrained=f"{w['files']}/broken.pt"),
     "cannot be loaded"),
    ("tune-unknown-hub-tag", lambda w, m, o: _tune(w, "ViT-B-32", o, pretrained="opena"), "Did you mean 'openai'"),
    # tune: data
    ("tune-missing-folder", lambda w, m, o: ["tune", str(w["root"] / "nope"), "--out", str(o)], "is not a directory"),
    ("tune-no-class-folders", lambda w, m, o: ["tune", str(w["files"]), "--out", str(o)], "no class sub-folders"),
    ("tune-missing-csv", lambda w, m, o: ["tune", str(w["root"] / "x.csv"), "--out", str(o)], "does not exist"),
    ("tune-val-missing", lambda w, m, o: _tune(w, m, o, "--val", str(w["root"] / "nope")), "is not a directory"),
    ("tune-val-other-classes", lambda w, m, o: _tune(w, m, o, "--val", str(w["other"])), "yellow"),
    ("tune-classnames-missing", lambda w, m, o: _tune(w, m, o, "--classnames", str(w["files"] / "nope.txt")),
     "does not exist"),
    ("tune-classnames-count", lambda w, m, o: _tune(w, m, o, "--classnames", str(w["files"] / "one-name.txt")),
     "1 class names given for 3"),
    # tune: outputs
    ("tune-out-exists", lambda w, m, o: _tune(w, m, w["run"]), "already exists"),
    ("tune-out-inside-data", lambda w, m, o: _tune(w, m, w["data"] / "run"), "overlaps the training data"),
    ("tune-cache-inside-data", lambda w, m, o: _tune(w, m, o)[:-2] + ["--cache-dir", str(w["data"] / "c")],
     "--cache-dir"),
    ("tune-cache-not-writable", lambda w, m, o: _tune(w, m, o)[:-2] + ["--cache-dir", str(w["files"] / "notes.txt")],
     "cannot be written"),
    # eval
    ("eval-missing-run", lambda w, m, o: ["eval", str(w["root"] / "nope"), str(w["data"])], "no manifest.json"),
    ("eval-bundle-not-run", lambda w, m, o: ["eval", str(w["bundle"]), str(w["data"])], "not a run directory"),
    ("eval-neither-test-nor-train", lambda w, m, o: ["eval", str(w["run"])], "--train"),
    ("eval-both-test-and-train", lambda w, m, o: ["eval", str(w["run"]), str(w["data"]), "--train"], "not both"),
    ("eval-test-other-classes", lambda w, m, o: ["eval", str(w["run"]), str(w["other"])], "yellow"),
    ("eval-test-missing", lambda w, m, o: ["eval", str(w["run"]), str(w["root"] / "nope")], "is not a directory"),
    # export
    ("export-missing-run", lambda w, m, o: ["export", str(w["root"] / "nope"), "--out", str(o)], "no manifest.json"),
    ("export-opset-too-new", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--opset", "99"],
     "outside 17..21"),
    ("export-opset-too-old", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--opset", "13"],
     "outside 17..21"),
    ("export-max-batch-zero", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--max-batch", "0"],
     "--max-batch"),
    ("export-profile-order", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--min-batch", "8",
                                              "--max-batch", "2"], "min <= opt <= max"),
    ("export-n-check-zero", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--n-check", "0"],
     "check images"),
    ("export-out-exists", lambda w, m, o: ["export", str(w["run"]), "--out", str(w["bundle"])], "already exists"),
    ("export-bundle-without-trt", lambda w, m, o: ["export", str(w["bundle"])], "already an exported bundle"),
    ("export-bundle-trt-no-tensorrt", lambda w, m, o: ["export", str(w["bundle"]), "--trt"], "TensorRT"),
    ("export-run-trt-no-tensorrt", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--trt"], "TensorRT"),
    # predict
    ("predict-missing-bundle", lambda w, m, o: ["predict", str(w["root"] / "nope"), str(w["data"])],
     "no manifest.json"),
    ("predict-run-not-bundle", lambda w, m, o: ["predict", str(w["run"]), str(w["data"])], "not a bundle"),
    ("predict-missing-image", lambda w, m, o: ["predict", str(w["bundle"]), str(w["root"] / "nope.png")],
     "does not exist"),
    ("predict-corrupt-image", lambda w, m, o: ["predict", str(w["bundle"]), str(w["files"] / "corrupt.png")],
     "cannot read image"),
    ("predict-no-images", lambda w, m, o: ["predict", str(w["bundle"]), str(w["files"] / "empty")],
     "does not exist"),
    ("predict-top-k-zero", lambda w, m, o: ["predict", str(w["bundle"]), str(w["data"]), "--top-k", "0"], "top-k"),
    ("predict-unknown-backend", lambda w, m, o: ["predict", str(w["bundle"]), str(w["data"]), "--backend", "onnx"],
     "unknown backend"),
    ("predict-unavailable-backend", lambda w, m, o: ["predict", str(w["bundle"]), str(w["data"]), "--backend",
                                                     "ort-cuda"], "unavailable"),
    # bench
    ("bench-huge-batch", lambda w, m, o: ["bench", str(w["bundle"]), "--batch", "10000000", "--out", str(o)],
     "GiB of input"),
    ("bench-zero-batch", lambda w, m, o: ["bench", str(w["bundle"]), "--batch", "0", "--out", str(o)], "--batch"),
    ("bench-batch-not-a-number", lambda w, m, o: ["bench", str(w["bundle"]), "--batch", "1,x"], "not a whole number"),
    ("bench-unknown-backend", lambda w, m, o: ["bench", str(w["bundle"]), "--backend", "ort-cpo"],
     "Did you mean 'ort-cpu'"),
    ("bench-only-unavailable", lambda w, m, o: ["bench", str(w["bundle"]), "--backend", "trt,ort-cuda", "--out",
                                                str(o)], "none of the requested backends"),
    ("bench-zero-iters", lambda w, m, o: ["bench", str(w["bundle"]), "--iters", "0", "--out", str(o)], "--iters"),
    ("bench-data-missing", lambda w, m, o: ["bench", str(w["bundle"]), "--data", str(w["root"] / "nope"), "--out",
                                            str(o)], "is not a directory"),
    ("bench-out-inside-bundle", lambda w, m, o: ["bench", str(w["bundle"]), "--out", str(w["bundle"] / "b")],
     "overlaps the bundle"),
    ("bench-run-not-bundle", lambda w, m, o: ["bench", str(w["run"])], "not a bundle"),
    # sweep
    ("sweep-unknown-method", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                              "--methods", "coop,dpst"], "Did you mean 'dspt'"),
    ("sweep-bad-noise", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                         "--noise", "sym:0,2"], "rate must be in"),
    ("sweep-bad-noise-kind", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                              "--noise", "map:0.5"], "expected sym:R1"),
    ("sweep-zero-seeds", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                          "--seeds", "0"], "--seeds"),
    ("sweep-out-is-data", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out",
                                           str(w["data"])], "overlaps the training data"),
    ("sweep-bad-protocol", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                            "--protocol", "fast"], "--protocol"),
    ("sweep-option-no-method-has", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out",
                                                    str(o), "--opt", "ot_warmpu=2"], "Did you mean 'ot_warmup'"),
    # audit
    ("audit-one-fold", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--folds", "1"], "--folds"),
    ("audit-prior-weight", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--prior-weight", "2"],
     "--prior-weight"),
    ("audit-fixed-not-csv", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--write-fixed",
                                             str(o) + ".txt"], "name a .csv file"),
    ("audit-fixed-over-data", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--write-fixed",
                                               str(w["data"] / "fixed.csv")], "--write-fixed"),
    ("audit-out-inside-data", lambda w, m, o: ["audit", str(w["data"]), "--out", str(w["data"] / "rep")],
     "overlaps the audited data"),
    ("audit-run-is-bundle", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--run", str(w["bundle"])],
     "not a run directory"),
    # data
    ("data-exists", lambda w, m, o: ["data", "shapes", str(w["data"])], "--overwrite"),
    ("data-unknown-task", lambda w, m, o: ["data", "shapes", str(o), "--task", "shapes"], "Did you mean 'shape'"),
    ("data-zero-per-class", lambda w, m, o: ["data", "shapes", str(o), "--per-class", "0"], "per-class"),
    ("data-tiny-images", lambda w, m, o: ["data", "shapes", str(o), "--image-size", "4"], "image size"),
    # outputs never land on, over or inside an input, and --overwrite replaces only an earlier output of its kind
    ("export-out-is-training-data", lambda w, m, o: ["export", str(w["run"]), "--out", str(w["data"]), "--overwrite"],
     "overlaps the run's training data"),
    ("export-out-inside-training-data", lambda w, m, o: ["export", str(w["run"]), "--out", str(w["data"] / "b")],
     "overlaps the run's training data"),
    ("export-triton-inside-training-data", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--triton",
                                                            str(w["data"] / "models")], "--triton"),
    ("export-overwrite-foreign-folder", lambda w, m, o: ["export", str(w["run"]), "--out", str(w["files"]),
                                                         "--overwrite"], "not an edgeprompt bundle"),
    ("tune-overwrite-foreign-folder", lambda w, m, o: _tune(w, m, w["files"], "--overwrite"),
     "not an edgeprompt run directory"),
    ("tune-overwrite-a-bundle", lambda w, m, o: _tune(w, m, w["bundle"], "--overwrite"),
     "not an edgeprompt run directory"),
    ("data-overwrite-foreign-folder", lambda w, m, o: ["data", "shapes", str(w["files"]), "--overwrite"],
     "not an edgeprompt generated dataset"),
    ("data-overwrite-labeled-data", lambda w, m, o: ["data", "shapes", str(w["data"]), "--overwrite"],
     "not an edgeprompt generated dataset"),
    ("audit-overwrite-foreign-folder", lambda w, m, o: ["audit", str(w["data"]), "--out", str(w["files"]),
                                                        "--overwrite"], "not an edgeprompt audit report"),
    ("sweep-out-foreign-folder", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out",
                                                  str(w["files"])], "not an edgeprompt sweep"),
    ("eval-cache-inside-test-data", lambda w, m, o: ["eval", str(w["run"]), str(w["other"]), "--cache-dir",
                                                     str(w["other"] / "c")], "--cache-dir"),
    ("eval-cache-inside-run-data", lambda w, m, o: ["eval", str(w["run"]), "--train", "--cache-dir",
                                                    str(w["data"] / "c")], "overlaps the run's training data"),
    ("extract-cache-inside-data", lambda w, m, o: ["extract", str(w["data"]), "--cache-dir", str(w["data"] / "c")],
     "--cache-dir"),
    ("audit-cache-inside-data", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--cache-dir",
                                                 str(w["data"] / "c")], "--cache-dir"),
    ("sweep-cache-inside-data", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                                 "--cache-dir", str(w["data"] / "c")], "--cache-dir"),
    # outputs the file system cannot take: below a file, through a dangling link
    ("tune-out-below-a-file", lambda w, m, o: _tune(w, m, w["files"] / "notes.txt" / "run"), "is a file"),
    ("export-out-below-a-file", lambda w, m, o: ["export", str(w["run"]), "--out", str(w["files"] / "notes.txt" / "b")],
     "is a file"),
    ("data-out-below-a-file", lambda w, m, o: ["data", "shapes", str(w["files"] / "notes.txt" / "d")], "is a file"),
    ("sweep-out-below-a-file", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out",
                                                str(w["files"] / "notes.txt" / "s")], "is a file"),
    ("audit-out-below-a-file", lambda w, m, o: ["audit", str(w["data"]), "--out", str(w["files"] / "notes.txt" / "a")],
     "is a file"),
    ("audit-fixed-below-a-file", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--write-fixed",
                                                  str(w["files"] / "notes.txt" / "f.csv")], "is a file"),
    ("bench-out-below-a-file", lambda w, m, o: ["bench", str(w["bundle"]), "--out",
                                                str(w["files"] / "notes.txt" / "b")], "is a file"),
    ("export-triton-below-a-file", lambda w, m, o: ["export", str(w["bundle"]), "--triton",
                                                    str(w["files"] / "notes.txt" / "m")], "is a file"),
    ("tune-out-dangling-link", lambda w, m, o: _tune(w, m, w["files"] / "dangling"), "symbolic link"),
    ("export-out-dangling-link", lambda w, m, o: ["export", str(w["run"]), "--out", str(w["files"] / "dangling")],
     "symbolic link"),
    # damaged or foreign artifacts: named with the file and what to do
    ("predict-manifest-bytes", lambda w, m, o: ["predict", str(w["damaged"] / "manifest-bytes"), str(w["data"])],
     "is damaged or not an edgeprompt manifest"),
    ("predict-manifest-list", lambda w, m, o: ["predict", str(w["damaged"] / "manifest-list"), str(w["data"])],
     "is damaged or not an edgeprompt manifest"),
    ("bench-manifest-schema-string", lambda w, m, o: ["bench", str(w["damaged"] / "manifest-schema-string")],
     "schema version '1'"),
    ("predict-manifest-scale-string", lambda w, m, o: ["predict", str(w["damaged"] / "manifest-scale-string"),
                                                       str(w["data"])], "is damaged or not an edgeprompt manifest"),
    ("predict-another-graph", lambda w, m, o: ["predict", str(w["damaged"] / "other-graph"), str(w["data"])],
     "does not match the sha256"),
    ("bench-another-graph", lambda w, m, o: ["bench", str(w["damaged"] / "other-graph"), "--backend", "ort-cpu",
                                             "--batch", "1", "--iters", "1"], "does not match the sha256"),
    ("eval-run-config-damaged", lambda w, m, o: ["eval", str(w["damaged"] / "run-config"), str(w["data"])],
     "config.json is damaged"),
    ("export-run-config-damaged", lambda w, m, o: ["export", str(w["damaged"] / "run-config"), "--out", str(o)],
     "config.json is damaged"),
    ("eval-train-split-damaged", lambda w, m, o: ["eval", str(w["damaged"] / "run-split"), "--train"],
     "train_split.json is damaged"),
    # option values parsed against their type and range
    ("tune-option-wrong-type-bool", lambda w, m, o: _tune(w, m, o, "--opt", "class_specific=maybe"),
     "must be true or false"),
    ("tune-option-wrong-type-int", lambda w, m, o: _tune(w, m, o, "--opt", "n_ctx=4.5"), "must be a whole number"),
    ("sweep-option-wrong-type", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                                 "--opt", "coop.class_specific=maybe"], "must be true or false"),
    ("sweep-unknown-loss", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                            "--losses", "ce,huber"], "unknown loss"),
    ("sweep-crop-scale", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                          "--crop-scale", "2"], "--crop-scale"),
    ("sweep-repeated-rate", lambda w, m, o: ["sweep", str(w["data"]), "--test", str(w["data"]), "--out", str(o),
                                             "--noise", "sym:0.5,0.5"], "more than once"),
    ("tune-noise-none-with-rate", lambda w, m, o: _tune(w, m, o, "--noise", "none:0.5"), "takes no rate"),
    ("tune-seed-overflow", lambda w, m, o: _tune(w, m, o, "--seed", "99999999999999999999"), "--seed"),
    ("bench-seconds-inf", lambda w, m, o: ["bench", str(w["bundle"]), "--seconds", "inf"], "--seconds"),
    ("bench-repeated-batch", lambda w, m, o: ["bench", str(w["bundle"]), "--batch", "1,1,1"], "more than once"),
    # more option values, per command
    ("extract-shard-out-of-range", lambda w, m, o: ["extract", str(w["data"]), "--shard", "2/2"], "--shard"),
    ("extract-shard-not-numbers", lambda w, m, o: ["extract", str(w["data"]), "--shard", "a/b"], "--shard"),
    ("extract-negative-views", lambda w, m, o: ["extract", str(w["data"]), "--views", "-1"], "--views"),
    ("tune-nlprompt-with-loss", lambda w, m, o: _tune(w, m, o, "--method", "nlprompt", "--loss", "gce"),
     "CE and the rest with MAE"),
    ("tune-nlprompt-ot-views", lambda w, m, o: _tune(w, m, o, "--method", "nlprompt", "--opt", "ot_views=all"),
     "ot_views"),
    ("tune-infinite-lr", lambda w, m, o: _tune(w, m, o, "--lr", "inf"), "--lr"),
    ("audit-unknown-scorer", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--scorer", "lasso"],
     "--scorer"),
    ("audit-probe-c-zero", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--probe-c", "0"],
     "--probe-c"),
    ("audit-run-config-damaged", lambda w, m, o: ["audit", str(w["data"]), "--out", str(o), "--run",
                                                  str(w["damaged"] / "manifest-bytes")], "is damaged"),
    ("export-int8-min-accuracy", lambda w, m, o: ["export", str(w["run"]), "--out", str(o), "--int8",
                                                  "--int8-min-accuracy", "99"], "0.99 = 99 %"),
    ("export-manifest-damaged", lambda w, m, o: ["export", str(w["damaged"] / "manifest-list"), "--out", str(o)],
     "is damaged or not an edgeprompt manifest"),
    ("eval-manifest-damaged", lambda w, m, o: ["eval", str(w["damaged"] / "manifest-bytes"), str(w["data"])],
     "is damaged or not an edgeprompt manifest"),
    ("bench-max-images-zero", lambda w, m, o: ["bench", str(w["bundle"]), "--data", str(w["data"]), "--max-images",
                                               "0"], "--max-images"),
    ("predict-unknown-format", lambda w, m, o: ["predict", str(w["bundle"]), str(w["data"]), "--format", "yaml"],
     "--format"),
    ("data-negative-seed", lambda w, m, o: ["data", "shapes", str(o), "--seed", "-1"], "seed"),
    # classes: what can and cannot change, and where it may be written
    ("classes-nothing-to-change", lambda w, m, o: ["classes", str(w["run"]), "--out", str(o)], "nothing to change"),
    ("classes-remove-unknown", lambda w, m, o: ["classes", str(w["run"]), "--out", str(o), "--remove", "purple"],
     "not a class of this run"),
    ("classes-add-existing", lambda w, m, o: ["classes", str(w["run"]), "--out", str(o), "--add", "red"],
     "already a class"),
    ("classes-remove-all-but-one", lambda w, m, o: ["classes", str(w["run"]), "--out", str(o), "--remove", "red",
                                                    "--remove", "green"], "at least 2"),
    ("classes-of-a-closed-bundle", lambda w, m, o: ["classes", str(w["bundle"]), "--out", str(o), "--add", "purple"],
     "export the run again with --open-classes"),
    ("classes-out-inside-data", lambda w, m, o: ["classes", str(w["run"]), "--out", str(w["data"] / "r"), "--add",
                                                 "purple"], "overlaps the run's training data"),
    ("classes-out-over-run", lambda w, m, o: ["classes", str(w["run"]), "--out", str(w["run"]), "--add", "purple",
                                              "--overwrite"], "overlaps the run directory"),
    # the command line itself
    ("cli-unknown-option", lambda w, m, o: ["tune", str(w["data"]), "--out", str(o), "--epoch", "3"],
     "No such option"),
    ("cli-missing-argument", lambda w, m, o: ["export"], "Missing argument"),
    ("cli-not-an-int", lambda w, m, o: ["tune", str(w["data"]), "--out", str(o), "--shots", "many"],
     "Invalid value for '--shots'"),
    ("cli-unknown-command", lambda w, m, o: ["tunee"], "No such command"),
]


def _snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every path under ``root`` (the feature cache aside) with its bytes, or its link target, or None (a folder)."""
    snap: dict[str, bytes | str | None] = {}
    for p in sorted(root.rglob("*")):
        if "cache" in p.relative_to(root).parts:
            continue
        snap[str(p.relative_to(root))] = (str(p.readlink()) if p.is_symlink() else p.read_bytes() if p.is_file()
                                          else None)
    return snap


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_catalogue(case: Case, as_json: bool, world: dict[str, Path], tiny_model: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    name, build, needle = case
    out = tmp_path / "out" / "target"
    argv = build(world, tiny_model, out) + (["--json"] if as_json else [])
    before = _snapshot(world["root"])
    code, stdout, stderr = run_cli(argv, capsys)
    assert code in (2, 3, 4, 5, 6, 7), (name, stdout, stderr)
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("error: ") and needle in lines[-1], lines
    if as_json:
        obj = json.loads(stdout.strip().splitlines()[-1])  # the stdout contract: one JSON object
        assert set(obj) == {"error", "kind"} and needle in obj["error"] and obj["kind"] in (
            "config", "data", "artifact", "export", "dependency", "usage", "filesystem")
        assert code == EXIT_CODES[obj["kind"]]  # each kind its documented exit code
    else:
        assert stdout == ""
    assert not (tmp_path / "out").exists()  # nothing at the output location, not even its parent folder
    assert _snapshot(world["root"]) == before  # and nothing added to, removed from or changed in the inputs


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 60
    commands = {c[1]({"data": Path("d"), "run": Path("r"), "bundle": Path("b"), "root": Path("x"),
                      "files": Path("f"), "other": Path("o"), "cache": Path("c"), "damaged": Path("g")}, "m",
                     Path("o"))[0] for c in CASES}
    assert {"tune", "eval", "export", "predict", "bench", "sweep", "audit", "data"} <= commands


# --- the twelve rows of the hardening issue ----------------------------------------------------------------------


def test_row01_export_over_its_own_run_is_refused(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.read_bytes() for p in world["run"].iterdir()}
    code, _, err = run_cli(["export", str(world["run"]), "--out", str(world["run"]), "--overwrite"], capsys)
    assert code == 2 and "overlaps the run directory" in err
    code, _, err = run_cli(["export", str(world["run"]), "--out", str(world["root"]), "--overwrite"], capsys)
    assert code == 2 and "overlaps the run directory" in err  # a parent of the run would replace it too
    assert {p.name: p.read_bytes() for p in world["run"].iterdir()} == before


def test_row02_sweep_rerun_with_other_settings_computes_new_cells(tiny_model: str, image_folder: Path,
                                                                  cache_dir: Path, tmp_path: Path) -> None:
    from edgeprompt.config import SweepConfig
    from edgeprompt.sweep.run import run_sweep

    base = dict(train=str(image_folder), test=str(image_folder), out=str(tmp_path / "s"), methods=("coop",),
                noise=("sym:0",), shots=2, seeds=1, model=tiny_model, pretrained="none", views=1,
                cache_dir=str(cache_dir), method_options={"coop": {"n_ctx": 4}})
    first = run_sweep(SweepConfig(**base, epochs=1))
    again = run_sweep(SweepConfig(**base, epochs=3))
    cells = [json.loads(p.read_text()) for p in (tmp_path / "s" / "cells").glob("*.json")]
    assert sorted(c["epochs"] for c in cells) == [1, 3]  # the 3-epoch rerun did not reuse the 1-epoch cell
    assert first["epochs"] == 1 and again["epochs"] == 3
    rerun = json.loads((tmp_path / "s" / "results.json").read_text())["cells"]
    assert [c["epochs"] for c in rerun] == [3]  # and only the cell of these settings is reported
    shutil.copy(image_folder / "red" / "000.png", image_folder / "red" / "extra.png")  # other data: new cells
    run_sweep(SweepConfig(**base, epochs=3))
    assert len(list((tmp_path / "s" / "cells").glob("*.json"))) == 3


def test_row03_a_second_writer_is_refused_and_the_run_stays_whole(tiny_model: str, image_folder: Path,
                                                                  cache_dir: Path, tmp_path: Path) -> None:
    from edgeprompt.config import TrainConfig, TuneConfig
    from edgeprompt.errors import ConfigError
    from edgeprompt.fileio import output_lock
    from edgeprompt.train.run import tune

    out = tmp_path / "run"
    cfg = TuneConfig(train=str(image_folder), out=str(out), method="coop", model=tiny_model, pretrained="none",
                     shots=2, views=1, cache_dir=str(cache_dir), method_options={"n_ctx": 4},
                     train_cfg=TrainConfig(epochs=2, batch_size=2, eval_every=0))
    started, release = threading.Event(), threading.Event()
    errors: list[Exception] = []

    def hold() -> None:  # another process writing the same run: its lock, held by a live pid
        with output_lock(out):
            started.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    started.wait(10)
    lock = out.with_name(".run.lock")
    try:
        with pytest.raises(ConfigError, match=r"being written by another edgeprompt process \(pid"):
            tune(cfg)
    except Exception as e:  # pragma: no cover - reported below
        errors.append(e)
    finally:
        release.set()
        t.join()
    assert not errors and not out.exists() and not lock.exists()
    # a stale lock (its process is gone) does not block the next run
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": _host()}))  # above Linux's largest pid
    tune(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and not (out / "checkpoint.pt").exists()


def _host() -> str:
    import socket

    return socket.gethostname()


def _csv(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_row04_csv_bom_headers_and_empty_classes(image_folder: Path, tmp_path: Path) -> None:
    from edgeprompt.data import load_csv
    from edgeprompt.errors import DataError

    rows = "".join(f"{p},{p.parent.name}\n" for p in sorted(image_folder.rglob("*.png")))
    for header in ("path,label\n", "file,class\n", "Image,Category\n"):
        data = load_csv(_csv(tmp_path / "m.csv", header + rows, bom=True))
        assert data.classnames == ("blue", "green", "red") and len(data) == 18
    swapped = "".join(f"{p.parent.name},{p}\n" for p in sorted(image_folder.rglob("*.png")))
    assert load_csv(_csv(tmp_path / "s.csv", "label,path\n" + swapped)).classnames == ("blue", "green", "red")
    with pytest.raises(DataError, match="neither an image row nor a header"):
        load_csv(_csv(tmp_path / "h.csv", "picture,what\n" + rows))
    missing = rows + "".join(f"{tmp_path}/gone{i}.png,purple\n" for i in range(3))
    data = load_csv(_csv(tmp_path / "g.csv", missing))
    assert data.classnames == ("blue", "green", "red") and ("purple", "no usable images") in data.skipped


def test_row05_class_folders_that_give_the_same_or_no_name(tmp_path: Path) -> None:
    from edgeprompt.data import load_folder
    from edgeprompt.errors import DataError

    root = make_folder(tmp_path / "d", per_class=1)
    (root / "red").rename(root / "half_moon")
    shutil.copytree(root / "half_moon", root / "half moon")
    with pytest.raises(DataError, match="'half moon' and 'half_moon' .*same prompt|'half_moon' and 'half moon'"):
        load_folder(root)
    shutil.rmtree(root / "half moon")
    (root / "half_moon").rename(root / "_")
    with pytest.raises(DataError, match="empty class name"):
        load_folder(root)


def test_row06_a_decompression_bomb_is_a_skipped_file(image_folder: Path, tmp_path: Path) -> None:
    from edgeprompt.data import load_folder

    Image.new("1", (15000, 15000)).save(image_folder / "red" / "huge.png")  # 225 Mpixel, a few kB on disk
    data = load_folder(image_folder)
    assert len(data) == 18 and any("huge.png" in f and "too large" in why for f, why in data.skipped)


def test_row07_a_hub_tag_without_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeprompt import backbone
    from edgeprompt.errors import ConfigError

    monkeypatch.setattr(backbone, "_network_ok", lambda *a, **k: False)
    monkeypatch.setattr(backbone, "_cached_hub_file", lambda *a: None)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="no network, and they are not in the Hugging Face cache"):
        backbone._build_open_clip("RN50", "openai")
    assert time.perf_counter() - t0 < 10  # generous: a cold open_clip import; the old path took ~50 s of retries


def test_row08_bench_with_no_usable_backend_is_an_error(world: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bench", str(world["bundle"]), "--backend", "trt,ort-trt", "--out",
                              str(tmp_path / "b")], capsys)
    assert code == 2 and "none of the requested backends can run here" in err and "trt:" in err and out == ""
    assert not (tmp_path / "b").exists()


def test_row09_opset_99_is_refused_before_tracing(world: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["export", str(world["run"]), "--out", str(tmp_path / "b"), "--opset", "99", "--json"],
                             capsys)
    assert code == 2 and len(out.strip().splitlines()) == 1 and json.loads(out)["kind"] == "config"
    assert "outside 17..21" in err and len(err.strip().splitlines()) == 1


def test_row10_eval_train_works_from_another_directory(world: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    split = json.loads((world["run"] / "train_split.json").read_text())
    assert all(Path(p).is_absolute() for p in split["paths"])
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["eval", str(world["run"]), "--train", "--cache-dir", str(world["cache"]), "--json"],
                             capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["noisy"]["n_clean"] == 12


def test_row11_a_batch_that_cannot_fit_is_refused(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["bench", str(world["bundle"]), "--batch", "100000000"], capsys)
    assert code == 2 and "use at most" in err


def test_bare_commands_print_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["data"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 0 and "Usage: edgeprompt" in out + err and "error" not in err
    code, out, _ = run_cli(["--version"], capsys)
    from edgeprompt.version import __version__

    assert code == 0 and out.strip() == f"edgeprompt {__version__}"
    assert run_cli(["-V"], capsys)[1] == out
    code, out, _ = run_cli(["tune", "-h"], capsys)
    assert code == 0 and "--method" in out


def test_row12_data_shapes_names_the_real_option(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "shapes", str(world["data"])], capsys)
    assert code == 2 and "--overwrite" in err and "--force" not in err
