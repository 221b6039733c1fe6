"""Frozen per-stage configs: tune (+ train), sweep, export (+ TensorRT profile), bench. Torch-free.

Each stage's function takes one of these; the CLI reads its defaults from them, so a default lives in one place.
The resolved config is saved with every run (``config.json``) and every bundle (in ``manifest.json``). Frozen means
hashable all the way down: options that are dicts to a user are stored as sorted ``(key, value)`` tuples and turned
back into dicts by ``to_dict``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from edgeprompt.errors import ConfigError
from edgeprompt.registry import suggest

C = TypeVar("C")
Options = tuple[tuple[str, Any], ...]  # a frozen {name: value} mapping
OPTIMIZERS = ("sgd", "adamw")
BENCH_BACKENDS = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")  # torch: the workstation reference
INT8_QUANTIZERS = ("modelopt", "ort")  # who places the Q/DQ nodes (docs/int8.md compares them)
INT8_CALIBRATORS = ("minmax", "percentile", "entropy")
INT8_FLOAT_GROUPS = ("head", "attention", "residual", "patch")  # node groups that can stay in float (docs/int8.md)


def freeze(value: Any) -> Any:
    """A hashable copy of a JSON-like value: mappings -> sorted (key, value) tuples, lists -> tuples."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def options_dict(options: Options | Mapping[str, Any]) -> dict[str, Any]:
    """``freeze``'s inverse for one level of options."""
    return dict(options.items() if isinstance(options, Mapping) else options)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise their fields in __post_init__ this way


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are at most 64-bit; 32 bits keep every derived seed in range


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        within = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be a whole number {within}, got {value!r}")


MAX_VIEWS = 64  # augmented views per image: above this the feature cache grows for no measured gain


