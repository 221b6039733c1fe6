"""``edgeprompt export BUNDLE --triton REPO``: a bundle becomes one model of a Triton Inference Server repository.

Torch-free, and it needs nothing beyond the base install: it runs where the bundle is deployed (and where a
TensorRT engine was built, which must be the GPU and TensorRT version of the Triton server that loads it).

```
REPO/<name>/
  config.pbtxt     platform, max_batch_size, dynamic batching, inputs and outputs from the bundle's IOSpec
  labels.txt       the class names, one per line in class-index order (``label_filename`` of the probs output)
  1/model.onnx     onnxruntime_onnx (+ model.onnx.data when the bundle has it), or
  1/model.plan     tensorrt_plan: the bundle's model.engine
```

``config.pbtxt`` is written as protobuf text by :func:`config_text` (the same bytes with or without tritonclient) and,
where tritonclient is installed, parsed back with Triton's own schema before anything is written. Why each field is
what it is: docs/scale-out.md.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeprompt.config import TritonConfig, TrtProfile
from edgeprompt.errors import ArtifactError, ConfigError, ExportError
from edgeprompt.fileio import atomic_dir, check_not_inside, guard_output, output_lock, sha256_file
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, OUTPUT_PROBS, Manifest, TensorSpec, read_bundle_manifest
from edgeprompt.version import __version__

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
VERSION_DIR = "1"  # Triton serves the highest numeric version folder; a bundle is one version
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "trt": ("tensorrt_plan", "model.plan")}  # + default files
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
              "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
              "bool": "TYPE_BOOL"}  # IOSpec dtype -> Triton DataType
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a folder name and a URL path segment


class Enum(str):
    """A protobuf enum value (``TYPE_FP32``): written bare, not quoted, in text format."""


def model_name(cfg: TritonConfig, bundle: Path) -> str:
    """The model's name (and folder): ``cfg.name`` or the bundle folder's name, checked."""
    name = cfg.name or bundle.resolve().name
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"{name!r} cannot be a Triton model name (letters, digits, '_', '-', '.'; it is a folder "
                          f"and part of the URL): pass --triton-name NAME")
    return name


def model_dir(cfg: TritonConfig, bundle: Path, overwrite: bool, inputs: Mapping[str, str | Path | None]) -> Path:
    """``REPO/<name>``, after the checks that need no bundle contents (so they can run before an export).

    Raises:
        ConfigError: A bad name, a repository that is, holds or lies inside an input, or an existing model of that
            name without ``overwrite``.
    """
    cfg.validate()
    final = Path(cfg.repo) / model_name(cfg, bundle)
    check_not_inside(cfg.repo, dict(inputs), "--triton")
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise ConfigError(f"{final} already exists in the Triton repository: pass --overwrite to replace that model, "
                          f"or --triton-name to add another")
    return guard_output(final, "Triton model", dict(inputs), overwrite=overwrite, flag="--triton")


def resolve_platform(cfg: TritonConfig, bundle: Path) -> str:
    """'onnx' or 'trt': ``auto`` serves the engine when the bundle has one."""
    has_engine = (bundle / ENGINE_FILE).is_file()
    if cfg.platform == "auto":
        return "trt" if has_engine else "onnx"
    if cfg.platform == "trt" and not has_engine:
        raise ConfigError(f"{bundle} has no {ENGINE_FILE}: build it on the Triton server's GPU with `edgeprompt "
                          f"export {bundle} --trt` first, or serve the ONNX graph (--triton-platform onnx)")
    return cfg.platform


def resolve_max_batch(manifest: Manifest, platform: str, requested: int | None) -> tuple[int, str]:
    """Triton's ``max_batch_size`` and where it came from.

    A TensorRT plan cannot run a batch above its optimisation profile, so the engine's profile caps it; the ONNX graph
    has a free batch axis, so the export profile is only the default there.
    """
    extra = manifest.extra
    if platform == "trt":
        limit = ((extra.get("engine") or {}).get("profile") or {}).get("max_batch")
        if not isinstance(limit, int):
            raise ArtifactError("the bundle's manifest records no engine profile: rebuild the engine with "
                                "`edgeprompt export BUNDLE --trt`")
        if requested is not None and requested > limit:
            raise ConfigError(f"--max-batch {requested} is above the engine's profile ({limit}): rebuild the engine "
                              f"with `edgeprompt export BUNDLE --trt --max-batch {requested}`, or ask for less")
        return (requested, "--max-batch") if requested is not None else (limit, "engine profile")
    if requested is not None:
        return requested, "--max-batch"
    profile = (extra.get("export") or {}).get("profile") or {}
    if isinstance(profile.get("max_batch"), int):
        return profile["max_batch"], "bundle profile"
    return TrtProfile().max_batch, "default (the bundle records no profile)"


def _tensor(t: TensorSpec, batched: bool) -> dict[str, Any]:
    """One ``input`` / ``output`` entry; ``dims`` leave out the batch axis when Triton batches (max_batch_size > 0)."""
    if t.dtype not in DATA_TYPES:
        raise ArtifactError(f"tensor {t.name} has dtype {t.dtype!r}, which has no Triton data type: re-export it")
    shape = t.shape[1:] if batched else t.shape
    if any(d == "batch" for d in shape):
        raise ArtifactError(f"tensor {t.name} has a 'batch' axis that is not its first ({t.shape}): re-export it")
    return {"name": t.name, "data_type": Enum(DATA_TYPES[t.dtype]), "dims": [-1 if isinstance(d, str) else int(d)
                                                                           for d in shape]}


def model_config(manifest: Manifest, name: str, platform: str, max_batch: int, queue_delay_us: int = 100
                 ) -> dict[str, Any]:
    """The ``ModelConfig`` message as a dict (protobuf field names; :class:`Enum` for enum values).

    Args:
        manifest: A bundle manifest (its IOSpec and class names).
        name: Model name (= its folder in the repository).
        platform: 'onnx' or 'trt'.
        max_batch: ``max_batch_size``; tensors whose first axis is not 'batch' make the model unbatched (0).
        queue_delay_us: Dynamic batching's ``max_queue_delay_microseconds``.
    """
    io = manifest.io
    if io is None:
        raise ArtifactError("the bundle manifest has no 'io' section: re-export the bundle")
    tensors = [*io.inputs, *io.outputs]
    batched = all(t.shape[:1] == ("batch",) for t in tensors)
    labelled = OUTPUT_PROBS if OUTPUT_PROBS in io.output_names else io.output_names[0]
    outputs = []
    for t in io.outputs:
        entry = _tensor(t, batched)
        if t.name == labelled:  # the classification extension returns "score:index:label" from this output
            entry["label_filename"] = LABELS_FILE
        outputs.append(entry)
    config: dict[str, Any] = {"name": name, "platform": PLATFORMS[platform][0],
                              "max_batch_size": max_batch if batched else 0,
                              "input": [_tensor(t, batched) for t in io.inputs], "output": outputs}
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": queue_delay_us}
    return config


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # text-format strings take C escapes; JSON's \uXXXX is not one of them, so non-ASCII stays as UTF-8
    return json.dumps(str(value), ensure_ascii=False)


def config_text(message: Mapping[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a message dict: nested dicts are messages, lists repeated fields."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", *filter(None, [config_text(value, indent + 1)]), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", *filter(None, [config_text(item, indent + 2)]), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines)


def triton_schema() -> ModuleType | None:
    """tritonclient's ``model_config_pb2`` (Triton's ModelConfig schema), or None where it is not installed."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient without its grpc extra raises RuntimeError
        return None
    return model_config_pb2


