"""``edgeprompt export``, ``predict`` and ``bench``: the deployment verbs (torch-free at import; predict and bench never
need torch). Each parses its options, calls one api function and renders the result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprompt.cli.ui import JSON, command, emit, reporter, table
from edgeprompt.config import (
    INT8_CALIBRATORS,
    INT8_FLOAT_GROUPS,
    INT8_QUANTIZERS,
    BenchConfig,
    ExportConfig,
    Int8Config,
    TritonConfig,
    TrtProfile,
    defaults,
)

PREDICT_FORMATS = ("table", "jsonl", "csv")
CONFIG_FILE_DS = "config_infer_primary.txt"  # edgeprompt.export.deepstream.CONFIG_FILE, without importing export
_EXPORT = defaults(ExportConfig)
_PROFILE = TrtProfile()
_TRITON = defaults(TritonConfig)
_INT8 = defaults(Int8Config)
_BENCH = defaults(BenchConfig)


def predict(
    bundle: Annotated[Path, typer.Argument(help="Export bundle (manifest.json + model.onnx [+ model.engine]).")],
    images: Annotated[list[Path] | None, typer.Argument(help="Image files or folders (searched recursively); - reads paths from stdin, one per line.")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s", help="Video instead of images: a file, a camera index (0), an rtsp:// or http:// URL, or a GStreamer pipeline ending in appsink. Needs edgeprompt[video].")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Predictions per image or frame.")] = 3,
    backend: Annotated[str, typer.Option(help="auto | ort-cpu | ort-cuda | ort-trt | trt.")] = "auto",
    fmt: Annotated[str | None, typer.Option("--format", help="table (at the end) | jsonl | csv (one line per image or frame, as it is classified). Default: table for images, jsonl for --source.")] = None,
    batch: Annotated[int | None, typer.Option("--batch", "-b", help="Images or frames run together (default 32 for images, 1 for --source: the lowest latency).")] = None,
    every: Annotated[int, typer.Option("--every", help="With --source: classify every N-th frame.")] = 1,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="With --source: stop after this many classified frames.")] = None,
    as_json: JSON = False,
) -> None:
    """Classify images or video frames with a compiled bundle (onnxruntime or TensorRT; torch is never imported).

    Examples:

      edgeprompt predict bundle photos/ --format csv

      find photos -name '*.jpg' | edgeprompt predict bundle - --format jsonl

      edgeprompt predict bundle --source clip.mp4 --batch 8      # one JSON line per frame; frames/s at the end

      edgeprompt predict bundle --source 0 --every 5             # a camera; Ctrl-C stops and prints the summary
    """
    import sys

    from edgeprompt.errors import ConfigError

    fmt = fmt or ("jsonl" if source else "table")
    if fmt not in PREDICT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(PREDICT_FORMATS)}, got {fmt!r}")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if source is not None:
        if images:
            raise ConfigError("give image paths or --source, not both")
        if fmt == "table" or as_json:
            raise ConfigError("--source writes one line per frame: use --format jsonl or csv")
        _predict_source(bundle, source, top_k=top_k, backend=backend, fmt=fmt, batch=batch or 1, every=every,
                        max_frames=max_frames)
        return
    if every != 1 or max_frames is not None:
        raise ConfigError("--every and --max-frames go with --source")
    if not images:
        raise ConfigError("give image files or folders, - for paths on stdin, or --source for video")
    from edgeprompt import api
    from edgeprompt.data.folder import list_images

    paths: Iterator[Path]
    if [str(i) for i in images] == ["-"]:
        paths = (p for line in sys.stdin if line.strip() for p in list_images([line.strip()]))
    else:
        paths = iter(list_images(images))
    if fmt != "table" and not as_json:
        rows = api.iter_predict(bundle, paths, top_k=top_k, backend=backend, batch_size=batch or 32)
        _write_lines(rows, fmt, "image", top_k)
        return
    result = api.predict(bundle, list(paths), top_k=top_k, backend=backend, batch_size=batch or 32)

    def render(r: dict[str, Any]) -> None:
        rows = [[item["image"], ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in item["top"])]
                for item in r["predictions"]]
        table(f"{len(rows)} images, backend {r['backend']} ({r['provider']})", ["name", f"top-{top_k}"], rows)

    emit(result, as_json, render)


def _write_lines(rows: Iterator[dict[str, Any]], fmt: str, key: str | tuple[str, ...], top_k: int) -> None:
    """One stdout line per result as it arrives: JSON objects, or CSV rows of ``key`` columns then label/p pairs."""
    import csv
    import sys

    keys = (key,) if isinstance(key, str) else key
    writer = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writerow([*keys, *(f"{k}{i + 1}" for i in range(top_k) for k in ("label", "p"))])
    for item in rows:
        if writer:
            writer.writerow([*(item[k] for k in keys),
                             *(v for t in item["top"] for v in (t["label"], f"{t['probability']:.6f}"))])
        else:
            sys.stdout.write(json.dumps(item) + "\n")
        sys.stdout.flush()


def _predict_source(bundle: Path, source: str, *, top_k: int, backend: str, fmt: str, batch: int, every: int,
                    max_frames: int | None) -> None:
    """``predict --source``: a line per frame on stdout, frames/s and latency on stderr at the end (also after
    Ctrl-C, which is how a camera run ends)."""
    from edgeprompt import api
    from edgeprompt.runtime.stream import StreamStats

    stats = StreamStats()
    rows = api.iter_predict_source(bundle, source, top_k=top_k, backend=backend, batch_size=batch, every=every,
                                   max_frames=max_frames, stats=stats)
    try:
        _write_lines(rows, fmt, ("frame", "t"), top_k)
    except KeyboardInterrupt:
        pass
    typer.echo(stats.line(), err=True)


def export(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Run directory (from `tune`) to export, or a bundle to build a TensorRT engine for.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle directory to create (for a run directory; default RUN-bundle).")] = None,
    trt: Annotated[bool, typer.Option("--trt", help="Build model.engine with TensorRT here (needs TensorRT and a GPU).")] = False,
    precision: Annotated[str, typer.Option("--precision", "-p", help="fp32 | fp16 (FP16 weights, FP32 I/O, LayerNorm and softmax) | int8 (a calibrated Q/DQ graph, gated on held-out accuracy; see the INT8 options). Recorded in the manifest; the device reads it from there.")] = _EXPORT["precision"],
    fp16: Annotated[bool, typer.Option("--fp16", help="Short for --precision fp16.")] = False,
    input_format: Annotated[str, typer.Option("--input-format", help="float-nchw (float32 pixels in [0, 1]) | uint8-nhwc (the bytes, a quarter of the host-to-device traffic; the graph scales, transposes and normalises).")] = _EXPORT["input_format"],
    open_classes: Annotated[bool, typer.Option("--open-classes", help="Also write the text side (text.onnx with the learned context, the tokenizer's vocabulary) and keep the class rows as data, so `edgeprompt classes BUNDLE --add NAME` works on the device with onnxruntime alone and reuses the engine. Shared-context methods (zeroshot, coop, dspt, nlprompt).")] = _EXPORT["open_classes"],
    opset: Annotated[int, typer.Option(help="ONNX opset (17..21).")] = _EXPORT["opset"],
    n_check: Annotated[int, typer.Option(help="Tuning images in the torch/onnxruntime parity gate.")] = _EXPORT["n_check"],
    min_batch: Annotated[int, typer.Option(help="Smallest batch of the TensorRT profile.", rich_help_panel="TensorRT")] = _PROFILE.min_batch,
    opt_batch: Annotated[int, typer.Option(help="Batch TensorRT tunes for (the batch you will run).", rich_help_panel="TensorRT")] = _PROFILE.opt_batch,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT profile; with --triton, Triton's max_batch_size (default there: the bundle's profile).", rich_help_panel="TensorRT")] = _PROFILE.max_batch,
    workspace_mib: Annotated[int, typer.Option(help="TensorRT builder workspace in MiB.", rich_help_panel="TensorRT")] = _PROFILE.workspace_mib,
    triton: Annotated[Path | None, typer.Option("--triton", help="Also write a Triton Inference Server model repository here: REPO/NAME/config.pbtxt, labels.txt, 1/model.onnx (or 1/model.plan from model.engine).", rich_help_panel="Triton", metavar="REPO")] = None,
    triton_name: Annotated[str | None, typer.Option(help="Model name in the repository (default: the bundle folder's name).", rich_help_panel="Triton")] = None,
    triton_platform: Annotated[str, typer.Option(help="auto (tensorrt_plan when the bundle has model.engine) | onnx (onnxruntime_onnx) | trt (tensorrt_plan).", rich_help_panel="Triton")] = _TRITON["platform"],
    deepstream: Annotated[Path | None, typer.Option("--deepstream", help="Also write DeepStream nvinfer files here: config_infer_primary.txt, labels.txt, the graph (and engine), README.md with a pipeline. Batch: --opt-batch.", rich_help_panel="DeepStream", metavar="DIR")] = None,
    deepstream_scaling: Annotated[str, typer.Option(help="How nvinfer fits a frame to the square input: squash | pad (nvinfer cannot centre-crop; docs/video.md).", rich_help_panel="DeepStream")] = _EXPORT["deepstream_scaling"],
    int8: Annotated[bool, typer.Option("--int8", help="Short for --precision int8: model.onnx becomes a calibrated INT8 Q/DQ graph (model.fp32.onnx kept beside it), gated on held-out accuracy against FP32.", rich_help_panel="INT8")] = False,
    calib: Annotated[Path | None, typer.Option(help="Calibration image folder (default: the run's tuning images, centre views).", rich_help_panel="INT8")] = _INT8["calib"],
    calib_n: Annotated[int, typer.Option(help="Calibrate on at most this many images.", rich_help_panel="INT8")] = _INT8["calib_n"],
    calib_method: Annotated[str, typer.Option(help=f"Calibrator: {' | '.join(INT8_CALIBRATORS)}.", rich_help_panel="INT8")] = _INT8["calib_method"],
    int8_quantizer: Annotated[str, typer.Option(help=f"Who places the Q/DQ nodes: {' | '.join(INT8_QUANTIZERS)} (docs/int8.md).", rich_help_panel="INT8")] = _INT8["quantizer"],
    int8_float: Annotated[str, typer.Option(help=f"Comma-separated node groups left in float: {', '.join(INT8_FLOAT_GROUPS)} ('' for none).", rich_help_panel="INT8")] = ",".join(_INT8["keep_float"]),
    int8_check: Annotated[Path | None, typer.Option(help="Labeled held-out folder for the INT8 gate (default: run images not used to calibrate).", rich_help_panel="INT8")] = _INT8["check"],
    int8_check_n: Annotated[int, typer.Option(help="Held-out images in the INT8 gate.", rich_help_panel="INT8")] = _INT8["n_check"],
    int8_min_accuracy: Annotated[float, typer.Option(help="Refuse the bundle when INT8's held-out top-1 is under this fraction of FP32's (MLPerf's rule; 0.99 = 99 %).", rich_help_panel="INT8")] = _INT8["min_accuracy"],
    int8_min_agreement: Annotated[float, typer.Option(help="Also refuse below this INT8/FP32 top-1 agreement on held-out images (stricter; 0 = off).", rich_help_panel="INT8")] = _INT8["min_agreement"],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle, or an existing Triton model of that name (only once the new one is complete).")] = False,
    as_json: JSON = False,
) -> None:
    """Fold a tuned run and its frozen encoders into one ONNX graph, check it against torch, write a bundle.

    On the target device (Jetson or server GPU), `edgeprompt export BUNDLE --trt` builds the TensorRT engine from
    the bundle's ONNX without torch; the bundle's trtexec.sh has the equivalent trtexec command.
    `edgeprompt export BUNDLE --triton REPO` writes the bundle as a model of a Triton model repository (no torch).
    `edgeprompt export BUNDLE --deepstream DIR` writes the files DeepStream's nvinfer needs (no torch).
    """
    from edgeprompt import api
    from edgeprompt.config import split_list
    from edgeprompt.errors import ConfigError

    shorthand = [p for p, flag in (("fp16", fp16), ("int8", int8)) if flag]
    if len(shorthand) > 1:
        raise ConfigError("choose --int8 or --fp16, not both: an INT8 bundle already builds its float layers in "
                          "FP16 on TensorRT 10 (--int8 --fp16 in trtexec.sh)")
    if shorthand and precision not in ("fp32", shorthand[0]):
        raise ConfigError(f"--precision {precision} and --{shorthand[0]} disagree: give one of them")
    precision = shorthand[0] if shorthand else precision
    triton_cfg = None
    if triton is not None:  # --max-batch overrides the bundle's profile only when it is given
        source_of = ctx.get_parameter_source("max_batch")
        given = source_of is not None and source_of.name == "COMMANDLINE"  # typer ships its own click
        triton_cfg = TritonConfig(repo=str(triton), name=triton_name, platform=triton_platform,
                                  max_batch=max_batch if given else None)
    groups = split_list(int8_float, "--int8-float", choices=INT8_FLOAT_GROUPS) if int8_float.strip() else ()
    quant = Int8Config(calib=str(calib) if calib else None, calib_n=calib_n, calib_method=calib_method,
                       quantizer=int8_quantizer, keep_float=groups, check=str(int8_check) if int8_check else None,
                       n_check=int8_check_n, min_agreement=int8_min_agreement, min_accuracy=int8_min_accuracy)
    cfg = ExportConfig(source=str(source), out=str(out) if out else None, precision=precision, input_format=input_format, opset=opset, open_classes=open_classes,
                       n_check=n_check, trt=trt, overwrite=overwrite, triton=triton_cfg, quant=quant,
                       deepstream=str(deepstream) if deepstream else None, deepstream_scaling=deepstream_scaling,
                       profile=TrtProfile(min_batch, opt_batch, max_batch, workspace_mib))
    with reporter() as rep:
        result = api.export(cfg, rep)

    def render(r: dict[str, Any]) -> None:
        rows = [[k, v] for k, v in r.items() if not isinstance(v, (dict, list)) and k != "config"]
        if r.get("int8"):
            g = r["int8"]
            change = "–" if g["top1_change"] is None else f"{100 * g['top1_change']:+.2f} pt"
            kept = "–" if g.get("accuracy_ratio") is None else f"{100 * g['accuracy_ratio']:.1f} % of FP32's"
            rows += [["int8 agreement", f"{100 * g['top1_agreement']:.2f} % of {g['n']} held-out"],
                     ["int8 top-1 change", change], ["int8 top-1 kept", kept]]
        table("export", ["name", "value"], rows)
        tr = r.get("triton", r if "max_batch_size" in r else None)
        if tr:
            print(f"Triton model {tr['model']} in {tr['repo']}: tritonserver --model-repository={tr['repo']}")
        if r.get("deepstream"):
            ds = r["deepstream"]["deepstream"]
            print(f"DeepStream: nvinfer config-file-path={ds}/{CONFIG_FILE_DS} ({ds}/README.md has a pipeline)")

    emit(result, as_json, render)


def bench(
    bundle: Annotated[Path, typer.Argument(help="Export bundle to benchmark.")],
    data: Annotated[Path | None, typer.Option(help="Labeled test folder: adds top-1, agreement and end-to-end latency.")] = None,
    backend: Annotated[str, typer.Option(help="Comma-separated backends: torch,ort-cpu,ort-cuda,ort-trt,trt.")] = ",".join(_BENCH["backends"]),
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = ",".join(map(str, _BENCH["batches"])),
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing.")] = _BENCH["warmup"],
    iters: Annotated[int, typer.Option(help="Timed calls per (backend, batch).")] = _BENCH["iters"],
    seconds: Annotated[float | None, typer.Option(help="Time for at least this long instead (with at least --iters calls).")] = None,
    max_images: Annotated[int | None, typer.Option(help="Use at most this many test images.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write bench.json and bench.md here.")] = None,
    as_json: JSON = False,
) -> None:
    """Latency (p50/p90/p99, throughput, end to end) and accuracy of a bundle on each available backend."""
    from edgeprompt import api
    from edgeprompt.bench.run import BACKENDS, report_markdown
    from edgeprompt.config import split_list

    cfg = BenchConfig(bundle=str(bundle), data=str(data) if data else None,
                      backends=split_list(backend, "--backend", choices=BACKENDS),
                      batches=split_list(batch, "--batch", int), warmup=warmup, iters=iters, seconds=seconds,
                      max_images=max_images, out=str(out) if out else None)
    with reporter() as rep:
        result = api.bench(cfg, rep)
    emit(result, as_json, lambda r: print(report_markdown(r)))


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the app."""
    app.command(rich_help_panel="Deploy")(command(export))
    app.command(rich_help_panel="Deploy")(command(predict))
    app.command(rich_help_panel="Deploy")(command(bench))
