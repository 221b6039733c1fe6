"""Export: tune -> bundle -> onnxruntime, with the parity gate, atomic writes and the TensorRT refusal.

Everything runs on tiny random-weight open_clip configs (a ViT from conftest and an RN50-style ModifiedResNet
written here), so both image towers are traced. Speed is not measured here (see benchmarks/export_speed.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeprompt.errors import EdgePromptError, ExportError
from edgeprompt.manifest import INPUT_PIXELS, OUTPUT_LOGITS, OUTPUT_PROBS, IOSpec, Manifest
from tests.helpers import export_run, tune_run


def torch_logits_of(run_dir: Path, pixels: np.ndarray) -> np.ndarray:
    from edgeprompt.artifact import load_run
    from edgeprompt.export.verify import torch_logits

    run = load_run(run_dir)
    return torch_logits(run.backbone, run.method, pixels)


def images_of(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


@pytest.mark.parametrize("method", ["zeroshot", "coop", "dspt"])
def test_export_folded_matches_torch(method: str, tiny_model: str, image_folder: Path, cache_dir: Path,
                                     tmp_path: Path) -> None:
    from edgeprompt.export.onnx import onnx_metadata, onnx_summary
    from edgeprompt.preprocess import preprocess_batch
    from edgeprompt.runtime import load_bundle

    opts = {"n_ctx": 4} if method != "zeroshot" else {}
    run = tune_run(tiny_model, method, image_folder, tmp_path / "run", cache_dir, **opts)
    res = export_run(run, tmp_path / "bundle", n_check=8)
    bundle = Path(res["bundle"])
    assert res["graph"] == "folded" and res["precision"] == "fp32" and res["opset"] == 17
    assert res["parity"]["passed"] and res["parity"]["top1_agreement"] == 1.0
    assert res["parity"]["source"] == "images:8"
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx", "trtexec.sh"]

    # manifest round trip and contents
    m = Manifest.read(bundle)
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.kind == "bundle" and m.method == method and m.io == IOSpec.classifier(32, 3)
    assert set(m.files) == {"model.onnx", "trtexec.sh"}
    assert m.extra["parity"]["max_abs_logit_diff"] <= 1e-3 * m.logit_scale
    meta = onnx_metadata(bundle / "model.onnx")
    assert meta["edgeprompt.method"] == method and json.loads(meta["edgeprompt.classnames"]) == list(m.classnames)
    summary = onnx_summary(bundle / "model.onnx")
    assert summary["inputs"] == {INPUT_PIXELS: "float"}
    assert summary["outputs"] == {OUTPUT_LOGITS: "float", OUTPUT_PROBS: "float"}

    # the deployment runtime (no torch in the loop) agrees with the tuned method in torch, at any batch
    pixels = preprocess_batch([str(p) for p in images_of(image_folder)], m.preprocess)
    predictor = load_bundle(bundle, backend="ort-cpu", batch_size=5, verify=True)
    out = predictor.run(pixels)
    ref = torch_logits_of(run, pixels)
    np.testing.assert_allclose(out[OUTPUT_LOGITS], ref, atol=1e-3 * m.logit_scale, rtol=0)
    assert (out[OUTPUT_LOGITS].argmax(-1) == ref.argmax(-1)).all()
    np.testing.assert_allclose(out[OUTPUT_PROBS].sum(-1), 1.0, atol=1e-5)


def test_export_rn50_style_tower(tiny_rn_model: str, image_folder: Path, cache_dir: Path, tmp_path: Path) -> None:
    from edgeprompt.preprocess import preprocess_batch
    from edgeprompt.runtime import load_bundle

    run = tune_run(tiny_rn_model, "coop", image_folder, tmp_path / "run", cache_dir, n_ctx=4)
    res = export_run(run, tmp_path / "bundle", n_check=6)
    assert res["parity"]["passed"]
    predictor = load_bundle(res["bundle"], backend="ort-cpu")
    pixels = preprocess_batch([str(p) for p in images_of(image_folder)[:7]], predictor.manifest.preprocess)
    np.testing.assert_allclose(predictor.run(pixels)[OUTPUT_LOGITS], torch_logits_of(run, pixels),
                               atol=1e-3 * predictor.manifest.logit_scale, rtol=0)


def test_fp16_export_keeps_fp32_io_and_layernorm(tiny_model: str, image_folder: Path, cache_dir: Path,
                                                 tmp_path: Path) -> None:
    import onnx


    run = tune_run(tiny_model, "dspt", image_folder, tmp_path / "run", cache_dir, n_ctx=4)
    res = export_run(run, tmp_path / "bundle", precision="fp16", n_check=8)
    from edgeprompt.export.onnx import has_dynamo_flag

    want = "dynamo" if has_dynamo_flag() else "legacy"  # auto tries dynamo first for FP16; torch < 2.5 lacks it
    assert res["precision"] == "fp16" and res["parity"]["passed"] and res["exporter"] == want
    assert res["parity"]["top1_agreement_tie_aware"] >= 0.995
    m = Manifest.read(res["bundle"])
    assert m.precision == "fp16" and "LayerNorm" in m.extra["fp16"]["kept_fp32"]
    model = onnx.load(str(Path(res["bundle"]) / "model.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values()
    fp32 = onnx.TensorProto.FLOAT
    assert all(vi.type.tensor_type.elem_type == fp32 for vi in (*model.graph.input, *model.graph.output))
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert lns and all(types.get(n.input[1], fp32) == fp32 for n in lns)  # LayerNorm weights stay FP32


def test_onnxruntime_crash_fails_the_gate_instead_of_the_process(tiny_backbone: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A native crash in the gate's child process (as onnxruntime 1.32 did on some FP16 graphs) is a failed gate."""
    import sys

    from edgeprompt.export.graph import build_graph
    from edgeprompt.export.onnx import export_onnx
    from edgeprompt.export.verify import ort_outputs
    from edgeprompt.methods import create_method

    method = create_method("zeroshot", tiny_backbone, ["red", "green", "blue"]).eval()
    io = IOSpec.classifier(32, 3)
    path = export_onnx(build_graph(tiny_backbone, method), tmp_path / "m.onnx", io)
    pixels = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    assert ort_outputs(path, io, pixels)[OUTPUT_LOGITS].shape == (3, 3)  # the real child runs the graph
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")  # stands in for the interpreter: dies of a signal
    crasher.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crasher))
    with pytest.raises(ExportError, match=r"crashed \(signal 11\)"):
        ort_outputs(path, io, pixels)


