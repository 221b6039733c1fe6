"""The per-stage configs: frozen and hashable, round-trip through JSON, resolved by protocol, and the CLI's source
of defaults."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

import pytest

from edgeprompt.config import (
    PROTOCOLS,
    BenchConfig,
    ExportConfig,
    SweepConfig,
    TrainConfig,
    TrtProfile,
    TuneConfig,
    defaults,
    from_dict,
    resolve_tune,
    split_list,
)
from edgeprompt.errors import ConfigError


def test_tune_config_round_trips_through_json() -> None:
    cfg = TuneConfig(train="d", out="r", method="coop", method_options={"loss": "gce", "n_ctx": 8}, noise="sym:0.5",
                     crop_scale=0.3, train_cfg=TrainConfig(epochs=7, lr=0.01, seed=3))
    back = TuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and hash(back) == hash(cfg)
    assert back.options == {"loss": "gce", "n_ctx": 8} and back.train_cfg.epochs == 7
    with pytest.raises(ConfigError, match="Did you mean 'noise'"):
        TuneConfig.from_dict({**cfg.to_dict(), "noize": "none"})


def test_configs_are_frozen_all_the_way_down() -> None:
    for cfg in (TuneConfig(train="d", out="r", method_options={"n_ctx": 4}), SweepConfig(train="a", test="b", out="c",
                method_options={"visprompt": {"ot_warmup": 2}}), ExportConfig(source="r"), BenchConfig(bundle="b"),
                TrtProfile()):
        hash(cfg)  # a mutable dict anywhere inside would make this raise
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.out = "x"  # type: ignore[misc]
    sweep = SweepConfig(train="a", test="b", out="c", methods=["coop"], method_options={"visprompt": {"ot_warmup": 2}})
    assert sweep.methods == ("coop",) and sweep.options_for("visprompt") == {"ot_warmup": 2}
    assert sweep.options_for("coop") == {} and sweep.to_dict()["method_options"] == {"visprompt": {"ot_warmup": 2}}


def test_protocols_resolve_epochs_context_and_crop() -> None:
    base = TuneConfig(train="d", out="r", method="coop")
    names = ["n_ctx", "ctx_init", "loss"]
    d = resolve_tune(base, 64, names)
    assert d.train_cfg.epochs == PROTOCOLS["default"].epochs and d.options == {} and d.crop_scale == 0.5
    assert resolve_tune(base, 224, names).crop_scale == 0.08 and resolve_tune(base, None, names).crop_scale == 0.08
    p = resolve_tune(dataclasses.replace(base, protocol="paper"), 224, names)
    assert p.train_cfg.epochs == 200 and p.options == {"ctx_init": ""}
    # what the user set wins over the protocol; options the method lacks are not added
    mine = TuneConfig(train="d", out="r", protocol="paper", method_options={"ctx_init": "a photo of"},
                      crop_scale=0.2, train_cfg=TrainConfig(epochs=5))
    r = resolve_tune(mine, 64, names)
    assert r.options == {"ctx_init": "a photo of"} and r.train_cfg.epochs == 5 and r.crop_scale == 0.2
    assert resolve_tune(dataclasses.replace(base, protocol="paper"), 64, ["template"]).options == {}
    ot = resolve_tune(dataclasses.replace(base, method="nlprompt", protocol="paper"), 64, names + ["ot_scorer"])
    assert ot.options == {"ctx_init": "", "ot_scorer": "model"}  # the papers score every OT split with the prompt
    vis = resolve_tune(dataclasses.replace(base, method="visprompt", protocol="paper"), 64,
                       names + ["ot_scorer", "noisy_target", "shift_scale", "gce_q"])
    # VisPrompt's released block (FiLM shift and FFN residual at unit scale) and GCE(0.5) towards the given labels
    assert vis.options == {"ctx_init": "", "ot_scorer": "model", "noisy_target": "given", "shift_scale": "none",
                           "gce_q": 0.5}
    gce = resolve_tune(dataclasses.replace(base, protocol="paper"), 64, names + ["gce_q"])
    assert "gce_q" not in gce.options  # "visprompt.gce_q" is VisPrompt's alone: CoOp-GCE keeps its own q
    with pytest.raises(ConfigError, match="Did you mean 'paper'"):
        resolve_tune(dataclasses.replace(base, protocol="papr"), 64, names)


def test_cli_defaults_come_from_the_configs() -> None:
    from edgeprompt.cli import deploy as commands_deploy
    from edgeprompt.cli import tune as commands_tune

    def default(fn: object, name: str) -> object:
        return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]

    train, tune = TrainConfig(), defaults(TuneConfig)
    for name in ("batch_size", "optimizer", "lr", "seed", "eval_every", "device"):
        assert default(commands_tune.tune, name) == getattr(train, name), name
    for name in ("method", "protocol", "model", "pretrained", "shots", "noise", "views"):
        assert default(commands_tune.tune, name) == tune[name], name
    profile, export = TrtProfile(), defaults(ExportConfig)
    for name in ("min_batch", "opt_batch", "max_batch", "workspace_mib"):
        assert default(commands_deploy.export, name) == getattr(profile, name), name
    assert default(commands_deploy.export, "opset") == export["opset"]
    assert default(commands_deploy.bench, "batch") == ",".join(map(str, BenchConfig(bundle="b").batches))


def test_validation_names_the_option() -> None:
    with pytest.raises(ConfigError, match="--batch-size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ConfigError, match="--device"):
        TrainConfig(device="gpu").validate()
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        TrtProfile(4, 2, 8).validate()
    with pytest.raises(ConfigError, match="--max-batch 5000"):
        TrtProfile(max_batch=5000).validate()
    assert split_list("1, 8,32", "--batch", int) == (1, 8, 32)
    with pytest.raises(ConfigError, match="--batch: 'x' is not a whole number"):
        split_list("1,x", "--batch", int)
    with pytest.raises(ConfigError, match="Did you mean 'ort-cpu'"):
        split_list("ort-cpo", "--backend", choices=["ort-cpu", "trt"])
    with pytest.raises(ConfigError, match="unknown TrainConfig key"):
        from_dict(TrainConfig, {"epoch": 3})


def test_the_shared_pieces_are_checked_in_one_place_for_every_verb() -> None:
    """tune, sweep, audit and extract compose the same backbone and feature fields, with the same bounds and
    messages; extract alone may cache the centre view only (0 views)."""
    from edgeprompt.config import MAX_VIEWS, AuditConfig, ExtractConfig, SweepConfig, TuneConfig

    makers = {"tune": lambda **kw: TuneConfig(train="t", out="o", **kw),
              "sweep": lambda **kw: SweepConfig(train="t", test="v", out="o", **kw),
              "audit": lambda **kw: AuditConfig(train="t", out="o", **kw),
              "extract": lambda **kw: ExtractConfig(data="d", **kw)}
    for verb, make in makers.items():
        make().validate()
        make(views=MAX_VIEWS).validate()
        for bad, needle in (({"views": MAX_VIEWS + 1}, "--views must be a whole number in"),
                            ({"views": True}, "--views"), ({"crop_scale": 0.0}, "--crop-scale must be in (0, 1]"),
                            ({"crop_scale": 1.5}, "--crop-scale"), ({"model": " "}, "--model must name"),
                            ({"pretrained": ""}, "--pretrained must name")):
            with pytest.raises(ConfigError, match=re.escape(needle)):
                make(**bad).validate()
        if verb == "extract":
            make(views=0).validate()
        else:
            with pytest.raises(ConfigError, match="--views"):
                make(views=0).validate()
    for make in (makers["tune"], makers["sweep"], makers["audit"]):
        with pytest.raises(ConfigError, match="--protocol must be one of"):
            make(protocol="papr").validate()
