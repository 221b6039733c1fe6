"""The contracts between stages: ``manifest.json`` for run directories and export bundles.

Torch-free. A run directory (output of ``tune``) and a bundle (output of ``export``) both hold a
``manifest.json`` described by :class:`Manifest`; the bundle adds an :class:`IOSpec` naming the graph's
inputs and outputs once, for the exporter, every runtime backend, the benchmarks and the tests.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprompt.errors import ArtifactError
from edgeprompt.fileio import atomic_write_json
from edgeprompt.version import __version__

SCHEMA_VERSION = 2  # 2: precision is a top-level field (version 1 kept it in extra["export"]; still read)
READABLE_SCHEMAS = (1, 2)
PRECISIONS = ("fp32", "fp16", "int8")  # a bundle graph's numeric format; a run is fp32
INPUT_FORMATS = ("float-nchw", "uint8-nhwc")  # the graph's pixel input: float32 in [0, 1], or the bytes themselves
MANIFEST_NAME = "manifest.json"
ONNX_FILE = "model.onnx"  # bundle files, named once for the exporter, the engine builder and every runtime
ONNX_FP32_FILE = "model.fp32.onnx"  # an INT8 bundle keeps its FP32 graph for reference (bench, re-quantizing)
# --open-classes bundles: the text side as a second graph, its tokenizer's vocabulary, and the class rows the runtime
# multiplies the image features by (outside the image graph, so a class list can change without a new engine)
TEXT_ONNX_FILE = "text.onnx"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLASS_ROWS_FILE = "classes.npy"
ENGINE_FILE = "model.engine"  # a raw TensorRT plan: never prefixed with metadata (the manifest is the sidecar)

# Tensor names, defined once (house rule 5).
INPUT_PIXELS = "pixels"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBS = "probs"
OUTPUT_FEATURES = "features"  # only in --open-classes bundles


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the graph's input. Mirrors open_clip's eval transform.

    Steps: convert to RGB -> resize the shorter side to ``image_size`` (``interpolation``) -> centre crop
    ``image_size`` x ``image_size`` -> float32 in [0, 1], CHW. Normalisation with ``mean``/``std`` happens
    inside the exported graph (``normalize_in_graph``) or, for torch, right after.
    """

    image_size: int = 224
    resize: str = "shortest"  # 'shortest' (keep aspect, then centre crop) or 'squash'
    interpolation: str = "bicubic"  # 'bicubic' | 'bilinear' | 'nearest'
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    normalize_in_graph: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` uses the string 'batch' for the dynamic batch axis."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    doc: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d.get("dtype", "float32"), doc=d.get("doc", ""))


@dataclass(frozen=True)
class IOSpec:
    """Inputs and outputs of an exported classifier graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def classifier(cls, image_size: int, num_classes: int, input_format: str = "float-nchw",
                   features: int | None = None) -> IOSpec:
        """The standard classifier I/O: RGB pixels in [0, 1] (or their bytes, ``uint8-nhwc``) -> logits and
        probabilities, plus the L2-normalised image features (``features``: their width) for ``--open-classes``."""
        pixels = TensorSpec(INPUT_PIXELS, ("batch", 3, image_size, image_size), "float32",
                            "RGB, float32 in [0, 1], NCHW, resized + centre-cropped; normalisation is in the graph")
        if input_format == "uint8-nhwc":
            pixels = TensorSpec(INPUT_PIXELS, ("batch", image_size, image_size, 3), "uint8",
                                "RGB, uint8 0..255, NHWC, resized + centre-cropped; the graph scales, transposes "
                                "and normalises")
        return cls(
            inputs=(pixels,),
            outputs=(
                TensorSpec(OUTPUT_LOGITS, ("batch", num_classes), "float32", "scaled cosine similarities"),
                TensorSpec(OUTPUT_PROBS, ("batch", num_classes), "float32", "softmax of logits"),
                *((TensorSpec(OUTPUT_FEATURES, ("batch", features), "float32",
                              "L2-normalised image features (the runtime applies the bundle's class rows)"),)
                  if features else ()),
            ),
        )

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IOSpec:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
        )


@dataclass(frozen=True)
class BackboneRef:
    """Which frozen CLIP a run used: open_clip model name + pretrained tag or checkpoint, and a weights hash."""

    model: str
    pretrained: str | None
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneRef:
        return cls(**d)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that matter, read from package metadata (imports nothing heavy)."""
    from importlib import metadata

    out = {"edgeprompt": __version__, "python": platform.python_version()}
    for dist in ("torch", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a run directory (``kind='run'``) or an export bundle (``kind='bundle'``)."""

    kind: str  # 'run' | 'bundle'
    method: str
    backbone: BackboneRef
    classnames: tuple[str, ...]
    preprocess: PreprocessSpec
    logit_scale: float
    io: IOSpec | None = None
    precision: str = "fp32"  # one of PRECISIONS: what the bundle's model.onnx computes in
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    extra: dict[str, Any] = field(default_factory=dict)  # method config, export settings, parity numbers …
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "method": self.method,
            "backbone": self.backbone.to_dict(),
            "classnames": list(self.classnames),
            "preprocess": self.preprocess.to_dict(),
            "logit_scale": self.logit_scale,
            "io": self.io.to_dict() if self.io else None,
            "precision": self.precision,
            "files": dict(self.files),
            "extra": self.extra,
            "versions": self.versions,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if not isinstance(d, dict):
            raise TypeError(f"a JSON object was expected, found a {type(d).__name__}")
        version = d.get("schema_version")
        if version not in READABLE_SCHEMAS or isinstance(version, bool):
            raise ArtifactError(
                f"manifest schema version {version!r} is not supported by edgeprompt {__version__} "
                f"(reads {', '.join(map(str, READABLE_SCHEMAS))}): re-create it with this version"
            )
        extra = dict(d.get("extra", {}))
        # version 1 kept the precision in the export settings; it is read from there once, here
        precision = d.get("precision") if version >= 2 else (extra.get("export") or {}).get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ArtifactError(f"manifest precision {precision!r} is not one of {', '.join(PRECISIONS)}: the "
                                f"manifest was edited or damaged; export again")
        return cls(
            kind=d["kind"],
            method=d["method"],
            backbone=BackboneRef.from_dict(d["backbone"]),
            classnames=tuple(d["classnames"]),
            preprocess=PreprocessSpec.from_dict(d["preprocess"]),
            logit_scale=float(d["logit_scale"]),
            io=IOSpec.from_dict(d["io"]) if d.get("io") else None,
            precision=precision,
            files=dict(d.get("files", {})),
            extra=extra,
            versions=dict(d.get("versions", {})),
            created=d.get("created", ""),
            schema_version=SCHEMA_VERSION,  # migrated on read; written back as the current version
        )

    def write(self, directory: str | Path) -> Path:
        """Write ``manifest.json`` into ``directory`` atomically."""
        return atomic_write_json(Path(directory) / MANIFEST_NAME, self.to_dict())

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Manifest:
        """Read ``directory/manifest.json``; a missing or corrupt file raises ArtifactError."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"{directory} has no {MANIFEST_NAME}: pass a run directory (from `edgeprompt tune`) "
                                f"or a bundle (from `edgeprompt export`)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ArtifactError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # bytes, a list, a string for a number
            what = f"missing key {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:120]
            raise ArtifactError(f"{path} is damaged or not an edgeprompt manifest ({type(e).__name__}: {what}): "
                                f"re-create it (`edgeprompt tune` or `edgeprompt export`)") from None


def read_bundle_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Read a bundle's manifest and check it describes an exported graph.

    Raises:
        ArtifactError: No manifest, a run directory instead of a bundle, or no IOSpec.
    """
    manifest = Manifest.read(bundle_dir)
    if manifest.kind != "bundle":
        raise ArtifactError(f"{bundle_dir} is a {manifest.kind!r} directory, not a bundle: export it first with "
                            f"`edgeprompt export {bundle_dir} --out BUNDLE`")
    if manifest.io is None:
        raise ArtifactError(f"{bundle_dir}/manifest.json has no 'io' section: re-export the bundle")
    return manifest
