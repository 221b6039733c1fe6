"""``edgeprompt bench``: latency and accuracy of a bundle on every available backend, at several batch sizes.

For each backend (torch eager as the reference on the workstation, onnxruntime CPU / CUDA / TensorRT, a TensorRT
engine) and batch: model-only latency (p50 / p90 / p99 over timed calls after a warm-up; GPU backends return host
arrays, so each call includes its device synchronisation), throughput, end-to-end latency with the numpy/PIL
preprocessing of real images, top-1 on a labeled test folder and agreement with the reference backend's
predictions, model size and precision. Unavailable backends are listed with the reason instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeprompt.bench.latency import measure_latency
from edgeprompt.bench.report import environment, markdown_table
from edgeprompt.config import BENCH_BACKENDS, BenchConfig
from edgeprompt.errors import ConfigError, EdgePromptError
from edgeprompt.fileio import atomic_write_json, atomic_write_text, check_not_inside, check_writable_parent
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, ONNX_FP32_FILE, Manifest
from edgeprompt.progress import NullReporter, Reporter
from edgeprompt.registry import suggest
from edgeprompt.runtime.base import input_bytes_per_image

BACKENDS = BENCH_BACKENDS
COLUMNS = ["backend", "status", "precision", "size_mb", "batch", "top1", "agreement", "p50_ms", "p90_ms", "p99_ms",
           "img_per_s", "e2e_p50_ms"]


MAX_BENCH_BYTES = 2 << 30  # the largest input batch a bench allocates (2 GiB): a 224 px batch of about 3,500


def backend_status(bundle: Path, names: Sequence[str], reference: Callable[[Path], Any] | None = None
                   ) -> dict[str, str | None]:
    """Backend -> None when it can run this bundle here, else why not."""
    from edgeprompt._optional import available
    from edgeprompt.runtime import available_backends

    status = available_backends()
    out: dict[str, str | None] = {}
    for name in names:
        if name == "torch":
            missing = [m for m in ("torch", "open_clip") if not available(m)]
            src = Manifest.read(bundle).extra.get("source_run")
            out[name] = (f"{', '.join(missing)} not installed" if missing else
                         "no torch reference given (use the Python API's edgeprompt.api.bench)" if reference is None
                         else None if src and Path(src).is_dir() else "the bundle's source run directory is not here")
        elif name == "trt" and not (bundle / ENGINE_FILE).is_file():
            out[name] = f"no {ENGINE_FILE} in the bundle: build it on this device with `edgeprompt export BUNDLE --trt`"
        else:
            out[name] = status[name]
    return out


def _size_mb(bundle: Path, name: str, manifest: Manifest, fp32_graph: bool = False) -> float | None:
    if name == "torch":
        return None  # torch runs the source run's modules, not a file of the bundle
    files = [ENGINE_FILE] if name == "trt" else [ONNX_FP32_FILE] if fp32_graph else \
        [f for f in manifest.files if f.startswith(ONNX_FILE)]
    return round(sum((bundle / f).stat().st_size for f in files if (bundle / f).is_file()) / 2**20, 2)


def _e2e(runtime: Any, manifest: Manifest, paths: list[Path], batch: int, iters: int) -> float | None:
    """Median wall time of (load + preprocess + run) for batches of real images, in ms."""
    from edgeprompt.preprocess import load_image, preprocess_batch

    if not paths:
        return None
    times = []
    for i in range(iters):
        chunk = [paths[(i * batch + j) % len(paths)] for j in range(batch)]
        t0 = time.perf_counter()
        runtime.run(preprocess_batch([load_image(p) for p in chunk], manifest.preprocess))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _predictions(runtime: Any, manifest: Manifest, paths: list[Path], rows: np.ndarray | None,
                 batch: int = 32) -> np.ndarray:
    from edgeprompt.preprocess import load_image, preprocess_batch
    from edgeprompt.runtime.base import class_logits

    out = []
    for i in range(0, len(paths), batch):
        pix = preprocess_batch([load_image(p) for p in paths[i : i + batch]], manifest.preprocess)
        out.append(class_logits(runtime.run(pix), rows).argmax(-1))
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


MAX_SECONDS = 3600.0  # timing one (backend, batch) longer than an hour is a typo (inf, 1e9), not a benchmark


def _validate(cfg: BenchConfig, manifest: Manifest) -> None:
    for name in cfg.backends:
        if name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}.{suggest(name, list(BACKENDS))} Choose from "
                              f"{', '.join(BACKENDS)}")
    assert manifest.io is not None  # read_bundle_manifest checks it
    per_image = input_bytes_per_image(manifest.io)
    for b in cfg.batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"--batch sizes must be whole numbers >= 1, got {b!r}")
        if b * per_image > MAX_BENCH_BYTES:
            raise ConfigError(f"--batch {b} needs {b * per_image / 2**30:.1f} GiB of input alone (limit "
                              f"{MAX_BENCH_BYTES / 2**30:.0f} GiB): use at most {MAX_BENCH_BYTES // per_image}")
    if cfg.warmup < 0 or cfg.iters < 1 or cfg.e2e_iters < 0 or (cfg.seconds is not None and not cfg.seconds > 0):
        raise ConfigError(f"need --warmup >= 0, --iters >= 1 and --seconds > 0; got warmup={cfg.warmup}, "
                          f"iters={cfg.iters}, seconds={cfg.seconds}")
    if cfg.seconds is not None and not cfg.seconds <= MAX_SECONDS:
        raise ConfigError(f"--seconds {cfg.seconds} would time one batch size for hours: use at most {MAX_SECONDS}")
    repeated = sorted({b for b in cfg.batches if cfg.batches.count(b) > 1})
    if repeated:
        raise ConfigError(f"--batch lists {', '.join(map(str, repeated))} more than once: give each batch size once")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {cfg.max_images}")


def bench(cfg: BenchConfig, reporter: Reporter | None = None,
          reference: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Benchmark ``cfg.bundle`` on each available backend; see the module docstring for what is measured.

    Args:
        cfg: Backends, batches, timing, test data, output folder.
        reporter: Progress reporting.
        reference: Builds the ``torch`` reference runtime from a bundle path (the workstation passes
            :class:`edgeprompt.export.reference.TorchRuntime`; the device side has none).

    Raises:
        ConfigError: Bad options, or none of the requested backends can run here.
    """
    from edgeprompt.data import load_labeled
    from edgeprompt.data.folder import match_classes
    from edgeprompt.manifest import read_bundle_manifest
    from edgeprompt.runtime import load_runtime
    from edgeprompt.runtime.classes import load_class_rows

    rep = reporter or NullReporter()
    bundle = Path(cfg.bundle)
    manifest = read_bundle_manifest(bundle)
    _validate(cfg, manifest)
    out = Path(cfg.out) if cfg.out is not None else None
    if out is not None:
        check_not_inside(out, {"the bundle": bundle, "the test data": cfg.data})
        check_writable_parent(out / "bench.json")  # now, not after the benchmark ran
    paths: list[Path] = []
    labels = None
    if cfg.data is not None:
        ds = match_classes(list(manifest.classnames), load_labeled(cfg.data), "benchmark data")
        keep = range(min(len(ds), cfg.max_images or len(ds)))
        paths, labels = [ds.paths[i] for i in keep], np.array([ds.labels[i] for i in keep])
    status = backend_status(bundle, cfg.backends, reference)
    class_rows = load_class_rows(bundle, manifest)
    if "classes_changed" in manifest.extra and status.get("torch") is None and "torch" in status:
        status["torch"] = "the bundle's classes changed after export; the run's torch model has the old list"
    usable = [b for b in cfg.backends if status[b] is None]
    if not usable:
        why = "; ".join(f"{b}: {r}" for b, r in status.items())
        raise ConfigError(f"none of the requested backends can run here ({why})")
    precision = manifest.precision
    # (backend, the bundle's FP32 reference graph instead of model.onnx)
    jobs = [(b, True) for b in usable if _fp32_graph_row(bundle, b, precision)]
    jobs = sorted([*jobs, *((b, False) for b in usable)], key=lambda j: usable.index(j[0]))
    rows: list[dict[str, Any]] = []
    reference_pred: np.ndarray | None = None
    tick = rep.task("benchmarking")
    for k, (name, fp32_graph) in enumerate(jobs):
        try:
            runtime = (reference(bundle) if name == "torch" and reference else _load_fp32(bundle, manifest, name)
                       if fp32_graph else load_runtime(bundle, name))
        except EdgePromptError as e:  # e.g. a GPU provider that fell back to CPU
            status[name] = str(e)
            continue
        try:
            acc = agree = None
            if labels is not None:
                pred = _predictions(runtime, manifest, paths, None if name == "torch" else class_rows)
                acc = float((pred == labels).mean())
                reference_pred = pred if reference_pred is None else reference_pred
                agree = float((pred == reference_pred).mean())
            for b in cfg.batches:
                lat = measure_latency(runtime, b, warmup=cfg.warmup, iters=cfg.iters, seconds=cfg.seconds)
                rows.append({
                    "backend": name, "provider": runtime.provider, "status": "ok",
                    "precision": "fp32" if fp32_graph else precision, "size_mb": _size_mb(bundle, name, manifest,
                                                                                           fp32_graph),
                    "batch": b, "top1": acc, "agreement": agree,
                    "p50_ms": lat.p50_ms, "p90_ms": lat.p90_ms, "p99_ms": lat.p99_ms, "mean_ms": lat.mean_ms,
                    "img_per_s": lat.throughput, "iters": lat.iters,
                    "e2e_p50_ms": _e2e(runtime, manifest, paths, b, cfg.e2e_iters),
                })
        finally:
            runtime.close()
        tick(k + 1, len(jobs), backend=name)
    if not rows:
        why = "; ".join(f"{b}: {r}" for b, r in status.items() if r)
        raise ConfigError(f"no backend could load the bundle ({why})")
    unavailable = {b: r for b, r in status.items() if r is not None}
    result = {"bundle": str(bundle), "method": manifest.method, "model": manifest.backbone.model,
              "classes": manifest.num_classes, "data": str(cfg.data) if cfg.data else None, "n_images": len(paths),
              "reference": next((r["backend"] for r in rows), None), "rows": rows, "unavailable": unavailable,
              "environment": environment()}
    if out is not None:
        atomic_write_json(out / "bench.json", result)
        atomic_write_text(out / "bench.md", report_markdown(result))
    return result


