"""A tiny classifier bundle built with onnx.helper (no torch), and its numpy reference, for runtime tests.

Graph: pixels (batch, 3, S, S) in [0, 1] -> (x - mean) / std -> flatten -> MatMul W (3*S*S, K) -> * scale = logits;
Softmax(logits) = probs. With ``normalize_in_graph=False`` the Sub/Div are left out (the runtime must normalise) and
with ``probs=False`` only logits are exported (the runtime must apply the softmax).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprompt.fileio import sha256_file
from edgeprompt.manifest import (
    INPUT_PIXELS,
    OUTPUT_LOGITS,
    OUTPUT_PROBS,
    BackboneRef,
    IOSpec,
    Manifest,
    PreprocessSpec,
    TensorSpec,
)

SIZE = 8
CLASSES = ("cat", "dog", "bird", "fish", "frog")
SCALE = 7.0


def weights(size: int = SIZE, k: int = len(CLASSES), seed: int = 0) -> np.ndarray:
    """The baked class matrix (3*size*size, k)."""
    return (np.random.default_rng(seed).standard_normal((3 * size * size, k)) * 0.05).astype(np.float32)


def reference(pixels: np.ndarray, spec: PreprocessSpec, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy logits and probs for (N, 3, S, S) pixels in [0, 1]."""
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    x = ((pixels - mean) / std).reshape(len(pixels), -1)
    logits = (x @ w) * np.float32(SCALE)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return logits, z / z.sum(-1, keepdims=True)


def write_tiny_bundle(directory: Path, *, normalize_in_graph: bool = True, probs: bool = True,
                      external_data: bool = False, kind: str = "bundle", io: IOSpec | None = None) -> Manifest:
    """Write manifest.json + model.onnx for the tiny classifier into ``directory``; return the manifest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(image_size=SIZE, normalize_in_graph=normalize_in_graph)
    w = weights()
    k = w.shape[1]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(SCALE, np.float32), "scale")]
    nodes = []
    x = INPUT_PIXELS
    if normalize_in_graph:
        inits += [numpy_helper.from_array(np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1), "mean"),
                  numpy_helper.from_array(np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1), "std")]
        nodes += [helper.make_node("Sub", [x, "mean"], ["centred"]),
                  helper.make_node("Div", ["centred", "std"], ["normed"])]
        x = "normed"
    nodes += [helper.make_node("Flatten", [x], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], ["raw"]),
              helper.make_node("Mul", ["raw", "scale"], [OUTPUT_LOGITS])]
    outputs = [helper.make_tensor_value_info(OUTPUT_LOGITS, TensorProto.FLOAT, ["batch", k])]
    if probs:
        nodes.append(helper.make_node("Softmax", [OUTPUT_LOGITS], [OUTPUT_PROBS], axis=-1))
        outputs.append(helper.make_tensor_value_info(OUTPUT_PROBS, TensorProto.FLOAT, ["batch", k]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(INPUT_PIXELS, TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime / TensorRT parsers
    onnx.checker.check_model(model)
    path = directory / "model.onnx"
    if external_data:
        onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    else:
        onnx.save_model(model, path)

    if io is None:
        io = IOSpec.classifier(SIZE, k)
        if not probs:
            io = IOSpec(inputs=io.inputs, outputs=(TensorSpec(OUTPUT_LOGITS, ("batch", k)),))
    manifest = Manifest(kind=kind, method="zeroshot", backbone=BackboneRef("tiny-test", None), classnames=CLASSES,
                        preprocess=spec, logit_scale=SCALE, io=io, files={"model.onnx": sha256_file(path)})
    manifest.write(directory)
    return manifest
