"""INT8 export: calibrated Q/DQ bundles, the graph structure TensorRT needs, the agreement gate, torch-free use.

A tiny random-weight ViT is tuned once per quantizer (module fixture) and exported with ``--int8``; the graph is then
checked node by node for what TensorRT's explicit quantization requires. Speed is measured by benchmarks/int8.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeprompt
from edgeprompt.config import ExportConfig, Int8Config
from edgeprompt.errors import ConfigError, ExportError
from edgeprompt.manifest import ONNX_FILE, ONNX_FP32_FILE, OUTPUT_LOGITS, Manifest
from tests.conftest import make_folder
from tests.helpers import BLOCK_TORCH, export_run, torch_leaks, tune_run

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxslim")

QUANTIZERS = [pytest.param("modelopt", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("modelopt") is None, reason="nvidia-modelopt not installed")), "ort"]


@pytest.fixture(scope="module")
def int8_run(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CoOp run tuned on 18 images (3 classes x 6): calibration and held-out sets come from them."""
    root = tmp_path_factory.mktemp("int8")
    return tune_run(tiny_model, "coop", make_folder(root / "data"), root / "run", root / "cache", n_ctx=4)


@pytest.fixture(scope="module", params=QUANTIZERS)
def int8_bundle(request: pytest.FixtureRequest, int8_run: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp(f"bundle-{request.param}") / "b"
    res = export_run(int8_run, out, n_check=4, precision="int8",
                     quant=Int8Config(quantizer=request.param, calib_n=8, min_accuracy=0.0))
    return out, res


def _graph(bundle: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    model = onnx.load(str(bundle / ONNX_FILE))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    return model, producers, inits


def _value(inits: dict[str, Any], name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(inits[name])


def test_int8_bundle_files_manifest_and_disjoint_sets(int8_bundle: tuple[Path, dict[str, Any]], int8_run: Path
                                                      ) -> None:
    bundle, res = int8_bundle
    files = ["manifest.json", ONNX_FILE, ONNX_FP32_FILE, "trtexec.sh"]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(files)
    m = Manifest.read(bundle)
    assert m.precision == "int8" and res["precision"] == "int8"
    assert set(m.files) == {ONNX_FILE, ONNX_FP32_FILE, "trtexec.sh"}
    q = m.extra["int8"]
    assert q["calibrator"] == "percentile" and q["keep_float"] == ["head", "attention"]
    assert q["quantizer"] in ("modelopt", "ort") and q["fp32_graph"] == ONNX_FP32_FILE
    calib, gate = q["calibration"], q["gate"]
    tuned = {str(Path(p).resolve()) for p in json.loads((int8_run / "train_split.json").read_text())["paths"]}
    assert calib["n"] == len(calib["images"]) == 8 and set(calib["images"]) <= tuned
    assert gate["n"] == 18 - 8 and gate["labeled"] == gate["n"]  # every image not calibrated on, none twice
    assert 0.0 <= gate["top1_agreement"] <= 1.0 and gate["passed"] and m.extra["parity"]["passed"]
    meta = {p.key: p.value for p in onnx.load(str(bundle / ONNX_FILE)).metadata_props}
    assert meta["edgeprompt.precision"] == "int8" and meta["edgeprompt.method"] == "coop"
    script = (bundle / "trtexec.sh").read_text()
    assert "--int8 --fp16" in script and "--stronglyTyped" in script  # TensorRT 10 branch, TensorRT 11 branch


def test_int8_graph_has_the_qdq_structure_tensorrt_needs(int8_bundle: tuple[Path, dict[str, Any]]) -> None:
    """Symmetric INT8 Q/DQ pairs on the inputs of every quantized Conv/MatMul/Gemm, per-channel weights on the
    output-channel axis, biases float, nothing on shape tensors, and the keep-float groups untouched."""
    from onnx import TensorProto

    bundle, _ = int8_bundle
    model, producers, inits = _graph(bundle)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13  # per-axis Q/DQ
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = _value(inits, n.input[2])
        assert zp.dtype == np.int8 and not zp.any(), n.name  # TensorRT: signed INT8, zero point 0
        scale = _value(inits, n.input[1])
        assert np.isfinite(scale).all() and (scale > 0).all(), n.name
        if n.op_type == "QuantizeLinear":
            assert types.get(n.input[0]) == TensorProto.FLOAT, n.name  # never a shape or index tensor
        else:
            src = inits.get(n.input[0])
            assert src is None or src.data_type == TensorProto.INT8, n.name  # no INT32 bias DequantizeLinear

    quantized = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        feeds = [producers.get(i) for i in n.input[:2]]
        if not all(f is not None and f.op_type == "DequantizeLinear" for f in feeds):
            continue
        quantized += 1
        act, weight = feeds
        q = producers.get(act.input[0])
        assert q is not None and q.op_type == "QuantizeLinear", n.name  # activation: a Q -> DQ pair
        assert np.array_equal(_value(inits, q.input[1]), _value(inits, act.input[1])), n.name
        if weight.input[0] not in inits:
            continue  # an activation x activation product (only when 'attention' is not kept float)
        w = _value(inits, weight.input[0])
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        out_axis = 0 if n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b) else w.ndim - 1
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        assert axis % w.ndim == out_axis and _value(inits, weight.input[1]).shape == (w.shape[out_axis],), n.name
        if len(n.input) > 2 and n.input[2]:
            bias = producers.get(n.input[2])
            assert bias is None or bias.op_type != "DequantizeLinear", n.name  # biases stay float
    assert quantized >= 1 + 2 * 4  # patch conv + per block: qkv, out, fc, proj (2 blocks)

    consts = set(inits) | {o for n in model.graph.node for o in n.output if n.op_type == "Constant" or (
        n.op_type == "DequantizeLinear" and n.input[0] in inits)}  # a weight behind its DQ is still a weight
    attention = 0
    for n in model.graph.node:  # keep_float = head, attention
        if n.op_type == "MatMul" and not set(n.input) & consts:
            attention += 1
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)
    assert attention == 2 * 2  # Q·Kᵀ and softmax·V in each of the 2 blocks, in float
    last_ln = max(i for i, n in enumerate(model.graph.node) if n.op_type == "LayerNormalization")
    head = [n for n in model.graph.node[last_ln:] if n.op_type in ("MatMul", "Gemm")]
    assert head and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                        for n in head for i in n.input)
    io = model.graph.input[0].type.tensor_type.shape.dim
    assert io[0].dim_param == "batch" and [d.dim_value for d in io[1:]] == [3, 32, 32]


