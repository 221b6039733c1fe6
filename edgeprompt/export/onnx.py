"""Trace an :class:`~edgeprompt.export.graph.ExportGraph` to ONNX: named I/O, dynamic batch, metadata, checked.

Exporter choice (``auto``, the default; why: docs/export.md): the TorchScript ``legacy`` exporter for FP32 folded
graphs (opset 17 exactly, one file, fast), ``dynamo`` (``torch.export``, opset >= 18) for VisPrompt's dynamic-text
graphs and for FP16 graphs, each falling back to the other if it fails. Opset 17 is the floor (LayerNormalization).
The model is re-saved as one self-contained ``model.onnx`` (or, above protobuf's 2 GiB, with ``model.onnx.data``
referenced by a relative path), so a bundle loads wherever it is copied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from io import StringIO
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import uses_external_data

from edgeprompt.errors import ExportError
from edgeprompt.export.graph import ExportGraph, export_mode
from edgeprompt.manifest import IOSpec
from edgeprompt.version import __version__

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "legacy", "dynamo")
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18  # the lowest opset torch's dynamo exporter implements
BATCH_AXIS = "batch"
# protobuf refuses messages over 2 GiB; leave room for the graph itself
_SINGLE_FILE_LIMIT = 1_800 * (1 << 20)


def _check_io(graph: ExportGraph, io: IOSpec) -> None:
    if len(io.inputs) != 1:
        raise ExportError(f"an export graph has one input (pixels), the IOSpec lists {io.input_names}")
    if tuple(io.output_names) != tuple(graph.output_names):
        raise ExportError(f"the graph returns {list(graph.output_names)} but the IOSpec lists {io.output_names}")
    size = graph.image_size
    want = (BATCH_AXIS, size, size, 3) if graph.uint8_input else (BATCH_AXIS, 3, size, size)
    if tuple(io.inputs[0].shape) != want:
        raise ExportError(f"IOSpec input shape {io.inputs[0].shape} does not match the graph's {want}")


def has_dynamo_flag() -> bool:
    """Whether ``torch.onnx.export`` takes ``dynamo=`` (torch >= 2.5); before it, the plain call is the legacy
    TorchScript exporter and the dynamo one is a separate function this package does not use."""
    import inspect

    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def legacy_flag() -> dict[str, bool]:
    """The keyword that asks ``torch.onnx.export`` for the legacy exporter on every supported torch."""
    return {"dynamo": False} if has_dynamo_flag() else {}


def _trace(graph: ExportGraph, dummy: torch.Tensor, path: Path, io: IOSpec, opset: int, exporter: str) -> None:
    """Run one torch exporter into ``path`` (weights may land in files beside it)."""
    common = {"input_names": io.input_names, "output_names": io.output_names, "opset_version": opset}
    if exporter == "legacy":
        axes = {name: {0: BATCH_AXIS} for name in (*io.input_names, *io.output_names)}
        torch.onnx.export(graph, (dummy,), str(path), dynamic_axes=axes, do_constant_folding=True, **legacy_flag(),
                          **common)
    else:
        if not has_dynamo_flag():
            raise ExportError(f"the dynamo exporter needs torch >= 2.5 (this is {torch.__version__})")
        common["opset_version"] = max(opset, DYNAMO_MIN_OPSET)
        batch = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
        chatter = StringIO()  # the dynamo exporter prints progress lines to stdout, which --json output owns
        with contextlib.redirect_stdout(chatter):
            torch.onnx.export(graph, (dummy,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                              external_data=True, optimize=True, verbose=False, **common)
        log.debug("torch.onnx (dynamo): %s", chatter.getvalue().strip())


def _run_exporter(graph: ExportGraph, dummy: torch.Tensor, path: Path, io: IOSpec, opset: int,
                  exporter: str) -> str:
    """Trace with the chosen exporter (``auto``: see the module docstring); return the one that worked."""
    if exporter == "auto":
        order = ["legacy", "dynamo"] if graph.folded and graph.precision == "fp32" else ["dynamo", "legacy"]
    else:
        order = [exporter]
    errors: list[str] = []
    for name in order:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught, export_mode(), torch.no_grad():
                warnings.simplefilter("always")
                _trace(graph, dummy, path, io, opset, name)
        except Exception as e:  # both exporters raise many error types (tracer, torch.export, onnxscript)
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}")
            log.warning("the %s ONNX exporter failed (%s)%s", name, errors[-1],
                        "; trying the next one" if name != order[-1] else "")
            continue
        for w in caught:
            log.debug("torch.onnx (%s): %s", name, w.message)
        log.info("traced with the %s exporter in %.1f s (%d warnings, see debug log)", name,
                 time.perf_counter() - t0, len(caught))
        return name
    raise ExportError(f"torch.onnx could not export the graph: {'; '.join(errors)}")


def _name_batch_axis(model: onnx.ModelProto, io: IOSpec) -> None:
    """Make dim 0 of every graph input and output the symbolic 'batch' (dynamo names it s0/s77/...)."""
    names = set(io.input_names) | set(io.output_names)
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name in names and vi.type.tensor_type.shape.dim:
            dim = vi.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = BATCH_AXIS


def _save(model: onnx.ModelProto, path: Path, external_data: bool | None) -> None:
    """One file when it fits (and unless asked otherwise); else weights in ``<name>.data`` beside it, relative."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if external_data is None:
        external_data = model.ByteSize() > _SINGLE_FILE_LIMIT
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))


