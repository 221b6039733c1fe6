"""TensorRT build planning (no TensorRT needed), the no-TensorRT failure mode, and GPU parity where TensorRT exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeprompt.config import TrtProfile
from edgeprompt.errors import ConfigError, EdgePromptError, ExportError, MissingDependencyError
from edgeprompt.export.tensorrt import (
    _summarise_inspector,
    build_engine,
    precision_plan,
    profile_shapes,
    trt_status,
    trtexec_command,
    write_trtexec_script,
)
from edgeprompt.manifest import IOSpec, TensorSpec

IO = IOSpec.classifier(224, 10)
PRECISION_FLAGS = {"--fp16", "--int8", "--best", "--bf16", "--fp8"}


def test_profile_shapes_vary_only_the_batch() -> None:
    assert profile_shapes(IO, TrtProfile(1, 4, 16)) == \
        {"pixels": ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))}
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        profile_shapes(IO, TrtProfile(2, 1, 8))
    with pytest.raises(ConfigError, match="--min-batch must be a whole number >= 1"):
        profile_shapes(IO, TrtProfile(0, 1, 8))
    dyn = IOSpec(inputs=(TensorSpec("pixels", ("batch", 3, "height", 224)),), outputs=IO.outputs)
    with pytest.raises(ConfigError, match="only 'batch'"):
        profile_shapes(dyn)


def test_trtexec_command_trt10_fp16() -> None:
    cmd = trtexec_command("b/model.onnx", "b/model.engine", IO, TrtProfile(1, 4, 16, workspace_mib=1024), fp16=True,
                          trt_major=10, timing_cache="b/timing.cache")
    assert cmd[0] == "trtexec"
    for arg in ("--onnx=b/model.onnx", "--saveEngine=b/model.engine", "--minShapes=pixels:1x3x224x224",
                "--optShapes=pixels:4x3x224x224", "--maxShapes=pixels:16x3x224x224",
                "--memPoolSize=workspace:1024", "--timingCacheFile=b/timing.cache", "--fp16"):
        assert arg in cmd
    assert "--stronglyTyped" not in cmd


def test_trtexec_command_trt10_fp32_has_no_precision_flags() -> None:
    cmd = trtexec_command("m.onnx", "m.engine", IO, fp16=False, trt_major=10)
    assert not PRECISION_FLAGS & set(cmd) and "--stronglyTyped" not in cmd
    assert not any(a.startswith("--timingCacheFile") for a in cmd)


@pytest.mark.parametrize("fp16", [True, False])
def test_trtexec_command_trt11_is_strongly_typed(fp16: bool) -> None:
    cmd = trtexec_command("m.onnx", "m.engine", IO, TrtProfile(1, 1, 8), fp16=fp16, trt_major=11)
    assert "--stronglyTyped" in cmd and not PRECISION_FLAGS & set(cmd)
    assert "--maxShapes=pixels:8x3x224x224" in cmd


def test_fp16_onnx_is_built_strongly_typed_on_trt10() -> None:
    cmd = trtexec_command("m.onnx", "m.engine", IO, fp16=True, trt_major=10, onnx_fp16=True)
    assert "--stronglyTyped" in cmd and "--fp16" not in cmd


def test_precision_plan() -> None:
    p10 = precision_plan(True, "10.3.0.30")
    assert p10["trt_major"] == 10 and p10["network"] == "weakly-typed" and p10["builder_flags"] == ["FP16"]
    assert p10["onnx_must_be_fp16"] is False
    p11 = precision_plan(True, "11.4.0.106")
    assert p11["network"] == "strongly-typed" and p11["builder_flags"] == [] and p11["onnx_must_be_fp16"] is True
    assert "ONNX" in p11["note"]
    assert precision_plan(False, 11)["onnx_must_be_fp16"] is False
    assert precision_plan(False, 10)["builder_flags"] == [] and precision_plan(False, 10)["requested"] == "fp32"
    assert precision_plan(True, 10, onnx_fp16=True)["network"] == "strongly-typed"
    with pytest.raises(ConfigError):
        precision_plan(True, "ten")


def test_trtexec_script(tmp_path: Path) -> None:
    path = write_trtexec_script(tmp_path, IO, fp16=True, profile=TrtProfile(max_batch=8))
    text = path.read_text()
    assert path.name == "trtexec.sh" and path.stat().st_mode & 0o100
    # the flags of the commands themselves, not words in the script's comments
    commands = " ".join(ln for ln in text.replace("\\\n", " ").splitlines() if not ln.lstrip().startswith("#"))
    assert "--fp16" in commands and "--stronglyTyped" in commands and "/usr/src/tensorrt/bin/trtexec" in commands
    assert "--maxShapes=pixels:8x3x224x224" in text and "--saveEngine=model.engine" in text
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


def test_inspector_summary_counts_precisions() -> None:
    info = {"Layers": [
        {"Name": "a", "Outputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "b", "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "c", "Outputs": [{"Name": "z", "DataType": "Half", "Format": "kLINEAR"}]},
        "a layer described only by name",
    ]}
    s = _summarise_inspector(info, "10.3.0")
    assert s["layers"] == 3 and s["output_formats"] == {"fp16": 2, "fp32": 1} and s["precision"] == "mixed"
    assert _summarise_inspector({"Layers": []}, "11.0")["precision"] == "unknown"


@pytest.mark.skipif(trt_status() is None, reason="TensorRT and a GPU are available here")
def test_build_engine_without_tensorrt_fails_cleanly(tmp_path: Path) -> None:
    onnx_dir, out = tmp_path / "src", tmp_path / "out"
    onnx_dir.mkdir()
    out.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"not needed: the check comes first")
    with pytest.raises((MissingDependencyError, ExportError)) as info:
        build_engine(onnx_dir / "model.onnx", out / "sub" / "model.engine", IO, fp16=True,
                     timing_cache_path=out / "timing.cache")
    msg = str(info.value)
    assert "\n" not in msg and ("TensorRT" in msg or "GPU" in msg)
    assert list(out.iterdir()) == []  # no engine, no timing cache, no sub-directory, no temp file
    assert msg == trt_status()


def test_trt_runtime_without_tensorrt(tmp_path: Path) -> None:
    from edgeprompt.runtime.tensorrt import TrtRuntime, trt_runtime_status

    if trt_runtime_status() is None:
        pytest.skip("TensorRT runtime is available here")
    with pytest.raises(EdgePromptError, match="trt"):
        TrtRuntime(tmp_path / "model.engine", IO)


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(trt_status() is not None, reason=f"needs TensorRT and a GPU: {trt_status()}")
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_matches_onnxruntime(tmp_path: Path, fp16: bool) -> None:
    from edgeprompt.export.tensorrt import inspect_engine
    from edgeprompt.runtime import load_runtime
    from tests.tiny_bundle import CLASSES, SIZE, write_tiny_bundle

    manifest = write_tiny_bundle(tmp_path)
    assert manifest.io is not None
    engine = build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", manifest.io, fp16=fp16,
                          profile=TrtProfile(max_batch=4), timing_cache_path=tmp_path / "timing.cache")
    assert engine.read_bytes()[:4] != b"\x00\x00\x00\x00" and (tmp_path / "timing.cache").is_file()
    info = inspect_engine(engine)
    assert info["layers"] >= 1
    x = np.random.default_rng(0).random((6, 3, SIZE, SIZE), dtype=np.float32)  # 6 > max_batch: chunked
    trt_rt = load_runtime(tmp_path, "trt")
    ref = load_runtime(tmp_path, "ort-cpu").run(x)
    out = trt_rt.run(x)
    assert out["probs"].shape == (6, len(CLASSES)) and trt_rt.max_batch == 4
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=2e-2 if fp16 else 1e-4)
    trt_rt.close()


# --- TrtRuntime's data flow, with TensorRT and cuda-python replaced by host-memory fakes ------------------------


def _fake_trt_and_cudart(w: np.ndarray, size: int, max_batch: int) -> tuple[Any, Any]:
    """Minimal stand-ins: 'device' memory is host memory, so the runtime's copies and bindings are exercised."""
    import ctypes
    import importlib.machinery
    import types

    from edgeprompt.manifest import PreprocessSpec
    from tests.tiny_bundle import reference

    spec = PreprocessSpec(image_size=size)
    keep: dict[int, ctypes.Array] = {}

    def alloc(nbytes: int) -> tuple[int, int]:
        buf = (ctypes.c_byte * nbytes)()
        keep[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def view(addr: int, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * 4
        return np.frombuffer((ctypes.c_byte * n).from_address(addr), np.float32).reshape(shape)

    cudart = types.SimpleNamespace(
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        cudaSetDevice=lambda d: (0,), cudaMalloc=alloc, cudaMallocHost=alloc,
        cudaFree=lambda p: (0,), cudaFreeHost=lambda p: (0,),
        cudaStreamCreate=lambda: (0, "stream"), cudaStreamDestroy=lambda s: (0,),
        cudaStreamSynchronize=lambda s: (0,),
        cudaMemcpyAsync=lambda dst, src, n, kind, s: (ctypes.memmove(dst, src, n) and 0,),
    )
    k = w.shape[1]

    class Context:
        def __init__(self) -> None:
            self.addr: dict[str, int] = {}
            self.batch = 0

        def set_tensor_address(self, name: str, addr: int) -> None:
            self.addr[name] = addr

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
            assert name == "pixels" and shape[0] <= max_batch
            self.batch = shape[0]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.batch, k)

        def execute_async_v3(self, stream: str) -> bool:
            x = view(self.addr["pixels"], (self.batch, 3, size, size))
            logits, probs = reference(x, spec, w)  # what the tiny graph computes
            view(self.addr["logits"], (self.batch, k))[:] = logits
            view(self.addr["probs"], (self.batch, k))[:] = probs
            return True

    class Engine:
        num_io_tensors = 3
        names = ("pixels", "logits", "probs")

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "pixels" else "out"

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(1, 3, size, size), (1, 3, size, size), (max_batch, 3, size, size)]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 3, size, size) if name == "pixels" else (-1, k)

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> Context:
            return Context()

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: Engine()})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32
    return trt, cudart


