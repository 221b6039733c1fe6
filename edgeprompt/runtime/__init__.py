"""The deployment runtime: load a bundle and classify images with onnxruntime or TensorRT, without torch.

Backends:

- ``ort-cpu``: onnxruntime, CPU provider.
- ``ort-cuda``: onnxruntime-gpu, CUDA provider (CPU fallback for unsupported nodes).
- ``ort-trt``: onnxruntime-gpu, TensorRT provider; it builds its engine on the first run (minutes on a Jetson).
- ``trt``: a prebuilt ``model.engine`` through the TensorRT Python API and cuda-python.
- ``auto``: ``trt`` when the bundle has an engine and TensorRT works here, else ``ort-cuda``, else ``ort-cpu``.
  It never picks ``ort-trt`` because of that silent first-run build.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeprompt.errors import ArtifactError, ConfigError, MissingDependencyError
from edgeprompt.fileio import sha256_file
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, Manifest, read_bundle_manifest
from edgeprompt.runtime.base import BACKENDS, Runtime
from edgeprompt.runtime.predictor import Prediction, Predictor

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS", "ENGINE_FILE", "ONNX_FILE", "Prediction", "Predictor", "Runtime",
    "available_backends", "load_bundle", "load_runtime", "predict_files", "read_bundle_manifest", "resolve_backend",
]


def available_backends() -> dict[str, str | None]:
    """Which backends can run on this machine.

    Returns:
        Backend name -> None when usable, else the reason it is not (e.g. "onnxruntime-gpu not installed",
        "no CUDA GPU visible"). Whether a given bundle has a ``model.engine`` is not considered here.
    """
    from edgeprompt.runtime.onnxrt import ort_status
    from edgeprompt.runtime.tensorrt import trt_runtime_status

    out: dict[str, str | None] = {"trt": trt_runtime_status()}
    for name in ("ort-trt", "ort-cuda", "ort-cpu"):
        out[name] = ort_status(name)
    return out


def resolve_backend(backend: str, bundle_dir: str | os.PathLike[str]) -> str:
    """Turn 'auto' into a concrete backend for this bundle and machine; check a named one exists.

    Args:
        backend: A name from :data:`BACKENDS` or 'auto'.
        bundle_dir: The bundle (its ``model.engine`` makes 'trt' eligible).

    Returns:
        The backend name to load.

    Raises:
        ConfigError: Unknown backend name.
        MissingDependencyError: 'auto' and not even onnxruntime is installed.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}: use 'auto' or one of {', '.join(BACKENDS)}")
        return backend
    status = available_backends()
    has_engine = (Path(bundle_dir) / ENGINE_FILE).is_file()
    for name in ("trt", "ort-cuda", "ort-cpu"):
        if status[name] is None and (name != "trt" or has_engine):
            return name
    raise MissingDependencyError(f"no runtime backend is usable: {status['ort-cpu']}")


def _verify(bundle_dir: Path, manifest: Manifest, file: str) -> None:
    expected = manifest.files.get(file)
    if expected and (bundle_dir / file).is_file() and sha256_file(bundle_dir / file) != expected:
        raise ArtifactError(f"{bundle_dir / file} does not match the sha256 in manifest.json: the file was changed "
                            f"or copied incompletely; copy the bundle again")


