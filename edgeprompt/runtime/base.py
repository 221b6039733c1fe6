"""The runtime protocol: what every backend (onnxruntime, TensorRT) offers to the predictor and the benchmarks.

Torch-free. A runtime takes a batch of preprocessed pixels and returns the graph's named outputs as numpy arrays,
already on the host: ``run`` blocks until the device is done, so wall-clock timing around it is honest.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from edgeprompt.errors import DataError
from edgeprompt.manifest import OUTPUT_FEATURES, OUTPUT_LOGITS, IOSpec

# File names inside a bundle (the exporter writes the same names).

# Backend names, best first; 'auto' picks among them (see edgeprompt.runtime.resolve_backend).
BACKENDS = ("trt", "ort-trt", "ort-cuda", "ort-cpu")


@runtime_checkable
class Runtime(Protocol):
    """A loaded graph that maps pixels to named outputs.

    Attributes:
        name: The backend name ('ort-cpu', 'ort-cuda', 'ort-trt' or 'trt').
        provider: What actually runs the graph, e.g. 'CPUExecutionProvider' or 'TensorRT 10.3.0'. For
            onnxruntime this is read back from the session, so a silent CPU fallback shows here.
        io: The graph's inputs and outputs.
        max_batch: The largest batch one call to the device can take (a TensorRT profile), or None if unbounded.
            ``run`` splits larger batches itself.
    """

    name: str
    provider: str
    io: IOSpec
    max_batch: int | None

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on (N, 3, H, W) float32 pixels; return each output by name, as float32 on the host."""
        ...

    def close(self) -> None:
        """Release device memory and sessions. Safe to call twice."""
        ...


def input_shape(io: IOSpec) -> tuple[int, int, int]:
    """The (C, H, W) of the pixels :meth:`Runtime.run` takes (float NCHW, whatever the graph's own input layout)."""
    dims = io.inputs[0].shape[1:]
    if not all(isinstance(d, int) for d in dims):
        raise DataError(f"input {io.inputs[0].name} has non-batch dynamic axes {dims}: only the batch may be dynamic")
    a, b, c = (int(d) for d in dims)
    return (c, a, b) if is_uint8_nhwc(io) else (a, b, c)


def is_uint8_nhwc(io: IOSpec) -> bool:
    """Whether the graph takes (N, H, W, 3) uint8 pixels (``--input-format uint8-nhwc``: a quarter of the bytes)."""
    return io.inputs[0].dtype == "uint8"


def input_bytes_per_image(io: IOSpec) -> int:
    """Bytes of one image as the graph takes it (what crosses from host to device)."""
    c, h, w = input_shape(io)
    return (1 if is_uint8_nhwc(io) else 4) * c * h * w


def check_pixels(pixels: np.ndarray, io: IOSpec) -> np.ndarray:
    """Validate a pixel batch against the IOSpec and return it in the graph's own input layout.

    Args:
        pixels: (N, C, H, W) array in [0, 1] (or normalised, for graphs without in-graph normalisation); for a
            uint8 NHWC graph also (N, H, W, C) uint8 as it is.
        io: The runtime's IOSpec.

    Returns:
        The same data, C-contiguous: float32 NCHW, or uint8 NHWC for a graph that takes bytes.

    Raises:
        DataError: Wrong rank, channel count or spatial size, or an empty batch.
    """
    want = input_shape(io)
    if is_uint8_nhwc(io) and pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[0] \
            and tuple(pixels.shape[1:]) == (want[1], want[2], want[0]):
        return np.ascontiguousarray(pixels)  # already the graph's own layout
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want or pixels.shape[0] == 0:
        raise DataError(f"pixels must have shape (N>=1, {', '.join(map(str, want))}), got {tuple(pixels.shape)}: "
                        f"preprocess images with edgeprompt.preprocess and the bundle's spec")
    if is_uint8_nhwc(io):  # preprocessed pixels are bytes / 255: rounding gives back exactly those bytes
        return np.ascontiguousarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(pixels, dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (numerically stable), for graphs that export logits only."""
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def class_logits(outputs: dict[str, np.ndarray], rows: np.ndarray | None) -> np.ndarray:
    """The logits a bundle stands for: the graph's own, or, for an ``--open-classes`` bundle, its image features
    times the class rows it carries as data ((N, E) @ (E, C); the rows are normalised and scaled)."""
    if rows is None:
        return outputs[OUTPUT_LOGITS]
    return outputs[OUTPUT_FEATURES] @ rows.T
