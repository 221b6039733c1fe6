"""Predictor: images -> preprocessing -> any Runtime, in batches -> top-k class predictions.

Torch-free. The predictor owns the parts every backend shares: the bundle's preprocessing spec, batching, the
optional out-of-graph normalisation, and turning probabilities into named predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.manifest import OUTPUT_FEATURES, OUTPUT_LOGITS, OUTPUT_PROBS, Manifest
from edgeprompt.preprocess import ImageLike, normalize, preprocess_batch
from edgeprompt.runtime.base import Runtime, class_logits, softmax

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes.

    Attributes:
        label: Class name from the manifest.
        index: Class index (column of the graph's output).
        probability: Softmax probability in [0, 1].
        logit: The graph's logit for this class.
    """

    label: str
    index: int
    probability: float
    logit: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """Classify images with a bundle's graph on any runtime backend.

    Args:
        manifest: The bundle manifest (class names, preprocessing spec, IOSpec).
        runtime: A loaded backend (see :func:`edgeprompt.runtime.load_bundle`).
        batch_size: Images preprocessed and run together; bounded by the runtime's ``max_batch``.
        class_rows: (C, E) rows applied to the graph's ``features`` output instead of its own logits (an
            ``--open-classes`` bundle; see :func:`edgeprompt.runtime.classes.load_class_rows`).
    """

    def __init__(self, manifest: Manifest, runtime: Runtime, batch_size: int = 32,
                 class_rows: np.ndarray | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if class_rows is not None:
            if OUTPUT_FEATURES not in runtime.io.output_names:
                raise ArtifactError("the bundle carries class rows but its graph has no features output: re-export "
                                    "it with --open-classes")
        else:
            out_dims = {t.shape[-1] for t in runtime.io.outputs if t.name in (OUTPUT_LOGITS, OUTPUT_PROBS)}
            if out_dims != {manifest.num_classes}:
                raise ArtifactError(f"the graph outputs {sorted(out_dims, key=str)} classes but the manifest lists "
                                    f"{manifest.num_classes}: the bundle is inconsistent, re-export it")
        self.manifest = manifest
        self.runtime = runtime
        self.class_rows = class_rows
        self.batch_size = min(batch_size, runtime.max_batch) if runtime.max_batch else batch_size

    @property
    def classnames(self) -> tuple[str, ...]:
        return self.manifest.classnames

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run already-preprocessed pixels (N, 3, H, W) in [0, 1] through the graph.

        Applies the spec's normalisation first when the graph does not do it itself, and always returns
        both ``logits`` and ``probs`` (computing the softmax when the graph exports logits only).
        """
        spec = self.manifest.preprocess
        x = pixels if spec.normalize_in_graph else normalize(pixels, spec)
        parts = [self.runtime.run(x[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if self.class_rows is not None:  # the class list lives outside the graph (it may have changed since export)
            out[OUTPUT_LOGITS] = class_logits(out, self.class_rows)
            out[OUTPUT_PROBS] = softmax(out[OUTPUT_LOGITS])
        if OUTPUT_PROBS not in out:
            out[OUTPUT_PROBS] = softmax(out[OUTPUT_LOGITS])
        return out

    def iter_outputs(self, images: Sequence[ImageLike], channels: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Preprocess and run ``images`` one batch at a time (memory stays bounded by the batch size)."""
        for i in range(0, len(images), self.batch_size):
            yield self.run(preprocess_batch(images[i:i + self.batch_size], self.manifest.preprocess, channels))

    def probabilities(self, images: Sequence[ImageLike], channels: str | None = None) -> np.ndarray:
        """Class probabilities for each image.

        Args:
            images: File paths, PIL images, or numpy frames (H, W, 3) uint8.
            channels: The numpy frames' channel order, 'rgb' or 'bgr' (OpenCV's); needed only for frames.

        Returns:
            float32 (N, num_classes).

        Raises:
            DataError: An image cannot be read (the message names the file).
        """
        if not images:
            return np.zeros((0, self.manifest.num_classes), dtype=np.float32)
        return np.concatenate([o[OUTPUT_PROBS] for o in self.iter_outputs(images, channels)])

    def predict(self, images: Sequence[ImageLike], top_k: int = 5, channels: str | None = None
                ) -> list[list[Prediction]]:
        """Top-k predictions for each image, most probable first.

        Args:
            images: File paths, PIL images, or numpy frames (H, W, 3) uint8.
            top_k: How many classes to return per image (capped at the number of classes).
            channels: The numpy frames' channel order, 'rgb' or 'bgr' (OpenCV's); needed only for frames.

        Returns:
            One list of :class:`Prediction` per image, in input order.

        Raises:
            DataError: An image cannot be read (the message names the file).
        """
        if top_k < 1:
            raise ConfigError(f"top-k must be >= 1, got {top_k}")
        k = min(top_k, self.manifest.num_classes)
        results: list[list[Prediction]] = []
        for out in self.iter_outputs(images, channels):
            probs = out[OUTPUT_PROBS]
            logits = out[OUTPUT_LOGITS] if OUTPUT_LOGITS in out else np.log(np.maximum(probs, 1e-30))
            for p, z in zip(probs, logits, strict=True):
                order = np.argsort(-p, kind="stable")[:k]  # ties keep class order
                results.append([Prediction(self.classnames[j], int(j), float(p[j]), float(z[j])) for j in order])
        return results

    def close(self) -> None:
        """Release the runtime."""
        self.runtime.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