@dataclass(frozen=True, kw_only=True)
class BackboneFields:
    """The frozen CLIP a verb runs on; one piece shared by tune, sweep, audit and extract."""

    model: str = "edgeprompt-tiny"  # open_clip model name
    pretrained: str = "shapes"  # pretrained tag, checkpoint path, or 'shapes' (the offline world's weights)

    def validate_backbone(self) -> None:
        for flag, value in (("--model", self.model), ("--pretrained", self.pretrained)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{flag} must name something, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class FeatureFields:
    """How images become cached features; one piece shared by tune, sweep, audit and extract."""

    MIN_VIEWS: ClassVar[int] = 1  # extract may cache the centre view alone (0)
    views: int = 8  # augmented views per image in the feature cache (1..MAX_VIEWS)
    crop_scale: float | None = None  # smallest random-resized-crop area; None = by image size (docs/defaults.md)
    cache_dir: str | None = None  # default: $EDGEPROMPT_CACHE or ~/.cache/edgeprompt

    def validate_features(self) -> None:
        _check_int("--views", self.views, self.MIN_VIEWS, MAX_VIEWS)
        c = self.crop_scale
        if c is not None and (isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c <= 1):
            raise ConfigError(f"--crop-scale must be in (0, 1], got {c!r}")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}."
                          f"{suggest(str(protocol), list(PROTOCOLS))}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (see docs/defaults.md for why these defaults).

    SGD with momentum, CoOp's weight decay and batch size, a constant warm-up epoch, then cosine decay per epoch.
    """

    epochs: int | None = None  # None: the protocol's (PROTOCOLS); CoOp uses 200 for 16 shots
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # None: the method's default under the protocol (METHOD_LR; docs/defaults.md)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant-lr warm-up epochs
    warmup_lr: float = 1e-5
    eval_every: int = 5  # evaluate on the validation split every N epochs (and at the end); 0 = only at the end
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}."
                              f"{suggest(self.optimizer, list(OPTIMIZERS))}")
        if self.epochs is not None:
            _check_int("--epochs", self.epochs, 0)
        _check_int("--batch-size", self.batch_size, 1)
        _check_int("--eval-every", self.eval_every, 0)
        _check_int("--seed", self.seed, 0, MAX_SEED)
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        for name, v in (("--lr", self.lr), ("warmup_lr", self.warmup_lr)):
            if name == "--lr" and v is None:
                continue
            if isinstance(v, bool) or not (isinstance(v, int | float) and 0 < v < float("inf")):
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        if not 0 <= self.momentum < 1 or not 0 <= self.weight_decay < 1:
            raise ConfigError("momentum must be in [0, 1) and weight decay in [0, 1)")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {dev!r}")


@dataclass(frozen=True)
class TuneConfig(BackboneFields, FeatureFields):
    """Everything ``edgeprompt tune`` needs; saved resolved as ``config.json`` in the run directory."""

    train: str  # labeled folder or CSV manifest
    out: str  # run directory to create
    method: str = "dspt"
    method_options: Options | Mapping[str, Any] = ()  # e.g. {"loss": "gce", "n_ctx": 16}; stored frozen
    protocol: str = "default"  # default (context starts from the template) | paper (16 random tokens, 200 epochs)
    shots: int = 16  # per class; 0 = all
    noise: str = "none"  # none | sym:R | asym:R | map:FILE:R
    val: str | None = None
    strict: bool = False  # unreadable images are fatal instead of skipped
    classnames_file: str | None = None
    overwrite: bool = False
    train_cfg: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _set(self, "method_options", freeze(dict(self.method_options)))

    @property
    def options(self) -> dict[str, Any]:
        """``method_options`` as a dict."""
        return options_dict(self.method_options)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_options"] = self.options
        return d

    def validate(self) -> None:
        """Every tune value a user gives, checked once at entry (what the protocol fills in is checked again by
        ``TrainConfig.validate`` after :func:`resolve_tune`)."""
        _check_int("--shots", self.shots, 0)
        self.validate_backbone()
        self.validate_features()
        check_protocol(self.protocol)
        self.train_cfg.validate()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TuneConfig:
        d = dict(d)
        train_cfg = from_dict(TrainConfig, d.pop("train_cfg", {}))
        return from_dict(cls, {**d, "train_cfg": train_cfg})


@dataclass(frozen=True)
class SweepConfig(BackboneFields, FeatureFields):
    """What ``edgeprompt sweep`` runs. ``noise`` holds groups like ``sym:0,0.25,0.5`` (kind, then rates)."""

    train: str
    test: str
    out: str
    methods: tuple[str, ...] = ("zeroshot", "coop", "dspt", "visprompt")
    losses: tuple[str, ...] = ("ce",)  # CoOp losses; each becomes its own row (coop-ce, coop-gce, …)
    noise: tuple[str, ...] = ("sym:0,0.25,0.5,0.75",)
    protocol: str = "default"  # as TuneConfig.protocol
    shots: int = 16
    seeds: int = 3
    epochs: int | None = None  # None: the protocol's default (TrainConfig.epochs, or 200 for the paper protocol)
    method_options: Options | Mapping[str, Any] = ()  # per method: {"visprompt": {"ot_warmup": 2}}; stored frozen
    # where the cells run (none of this changes a cell's result, so none of it is in a cell's key); docs/scale-out.md
    jobs: int = 1  # cells at once in local worker processes (each gets cpu_count // jobs threads); not with ray
    ray: bool = False  # False: one cell after another in this process; True: each cell is a Ray task
    ray_address: str | None = None  # None: ray.init()'s choice ($RAY_ADDRESS, a cluster on this host, or a new one)
    ray_cpus: float = 1.0  # logical CPUs per cell task (fractions below 1 allowed; torch gets floor(cpus) threads)
    ray_gpus: float = 0.0  # GPUs per cell task (e.g. 0.25: four cells share one GPU)

    def __post_init__(self) -> None:
        _set(self, "method_options", freeze(dict(self.method_options)))
        for name in ("methods", "losses", "noise"):
            value = getattr(self, name)
            _set(self, name, (value,) if isinstance(value, str) else tuple(value))

    def validate(self) -> None:
        """The grid's values, checked once at entry (the executor's: :meth:`validate_executor`)."""
        _check_int("--seeds", self.seeds, 1)
        _check_int("--shots", self.shots, 0)
        if self.epochs is not None:
            _check_int("--epochs", self.epochs, 0)
        self.validate_backbone()
        self.validate_features()
        check_protocol(self.protocol)

    def validate_executor(self) -> None:
        """Check the executor settings: --jobs, and Ray's (Ray itself is not imported)."""
        _check_int("--jobs", self.jobs, 1)
        if self.jobs > 1 and self.ray:
            raise ConfigError("--jobs runs cells in local processes, --ray on Ray: choose one (Ray: --ray-cpus)")
        if not self.ray:
            if self.ray_address is not None or (self.ray_cpus, self.ray_gpus) != (1.0, 0.0):
                raise ConfigError("--ray-address, --ray-cpus and --ray-gpus set how cells run on Ray: add --ray")
            return
        for name, value, low, allowed in (("--ray-cpus", self.ray_cpus, 0.0001, "a fraction in (0, 1]"),
                                          ("--ray-gpus", self.ray_gpus, 0.0, "0, a fraction in (0, 1]")):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value < float("inf")
            if not ok or (value > 1 and value != int(value)):  # Ray's rule: above 1, whole numbers only
                raise ConfigError(f"{name} must be {allowed} or a whole number, got {value!r}")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ConfigError("--ray-address is empty: give auto, HOST:PORT or ray://HOST:10001, or leave it out")

    def options_for(self, method: str) -> dict[str, Any]:
        """The overrides given for ``method`` (a dict)."""
        return options_dict(options_dict(self.method_options).get(method, ()))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_options"] = {m: options_dict(o) for m, o in options_dict(self.method_options).items()}
        return d


