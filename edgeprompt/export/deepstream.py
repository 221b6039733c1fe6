"""``edgeprompt export BUNDLE --deepstream DIR``: the files DeepStream's ``nvinfer`` needs to run a bundle as a
classifier in a camera pipeline. Torch-free; it runs where the bundle is deployed.

```
DIR/
  config_infer_primary.txt   nvinfer's key file: network-type=1 (classifier), the graph, labels, scaling, precision
  labels.txt                 the class names on one line, separated by ';' (nvinfer's classifier format)
  model.onnx                 the bundle's graph (+ model.onnx.data), which nvinfer builds an engine from, or
  model.engine               the bundle's engine when it was built with --trt on this device
  README.md                  an example gst-launch-1.0 pipeline and what nvinfer does differently from edgeprompt
```

How the numbers follow from the bundle: nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels
and cannot divide by a per-channel std, so it feeds ``x / 255`` (``net-scale-factor=1/255``, offsets 0) and the
graph's own normalisation does the rest: bundles normalise in the graph by default, and one that does not is refused.
What nvinfer cannot do is our centre crop: it scales the whole frame (or object) to the network's square, squashing
it (``maintain-aspect-ratio=0``) or padding it (``maintain-aspect-ratio=1``). docs/video.md measures the cost.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeprompt.errors import ArtifactError, ConfigError
from edgeprompt.fileio import atomic_dir, guard_output, output_lock
from edgeprompt.manifest import ENGINE_FILE, ONNX_FILE, OUTPUT_PROBS, Manifest, read_bundle_manifest
from edgeprompt.version import __version__

CONFIG_FILE = "config_infer_primary.txt"
LABELS_FILE = "labels.txt"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode values
SCALINGS = ("squash", "pad")  # maintain-aspect-ratio 0 | 1 (padding symmetric, like a letterbox)


def nvinfer_config(manifest: Manifest, *, engine: bool, batch_size: int, scaling: str = "squash") -> dict[str, str]:
    """The ``[property]`` group of nvinfer's config for a bundle, key -> value, in the order written."""
    spec = manifest.preprocess
    io = manifest.io
    if io is None:
        raise ArtifactError("the bundle manifest has no graph I/O: re-export it")
    if io.inputs[0].dtype != "float32":
        raise ArtifactError("this bundle's graph takes uint8 NHWC pixels, and nvinfer feeds float planar (NCHW) "
                            "input: export it with --input-format float-nchw for DeepStream")
    if not spec.normalize_in_graph:
        raise ArtifactError("this bundle normalises outside its graph, which nvinfer cannot do per channel "
                            "(one net-scale-factor for all three): re-export it without changing normalisation")
    if scaling not in SCALINGS:
        raise ConfigError(f"DeepStream scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    outputs = [t.name for t in io.outputs]
    if OUTPUT_PROBS not in outputs:
        raise ArtifactError(f"nvinfer's classifier reads probabilities, and this graph outputs only {outputs}: "
                            f"re-export it")
    precision = manifest.precision
    size = spec.image_size
    props = {
        "gpu-id": "0",
        "net-scale-factor": repr(1 / 255),  # the graph takes RGB in [0, 1] and normalises itself
        "offsets": "0;0;0",
        "model-color-format": "0",  # RGB
        "onnx-file": ONNX_FILE,
    }
    if engine:
        props["model-engine-file"] = ENGINE_FILE
    props.update({
        "labelfile-path": LABELS_FILE,
        "infer-dims": f"3;{size};{size}",
        "batch-size": str(batch_size),
        "network-mode": str(NETWORK_MODES.get(precision, 0)),
        "network-type": "1",  # classifier
        "process-mode": "1",  # primary: the whole frame; 2 classifies the objects of an upstream detector
        "output-blob-names": OUTPUT_PROBS,
        "classifier-threshold": "0.0",  # attach the top class whatever its probability; raise it to filter
        "maintain-aspect-ratio": "1" if scaling == "pad" else "0",
        "symmetric-padding": "1" if scaling == "pad" else "0",
        "scaling-filter": "1",  # bilinear; the bundle was checked with bicubic (docs/video.md)
        "gie-unique-id": "1",
        "output-tensor-meta": "1",  # the probabilities for a pad probe, whatever the version does with classifier meta
    })
    return props


def config_text(props: dict[str, str], header: str) -> str:
    """nvinfer's GLib key-file text: comment lines, then ``[property]`` and ``key=value`` lines."""
    lines = [f"# {line}" for line in header.splitlines()] + ["[property]"] + [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _readme(manifest: Manifest, size: int) -> str:
    return f"""# DeepStream (nvinfer) files for this bundle

Written by edgeprompt {__version__}: {manifest.method}, {manifest.num_classes} classes, {size} x {size} input.

A primary classifier on a 1280 x 720 video file. nvinfer cannot centre-crop, so `nvvideoconvert src-crop` cuts the
centre square first (left:top:width:height), as edgeprompt's own preprocessing does; nvinfer then only scales a
square to {size} x {size}. nvinfer builds a TensorRT engine from model.onnx on its first run when model.engine is
absent or was built for another GPU or TensorRT version (minutes on a Jetson):

    gst-launch-1.0 filesrc location=clip.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! \\
        nvvideoconvert src-crop=280:0:720:720 ! m.sink_0 nvstreammux name=m batch-size=1 width=720 height=720 ! \\
        nvinfer config-file-path={CONFIG_FILE} ! nvvideoconvert ! nvdsosd ! fakesink

nvinfer attaches the top class as classifier metadata (NvDsClassifierMeta; where it hangs for a full-frame
classifier depends on the DeepStream version, see nvinfer's documentation) and, with output-tensor-meta=1 as written
here, every class probability as tensor metadata (NvDsInferTensorMeta) for a pad probe after nvinfer. To classify the
objects of a detector instead, set process-mode=2 and operate-on-gie-id to the detector's gie-unique-id.

What differs from `edgeprompt predict`: edgeprompt resizes the shorter side and crops the centre square (as CLIP
was trained); nvinfer scales the whole frame to {size} x {size}, squashing it (maintain-aspect-ratio=0, written
here) or padding it (maintain-aspect-ratio=1 with symmetric-padding=1), with bilinear filtering. On square frames the
two agree up to the filter; on wide frames both lose most of the accuracy unless the frame is cropped to its centre
square first (the src-crop above). edgeprompt's docs/video.md has the measurement.
"""


def write_deepstream(bundle_dir: str | Path, out: str | Path, *, batch_size: int = 1, scaling: str = "squash",
                     overwrite: bool = False) -> dict[str, Any]:
    """Write ``out/`` for DeepStream's nvinfer from an exported bundle (atomically).

    Args:
        bundle_dir: A bundle (with ``model.engine`` when built with ``--trt``; it is used as is).
        out: The folder to create.
        batch_size: nvinfer's batch-size (frames per inference); capped by the engine's profile.
        scaling: ``squash`` or ``pad`` (see :data:`SCALINGS`).
        overwrite: Replace an existing folder (only once the new one is complete).

    Returns:
        A summary: the folder, the files, the config text.

    Raises:
        ArtifactError: Not a bundle, or a bundle nvinfer cannot run as written (see :func:`nvinfer_config`).
        ConfigError: A bad batch or scaling, or ``out`` exists without ``overwrite``.
    """
    bundle = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle)
    if "classes_changed" in manifest.extra:
        raise ConfigError("nvinfer reads the graph's own logits, which still have the classes of the export; this "
                          "bundle's class list was changed since (edgeprompt classes): use the bundle it came from")
    if batch_size < 1:
        raise ConfigError(f"the DeepStream batch size must be >= 1, got {batch_size}")
    bad = [c for c in manifest.classnames if ";" in c or "\n" in c or not c.strip()]
    if bad:
        raise ArtifactError(f"class name {bad[0]!r} cannot be written to nvinfer's labels file (one line, ';' "
                            f"between names): rename the class")
    engine = (bundle / ENGINE_FILE).is_file()
    profile = (manifest.extra.get("export") or {}).get("profile") or {}
    if engine and profile.get("max_batch") and batch_size > int(profile["max_batch"]):
        raise ConfigError(f"batch {batch_size} is above the engine's profile (max {profile['max_batch']}): "
                          f"choose a smaller batch or rebuild the engine with --max-batch")
    props = nvinfer_config(manifest, engine=engine, batch_size=batch_size, scaling=scaling)
    final = guard_output(out, "DeepStream folder", {"the bundle": bundle}, overwrite=overwrite, flag="--deepstream")
    files = [ONNX_FILE, *(f for f in (f"{ONNX_FILE}.data", ENGINE_FILE) if (bundle / f).is_file())]
    precision = manifest.precision
    header = (f"nvinfer classifier written by edgeprompt {__version__} from the bundle {bundle.resolve().name} "
              f"({manifest.method}, {precision} graph).\nThe graph normalises in itself: keep net-scale-factor "
              f"1/255 and offsets 0. README.md has a pipeline.")
    text = config_text(props, header)
    with output_lock(final), atomic_dir(final, overwrite=overwrite) as tmp:
        for f in files:
            shutil.copyfile(bundle / f, tmp / f)
        (tmp / LABELS_FILE).write_text(";".join(manifest.classnames) + "\n", encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
        (tmp / "README.md").write_text(_readme(manifest, manifest.preprocess.image_size), encoding="utf-8")
    return {"deepstream": str(final), "files": sorted([CONFIG_FILE, LABELS_FILE, "README.md", *files]),
            "batch_size": batch_size, "scaling": scaling, "config": text}