def test_trt_runtime_data_flow_with_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import edgeprompt.runtime.tensorrt as rt_trt
    from edgeprompt.runtime import load_runtime
    from tests.tiny_bundle import CLASSES, SIZE, weights, write_tiny_bundle

    pytest.importorskip("onnxruntime")
    manifest = write_tiny_bundle(tmp_path)
    assert manifest.io is not None
    (tmp_path / "model.engine").write_bytes(b"plan")
    trt, cudart = _fake_trt_and_cudart(weights(), SIZE, max_batch=4)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(rt_trt, "trt_runtime_status", lambda: None)
    monkeypatch.setattr(rt_trt, "import_cudart", lambda: cudart)

    runtime = load_runtime(tmp_path, "trt")
    assert runtime.name == "trt" and runtime.provider == "TensorRT 10.3.0" and runtime.max_batch == 4
    x = np.random.default_rng(1).random((7, 3, SIZE, SIZE), dtype=np.float32)  # 7 = 4 + 3: two chunks
    out = runtime.run(x)
    ref = load_runtime(tmp_path, "ort-cpu", threads=1).run(x)
    assert out["probs"].shape == (7, len(CLASSES))
    np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-6)
    runtime.close()
    runtime.close()  # idempotent


def test_int8_bundles_build_explicitly_quantized() -> None:
    """A Q/DQ graph: TensorRT 10 gets INT8 + FP16 (the float layers), TensorRT 11 strongly typed, no calibrator."""
    p10, p11 = precision_plan(False, "10.3.0.30", int8=True), precision_plan(True, "11.4.0", int8=True)
    assert p10["network"] == "weakly-typed" and p10["builder_flags"] == ["INT8", "FP16"] and p10["requested"] == "int8"
    assert p11["network"] == "strongly-typed" and p11["builder_flags"] == [] and not p11["onnx_must_be_fp16"]
    cmd10 = trtexec_command("m.onnx", "m.engine", IO, trt_major=10, int8=True)
    assert {"--int8", "--fp16"} <= set(cmd10) and "--stronglyTyped" not in cmd10
    assert not any(a.startswith("--calib") for a in cmd10)  # the scales are in the graph
    cmd11 = trtexec_command("m.onnx", "m.engine", IO, trt_major=11, int8=True)
    assert "--stronglyTyped" in cmd11 and not PRECISION_FLAGS & set(cmd11)


def test_int8_trtexec_script(tmp_path: Path) -> None:
    text = write_trtexec_script(tmp_path, IO, int8=True).read_text()
    assert "--int8 --fp16" in text and "--stronglyTyped" in text and "has no --fp16" not in text
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(tmp_path / "trtexec.sh")], check=False).returncode == 0


def test_inspector_reports_int8_engines() -> None:
    info = {"Layers": [{"Outputs": [{"Format/Datatype": "Channel major INT8 format"}]},
                       {"Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
                       {"Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]}
    s = _summarise_inspector(info, "10.3.0")
    assert s["precision"] == "int8" and s["output_formats"] == {"int8": 1, "fp16": 1, "fp32": 1}