AUDIT_SCORERS = ("probe", "prompt")


@dataclass(frozen=True)
class AuditConfig(BackboneFields, FeatureFields):
    """``edgeprompt audit``: score every label of a folder or CSV, out of sample (docs/audit.md)."""

    train: str  # labeled folder or CSV manifest whose labels are audited (never modified)
    out: str  # report folder to create
    run: str | None = None  # a run directory whose backbone, method and options the audit reuses (re-fit per fold)
    method: str = "dspt"  # the robust prompt tuned on the other folds
    method_options: Options | Mapping[str, Any] = ()
    protocol: str = "default"
    scorer: str = "probe"  # the out-of-sample classifier: probe (logistic regression on frozen features) | prompt
    probe_c: float = 10.0  # the probe's inverse L2 strength (scikit-learn's C) on unit-norm features
    folds: int = 4  # K of the K-fold cross-fitting
    epochs: int | None = None  # per fold; None: the protocol's
    prior_weight: float | None = None  # the zero-shot prior's weight in the mixture; None: chosen (docs/audit.md)
    relabel_threshold: float = 0.5  # --write-fixed: a flagged sample is relabelled when its suggestion is this sure
    drop: bool = False  # --write-fixed: drop every flagged sample instead of relabelling
    force_fixed: bool = False  # --write-fixed even when the audit finds itself too weak to judge the labels
    write_fixed: str | None = None  # corrected CSV manifest to write
    top: int = 48  # images on the contact sheet
    seed: int = 0
    device: str = "auto"
    strict: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        _set(self, "method_options", freeze(dict(self.method_options)))

    @property
    def options(self) -> dict[str, Any]:
        return options_dict(self.method_options)

    def validate(self) -> None:
        _check_int("--folds", self.folds, 2)
        self.validate_backbone()
        self.validate_features()
        _check_int("--top", self.top, 0)
        _check_int("--seed", self.seed, 0, MAX_SEED)
        if self.epochs is not None:
            _check_int("--epochs", self.epochs, 0)
        for name in ("prior_weight", "relabel_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 <= v <= 1) and not (name == "prior_weight" and v is None):
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {v!r}")
        check_protocol(self.protocol)
        if self.scorer not in AUDIT_SCORERS:
            raise ConfigError(f"--scorer must be one of {', '.join(AUDIT_SCORERS)}, got {self.scorer!r}."
                              f"{suggest(str(self.scorer), list(AUDIT_SCORERS))}")
        if isinstance(self.probe_c, bool) or not isinstance(self.probe_c, int | float) or not 0 < self.probe_c < 1e9:
            raise ConfigError(f"--probe-c must be a positive number, got {self.probe_c!r}")
        if self.write_fixed is not None and not self.write_fixed.lower().endswith(".csv"):
            raise ConfigError(f"--write-fixed {self.write_fixed}: name a .csv file (a path,label manifest)")
        TrainConfig(device=self.device).validate()


@dataclass(frozen=True)
class ExtractConfig(BackboneFields, FeatureFields):
    """``edgeprompt extract``: fill the feature cache for a dataset ahead of tuning, split over processes."""

    MIN_VIEWS: ClassVar[int] = 0  # 0: only the centre view
    data: str  # labeled folder or CSV manifest
    tokens: bool = False  # also cache patch tokens (VisPrompt's keys/values)
    shard: str | None = None  # "i/n": this process takes every n-th image from the i-th; None: torchrun's RANK/WORLD
    workers: int | None = None  # DataLoader decoding workers (None: one per spare core, at most 8)
    batch_size: int = 64  # images per encoder call
    device: str = "auto"

    def validate(self) -> None:
        self.validate_backbone()
        self.validate_features()
        _check_int("--batch-size", self.batch_size, 1)
        if self.workers is not None:
            _check_int("--workers", self.workers, 0)
        parse_shard(self.shard)
        TrainConfig(device=self.device).validate()


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> torchrun's (RANK, WORLD_SIZE), or (0, 1) outside torchrun."""
    import os

    if text is None:
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        try:
            shard = int(rank), int(world)
        except ValueError:
            shard = (-1, 0)
        if not 0 <= shard[0] < shard[1]:
            raise ConfigError(f"torchrun's RANK={rank!r} and WORLD_SIZE={world!r} must be whole numbers with "
                              f"0 <= RANK < WORLD_SIZE: fix the launcher, or pass --shard i/n")
        return shard
    i, sep, n = text.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4")
    return shard


@dataclass(frozen=True)
class TrtProfile:
    """The TensorRT optimisation profile and builder limits (one dynamic axis: the batch)."""

    min_batch: int = 1
    opt_batch: int = 1  # the batch TensorRT tunes its kernels for: use the batch you will run
    max_batch: int = 32  # device buffers are sized for it
    workspace_mib: int = 2048

    def validate(self) -> None:
        for name in ("min_batch", "opt_batch", "max_batch", "workspace_mib"):
            _check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"batch sizes must satisfy min <= opt <= max, got min={self.min_batch} "
                              f"opt={self.opt_batch} max={self.max_batch}")
        if self.max_batch > 4096:
            raise ConfigError(f"--max-batch {self.max_batch} is over 4096, the largest batch an export supports")


