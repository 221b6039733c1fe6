"""Helpers shared by test modules: the CLI in this process, and a tiny tuned run and its export."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from edgeprompt.cli.main import main
from edgeprompt.config import TrainConfig, TuneConfig


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``edgeprompt ARGV`` in this process; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def tune_run(model: str, method: str, data: Path, out: Path, cache: Path, **options: object) -> Path:
    """A tiny tuning run (2 epochs, 1 view) through the public API; returns the run directory."""
    from edgeprompt.api import tune

    cfg = TuneConfig(train=str(data), out=str(out), method=method, model=model, pretrained="none", shots=0,
                     views=1, cache_dir=str(cache), method_options=dict(options),
                     train_cfg=TrainConfig(epochs=2, batch_size=8, device="cpu", eval_every=0))
    return Path(tune(cfg)["run_dir"])


def export_run(run: Path | str, out: Path | str, **kw: Any) -> dict[str, Any]:
    """``edgeprompt.export.export_run`` with an ExportConfig built from keywords."""
    from edgeprompt.config import ExportConfig
    from edgeprompt.export import export_run as run_export

    return run_export(ExportConfig(source=str(run), out=str(out), **kw))


# A script prelude that makes any import of torch, torchvision or open_clip fail, as on a Jetson without them; a
# device-side test runs its code after it in a fresh interpreter.
BLOCK_TORCH = textwrap.dedent("""
    import sys

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _Blocker())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("blocker failed")
""")


def torch_leaks() -> str:
    """A script line that fails when torch, torchvision or open_clip was imported after all."""
    return ("leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'open_clip'))\n"
            "assert not leaked, leaked\n")
