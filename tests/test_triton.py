"""Triton model repositories from bundles: every config.pbtxt parsed with Triton's own schema (tritonclient's
model_config_pb2) and checked against the bundle and against the model file it serves (run with onnxruntime).

Bundles are the torch-free tiny classifier of ``tests/tiny_bundle.py`` in FP32, rewritten with FP16 weights (FP32 I/O,
as a real ``--fp16`` export) or INT8 Q/DQ weights, plus one real export of a tuned tiny run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeprompt
from edgeprompt.config import TritonConfig
from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.export.triton import config_text, model_config, triton_schema, write_repository
from edgeprompt.fileio import sha256_file
from edgeprompt.manifest import ENGINE_FILE, Manifest
from tests.helpers import run_cli
from tests.tiny_bundle import CLASSES, SIZE, write_tiny_bundle

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


def schema() -> Any:
    mc = triton_schema()
    if mc is None:
        pytest.skip('tritonclient[grpc] is not installed (pip install "edgeprompt[triton]")')
    return mc


def parse(path: Path) -> Any:
    """config.pbtxt -> Triton's ModelConfig message (raises on any field the schema does not know)."""
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), schema().ModelConfig())


def make_bundle(directory: Path, precision: str = "fp32", *, profile_max: int | None = 16,
                engine_max: int | None = None) -> Manifest:
    """The tiny bundle with its weights in ``precision`` (fp32 | fp16 | int8 Q/DQ), I/O FP32 as in real exports, the
    export profile (``profile_max``) in the manifest and, with ``engine_max``, a stand-in model.engine."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    manifest = write_tiny_bundle(directory)
    path = directory / "model.onnx"
    if precision != "fp32":
        model = onnx.load(path)
        graph = model.graph
        (w_init,) = [i for i in graph.initializer if i.name == "W"]
        w = numpy_helper.to_array(w_init)
        graph.initializer.remove(w_init)
        if precision == "fp16":
            graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), "W16"))
            graph.node.insert(0, helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT))
        else:  # int8: a symmetric per-tensor weight quantisation, dequantised in the graph (Q/DQ form)
            scale = np.float32(np.abs(w).max() / 127)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            graph.initializer.extend([numpy_helper.from_array(q, "Wq"),
                                      numpy_helper.from_array(np.array(scale, np.float32), "Ws"),
                                      numpy_helper.from_array(np.array(0, np.int8), "Wz")])
            graph.node.insert(0, helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["W"]))
        onnx.checker.check_model(model)
        onnx.save_model(model, path)
    files = {"model.onnx": sha256_file(path)}
    extra: dict[str, Any] = {"export": {}}
    if profile_max is not None:
        extra["export"]["profile"] = {"min_batch": 1, "opt_batch": 1, "max_batch": profile_max}
    if engine_max is not None:
        (directory / ENGINE_FILE).write_bytes(b"a stand-in for a serialized TensorRT plan")
        files[ENGINE_FILE] = sha256_file(directory / ENGINE_FILE)
        extra["engine"] = {"trt_version": "10.3.0", "profile": {"min_batch": 1, "opt_batch": 4,
                                                                 "max_batch": engine_max}}
    manifest = Manifest(kind="bundle", method=manifest.method, backbone=manifest.backbone,
                        classnames=manifest.classnames, preprocess=manifest.preprocess,
                        logit_scale=manifest.logit_scale, io=manifest.io, precision=precision, files=files,
                        extra=extra)
    manifest.write(directory)
    return manifest


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def check_against_model(config: Any, onnx_path: Path, batch: int = 3) -> None:
    """What Triton checks when it loads the model: the config's tensors are the graph's (names, types, dims)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dt = schema().DataType.Name
    assert [(i.name, ORT_TYPES[i.type]) for i in sess.get_inputs()] == [(t.name, dt(t.data_type)) for t in config.input]
    assert [(o.name, ORT_TYPES[o.type]) for o in sess.get_outputs()] == [(t.name, dt(t.data_type))
                                                                         for t in config.output]
    (inp,) = config.input
    pixels = np.random.default_rng(0).random((batch, *inp.dims), dtype=np.float32)
    got = sess.run(None, {inp.name: pixels})
    assert [tuple(g.shape) for g in got] == [(batch, *t.dims) for t in config.output]  # dims exclude the batch


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_repository_of_a_bundle_parses_with_triton_s_schema(precision: str, tmp_path: Path) -> None:
    bundle = tmp_path / f"tiny-{precision}"
    manifest = make_bundle(bundle, precision)
    res = write_repository(bundle, TritonConfig(repo=str(tmp_path / "repo")))
    model = tmp_path / "repo" / bundle.name
    assert tree(tmp_path / "repo") == [f"{bundle.name}/1/model.onnx", f"{bundle.name}/config.pbtxt",
                                       f"{bundle.name}/labels.txt"]
    assert res["schema_checked"] and res["precision"] == precision and res["path"] == str(model)

    config = parse(model / "config.pbtxt")
    mc = schema()
    assert config.name == bundle.name and config.platform == "onnxruntime_onnx"  # INT8 Q/DQ is still ONNX Runtime's
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("pixels", "TYPE_FP32", [3, SIZE, SIZE])]
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims), t.label_filename) for t in config.output] == [
        ("logits", "TYPE_FP32", [len(CLASSES)], ""), ("probs", "TYPE_FP32", [len(CLASSES)], "labels.txt")]
    assert (model / "labels.txt").read_text().splitlines() == list(manifest.classnames)
    assert sha256_file(model / "1" / "model.onnx") == manifest.files["model.onnx"]
    check_against_model(config, model / "1" / "model.onnx")


