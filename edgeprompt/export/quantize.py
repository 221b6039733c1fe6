"""FP32 graph -> calibrated INT8 Q/DQ graph, with the quantizer choice behind one function (docs/int8.md).

:func:`quantize_int8` is the entry point. Both quantizers get the same preparation and the same calibration:

1. ``onnxslim`` folds the exporter's shape arithmetic (without it onnxruntime cannot fuse the attention input
   projection into an integer MatMul, because its input also feeds ``Shape`` nodes);
2. onnxruntime's own calibrators (``minmax`` / ``percentile`` / ``entropy``, symmetric) measure the activation
   ranges, fed in chunks so memory stays bounded whatever the number of images;
3. the quantizer places Q/DQ nodes with those ranges: NVIDIA ModelOpt (``modelopt``, the default: TensorRT's
   fusion-aware placement, ranges passed in as a calibration cache) or onnxruntime's ``quantize_static``
   (``ort``: Q/DQ on the inputs of Conv/MatMul/Gemm). Either way activations and weights are symmetric INT8
   (zero point 0), weights per output channel, biases stay float: what TensorRT's explicit quantization accepts.

Node groups named in ``keep_float`` stay float (see :func:`float_nodes`). The work runs in a child process
(``python -m edgeprompt.export.quantize``): ModelOpt patches onnxruntime's calibrators process-wide and prints to
stdout, which ``--json`` output owns; a child keeps both away from the exporter.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeprompt.config import INT8_FLOAT_GROUPS, Int8Config
from edgeprompt.errors import ExportError, MissingDependencyError

log = logging.getLogger(__name__)

QUANT_OPS = ("Conv", "MatMul", "Gemm")  # the compute ops that get INT8 inputs
CALIB_OPS = (*QUANT_OPS, "Add")  # ranges are measured around these (ModelOpt may also quantize residual adds)
PERCENTILE = 99.999  # of |x| per tensor, for --calib-method percentile
NEEDS = {"modelopt": ("onnxslim", "onnx_graphsurgeon", "modelopt"), "ort": ("onnxslim",)}
_TIMEOUT_S = 3 * 3600


def require_quantizer(name: str) -> None:
    """Raise one line naming the pip extra when the packages of quantizer ``name`` are missing (imports nothing)."""
    from edgeprompt._optional import available, install_hint

    missing = [m for m in NEEDS[name] if not available(m)]
    if missing:
        raise MissingDependencyError(f"--int8-quantizer {name} needs {', '.join(missing)}: {install_hint('int8')}")


# --- which nodes stay float ------------------------------------------------------------------------------------


def _constants(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                         for o in n.output}


def float_nodes(model: onnx.ModelProto, groups: Iterable[str]) -> dict[str, list[str]]:
    """Node names per keep-float group, found from the graph's structure (names differ between exporters).

    - ``head``: the MatMul/Gemm after the encoder's last LayerNormalization (output projection, class matrix);
    - ``attention``: MatMuls of two activations (Q·Kᵀ and softmax·V);
    - ``residual``: Adds of two activations (residual joins; their output is also the next LayerNorm's input);
    - ``patch``: the Convs (the patch embedding of a ViT, every conv of a ResNet).
    """
    consts = _constants(model)
    nodes = list(model.graph.node)
    last_ln = max((i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"), default=-1)
    found: dict[str, list[str]] = {}
    for g in groups:
        if g not in INT8_FLOAT_GROUPS:
            raise ExportError(f"unknown keep-float group {g!r}: choose from {', '.join(INT8_FLOAT_GROUPS)}")
        if g == "head":
            sel = [n for n in nodes[last_ln + 1:] if n.op_type in ("MatMul", "Gemm")]
        elif g == "attention":
            sel = [n for n in nodes if n.op_type == "MatMul" and not set(n.input[:2]) & consts]
        elif g == "residual":
            sel = [n for n in nodes if n.op_type == "Add" and not set(n.input[:2]) & consts]
        else:
            sel = [n for n in nodes if n.op_type == "Conv"]
        found[g] = [n.name for n in sel]
    return found


# --- calibration ---------------------------------------------------------------------------------------------------


class _Chunks:
    """An onnxruntime CalibrationDataReader over (N, 3, S, S) pixels, ``chunk`` images per call."""

    def __init__(self, name: str, pixels: np.ndarray, chunk: int) -> None:
        self.name, self.pixels, self.chunk, self.i = name, pixels, chunk, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.pixels):
            return None
        batch = self.pixels[self.i:self.i + self.chunk]
        self.i += self.chunk
        return {self.name: batch}

    def rewind(self) -> None:
        self.i = 0


def activation_ranges(model_path: Path, pixels: np.ndarray, method: str, work: Path, chunk: int = 8) -> Any:
    """Symmetric activation ranges (onnxruntime ``TensorsData``) of the tensors around :data:`CALIB_OPS`.

    Data goes in ``chunk`` images at a time and each chunk is folded into the calibrator's running min/max or
    histograms, so memory does not grow with the number of images.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    kind = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]
    # onnxruntime's own bin counts: 2048 for percentile; entropy searches thresholds over 128 (more is quadratic)
    options = {"symmetric": True, **({"percentile": PERCENTILE, "num_bins": 2048} if method == "percentile" else {})}
    calibrator = create_calibrator(model_path, list(CALIB_OPS), augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=kind, extra_options=options)
    name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    for i in range(0, len(pixels), chunk):
        calibrator.collect_data(_Chunks(name, pixels[i:i + chunk], chunk))
    return calibrator.compute_data()