def export_onnx(graph: ExportGraph, path: str | os.PathLike[str], io: IOSpec, *, opset: int = MIN_OPSET,
                exporter: str = "auto", metadata: dict[str, str] | None = None, external_data: bool | None = None,
                trace_batch: int = 2) -> Path:
    """Export ``graph`` to ``path`` with a dynamic batch axis, mirror ``metadata`` into it and check it.

    Args:
        graph: The module to trace (see :func:`edgeprompt.export.graph.build_graph`).
        path: The ``.onnx`` file to write.
        io: Input/output names and shapes (:meth:`IOSpec.classifier`); the batch axis is named 'batch'.
        opset: ONNX opset, >= 17.
        exporter: 'auto', 'legacy' or 'dynamo' (see the module docstring).
        metadata: Key/value strings for the model's ``metadata_props`` (the manifest's key fields).
        external_data: Store the weights in ``<name>.data`` beside the model (None: only above ~1.8 GiB).
        trace_batch: Batch of the tracing input; >= 2 so no reshape bakes in batch 1.

    Returns:
        ``path``.

    Raises:
        ExportError: Bad options, both exporters failed, or the ONNX checker rejects the model.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: use >= {MIN_OPSET} (LayerNormalization, TensorRT's FP16-safe "
                          f"normalisation layer)")
    if trace_batch < 2:
        raise ExportError("trace with a batch of at least 2: tracing at batch 1 can bake the batch into reshapes")
    _check_io(graph, io)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    size = graph.image_size
    dummy = (torch.randint(0, 256, (trace_batch, size, size, 3), generator=gen, dtype=torch.uint8)
             if graph.uint8_input else torch.rand(trace_batch, 3, size, size, generator=gen))
    with tempfile.TemporaryDirectory(prefix=".onnx-trace-", dir=path.parent) as tmp:
        traced = Path(tmp) / path.name
        used = _run_exporter(graph, dummy, traced, io, opset, exporter)
        model = onnx.load(str(traced))  # pulls in any external data the exporter wrote
    _name_batch_axis(model, io)
    model.producer_name, model.producer_version = "edgeprompt", __version__
    model.doc_string = "edgeprompt classifier: pixels in [0, 1] (normalised in-graph) -> logits, probs"
    props = {"edgeprompt.exporter": used, **(metadata or {})}
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    _save(model, path, external_data)
    try:
        onnx.checker.check_model(str(path))  # by path: handles external data and models over 2 GiB
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX graph is invalid: {str(e).splitlines()[0]}") from e
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    log.info("wrote %s (%.1f MB, opset %s, %s exporter)", path, _size_mb(path), opsets.get("ai.onnx"), used)
    return path


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in [path, *external_data_files(path, absolute=True)]) / 1e6


def external_data_files(path: str | os.PathLike[str], absolute: bool = False) -> list[Path]:
    """Files holding a model's external weights (relative to the model's folder unless ``absolute``)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    found: dict[str, None] = {}
    for t in model.graph.initializer:
        if uses_external_data(t):
            loc = next(e.value for e in t.external_data if e.key == "location")
            found[loc] = None
    return [path.parent / f if absolute else Path(f) for f in found]


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (read without loading its weights)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def onnx_summary(path: str | os.PathLike[str]) -> dict[str, object]:
    """Opset, I/O element types, and how many initializers are FP16 vs FP32 (to confirm an FP16 export)."""
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for t in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        counts[name] = counts.get(name, 0) + 1

    def elem(vi: onnx.ValueInfoProto) -> str:
        return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()

    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": {vi.name: elem(vi) for vi in model.graph.input},
        "outputs": {vi.name: elem(vi) for vi in model.graph.output},
        "initializers": counts,
        "ops": sorted({n.op_type for n in model.graph.node}),
    }
