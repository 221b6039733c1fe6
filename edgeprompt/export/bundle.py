"""``edgeprompt export RUN_DIR --out BUNDLE``: a tuned run becomes a deployable bundle, or nothing at all.

```
BUNDLE/
  manifest.json     kind 'bundle': IOSpec, class names, preprocessing, logit scale, file hashes, export settings,
                    parity numbers, FP16 handling, source run
  model.onnx        pixels in [0, 1] -> logits, probs (normalisation, prompt and softmax inside the graph);
                    with --int8 a calibrated Q/DQ graph (docs/int8.md)
  model.fp32.onnx   only with --int8: the FP32 graph it was quantized from, for reference
  model.onnx.data   only for graphs over ~1.8 GiB or when asked (``external_data=True``); found by relative path
  trtexec.sh        the equivalent TensorRT build command, to run on the target
  text.onnx, classes.npy, bpe_simple_vocab_16e6.txt.gz
                    only with --open-classes: the text side, the class rows the runtime applies to the graph's
                    ``features`` output, the tokenizer's vocabulary (edgeprompt.export.text_graph)
  model.engine      only with ``trt=True`` on a machine with TensorRT and a GPU (usually: the target)
```

The bundle is assembled in a temporary folder beside ``OUT`` and renamed into place only after the parity gate
(and for ``--int8`` the INT8 agreement gate on held-out images) passed (:func:`edgeprompt.fileio.atomic_dir`):
a failed gate, a failed build or an interrupt leaves nothing. ``--trt``
on a machine without TensorRT or a GPU fails before anything is read or written. torch is imported inside the
function, so importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from edgeprompt.artifact import run_data
from edgeprompt.config import ExportConfig
from edgeprompt.errors import ConfigError
from edgeprompt.export import check_formats
from edgeprompt.export.target import build_engine_into
from edgeprompt.export.tensorrt import TRTEXEC_SCRIPT, require_trt_build, write_trtexec_script
from edgeprompt.fileio import atomic_dir, guard_output, output_lock, sha256_file
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, ONNX_FP32_FILE, IOSpec, Manifest
from edgeprompt.progress import NullReporter, Reporter

log = logging.getLogger(__name__)
MIN_OPSET, MAX_OPSET = 17, 21  # LayerNormalization arrives in 17; onnxruntime 1.17+ runs up to 21 (onnx 1.16)


def onnx_metadata_for(manifest: Manifest, io: IOSpec, precision: str, run_dir: Path) -> dict[str, str]:
    """The manifest's key fields as ONNX ``metadata_props`` strings (so the ONNX file describes itself)."""
    return {
        "edgeprompt.method": manifest.method,
        "edgeprompt.backbone": json.dumps(manifest.backbone.to_dict()),
        "edgeprompt.classnames": json.dumps(list(manifest.classnames)),
        "edgeprompt.preprocess": json.dumps(manifest.preprocess.to_dict()),
        "edgeprompt.logit_scale": repr(float(manifest.logit_scale)),
        "edgeprompt.io": json.dumps(io.to_dict()),
        "edgeprompt.precision": precision,
        "edgeprompt.source_run": str(run_dir),
    }