TRITON_PLATFORMS = ("auto", "onnx", "trt")


@dataclass(frozen=True)
class TritonConfig:
    """``edgeprompt export BUNDLE --triton REPO``: the bundle becomes ``REPO/<name>/`` for Triton Inference Server."""

    repo: str  # the model repository (other models in it are left alone)
    name: str | None = None  # model name and folder; None: the bundle folder's name
    platform: str = "auto"  # auto (trt if the bundle has model.engine) | onnx (onnxruntime_onnx) | trt (tensorrt_plan)
    max_batch: int | None = None  # Triton's max_batch_size; None: the bundle's profile (the engine's, for trt)
    queue_delay_us: int = 100  # dynamic batching: how long a request may wait for others to batch with

    def validate(self) -> None:
        if self.platform not in TRITON_PLATFORMS:
            raise ConfigError(f"--triton-platform must be one of {', '.join(TRITON_PLATFORMS)}, got "
                              f"{self.platform!r}.{suggest(self.platform, list(TRITON_PLATFORMS))}")
        if self.max_batch is not None:
            _check_int("--max-batch", self.max_batch, 1)
        _check_int("--triton-queue-delay-us", self.queue_delay_us, 0)


@dataclass(frozen=True)
class Int8Config:
    """How ``export --int8`` calibrates, quantizes and gates the Q/DQ graph (why these defaults: docs/int8.md)."""

    calib: str | None = None  # calibration image folder; None: the run's own tuning images (centre views)
    calib_n: int = 256  # calibrate on at most this many images, spread evenly over the source
    calib_method: str = "percentile"  # minmax | percentile (99.999 %) | entropy
    quantizer: str = "modelopt"  # modelopt (TensorRT's placement) | ort (onnxruntime's quantize_static)
    keep_float: tuple[str, ...] = ("head", "attention")  # node groups left in float (INT8_FLOAT_GROUPS)
    check: str | None = None  # labeled held-out folder for the gate; None: run images not used for calibration
    n_check: int = 256  # held-out images in the gate
    # refuse the bundle when INT8's held-out top-1 is under this fraction of FP32's (MLPerf's reduced-precision rule),
    # less one held-out image's worth (at most half a point)
    min_accuracy: float = 0.99
    min_agreement: float = 0.0  # optional stricter bar: refuse under this INT8/FP32 top-1 agreement (0 = off)

    def __post_init__(self) -> None:
        kf = self.keep_float
        _set(self, "keep_float", (kf,) if isinstance(kf, str) else tuple(kf))

    def validate(self) -> None:
        for name, value, choices in (("--calib-method", self.calib_method, INT8_CALIBRATORS),
                                     ("--int8-quantizer", self.quantizer, INT8_QUANTIZERS)):
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}."
                                  f"{suggest(str(value), list(choices))}")
        for g in self.keep_float:
            if g not in INT8_FLOAT_GROUPS:
                raise ConfigError(f"--int8-float: unknown group {g!r}.{suggest(str(g), list(INT8_FLOAT_GROUPS))} "
                                  f"Choose from {', '.join(INT8_FLOAT_GROUPS)}")
        _check_int("--calib-n", self.calib_n, 1)
        _check_int("--int8-check-n", self.n_check, 1)
        for flag, m in (("--int8-min-agreement", self.min_agreement), ("--int8-min-accuracy", self.min_accuracy)):
            if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m <= 1:
                raise ConfigError(f"{flag} must be a fraction in [0, 1] (0.99 = 99 %), got {m!r}")