def load_runtime(bundle_dir: str | os.PathLike[str], backend: str = "auto", *, manifest: Manifest | None = None,
                 verify: bool = True, **options: Any) -> Runtime:
    """Load a bundle's graph on one backend.

    Args:
        bundle_dir: The bundle directory.
        backend: 'auto' or a name from :data:`BACKENDS`.
        manifest: The bundle manifest, if already read.
        verify: Check the model file's sha256 against the manifest first (about a second per 300 MB): another
            run's graph copied into the bundle would otherwise give wrong labels without a word.
        **options: Passed to the backend: ``threads``, ``strict``, ``trt_fp16``, ``trt_cache_dir``, ``max_batch``
            for onnxruntime; ``device`` for TensorRT. Options of the other family are ignored, so 'auto' can be
            given both.

    Returns:
        A loaded :class:`Runtime`. With an explicitly named GPU backend, a silent CPU fallback is an error;
        with 'auto' it is a warning.
    """
    bundle_dir = Path(bundle_dir)
    manifest = manifest or read_bundle_manifest(bundle_dir)
    assert manifest.io is not None  # checked by read_bundle_manifest; narrows the type
    name = resolve_backend(backend, bundle_dir)
    file = ENGINE_FILE if name == "trt" else ONNX_FILE
    if verify:
        _verify(bundle_dir, manifest, file)
    log.info("bundle %s: backend %s (requested %s)", bundle_dir, name, backend)
    if name == "trt":
        from edgeprompt.runtime.tensorrt import TrtRuntime

        # 'auto' may land here with onnxruntime options (threads, ...) that mean nothing to TensorRT
        ignored = sorted(set(options) - {"device"})
        if ignored:
            log.debug("TensorRT backend ignores options %s", ignored)
        return TrtRuntime(bundle_dir / file, manifest.io, **{k: v for k, v in options.items() if k == "device"})
    from edgeprompt.runtime.onnxrt import OrtRuntime

    options.pop("device", None)  # TensorRT-only
    options.setdefault("strict", backend != "auto")
    return OrtRuntime(bundle_dir / file, manifest.io, name, **options)


def load_bundle(path: str | os.PathLike[str], backend: str = "auto", *, batch_size: int = 32,
                verify: bool = True, **options: Any) -> Predictor:
    """Load a bundle for prediction.

    Args:
        path: Bundle directory (``manifest.json`` + ``model.onnx`` and/or ``model.engine``).
        backend: 'auto', 'ort-cpu', 'ort-cuda', 'ort-trt' or 'trt'.
        batch_size: Images per runtime call.
        verify: Check the model file's sha256 against the manifest.
        **options: Backend options, see :func:`load_runtime`.

    Returns:
        A :class:`Predictor`; ``predictor.runtime.provider`` says what actually runs the graph.

    Example:
        >>> p = load_bundle("bundle/", backend="ort-cpu")          # doctest: +SKIP
        >>> p.predict(["cat.jpg"], top_k=3)[0][0].label             # doctest: +SKIP
    """
    from edgeprompt.runtime.classes import load_class_rows

    manifest = read_bundle_manifest(path)
    rows = load_class_rows(path, manifest)  # first: a bad rows file is one line, before a session is built
    runtime = load_runtime(path, backend, manifest=manifest, verify=verify, **options)
    return Predictor(manifest, runtime, batch_size=batch_size, class_rows=rows)


def iter_predictions(bundle: str | os.PathLike[str], images: Iterable[str | os.PathLike[str]], *, top_k: int = 3,
                     backend: str = "auto", batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """Top-k predictions one image at a time, as they are computed: ``images`` is consumed lazily (stdin paths, a
    long folder listing) and run in batches of ``batch_size``; each item is ``{"image", "top": [...]}``.

    Raises:
        DataError: an image is missing or unreadable (the message names it).
    """
    with load_bundle(bundle, backend, batch_size=batch_size) as predictor:
        chunk: list[Path] = []
        for item in images:
            chunk.append(Path(item))
            if len(chunk) == batch_size:
                yield from _top(predictor, chunk, top_k)
                chunk = []
        if chunk:
            yield from _top(predictor, chunk, top_k)


def _top(predictor: Predictor, paths: list[Path], top_k: int) -> Iterator[dict[str, Any]]:
    for p, top in zip(paths, predictor.predict(paths, top_k=top_k), strict=True):
        yield {"image": str(p), "top": [x.to_dict() for x in top]}


def predict_files(bundle: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]], *, top_k: int = 3,
                  backend: str = "auto", batch_size: int = 32) -> dict[str, Any]:
    """Top-k predictions for image files and folders (searched recursively), as ``edgeprompt predict`` prints them.

    Raises:
        DataError: an image is missing or unreadable, or there is nothing to classify.
    """
    from edgeprompt.data.folder import list_images

    paths = list_images(images)
    with load_bundle(bundle, backend, batch_size=batch_size) as predictor:
        preds = predictor.predict(paths, top_k=top_k)
        runtime = predictor.runtime
        return {
            "bundle": str(bundle), "backend": runtime.name, "provider": runtime.provider,
            "predictions": [{"image": str(p), "top": [x.to_dict() for x in top]}
                            for p, top in zip(paths, preds, strict=True)],
        }