def export_run(cfg: ExportConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Export a tuned run (``cfg.source``) into the bundle ``cfg.out``, gated on torch/onnxruntime parity.

    Args:
        cfg: Precision, opset, exporter, parity images, TensorRT profile, overwrite (see
            :class:`edgeprompt.config.ExportConfig`). ``cfg.out`` must be set (the dispatcher fills the default).
        reporter: Progress reporting (default: log only).

    Returns:
        A summary: bundle path, method, graph kind, precision, opset, exporter, file sizes, parity numbers,
        engine info (or None), time.

    Raises:
        ConfigError: Bad options, ``out`` exists without ``overwrite``, or ``out`` overlaps the run.
        MissingDependencyError: A package the formats need (before anything is written).
        ExportError: No GPU for ``trt``, tracing failed, or the parity gate failed (no bundle is written).
        ArtifactError: ``cfg.source`` is not a valid run directory.
    """
    cfg.validate()
    if cfg.opset < MIN_OPSET or cfg.opset > MAX_OPSET:
        raise ConfigError(f"--opset {cfg.opset} is outside {MIN_OPSET}..{MAX_OPSET}: {MIN_OPSET} is the first with "
                          f"LayerNormalization (TensorRT's FP16-safe normalisation), {MAX_OPSET} the newest this "
                          f"onnx and onnxruntime run")
    formats = check_formats(["onnx", "trt"] if cfg.trt else ["onnx"])
    if cfg.int8:
        from edgeprompt.export.quantize import require_quantizer

        require_quantizer(cfg.quant.quantizer)  # one line, before any file is read or written
    if cfg.trt:
        require_trt_build()  # one line, before any file is read or written
    if cfg.out is None:
        raise ConfigError("export_run needs cfg.out (the bundle directory to create)")
    run_dir = Path(cfg.source)
    out = guard_output(cfg.out, "bundle", {"the run directory": run_dir, **run_data(run_dir)},
                       overwrite=cfg.overwrite)
    with output_lock(out):
        return _export(cfg, run_dir, out, formats, reporter or NullReporter())


def _export(cfg: ExportConfig, run_dir: Path, out: Path, formats: list[str], rep: Reporter) -> dict[str, Any]:
    import torch

    from edgeprompt.artifact import load_run
    from edgeprompt.export.graph import build_graph
    from edgeprompt.export.onnx import export_onnx, external_data_files, onnx_metadata, onnx_summary
    from edgeprompt.export.verify import check_image_paths, load_check_pixels, parity_gate

    t0 = time.perf_counter()
    traced = "fp16" if cfg.fp16 else "fp32"  # the graph torch traces (an INT8 graph is quantized from FP32)
    precision = "int8" if cfg.int8 else traced
    steps = 3 + cfg.trt + cfg.int8
    tick = rep.task(f"exporting {run_dir.name} ({precision}, {'+'.join(formats)})")
    run = load_run(run_dir, device="cpu")
    tick(1, steps, step="loaded run")
    if cfg.int8 and not run.method.foldable:
        raise ConfigError(f"--int8 supports folded graphs (zeroshot, coop, dspt); {run.manifest.method}'s text branch "
                          f"depends on the image: export it FP32 or --fp16")
    spec = dataclasses.replace(run.manifest.preprocess, normalize_in_graph=True)  # the graph normalises
    uint8_input = cfg.input_format == "uint8-nhwc"
    graph = build_graph(run.backbone, run.method, spec, traced, uint8_input=uint8_input,
                        features_output=cfg.open_classes)
    if cfg.open_classes:
        from edgeprompt.export.text_graph import prompt_spec

        prompt_spec(run.method)  # a run that cannot change classes is refused before anything is traced
    width = int(graph.class_matrix.shape[0]) if cfg.open_classes else None
    io = IOSpec.classifier(spec.image_size, run.manifest.num_classes, cfg.input_format, features=width)
    paths = check_image_paths(run_dir, cfg.n_check)
    pixels, source = load_check_pixels(paths, spec, cfg.n_check)

    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        onnx_path = export_onnx(graph, tmp / (ONNX_FP32_FILE if cfg.int8 else ONNX_FILE), io, opset=cfg.opset,
                                exporter=cfg.exporter, metadata=onnx_metadata_for(run.manifest, io, traced, run_dir),
                                external_data=cfg.external_data)
        tick(2, steps, step="traced")
        parity = parity_gate(run.backbone, run.method, onnx_path, io, pixels, precision=traced,
                             logit_scale=graph.logit_scale, source=source, threads=torch.get_num_threads())
        tick(3, steps, step="parity passed")
        int8 = None
        if cfg.int8:
            from edgeprompt.export.int8 import build_int8

            int8 = build_int8(onnx_path, tmp / ONNX_FILE, run_dir, run.manifest.classnames, spec, io, cfg.quant,
                              threads=torch.get_num_threads())
            tick(4, steps, step="INT8 gate passed")
        open_classes = None
        if cfg.open_classes:
            from edgeprompt.export.text_graph import export_text

            open_classes = export_text(run.backbone, run.method, list(run.manifest.classnames), graph.logit_scale,
                                       tmp, cfg.opset, threads=torch.get_num_threads())
        script = write_trtexec_script(tmp, io, fp16=cfg.fp16, profile=cfg.profile, onnx_fp16=cfg.fp16, int8=cfg.int8)
        engine = None
        if cfg.trt:
            engine = build_engine_into(tmp, io, fp16=cfg.fp16, onnx_fp16=cfg.fp16, profile=cfg.profile, int8=cfg.int8)
            tick(steps, steps, step="engine built")
        data_files = [str(f) for f in external_data_files(onnx_path)]
        files = {ONNX_FILE: sha256_file(tmp / ONNX_FILE), **{f: sha256_file(tmp / f) for f in data_files}}
        if cfg.int8:
            files[ONNX_FP32_FILE] = sha256_file(onnx_path)
        files[TRTEXEC_SCRIPT] = sha256_file(script)
        if open_classes is not None:
            for key in ("text_graph", "vocab", "rows"):
                files[open_classes[key]] = sha256_file(tmp / open_classes[key])
        if engine is not None:
            files[ENGINE_FILE] = engine.pop("sha256")
        summary = onnx_summary(onnx_path)  # the traced graph (FP32 for --int8)
        settings = {
            "opset": summary["opset"],
            "exporter": onnx_metadata(onnx_path).get("edgeprompt.exporter"), "profile": dataclasses.asdict(cfg.profile),
            "max_batch": cfg.profile.max_batch, "n_check": cfg.n_check, "dynamic_batch": True,
            "external_data": data_files,
        }
        extra = {
            "source_run": str(run_dir.resolve()),
            "run_created": run.manifest.created,
            "method_config": run.manifest.extra.get("method_config", {}),
            "export": settings,
            "graph": graph.info,
            "parity": parity,
            "engine": engine,
        }
        if open_classes is not None:
            extra["open_classes"] = open_classes
        if int8 is not None:
            extra["int8"] = {**int8, "fp32_graph": ONNX_FP32_FILE, "config": dataclasses.asdict(cfg.quant)}
        if cfg.fp16:
            extra["fp16"] = {"weights": "fp16", "io": "fp32", "kept_fp32": graph.info["fp32_ops"],
                             "initializers": summary["initializers"],
                             "note": "FP16 is in the graph (TensorRT 11 follows it; TensorRT 10 builds it typed)"}
        manifest = Manifest(kind="bundle", method=run.manifest.method, backbone=run.manifest.backbone,
                            classnames=run.manifest.classnames, preprocess=spec, logit_scale=run.manifest.logit_scale,
                            io=io, precision=precision, files=files, extra=extra)
        manifest.write(tmp)
        sizes = {name: round((tmp / name).stat().st_size / 1e6, 3) for name in files}
    int8_note = "" if int8 is None else (f"; INT8 vs FP32 top-1 agreement {int8['gate']['top1_agreement']:.4f} on "
                                         f"{int8['gate']['n']} held-out images")
    rep.message(f"bundle {out}: {graph.info['graph']} {precision} graph, opset {settings['opset']}, parity "
                f"top-1 {parity['top1_agreement']:.4f}, max |Δlogit| {parity['max_abs_logit_diff']:.2e}{int8_note}")
    return {
        "bundle": str(out), "run_dir": str(run_dir), "method": run.manifest.method, "graph": graph.info["graph"],
        "precision": precision, "opset": settings["opset"], "exporter": settings["exporter"], "files_mb": sizes,
        "parity": parity, "int8": None if int8 is None else int8["gate"], "engine": engine,
        "time_s": round(time.perf_counter() - t0, 2),
    }