@dataclass(frozen=True)
class ExportConfig:
    """``edgeprompt export``: a run becomes a bundle (workstation), or a bundle gets its engine (target)."""

    source: str  # a run directory (from tune) or a bundle (from an earlier export)
    out: str | None = None  # bundle to create from a run; default RUN-bundle beside it
    # fp32 | fp16 (FP16 weights; FP32 I/O, LayerNorm, normalisation, class MatMul and softmax) | int8 (a calibrated
    # Q/DQ graph, model.fp32.onnx kept beside it; see quant). One value: the manifest records it, the device reads it.
    precision: str = "fp32"
    # float-nchw (float32 pixels in [0, 1]) | uint8-nhwc (the bytes: a quarter of the host-to-device traffic; the
    # graph scales, transposes and normalises; docs/video.md)
    input_format: str = "float-nchw"
    # also write the text side (text.onnx + tokenizer vocabulary) and keep the class rows as data, so the device can
    # add or remove classes with onnxruntime alone (docs/classes.md); shared-context methods only
    open_classes: bool = False
    opset: int = 17
    n_check: int = 32  # images of the run's tuning split in the parity gate
    exporter: str = "auto"  # auto | legacy | dynamo (docs/export.md)
    external_data: bool | None = None  # weights in model.onnx.data; None: only above ~1.8 GiB
    trt: bool = False  # build model.engine here (needs TensorRT and a GPU)
    profile: TrtProfile = field(default_factory=TrtProfile)
    triton: TritonConfig | None = None  # also write a Triton model repository (docs/scale-out.md)
    deepstream: str | None = None  # also write DeepStream nvinfer files to this folder (docs/video.md)
    deepstream_scaling: str = "squash"  # squash | pad: how nvinfer fits a frame to the square input
    quant: Int8Config = field(default_factory=Int8Config)  # calibration, quantizer and gate of --int8
    overwrite: bool = False  # replace an existing bundle, or an existing model of the same name in the Triton repo

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    def validate(self) -> None:
        from edgeprompt.manifest import INPUT_FORMATS, PRECISIONS

        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}")
        if self.input_format == "uint8-nhwc" and self.precision == "int8":
            raise ConfigError("--input-format uint8-nhwc with --int8 is not supported yet (calibration feeds float "
                              "pixels): export INT8 with float input, or uint8 input at fp32 / fp16")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
                              f"{suggest(str(self.precision), list(PRECISIONS))}")
        _check_int("--opset", self.opset, 1)
        _check_int("the number of check images", self.n_check, 1)
        self.profile.validate()
        if self.triton is not None:
            self.triton.validate()
        self.quant.validate()
        if self.deepstream_scaling not in ("squash", "pad"):
            raise ConfigError(f"--deepstream-scaling must be squash or pad, got {self.deepstream_scaling!r}")
        if self.int8 and self.external_data:
            raise ConfigError("--int8 writes single-file graphs: drop --external-data (graphs over 2 GiB cannot be "
                              "quantized here)")
        if self.int8:
            for flag, folder in (("--calib", self.quant.calib), ("--int8-check", self.quant.check)):
                if folder is not None and not os.path.isdir(folder):
                    raise ConfigError(f"{flag} {folder}: no such folder")


