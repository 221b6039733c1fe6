"""One function per CLI verb, each a delegation to the layer that does the work. Torch-free at import.

The CLI (``edgeprompt.cli``) only parses options into a config, calls one of these and renders the returned dict.
Nothing inside the package imports this module (an import contract in CI keeps it so).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeprompt.config import AuditConfig, BenchConfig, ExportConfig, ExtractConfig, SweepConfig, TuneConfig
from edgeprompt.progress import Reporter


def tune(cfg: TuneConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Tune a prompt and write the run directory (:func:`edgeprompt.train.run.tune`)."""
    from edgeprompt.train.run import tune as run_tune

    return run_tune(cfg, reporter)


def evaluate(run_dir: str | Path, test: str | Path | None = None, *, on_train: bool = False,
             strict: bool = False, cache_dir: str | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Top-1, per-class accuracy and confusion matrix of a run (:func:`edgeprompt.train.run.evaluate`)."""
    from edgeprompt.train.run import evaluate as run_evaluate

    return run_evaluate(run_dir, test, on_train=on_train, strict=strict, cache_dir=cache_dir, reporter=reporter)


def classes(run_dir: str | Path, out: str | Path, *, add: Sequence[str] = (), remove: Sequence[str] = (),
            overwrite: bool = False) -> dict[str, Any]:
    """A tuned run, or an ``--open-classes`` bundle, with classes added or removed, its learned context unchanged
    (:func:`edgeprompt.train.classes.change_classes` with torch; for a bundle
    :func:`edgeprompt.runtime.classes.change_bundle_classes`, onnxruntime only)."""
    from edgeprompt.manifest import Manifest

    if Manifest.read(run_dir).kind == "bundle":
        from edgeprompt.runtime.classes import change_bundle_classes

        return change_bundle_classes(run_dir, out, add, remove, overwrite)
    from edgeprompt.train.classes import change_classes

    return change_classes(run_dir, out, add, remove, overwrite)


def checks() -> dict[str, Any]:
    """This machine's versions, backends, GPU and known-bad combinations (:func:`edgeprompt.checks.run_checks`)."""
    from edgeprompt.checks import run_checks

    return run_checks()


def models() -> dict[str, Any]:
    """Registered methods (with options) and backbones (open_clip names with known pretrained tags)."""
    from edgeprompt.backbone import list_backbones
    from edgeprompt.methods.base import method_catalog

    return {"methods": method_catalog(), "backbones": list_backbones()}


def predict(bundle: str | Path, images: Sequence[str | Path], *, top_k: int = 3, backend: str = "auto",
            batch_size: int = 32) -> dict[str, Any]:
    """Top-k predictions for image files and folders with a bundle's runtime; no torch."""
    from edgeprompt.runtime import predict_files

    return predict_files(bundle, images, top_k=top_k, backend=backend, batch_size=batch_size)


def iter_predict(bundle: str | Path, images: Iterable[str | Path], *, top_k: int = 3, backend: str = "auto",
                 batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """Predictions streamed one image at a time (:func:`edgeprompt.runtime.iter_predictions`); no torch."""
    from edgeprompt.runtime import iter_predictions

    return iter_predictions(bundle, images, top_k=top_k, backend=backend, batch_size=batch_size)


def iter_predict_source(bundle: str | Path, source: str, *, top_k: int = 3, backend: str = "auto",
                        batch_size: int = 1, every: int = 1, max_frames: int | None = None,
                        stats: Any = None) -> Iterator[dict[str, Any]]:
    """Predictions per frame of a video file, camera, stream or GStreamer pipeline
    (:func:`edgeprompt.runtime.stream.iter_stream_predictions`); no torch."""
    from edgeprompt.runtime.stream import iter_stream_predictions

    return iter_stream_predictions(bundle, source, top_k=top_k, backend=backend, batch_size=batch_size,
                                   every=every, max_frames=max_frames, stats=stats)


def sweep(cfg: SweepConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume) a noise sweep, here or on Ray (:func:`edgeprompt.sweep.run.run_sweep`)."""
    from edgeprompt.sweep.run import run_sweep

    return run_sweep(cfg, reporter)


def data_shapes(out: str | Path, *, task: str = "shape", per_class: int = 32, domain: str = "downstream",
                seed: int = 0, image_size: int = 64, overwrite: bool = False,
                reporter: Reporter | None = None) -> dict[str, Any]:
    """Write the offline world's labeled folders ``OUT/train``, ``OUT/val``, ``OUT/test`` (torch-free)."""
    from edgeprompt.progress import NullReporter
    from edgeprompt.world.shapes import write_dataset

    tick = (reporter or NullReporter()).task(f"rendering {task} ({domain})")
    return write_dataset(out, task=task, per_class=per_class, domain=domain, seed=seed, image_size=image_size,
                         overwrite=overwrite, progress=tick)


def demo(out: str | Path = "edgeprompt-demo", *, reporter: Reporter | None = None, **options: Any) -> dict[str, Any]:
    """The main job, offline, on the shipped world (:func:`edgeprompt.demo.run_demo`)."""
    from edgeprompt.demo import run_demo

    return run_demo(out, reporter=reporter, **options)


def audit(cfg: AuditConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Score every label of a folder or CSV and write the report (:func:`edgeprompt.audit.run.audit`)."""
    from edgeprompt.audit.run import audit as run_audit

    return run_audit(cfg, reporter)


def extract(cfg: ExtractConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Fill the feature cache for a dataset (:func:`edgeprompt.features.extract.extract`)."""
    from edgeprompt.features.extract import extract as run_extract

    return run_extract(cfg, reporter)


def export(cfg: ExportConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """A run becomes a bundle, a bundle gets its TensorRT engine, and either can be written into a Triton model
    repository (:func:`edgeprompt.export.export`)."""
    from edgeprompt.export import export as run_export

    return run_export(cfg, reporter)


def bench(cfg: BenchConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Latency and accuracy of a bundle on every available backend (:func:`edgeprompt.bench.run.bench`).

    The ``torch`` reference backend is the workstation's export graph; it is handed in here so that the
    deployment-side bench module never imports the torch side.
    """
    from edgeprompt.bench.run import bench as run_bench

    return run_bench(cfg, reporter, reference=_torch_reference)


def _torch_reference(bundle: str | Path) -> Any:
    from edgeprompt.export.reference import TorchRuntime

    return TorchRuntime(bundle)