def test_int8_bundle_predicts_like_its_fp32_graph(int8_bundle: tuple[Path, dict[str, Any]]) -> None:
    from edgeprompt.runtime import load_bundle
    from edgeprompt.runtime.onnxrt import OrtRuntime

    bundle, res = int8_bundle
    predictor = load_bundle(bundle, backend="ort-cpu", threads=1, verify=True)
    pixels = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    got = predictor.run(pixels)[OUTPUT_LOGITS]
    ref = OrtRuntime(bundle / ONNX_FP32_FILE, predictor.manifest.io, "ort-cpu", threads=1).run(pixels)[OUTPUT_LOGITS]
    scale = predictor.manifest.logit_scale
    # measured: max |diff| 0.4-0.5 % of the logit scale, correlation 0.9985-0.9988 (both quantizers); another model's
    # logits are nowhere near either bound
    assert got.shape == ref.shape and np.abs(got - ref).max() < 0.03 * scale
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
    assert not np.array_equal(got, ref)  # ... and really quantized


def test_failed_int8_gate_is_one_line_and_writes_nothing(int8_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that disagrees with FP32 on the held-out images is refused; the message names the next option."""
    import edgeprompt.export.quantize as quantize

    def wrong(fp32: Path, out: Path, pixels: np.ndarray, cfg: Int8Config) -> dict[str, Any]:
        model = onnx.load(str(fp32))  # the FP32 graph with its class columns rolled: every top-1 moves
        for t in model.graph.initializer:
            if t.name == "class_matrix":
                t.CopyFrom(onnx.numpy_helper.from_array(np.roll(onnx.numpy_helper.to_array(t), 1, axis=1), t.name))
        onnx.save(model, str(out))
        return {}

    monkeypatch.setattr(quantize, "quantize_int8", wrong)
    monkeypatch.setattr(quantize, "require_quantizer", lambda name: None)
    out = tmp_path / "bundles" / "b"
    with pytest.raises(ExportError) as err:
        # the agreement bar: on a random model the rolled graph can keep FP32's (chance) accuracy
        export_run(int8_run, out, n_check=4, precision="int8", quant=Int8Config(calib_n=8, min_agreement=0.99))
    msg = str(err.value)
    assert "\n" not in msg and "no bundle was written" in msg and "of 10 held-out images (< 99 %" in msg
    assert msg.endswith("try more calibration images (--calib-n 16)")  # 8 of the 18 tuning images were used
    assert not out.exists() and not (tmp_path / "bundles").exists()


def test_gate_numbers_and_next_option_ladder() -> None:
    from edgeprompt.export.int8 import ImageSet, gate

    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    got = ref.copy()
    got[1] = [0.0, 1.9, 2.0]  # flips a near-tie (FP32 margin 0.1)
    labels = np.array([0, 1, 2, -1])
    small = ImageSet(tuple(Path(f"{i}.png") for i in range(10)), (-1,) * 10, "s", 40)
    with pytest.raises(ExportError, match=r"keeps 50.0 % of FP32's held-out top-1 \(33.3 % vs 66.7 % on 3 labeled"):
        gate(ref, got, labels, Int8Config(), small)  # the default bar is accuracy: 99 % of FP32's
    numbers = gate(ref, got, labels, Int8Config(min_accuracy=0.5, min_agreement=0.75), small)
    assert numbers["accuracy_ratio"] == pytest.approx(0.5) and numbers["passed"]
    assert numbers["top1_agreement"] == 0.75 and numbers["flipped"] == 1 and numbers["labeled"] == 3
    assert numbers["top1_fp32"] == pytest.approx(2 / 3) and numbers["top1_change"] == pytest.approx(-1 / 3)
    assert numbers["median_flip_margin"] == pytest.approx(0.1) and numbers["passed"]

    # a flip between two wrong answers costs no accuracy: the default gate passes it, the agreement bar does not
    swap = ref.copy()
    swap[2] = [1.0, 0.9, 0.5]  # FP32 says 0 for an image labeled 2
    swapped = swap.copy()
    swapped[2] = [0.9, 1.0, 0.5]  # INT8 says 1: still wrong
    passed = gate(swap, swapped, labels, Int8Config(), small)
    assert passed["passed"] and passed["top1_agreement"] == 0.75 and passed["accuracy_ratio"] == 1.0
    with pytest.raises(ExportError, match="< 99 % --int8-min-agreement"):
        gate(swap, swapped, labels, Int8Config(min_agreement=0.99), small)
    with pytest.raises(ExportError, match="no labels to measure accuracy"):  # unlabeled: agreement stands in
        gate(swap, swapped, np.full(4, -1), Int8Config(), small)

    def hint(cfg: Int8Config, calib: ImageSet = small) -> str:
        with pytest.raises(ExportError) as err:
            gate(ref, got, labels, cfg, calib)
        return str(err.value).split("; try ")[1]

    full = ImageSet(small.paths, small.labels, "s", 10)
    assert hint(Int8Config()) == "more calibration images (--calib-n 20)"
    assert hint(Int8Config(), full).endswith("(--int8-float head,attention,residual)")
    every = ("head", "attention", "residual", "patch")
    assert hint(Int8Config(keep_float=every, calib_method="minmax"), full).endswith("(--calib-method percentile)")
    assert hint(Int8Config(keep_float=every), full).endswith("(--calib-method entropy)")
    assert hint(Int8Config(keep_float=every, calib_method="entropy"), full).endswith(
        "(--int8-min-accuracy, --int8-min-agreement)")
    bad = got.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ExportError, match="non-finite"):
        gate(ref, bad, labels, Int8Config(min_agreement=0.0), small)


def test_calibration_and_holdout_sets(tmp_path: Path) -> None:
    """Calibration: the run's tuning images (or --calib); held-out: the rest of the training folder, never both."""
    from edgeprompt.export.int8 import calibration_set, holdout_set

    data = make_folder(tmp_path / "data", per_class=10)  # 30 images
    images = sorted(p.resolve() for p in data.rglob("*.png"))
    tuned = images[::3]  # the run tuned on 10 of them
    classes = ("red", "green", "blue")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_split.json").write_text(json.dumps({
        "root": str(data), "paths": [str(p) for p in tuned],
        "true_labels": [classes.index(p.parent.name) for p in tuned],
        "given_labels": [classes.index(p.parent.name) for p in tuned]}))
    cfg = Int8Config(calib_n=4, n_check=100)
    calib = calibration_set(run, cfg)
    assert len(calib) == 4 and calib.available == 10 and set(calib.paths) <= set(tuned)
    held = holdout_set(run, classes, calib, cfg)
    assert len(held) == 26 and not set(held.paths) & set(calib.paths)
    assert all(classes[y] == p.parent.name for p, y in zip(held.paths, held.labels, strict=True))

    other = make_folder(tmp_path / "calib", per_class=2, seed=1)
    calib = calibration_set(run, Int8Config(calib=str(other)))
    assert len(calib) == 6 and all(str(tmp_path / "calib") in str(p) for p in calib.paths)
    assert len(holdout_set(run, classes, calib, cfg)) == 30
    with pytest.raises(ExportError, match="--int8-check"):
        holdout_set(run, classes, calibration_set(run, Int8Config(calib=str(data), calib_n=25)),
                    Int8Config(n_check=10))