@dataclass(frozen=True)
class BenchConfig:
    """``edgeprompt bench``: which backends, batches and how long to time them."""

    bundle: str
    data: str | None = None  # labeled test folder: adds top-1, agreement and end-to-end latency
    backends: tuple[str, ...] = BENCH_BACKENDS
    batches: tuple[int, ...] = (1, 8, 32)
    warmup: int = 10  # untimed calls before timing
    iters: int = 50  # timed calls per (backend, batch)
    seconds: float | None = None  # time at least this long instead (with at least ``iters`` calls)
    e2e_iters: int = 10  # end-to-end (load + preprocess + run) calls per batch
    max_images: int | None = None  # use at most this many test images
    out: str | None = None  # write bench.json and bench.md here

    def __post_init__(self) -> None:
        _set(self, "backends", tuple(self.backends))
        _set(self, "batches", tuple(self.batches))


@dataclass(frozen=True)
class Protocol:
    """A named set of defaults for tuning: epochs, and method options applied where the method has them."""

    name: str
    epochs: int
    method_options: Options
    help: str


PROTOCOLS: dict[str, Protocol] = {
    "default": Protocol("default", 50, (), "context starts as the zero-shot template (free tokens, then "
                        "'a photo of a'), so step 0 is zero-shot CLIP; 50 epochs"),
    "paper": Protocol("paper", 200, (("ctx_init", ""), ("ot_scorer", "model"), ("noisy_target", "given"),
                                     ("shift_scale", "none"), ("visprompt.gce_q", 0.5)),
                      "the papers' protocol: 16 random context tokens, CoOp's 200-epoch schedule, the OT splits "
                      "scored by the prompt, VisPrompt's released block scale and GCE"),
}
# The method the README and the demo recommend for noisy labels, on the evidence in docs/defaults.md.
RECOMMENDED_NOISY_METHOD = "nlprompt"
COOP_LR = 0.002  # CoOp's paper rate (SGD, batch 32): every method's under the paper protocol
# The default protocol's learning rate per method (50 epochs from the template), chosen on world v3.1 over data seeds
# 0-2 with benchmarks/noisy_defaults.py; docs/defaults.md has the grid and why. Keys are a method, or METHOD+csc for
# its class-specific context (C contexts, each seeing 1/C of the gradient) where that needs another rate.
METHOD_LR: dict[str, float] = {"coop": 0.005, "dspt": 0.02, "nlprompt": 0.01, "visprompt": 0.01}
SMALL_IMAGE_SIDE = 160  # images whose shorter side is below this get SMALL_IMAGE_CROP (docs/defaults.md)
SMALL_IMAGE_CROP = 0.5
COOP_CROP = 0.08  # CoOp's random-resized-crop scale, for photos