def _fp32_graph_row(bundle: Path, backend: str, precision: str) -> bool:
    """An INT8 bundle's FP32 reference graph is timed on the onnxruntime backends (see the module docstring)."""
    return precision == "int8" and backend.startswith("ort-") and (bundle / ONNX_FP32_FILE).is_file()


def _load_fp32(bundle: Path, manifest: Manifest, backend: str) -> Any:
    from edgeprompt.runtime.onnxrt import OrtRuntime

    assert manifest.io is not None  # read_bundle_manifest checks it
    return OrtRuntime(bundle / ONNX_FP32_FILE, manifest.io, backend)


def report_markdown(result: dict[str, Any]) -> str:
    """An ultralytics-style table (backend x batch) plus the unavailable backends and the environment line."""
    rows = [{**r, "top1": None if r["top1"] is None else round(100 * r["top1"], 2),
             "agreement": None if r["agreement"] is None else round(100 * r["agreement"], 2)} for r in result["rows"]]
    env = result["environment"]
    gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus") or []) or "no GPU"
    head = (f"**{result['method']}** on {result['model']}, {result['classes']} classes; "
            f"{env.get('cpu')} ({env.get('cpu_count')} cores), {gpus}; onnxruntime {env.get('onnxruntime')}, "
            f"TensorRT {env.get('tensorrt') or 'not installed'}. Latency per call (batch) in ms; top-1 and agreement "
            f"in % on {result['n_images']} images (agreement with {result['reference']}).\n\n")
    missing = "".join(f"- `{b}` unavailable: {why}\n" for b, why in result["unavailable"].items())
    return head + markdown_table(rows, COLUMNS) + "\n" + ("\n" + missing if missing else "")
