"""The command line: one-line errors (exit 2, no traceback), skippable data problems, --json, lazy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprompt.cli.main import app

runner = CliRunner()


def _tune_args(tiny_model: str, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["tune", str(data), "--out", str(out), "--model", tiny_model, "--pretrained", "none", "--shots", "4",
            "--epochs", "2", "--views", "2", "--cache-dir", str(cache), *extra]


def test_tune_with_corrupt_jpeg_text_file_and_empty_class(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    (image_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (image_folder / "green" / "README.txt").write_text("not an image")
    (image_folder / "purple").mkdir()
    out = tmp_path / "run"
    # --shots 0 uses every image, so every image is checked (a few-shot tune checks only the shots it draws:
    # tests/test_data.py::test_sample_checked_decodes_only_the_picks_and_redraws_unreadable_ones)
    res = runner.invoke(app, _tune_args(tiny_model, image_folder, out, cache_dir, "--method", "dspt", "--json",
                                        "--shots", "0"))
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    for name in ("broken.jpg", "README.txt", "purple"):
        assert name in res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["skipped_files"] == 3 and summary["classes"] == 3 and Path(summary["run_dir"]) == out
    # --strict makes the same problems fatal: one line, exit code 3 (bad data), nothing written
    res = runner.invoke(app, _tune_args(tiny_model, image_folder, tmp_path / "strict", cache_dir, "--strict",
                                        "--shots", "0"))
    assert res.exit_code == 3 and "Traceback" not in res.output, res.output
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "strict").exists()


def test_errors_are_one_line(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    cases = [  # (argv, needle, exit code: 2 a bad option, 3 bad data)
        (_tune_args(tiny_model, image_folder, tmp_path / "a", cache_dir, "--method", "dpst"), "Did you mean 'dspt'", 2),
        (_tune_args(tiny_model, image_folder, tmp_path / "b", cache_dir, "--noise", "sym:2"), "rate must be in", 2),
        (_tune_args(tiny_model, tmp_path / "missing", tmp_path / "c", cache_dir), "is not a directory", 3),
        (_tune_args("ViT-B-33", image_folder, tmp_path / "d", cache_dir), "Did you mean", 2),
    ]
    for args, needle, exit_code in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == exit_code, res.output
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_eval_rejects_a_test_set_with_other_classes(tiny_model, image_folder, cache_dir, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    assert runner.invoke(app, _tune_args(tiny_model, image_folder, out, cache_dir)).exit_code == 0
    (image_folder / "blue").rename(image_folder / "yellow")
    res = runner.invoke(app, ["eval", str(out), str(image_folder), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 3 and "yellow" in res.stderr  # bad data
    (image_folder / "yellow").rename(image_folder / "blue")
    res = runner.invoke(app, ["eval", str(out), str(image_folder), "--cache-dir", str(cache_dir), "--json"])
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.exit_code == 0 and report["n"] == 18 and set(report["per_class"]) == {"blue", "green", "red"}


def test_models_lists_methods_and_backbones() -> None:
    res = runner.invoke(app, ["models", "--json"])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"zeroshot", "coop", "dspt"} <= set(out["methods"])
    assert "openai" in out["backbones"]["ViT-B-16"]


def test_help_is_fast_and_torch_free() -> None:
    code = ("import sys; import edgeprompt.cli.main, edgeprompt.api; "
            "heavy = [m for m in ('torch', 'open_clip', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    res = subprocess.run([sys.executable, "-m", "edgeprompt.cli.main", "tune", "--help"], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0 and "--noise" in res.stdout and "sym:R" in res.stdout


def test_checks_reports_the_machine_and_known_bad_combinations(capsys) -> None:  # noqa: ANN001
    import json

    from edgeprompt.checks import known_problems
    from tests.helpers import run_cli

    code, out, _ = run_cli(["checks", "--json"], capsys)
    r = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and r["backends"]["ort-cpu"] == "ok" and "numpy" in r["versions"]
    both = known_problems({"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0", "typer": "0.20.0"}, {"gpus": []})
    assert len(both) == 1 and "shadows the GPU" in both[0]["problem"] and "uninstall" in both[0]["fix"]
    jetson = known_problems({"cuda-python": "13.0.1", "typer": "0.11.0"}, {"jetson_model": "NVIDIA Jetson AGX Orin"})
    assert [p["fix"] for p in jetson] == ["pip install 'cuda-python>=12,<13'", "pip install -U typer"]
    assert known_problems({"onnxruntime": "1.22.0", "typer": "0.20.0"}, {"gpus": []}) == []


def test_progress_lines_without_a_terminal_and_quiet_verbose(tiny_model, image_folder, cache_dir, tmp_path,  # noqa: ANN001
                                                            monkeypatch) -> None:  # noqa: ANN001
    from edgeprompt.cli import ui

    monkeypatch.setattr(ui, "PROGRESS_AFTER_S", 0.0)  # every step counts as long here
    res = runner.invoke(app, _tune_args(tiny_model, image_folder, tmp_path / "a", cache_dir))
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert any(x.startswith("tuning dspt: ") for x in lines) and any(x.startswith("checking images: ") for x in lines)
    quiet = runner.invoke(app, ["-q", *_tune_args(tiny_model, image_folder, tmp_path / "b", cache_dir)])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    loud = runner.invoke(app, ["-v", *_tune_args(tiny_model, image_folder, tmp_path / "c", cache_dir)])
    assert loud.exit_code == 0 and "info: " in loud.stderr


def test_export_precision_is_one_value_with_two_shorthands(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from tests.helpers import run_cli

    for args, words in ((["--fp16", "--int8"], "--int8 or --fp16, not both"),
                        (["--precision", "fp16", "--int8"], "--precision fp16 and --int8 disagree"),
                        (["--precision", "bf16"], "--precision must be one of fp32, fp16, int8")):
        code, _, err = run_cli(["export", str(tmp_path / "run"), *args], capsys)
        assert code == 2 and words in err, err


def test_threads_is_one_setting_for_torch_onnxruntime_and_decoding(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """``--threads N`` reaches onnxruntime's session and the DataLoader workers; a bad value is one line."""
    import os
    import subprocess
    import sys

    import edgeprompt
    from edgeprompt._threads import ENV, configured
    from edgeprompt.errors import ConfigError

    code = ("import sys\nfrom edgeprompt.cli.main import app\n"
            "app(['--threads', '1', 'models'], standalone_mode=False)\n"
            "import os, torch\nfrom edgeprompt.features.cache import default_workers\n"
            "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), default_workers())")
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(Path(edgeprompt.__file__).parents[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-3:] == ["1", "1", "0"]
    monkeypatch.setenv(ENV, "2")
    assert configured() == 2
    monkeypatch.setenv(ENV, "two")
    with pytest.raises(ConfigError, match="EDGEPROMPT_THREADS='two'"):
        configured()


def test_one_opt_syntax_for_every_verb() -> None:
    from edgeprompt.cli.ui import parse_options
    from edgeprompt.errors import ConfigError

    assert parse_options(["n_ctx=4", "coop.class_specific=true"], ["coop"]) == {
        "coop": {"n_ctx": 4, "class_specific": True}}
    # bare keys go to every method that has them; METHOD. to one
    got = parse_options(["ot_warmup=2", "coop.n_ctx=8", "ctx_init=a photo of a"], ["zeroshot", "coop", "visprompt"])
    assert got["visprompt"]["ot_warmup"] == 2 and "ot_warmup" not in got.get("coop", {})
    assert got["coop"]["n_ctx"] == 8 and got["coop"]["ctx_init"] == "a photo of a"
    for bad, words in ((["dspt.n_ctx=4"], "not a method of this command"), (["n_ctx"], "KEY=VALUE")):
        with pytest.raises(ConfigError, match=words):
            parse_options(bad, ["coop"])


def test_demo_caption_names_the_exported_method_and_any_row_that_kept_more() -> None:
    from edgeprompt.cli.start import demo_caption

    def row(label: str, method: str, noise: str, top1: float, kept: float) -> dict:
        return {"label": label, "method": method, "noise": noise, "test_top1": top1, "gain_kept": kept,
                "n_train": 320, "n_flipped": 160}

    rows = [row("zero-shot", "zeroshot", "none", 0.46, 0.0), row("CoOp, clean labels", "coop", "none", 0.894, 1.0),
            row("CoOp", "coop", "sym:0.5", 0.39, -0.161), row("DSPT", "dspt", "sym:0.5", 0.894, 1.0),
            row("NLPrompt", "nlprompt", "sym:0.5", 0.872, 0.951)]
    text = demo_caption({"rows": rows, "classes": list("abcdefghijklmnopqrst"), "noise": "sym:0.5"})
    assert "+43.4 points" in text and "keeps -16 %" in text
    assert "NLPrompt (recommended for noisy labels, exported below) keeps 95 %, DSPT 100 % here" in text
    rows[3]["gain_kept"] = 0.5  # the recommended method kept the most: no second name
    text = demo_caption({"rows": rows, "classes": list("abcdefghijklmnopqrst"), "noise": "sym:0.5"})
    assert "keeps 95 %" in text and "DSPT" not in text