def default_lr(method: str, protocol: str, class_specific: bool = False) -> float:
    """The learning rate a method tunes with when ``--lr`` is not given: METHOD_LR under the default protocol."""
    if protocol != "default":
        return COOP_LR
    return METHOD_LR.get(f"{method}+csc" if class_specific else method, METHOD_LR.get(method, COOP_LR))


def resolve_tune(cfg: TuneConfig, image_side: int | None, option_names: Sequence[str]) -> TuneConfig:
    """Fill what ``cfg`` leaves to the protocol and the data: epochs, learning rate, protocol method options, crop
    scale.

    Args:
        cfg: the config as the user gave it.
        image_side: median shorter side of the tuning images in pixels (None: unknown, photo-sized assumed).
        option_names: the options the method accepts (a protocol option is applied only where it exists).

    Returns:
        The resolved config, which is what the run directory records.
    """
    check_protocol(cfg.protocol)
    proto = PROTOCOLS[cfg.protocol]
    given = cfg.options
    # a protocol option applies where the method has it; "METHOD.KEY" only to that method (as --opt parses it)
    scoped: dict[str, Any] = {}
    for key, value in proto.method_options:
        owner, _, name = key.rpartition(".")
        if owner in ("", cfg.method):
            scoped[name] = value
    opts = {**{k: v for k, v in scoped.items() if k in option_names and k not in given}, **given}
    train_cfg = cfg.train_cfg
    if train_cfg.epochs is None:
        train_cfg = dataclasses.replace(train_cfg, epochs=proto.epochs)
    if train_cfg.lr is None:
        lr = default_lr(cfg.method, cfg.protocol, bool(opts.get("class_specific", False)))
        train_cfg = dataclasses.replace(train_cfg, lr=lr)
    crop = cfg.crop_scale
    if crop is None:
        crop = SMALL_IMAGE_CROP if image_side is not None and image_side < SMALL_IMAGE_SIDE else COOP_CROP
    return dataclasses.replace(cfg, method_options=opts, train_cfg=train_cfg, crop_scale=crop)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a config dataclass (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
    """Build dataclass ``cls`` from ``d``; unknown keys raise ConfigError with close matches."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for k in d:
        if k not in names:
            raise ConfigError(f"unknown {cls.__name__} key {k!r}.{suggest(k, names)}")
    return cls(**d)


def split_list(text: str, what: str, cast: type = str, choices: Sequence[str] | None = None) -> tuple[Any, ...]:
    """``"a,b,c"`` -> a tuple of ``cast`` values; bad items raise one ConfigError naming ``what``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what}: give at least one value (comma-separated)")
    out = []
    for t in items:
        try:
            v = cast(t)
        except ValueError:
            kind = {int: "whole number", float: "number"}.get(cast, cast.__name__)
            raise ConfigError(f"{what}: {t!r} is not a {kind}") from None
        if choices is not None and v not in choices:
            raise ConfigError(f"{what}: unknown {t!r}.{suggest(t, list(choices))} Choose from {', '.join(choices)}")
        out.append(v)
    return tuple(out)