def test_the_text_is_the_message(tmp_path: Path) -> None:
    """The hand-written text format and protobuf's reading of the same dict are one message."""
    from google.protobuf import json_format

    manifest = make_bundle(tmp_path / "b")
    d = model_config(manifest, "m", "onnx", 8, 250)
    from_dict = json_format.ParseDict(d, schema().ModelConfig())
    from google.protobuf import text_format

    assert text_format.Parse(config_text(d), schema().ModelConfig()) == from_dict
    assert from_dict.dynamic_batching.max_queue_delay_microseconds == 250 and from_dict.max_batch_size == 8


def test_an_engine_is_served_as_a_plan_capped_by_its_profile(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, "fp16", profile_max=32, engine_max=8)
    res = write_repository(bundle, TritonConfig(repo=str(tmp_path / "repo"), name="tiny"))
    model = tmp_path / "repo" / "tiny"
    assert tree(model) == ["1/model.plan", "config.pbtxt", "labels.txt"]
    assert (model / "1" / "model.plan").read_bytes() == (bundle / ENGINE_FILE).read_bytes()
    config = parse(model / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert res["max_batch_from"] == "engine profile"
    assert "TensorRT 10.3.0" in (model / "config.pbtxt").read_text()  # the version the server must run
    with pytest.raises(ConfigError, match="above the engine's profile"):
        write_repository(bundle, TritonConfig(repo=str(tmp_path / "r2"), max_batch=16))
    write_repository(bundle, TritonConfig(repo=str(tmp_path / "r3"), max_batch=4))
    assert parse(tmp_path / "r3" / "b" / "config.pbtxt").max_batch_size == 4
    # the ONNX graph of the same bundle, on request (an engine only runs on the GPU and TensorRT that built it)
    write_repository(bundle, TritonConfig(repo=str(tmp_path / "r4"), platform="onnx", max_batch=64))
    config = parse(tmp_path / "r4" / "b" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert tree(tmp_path / "r4" / "b") == ["1/model.onnx", "config.pbtxt", "labels.txt"]


def test_max_batch_falls_back_to_the_default_profile(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, profile_max=None)
    res = write_repository(bundle, TritonConfig(repo=str(tmp_path / "repo")))
    assert parse(tmp_path / "repo" / "b" / "config.pbtxt").max_batch_size == 32 and "default" in res["max_batch_from"]


def test_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle)
    before = tree(bundle)
    for repo in (bundle, bundle / "repo", tmp_path):  # the bundle itself, inside it, around it
        with pytest.raises(ConfigError, match="overlaps the bundle"):
            write_repository(bundle, TritonConfig(repo=str(repo)))
    assert tree(bundle) == before
    with pytest.raises(ConfigError, match="--triton-name"):
        write_repository(bundle, TritonConfig(repo=str(tmp_path / "repo"), name="my model/v2"))
    with pytest.raises(ConfigError, match="no model.engine"):
        write_repository(bundle, TritonConfig(repo=str(tmp_path / "repo"), platform="trt"))
    with pytest.raises(ConfigError, match="Did you mean 'trt'"):
        write_repository(bundle, TritonConfig(repo=str(tmp_path / "repo"), platform="tr"))
    assert not (tmp_path / "repo").exists()

    repo = tmp_path / "repo"
    write_repository(bundle, TritonConfig(repo=str(repo), name="m"))
    (repo / "other").mkdir()  # another model of the repository
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    old = (repo / "m" / "config.pbtxt").read_text()
    with pytest.raises(ConfigError, match="--overwrite"):
        write_repository(bundle, TritonConfig(repo=str(repo), name="m", max_batch=2))
    assert (repo / "m" / "config.pbtxt").read_text() == old
    write_repository(bundle, TritonConfig(repo=str(repo), name="m", max_batch=2), overwrite=True)
    assert parse(repo / "m" / "config.pbtxt").max_batch_size == 2 and (repo / "other" / "config.pbtxt").is_file()
    assert sorted(p.name for p in repo.iterdir()) == ["m", "other"]  # no temp folder or lock left in the repository

    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        write_repository(bundle, TritonConfig(repo=str(repo), name="n"))
    assert not (repo / "n").exists()


def test_cli_export_bundle_to_triton(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, repo = tmp_path / "b", tmp_path / "repo"
    make_bundle(bundle)
    code, out, err = run_cli(["export", str(bundle), "--triton", str(repo), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["model"] == "b" and res["max_batch_size"] == 16 and res["platform"] == "onnxruntime_onnx"
    code, out, err = run_cli(["export", str(bundle), "--triton", str(repo), "--triton-name", "b8", "--max-batch",
                              "8"], capsys)
    assert code == 0, err
    assert parse(repo / "b8" / "config.pbtxt").max_batch_size == 8  # --max-batch given: it overrides the profile
    assert f"tritonserver --model-repository={repo}" in out
    for argv, needle in ((["--triton", str(repo)], "--overwrite"), (["--triton", str(bundle)], "overlaps the bundle"),
                         (["--triton", str(repo), "--triton-platform", "trt", "--triton-name", "x"], "no model.engine"),
                         ([], "--triton REPO")):
        code, out, err = run_cli(["export", str(bundle), *argv, "--json"], capsys)
        kind = json.loads(out)["kind"]
        assert code == {"config": 2, "artifact": 4}[kind] and needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in repo.iterdir()) == ["b", "b8"]


_NO_TORCH = textwrap.dedent("""
    import sys

    class _Blocker:  # as on a Triton host or a Jetson without torch, onnx or open_clip
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "open_clip", "onnx"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _Blocker())
    from edgeprompt.config import ExportConfig, TritonConfig
    from edgeprompt.export import export

    res = export(ExportConfig(source=sys.argv[1], triton=TritonConfig(repo=sys.argv[2])))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip", "onnx"))
    assert not leaked, leaked
    print(res["platform"])
""")


def test_the_repository_is_written_without_torch(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    env = {**os.environ, "PYTHONPATH": str(Path(edgeprompt.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path / "b"), str(tmp_path / "repo")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "onnxruntime_onnx" and (tmp_path / "repo" / "b" / "1" / "model.onnx").is_file()


def test_a_tuned_run_exports_straight_into_a_repository(tiny_model: str, image_folder: Path, cache_dir: Path,
                                                        tmp_path: Path) -> None:
    from edgeprompt.config import ExportConfig
    from edgeprompt.export import export
    from tests.helpers import tune_run

    run = tune_run(tiny_model, "dspt", image_folder, tmp_path / "run", cache_dir, n_ctx=4)
    res = export(ExportConfig(source=str(run), out=str(tmp_path / "bundle"), n_check=4,
                              triton=TritonConfig(repo=str(tmp_path / "repo"), name="dspt")))
    manifest = Manifest.read(tmp_path / "bundle")
    assert res["bundle"] == str(tmp_path / "bundle") and res["triton"]["model"] == "dspt"
    config = parse(tmp_path / "repo" / "dspt" / "config.pbtxt")
    assert config.max_batch_size == manifest.extra["export"]["profile"]["max_batch"] == 32
    assert list(config.input[0].dims) == [3, 32, 32] and [list(o.dims) for o in config.output] == [[3], [3]]
    assert (tmp_path / "repo" / "dspt" / "labels.txt").read_text().splitlines() == list(manifest.classnames)
    check_against_model(config, tmp_path / "repo" / "dspt" / "1" / "model.onnx")
    # the repository is checked before the export starts: an existing model stops it before any tracing
    with pytest.raises(ConfigError, match="--overwrite"):
        export(ExportConfig(source=str(run), out=str(tmp_path / "bundle2"), n_check=4,
                            triton=TritonConfig(repo=str(tmp_path / "repo"), name="dspt")))
    assert not (tmp_path / "bundle2").exists()


def test_the_model_folder_is_readable_by_a_server_running_as_another_user(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    umask = os.umask(0o022)  # the usual one; the check is that nothing is made private on top of it
    try:
        write_repository(tmp_path / "b", TritonConfig(repo=str(tmp_path / "repo")))
    finally:
        os.umask(umask)
    model = tmp_path / "repo" / "b"
    for path in [model, *model.rglob("*")]:  # group and others may read every file and enter every folder
        assert path.stat().st_mode & 0o044 == 0o044 and (path.is_file() or path.stat().st_mode & 0o011 == 0o011), path