def test_external_data_bundle_loads_after_copy(tiny_model: str, image_folder: Path, cache_dir: Path,
                                               tmp_path: Path) -> None:
    from edgeprompt.runtime import load_bundle

    run = tune_run(tiny_model, "zeroshot", image_folder, tmp_path / "run", cache_dir)
    res = export_run(run, tmp_path / "bundle", external_data=True, n_check=4)
    assert (Path(res["bundle"]) / "model.onnx.data").is_file()
    assert "model.onnx.data" in Manifest.read(res["bundle"]).files
    moved = tmp_path / "elsewhere" / "copied"
    shutil.copytree(res["bundle"], moved)
    shutil.rmtree(res["bundle"])
    predictor = load_bundle(moved, backend="ort-cpu", verify=True)
    pred = predictor.predict([str(p) for p in images_of(image_folder)[:3]], top_k=1)
    assert len(pred) == 3 and pred[0][0].label in predictor.classnames


def test_failed_parity_gate_leaves_no_bundle(tiny_model: str, image_folder: Path, cache_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeprompt.export.verify as verify

    run = tune_run(tiny_model, "coop", image_folder, tmp_path / "run", cache_dir, n_ctx=4)
    real = verify.torch_logits

    def perturbed(*args: object, **kwargs: object) -> np.ndarray:
        ref = real(*args, **kwargs)  # type: ignore[arg-type]
        return ref + np.linspace(0, 1, ref.shape[-1], dtype=ref.dtype)  # shifts logits and flips some top-1s

    monkeypatch.setattr(verify, "torch_logits", perturbed)
    out = tmp_path / "bundles" / "b"
    with pytest.raises(ExportError, match="disagrees with torch.*max_abs_logit_diff"):
        export_run(run, out, n_check=6)
    assert not out.exists()
    assert not (tmp_path / "bundles").exists()  # no partial folder, not even the parent it created


def test_trt_without_tensorrt_writes_nothing(tiny_model: str, tmp_path: Path) -> None:
    from edgeprompt.export import build_trt
    from edgeprompt.export.tensorrt import trt_status

    if trt_status() is None:
        pytest.skip("TensorRT and a GPU are available here")
    out = tmp_path / "bundles" / "b"
    with pytest.raises(EdgePromptError) as err:
        export_run(tmp_path / "no-such-run", out, trt=True)  # refused before the run is even read
    assert "\n" not in str(err.value) and ("TensorRT" in str(err.value) or "GPU" in str(err.value))
    assert not (tmp_path / "bundles").exists()

    from tests.tiny_bundle import write_tiny_bundle

    bundle = tmp_path / "tiny"
    write_tiny_bundle(bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(EdgePromptError):
        build_trt(bundle)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_non_foldable_method_keeps_text_branch(tiny_backbone: Any, tmp_path: Path) -> None:
    """A method whose text features depend on the image is exported with its forward (no folding)."""
    import torch

    from edgeprompt.export.graph import build_graph
    from edgeprompt.export.onnx import export_onnx
    from edgeprompt.export.verify import compare, ort_outputs, torch_logits
    from edgeprompt.methods.base import FeatureBatch, PromptMethod

    class TokenConditioned(PromptMethod):
        name, foldable, needs_tokens = "token-test", False, True

        def __init__(self, backbone: Any, classnames: list[str]) -> None:
            super().__init__(backbone, classnames, None)
            self.base = torch.nn.Parameter(torch.randn(len(classnames), backbone.embed_dim))
            self.mix = torch.nn.Linear(backbone.embed_dim, backbone.embed_dim)
            self.scale = backbone.logit_scale

        def forward(self, batch: FeatureBatch) -> torch.Tensor:
            ctx = self.mix(batch.tokens.mean(1))  # (B, E): per-image shift of the class features
            text = torch.nn.functional.normalize(self.base[None] + ctx[:, None], dim=-1)  # (B, C, E)
            img = torch.nn.functional.normalize(batch.pooled, dim=-1)
            return self.scale * torch.einsum("be,bce->bc", img, text)

    method = TokenConditioned(tiny_backbone, ["a", "b", "c", "d"]).eval()
    assert not build_graph(tiny_backbone, method).folded
    pixels = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    ref = torch_logits(tiny_backbone, method, pixels)
    for precision in ("fp32", "fp16"):  # fp16: half image encoder, the method head stays fp32
        graph = build_graph(tiny_backbone, method, precision=precision)
        path = export_onnx(graph, tmp_path / f"{precision}.onnx", IOSpec.classifier(32, 4))
        outputs = ort_outputs(path, IOSpec.classifier(32, 4), pixels, chunk=4)
        numbers = compare(ref, outputs, precision=precision, logit_scale=method.scale)
        assert numbers["passed"], numbers


def test_export_refuses_bad_options(tmp_path: Path) -> None:
    from edgeprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="opset"):
        export_run(tmp_path / "run", tmp_path / "b", opset=13)
    with pytest.raises(ConfigError, match="opset 99 is outside 17..21"):
        export_run(tmp_path / "run", tmp_path / "b", opset=99)
    with pytest.raises(ConfigError, match="overlaps the run directory"):
        export_run(tmp_path / "run", tmp_path / "run", overwrite=True)
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export_run(tmp_path / "run", tmp_path / "b")


def test_dynamo_exporter_gives_the_same_graph(tiny_backbone: Any, tmp_path: Path) -> None:
    """The fallback exporter (torch.export based) yields a valid graph with the same I/O and a named batch axis."""
    import onnx

    from edgeprompt.export.onnx import has_dynamo_flag

    if not has_dynamo_flag():
        pytest.skip("torch < 2.5 has no dynamo=True export (auto falls back to legacy; tested above)")

    from edgeprompt.export.graph import build_graph
    from edgeprompt.export.onnx import export_onnx, onnx_metadata
    from edgeprompt.export.verify import compare, ort_outputs, torch_logits
    from edgeprompt.methods import create_method

    method = create_method("zeroshot", tiny_backbone, ["red", "green", "blue"]).eval()
    path = export_onnx(build_graph(tiny_backbone, method), tmp_path / "model.onnx", IOSpec.classifier(32, 3),
                       exporter="dynamo", opset=18)
    assert onnx_metadata(path)["edgeprompt.exporter"] == "dynamo"
    model = onnx.load(str(path))
    assert [vi.type.tensor_type.shape.dim[0].dim_param for vi in (*model.graph.input, *model.graph.output)] == \
        ["batch"] * 3
    assert not (tmp_path / "model.onnx.data").exists()  # re-saved as one self-contained file
    pixels = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    outputs = ort_outputs(path, IOSpec.classifier(32, 3), pixels, chunk=2)
    numbers = compare(torch_logits(tiny_backbone, method, pixels), outputs, precision="fp32",
                      logit_scale=tiny_backbone.logit_scale)
    assert numbers["passed"], numbers


def test_export_dispatches_on_what_the_path_holds(tiny_model: str, image_folder: Path, cache_dir: Path,
                                                  tmp_path: Path) -> None:
    from edgeprompt.config import ExportConfig
    from edgeprompt.errors import ConfigError
    from edgeprompt.export import default_bundle_dir, export
    from tests.tiny_bundle import write_tiny_bundle

    bundle = tmp_path / "tiny"
    write_tiny_bundle(bundle)
    with pytest.raises(ConfigError, match="already an exported bundle"):
        export(ExportConfig(source=str(bundle)))
    run = tune_run(tiny_model, "zeroshot", image_folder, tmp_path / "run", cache_dir)
    res = export(ExportConfig(source=str(run), n_check=2))
    assert Path(res["bundle"]) == default_bundle_dir(run) == tmp_path / "run-bundle"


@pytest.mark.parametrize("kv", ["tokens", pytest.param("pooled", marks=pytest.mark.slow)])
def test_export_visprompt_keeps_text_encoder(kv: str, tiny_model: str, image_folder: Path, cache_dir: Path,
                                             tmp_path: Path) -> None:
    """VisPrompt (image-conditioned prompts) is exported unfolded: adapter + text encoder run inside the graph."""
    pytest.importorskip("edgeprompt.methods.visprompt")
    from edgeprompt.runtime import load_bundle

    run = tune_run(tiny_model, "visprompt", image_folder, tmp_path / "run", cache_dir, n_ctx=4, kv=kv)
    res = export_run(run, tmp_path / "bundle", n_check=6)
    assert res["graph"] == "dynamic-text" and res["parity"]["passed"], res["parity"]
    predictor = load_bundle(res["bundle"], backend="ort-cpu")
    pred = predictor.predict([str(p) for p in images_of(image_folder)[:2]], top_k=1)
    assert len(pred) == 2


def test_uint8_nhwc_input_gives_the_float_bundle_s_answers(tiny_model: str, image_folder: Path, cache_dir: Path,
                                                           tmp_path: Path) -> None:
    """``--input-format uint8-nhwc``: the graph takes the bytes (a quarter of the float input's), scales and
    transposes them itself, passes the same parity gate, and predicts what the float bundle predicts."""
    from PIL import Image

    from edgeprompt.config import ExportConfig
    from edgeprompt.errors import ArtifactError, ConfigError
    from edgeprompt.export.deepstream import write_deepstream
    from edgeprompt.runtime import load_bundle
    from edgeprompt.runtime.base import input_bytes_per_image

    run = tune_run(tiny_model, "coop", image_folder, tmp_path / "run", cache_dir, n_ctx=4, class_specific=False)
    floats = export_run(run, tmp_path / "float", n_check=8)
    bytes_ = export_run(run, tmp_path / "uint8", n_check=8, input_format="uint8-nhwc")
    assert bytes_["parity"]["passed"] and bytes_["parity"]["top1_agreement"] == 1.0
    m = Manifest.read(tmp_path / "uint8")
    assert m.io is not None and m.io.inputs[0].dtype == "uint8" and m.io.inputs[0].shape[1:] == (32, 32, 3)
    assert input_bytes_per_image(m.io) * 4 == input_bytes_per_image(Manifest.read(tmp_path / "float").io)  # type: ignore[arg-type]
    images = images_of(image_folder)
    with load_bundle(floats["bundle"], backend="ort-cpu") as f, load_bundle(bytes_["bundle"], backend="ort-cpu") as u:
        pf, pu = f.probabilities(images), u.probabilities(images)
        np.testing.assert_allclose(pu, pf, atol=1e-5)  # the same pixels reach the encoder
        raw = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in images[:2]])
        assert raw.dtype == np.uint8  # (2, 32, 32, 3) bytes, handed over as they are
        assert u.runtime.run(raw)["probs"].shape == (2, 3)
    with pytest.raises(ArtifactError, match="nvinfer feeds float"):
        write_deepstream(tmp_path / "uint8", tmp_path / "ds")
    with pytest.raises(ConfigError, match="uint8-nhwc with --int8"):
        ExportConfig(source=str(run), precision="int8", input_format="uint8-nhwc").validate()