def test_int8_options_are_validated(tmp_path: Path) -> None:
    for kw, what in [({"calib_method": "kl"}, "--calib-method"), ({"quantizer": "tensorrt"}, "--int8-quantizer"),
                     ({"keep_float": ("heads",)}, "Did you mean 'head'"), ({"min_agreement": 99.0}, "0.99 = 99 %"),
                     ({"calib_n": 0}, "--calib-n")]:
        with pytest.raises(ConfigError, match=what):
            ExportConfig(source="run", precision="int8", quant=Int8Config(**kw)).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--precision must be one of fp32, fp16, int8, got 'int4'"):
        ExportConfig(source="run", precision="int4").validate()
    with pytest.raises(ConfigError, match="--calib .*no such folder"):
        ExportConfig(source="run", precision="int8", quant=Int8Config(calib=str(tmp_path / "nope"))).validate()
    assert Int8Config(keep_float="head").keep_float == ("head",)


def test_int8_cli_refusal_is_exit_2_and_one_line(int8_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeprompt.cli.main import app

    res = CliRunner().invoke(app, ["export", str(int8_run), "--out", str(tmp_path / "b"), "--int8",
                                   "--int8-float", "head,nope"])
    assert res.exit_code == 2 and "--int8-float" in res.output and "nope" in res.output
    assert not (tmp_path / "b").exists()


def test_int8_bundle_predicts_and_benches_without_torch(int8_run: Path, tmp_path: Path) -> None:
    """predict and bench (INT8 rows beside the bundle's FP32 graph) in a process where torch cannot be imported."""
    bundle = tmp_path / "b"
    export_run(int8_run, bundle, n_check=4, precision="int8", quant=Int8Config(quantizer="ort", calib_n=8,
                                                                        min_accuracy=0.0))
    data = make_folder(tmp_path / "test", per_class=2, seed=3)
    script = BLOCK_TORCH + (
        "import json\n"
        "from edgeprompt.config import BenchConfig\n"
        "from edgeprompt.bench.run import bench\n"
        "from edgeprompt.runtime import predict_files\n"
        "pred = predict_files(sys.argv[1], [sys.argv[2]], top_k=1, backend='ort-cpu')\n"
        "res = bench(BenchConfig(bundle=sys.argv[1], data=sys.argv[2], backends=('ort-cpu',), batches=(2,),\n"
        "                        warmup=1, iters=2, e2e_iters=1))\n"
        + torch_leaks() +
        "print(json.dumps({'n': len(pred['predictions']), 'rows': [(r['precision'], r['agreement'])\n"
        "                                                          for r in res['rows']]}))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(edgeprompt.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(bundle), str(data)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 6
    assert [r[0] for r in out["rows"]] == ["fp32", "int8"] and out["rows"][0][1] == 1.0  # int8 agrees with fp32


def test_the_accuracy_bar_allows_one_held_out_image_of_sampling() -> None:
    """On 256 held-out images one image is 0.4 %: 99 % of FP32's top-1 less one image passes, two more fail."""
    from edgeprompt.export.int8 import ImageSet, gate

    n = 256
    labels = np.zeros(n, dtype=np.int64)
    ref = np.tile([1.0, 0.0], (n, 1))
    ref[190:, :] = [0.0, 1.0]  # FP32 right on 190 of 256 (74.2 %)
    calib = ImageSet(tuple(Path(f"{i}.png") for i in range(10)), (-1,) * 10, "s", 10)
    for wrong, passed in ((2, True), (4, False)):  # INT8 loses 2 (73.4 %: 98.9 % of FP32's) or 4 images
        got = ref.copy()
        got[:wrong] = [0.0, 1.0]
        if passed:
            assert gate(ref, got, labels, Int8Config(), calib)["passed"]
        else:
            with pytest.raises(ExportError, match="of FP32's held-out top-1"):
                gate(ref, got, labels, Int8Config(), calib)