def check_config_text(text: str) -> bool:
    """Parse ``text`` with Triton's schema when tritonclient is installed; returns whether it was checked."""
    schema = triton_schema()
    if schema is None:
        return False
    from google.protobuf import text_format

    try:
        text_format.Parse(text, schema.ModelConfig())
    except text_format.ParseError as e:
        raise ExportError(f"the generated {CONFIG_FILE} does not parse with Triton's schema ({e}): please report "
                          f"this edgeprompt bug") from None
    return True


def _model_files(manifest: Manifest, bundle: Path, platform: str) -> dict[str, str]:
    """Bundle file -> its name in the version folder, each present and matching the manifest's sha256."""
    if platform == "trt":
        files = {ENGINE_FILE: PLATFORMS["trt"][1]}
    else:
        external = (manifest.extra.get("export") or {}).get("external_data") or []
        files = {ONNX_FILE: PLATFORMS["onnx"][1], **{f: f for f in external}}  # found beside model.onnx by name
    for src in files:
        path = bundle / src
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: copy the whole bundle again, or re-export it")
        digest = manifest.files.get(src)
        if digest is not None and sha256_file(path) != digest:
            raise ArtifactError(f"{path} does not match the sha256 in manifest.json: copy the bundle again")
    return files


def write_repository(bundle_dir: str | Path, cfg: TritonConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``cfg.repo/<name>/`` for Triton from an exported bundle (atomically; other models are left alone).

    Args:
        bundle_dir: A bundle (from ``edgeprompt export RUN``; with ``model.engine`` if built with ``--trt``).
        cfg: Repository, name, platform, max batch, queue delay (:class:`edgeprompt.config.TritonConfig`).
        overwrite: Replace an existing model of the same name (only once the new one is complete).

    Returns:
        A summary: repository, model, path, platform, max_batch_size and its source, precision, files, config text.

    Raises:
        ConfigError: Bad options, the repository overlaps the bundle, or the model exists without ``overwrite``.
        ArtifactError: Not a bundle, a missing or altered model file, or class names a labels file cannot hold.
    """
    bundle = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle)
    if "classes_changed" in manifest.extra:
        raise ConfigError("Triton reads the graph's own logits, which still have the classes of the export; this "
                          "bundle's class list was changed since (edgeprompt classes): use the bundle it came from")
    final = model_dir(cfg, bundle, overwrite, {"the bundle": bundle})
    platform = resolve_platform(cfg, bundle)
    files = _model_files(manifest, bundle, platform)
    bad = [c for c in manifest.classnames if not c.strip() or "\n" in c or "\r" in c]
    if bad:
        raise ArtifactError(f"class name {bad[0]!r} cannot be one line of {LABELS_FILE}: rename the class")
    max_batch, source = resolve_max_batch(manifest, platform, cfg.max_batch)
    config = model_config(manifest, final.name, platform, max_batch, cfg.queue_delay_us)
    precision = manifest.precision
    engine = manifest.extra.get("engine") or {}
    built = f", TensorRT {engine.get('trt_version')} engine: serve it with that version" if platform == "trt" else ""
    text = (f"# Triton model written by edgeprompt {__version__} from the bundle {bundle.resolve().name} "
            f"({manifest.method}, {precision} graph{built}).\n"
            f"# max_batch_size {max_batch}: {source}. See docs/scale-out.md before editing.\n{config_text(config)}\n")
    schema_checked = check_config_text(text)
    with output_lock(final), atomic_dir(final, overwrite=overwrite) as tmp:
        (tmp / VERSION_DIR).mkdir()
        for src, dst in files.items():
            shutil.copyfile(bundle / src, tmp / VERSION_DIR / dst)
        # plain writes inside the temp folder (the folder's rename is the atomic step); atomic_dir gives the folder
        # the umask's mode, so a server running as another user (as in containers) can read the model
        (tmp / LABELS_FILE).write_text("".join(f"{c}\n" for c in manifest.classnames), encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
    return {"repo": str(cfg.repo), "model": final.name, "path": str(final), "platform": config["platform"],
            "max_batch_size": config["max_batch_size"], "max_batch_from": source, "precision": precision,
            "files": sorted([CONFIG_FILE, LABELS_FILE, *(f"{VERSION_DIR}/{d}" for d in files.values())]),
            "schema_checked": schema_checked, "config": text}