def _amax(rng: Any) -> float:
    return float(max(np.abs(np.asarray(v, dtype=np.float64)).max() for v in rng.range_value))


def _trt_cache(ranges: Any, path: Path) -> Path:
    """Ranges as a TensorRT calibration cache (``name: big-endian float32 scale`` in hex), ModelOpt's input."""
    lines = ["TRT-8600-EntropyCalibration2"]  # header line; ModelOpt skips it
    for name, rng in ranges.items():
        amax = _amax(rng)
        if np.isfinite(amax) and amax > 0:
            lines.append(f"{name}: {struct.pack('!f', amax / 127.0).hex()}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the two quantizers --------------------------------------------------------------------------------------------


def _anchored(names: Sequence[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]  # ModelOpt reads exclusions as regular expressions (re.match)


def _with_modelopt(slim: Path, out: Path, pixels: np.ndarray, ranges: Any, exclude: list[str], work: Path) -> None:
    from modelopt.onnx.quantization import quantize

    name = onnx.load(str(slim), load_external_data=False).graph.input[0].name
    quantize(str(slim), quantize_mode="int8", calibration_data={name: pixels[:1]}, calibration_method="max",
             calibration_cache_path=str(_trt_cache(ranges, work / "calib.cache")), calibration_eps=["cpu"],
             high_precision_dtype="fp32",  # float layers stay FP32 in the graph: onnxruntime CPU runs FP16 slowly
             nodes_to_exclude=_anchored(exclude) or None, dq_only=True, simplify=False, output_path=str(out),
             log_level="ERROR")


def _with_ort(slim: Path, out: Path, ranges: Any, exclude: list[str], work: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = work / "ranges.json"
    save_tensors_data(ranges, cache)
    quantize_static(str(slim), str(out), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS),
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, calibrate_method=ranges.calibration_method,
                    calibration_cache_path=str(cache),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False,  # TensorRT rejects INT32 DequantizeLinear (bias)
                                   "OpTypesToExcludeOutputQuantization": list(QUANT_OPS)})


def quantize_here(fp32: Path, out: Path, pixels: np.ndarray, cfg: Int8Config) -> dict[str, Any]:
    """Quantize in this process (the child's job; see :func:`quantize_int8`)."""
    import onnxslim

    with tempfile.TemporaryDirectory(prefix="edgeprompt-int8-") as tmp:
        work = Path(tmp)
        model = onnx.load(str(fp32))
        slim_model = onnxslim.slim(model)
        slim = work / "slim.onnx"
        onnx.save(slim_model, str(slim))
        groups = float_nodes(slim_model, cfg.keep_float)
        exclude = sorted({n for names in groups.values() for n in names})
        ranges = activation_ranges(slim, pixels, cfg.calib_method, work)  # before ModelOpt patches onnxruntime
        raw = work / "int8.onnx"
        if cfg.quantizer == "modelopt":
            _with_modelopt(slim, raw, pixels, ranges, exclude, work)
        else:
            _with_ort(slim, raw, ranges, exclude, work)
        q = onnx.load(str(raw))
    del q.metadata_props[:]
    for p in model.metadata_props:  # the manifest's key fields, as in the FP32 graph
        q.metadata_props.add().CopyFrom(p)
    for p in q.metadata_props:
        if p.key == "edgeprompt.precision":
            p.value = "int8"
    q.producer_name, q.producer_version = model.producer_name, model.producer_version
    onnx.save(q, str(out))
    onnx.checker.check_model(str(out))
    return {"keep_float": {g: len(v) for g, v in groups.items()}, **qdq_summary(out)}


def quantize_int8(fp32: str | os.PathLike[str], out: str | os.PathLike[str], pixels: np.ndarray, cfg: Int8Config,
                  ) -> dict[str, Any]:
    """Write the INT8 Q/DQ version of ``fp32`` to ``out``, calibrated on ``pixels`` (N, 3, S, S) in [0, 1].

    Args:
        fp32: The bundle's FP32 graph.
        out: Where the Q/DQ graph goes (metadata copied, ``edgeprompt.precision`` = int8).
        pixels: Calibration images, preprocessed for deployment.
        cfg: Quantizer, calibrator and keep-float groups.

    Returns:
        What was quantized: see :func:`qdq_summary`, plus ``keep_float`` (nodes per group).

    Raises:
        MissingDependencyError: The quantizer's packages are not installed.
        ExportError: Quantization failed (the child's last line says why).
    """
    require_quantizer(cfg.quantizer)
    with tempfile.TemporaryDirectory(prefix="edgeprompt-int8-") as tmp:
        np.save(Path(tmp) / "pixels.npy", np.ascontiguousarray(pixels, dtype=np.float32))
        (Path(tmp) / "cfg.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        cmd = [sys.executable, "-m", "edgeprompt.export.quantize", str(fp32), str(out), str(Path(tmp) / "pixels.npy"),
               str(Path(tmp) / "cfg.json"), str(Path(tmp) / "info.json")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise ExportError(f"INT8 quantization took over {_TIMEOUT_S} s: use fewer --calib-n images") from e
        log.debug("quantizer child output:\n%s%s", proc.stdout[-4000:], proc.stderr[-4000:])
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise ExportError(f"INT8 quantization ({cfg.quantizer}) failed: {why}")
        info: dict[str, Any] = json.loads((Path(tmp) / "info.json").read_text())
    return info


# --- what a Q/DQ graph holds ---------------------------------------------------------------------------------------


def qdq_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts that describe a Q/DQ graph: Q/DQ nodes, compute ops with INT8 inputs vs float, opset, weight dtypes."""
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    quantized: dict[str, int] = {}
    floating: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in QUANT_OPS:
            continue
        fed = [producers.get(i) for i in n.input[:2]]
        bucket = quantized if all(p is not None and p.op_type == "DequantizeLinear" for p in fed) else floating
        bucket[n.op_type] = bucket.get(n.op_type, 0) + 1
    int8_weights = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                       and inits[n.input[0]].data_type == onnx.TensorProto.INT8)
    ops = [n.op_type for n in model.graph.node]
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
        "int8_weights": int8_weights, "quantized_ops": quantized, "float_ops": floating,
    }


def weight_scales(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Weight DequantizeLinear name -> (axis, number of scales), for checks of per-channel placement."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            out[n.name] = (int(axis), int(numpy_helper.to_array(inits[n.input[1]]).size))
    return out


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: ``FP32.onnx OUT.onnx PIXELS.npy CFG.json INFO.json``."""
    p = argparse.ArgumentParser(prog="python -m edgeprompt.export.quantize")
    for name in ("fp32", "out", "pixels", "cfg", "info"):
        p.add_argument(name)
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)  # onnxruntime and ModelOpt log every tensor; the parent reports the outcome
    try:
        cfg = Int8Config(**json.loads(Path(a.cfg).read_text()))
        with contextlib.redirect_stdout(io.StringIO()):
            info = quantize_here(Path(a.fp32), Path(a.out), np.load(a.pixels), cfg)
    except Exception as e:  # onnxruntime, ModelOpt and onnx raise many types; report one line to the parent
        msg = str(e).strip().splitlines()
        print(f"{type(e).__name__}: {msg[0][:300] if msg else ''}", file=sys.stderr)
        return 1
    Path(a.info).write_text(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
