"""Runtime: load a tiny bundle on onnxruntime-CPU, predict, benchmark, report; and prove it all runs without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeprompt
from edgeprompt.bench import csv, environment, markdown_table, measure_latency
from edgeprompt.bench.latency import summarize
from edgeprompt.errors import ArtifactError, ConfigError, DataError, MissingDependencyError
from edgeprompt.manifest import IOSpec, TensorSpec
from edgeprompt.preprocess import preprocess_batch
from edgeprompt.runtime import BACKENDS, Prediction, available_backends, load_bundle, load_runtime, resolve_backend
from tests.helpers import BLOCK_TORCH, torch_leaks
from tests.tiny_bundle import CLASSES, SIZE, reference, weights, write_tiny_bundle

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(31, 17), (8, 8), (64, 100), (13, 40), (200, 9)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
            (sizes[i % len(sizes)] for i in range(n))]


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    write_tiny_bundle(tmp_path / "bundle")
    return tmp_path / "bundle"


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_predictions_match_numpy_reference(tmp_path: Path, external: bool) -> None:
    manifest = write_tiny_bundle(tmp_path / "b", external_data=external)
    images = _images(7)
    with load_bundle(tmp_path / "b", backend="ort-cpu", batch_size=3, threads=1) as predictor:
        assert predictor.runtime.name == "ort-cpu"
        assert predictor.runtime.provider == "CPUExecutionProvider"
        preds = predictor.predict(images, top_k=3)
        probs = predictor.probabilities(images)
    _, ref_probs = reference(preprocess_batch(images, manifest.preprocess), manifest.preprocess, weights())
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    assert len(preds) == len(images)
    for p, row in zip(preds, ref_probs, strict=True):
        assert [x.index for x in p] == list(np.argsort(-row, kind="stable")[:3])
        assert all(isinstance(x, Prediction) and x.label == CLASSES[x.index] for x in p)
        assert p[0].probability == pytest.approx(float(row.max()), abs=1e-5)
        assert json.dumps([x.to_dict() for x in p])  # serialisable for `predict --json`


def test_paths_and_top_k_capped(bundle: Path, tmp_path: Path) -> None:
    paths = []
    for i, img in enumerate(_images(3)):
        paths.append(tmp_path / f"img{i}.png")
        img.save(paths[-1])
    predictor = load_bundle(bundle, backend="ort-cpu", threads=1)
    from_paths = predictor.predict(paths, top_k=50)
    from_images = predictor.predict(_images(3), top_k=50)
    assert all(len(p) == len(CLASSES) for p in from_paths)
    assert [[x.index for x in p] for p in from_paths] == [[x.index for x in p] for p in from_images]
    with pytest.raises(ConfigError, match="top-k must be >= 1"):
        predictor.predict(paths, top_k=0)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    with pytest.raises(DataError, match="broken.jpg"):
        predictor.predict([*paths, tmp_path / "broken.jpg"])


def test_normalisation_and_softmax_outside_the_graph(tmp_path: Path) -> None:
    """A graph without in-graph mean/std and with logits only: the predictor normalises and applies the softmax."""
    manifest = write_tiny_bundle(tmp_path / "b", normalize_in_graph=False, probs=False)
    images = _images(4)
    probs = load_bundle(tmp_path / "b", backend="ort-cpu", threads=1).probabilities(images)
    _, ref = reference(preprocess_batch(images, manifest.preprocess), manifest.preprocess, weights())
    np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_runtime_rejects_bad_pixels(bundle: Path) -> None:
    runtime = load_runtime(bundle, "ort-cpu", threads=1)
    with pytest.raises(DataError, match="shape"):
        runtime.run(np.zeros((2, 3, SIZE + 1, SIZE), np.float32))
    out = runtime.run(np.zeros((2, 3, SIZE, SIZE), np.float64))  # converted to float32
    assert out["logits"].shape == (2, len(CLASSES)) and out["probs"].dtype == np.float32


def test_available_backends_explain_what_is_missing() -> None:
    import onnxruntime as ort

    from edgeprompt._optional import available

    status = available_backends()
    assert set(status) == set(BACKENDS)
    assert status["ort-cpu"] is None
    for name, reason in status.items():
        assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason), name
    if not available("tensorrt"):
        assert status["trt"] is not None and "TensorRT" in status["trt"]
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        assert "onnxruntime-gpu" in (status["ort-cuda"] or "")
    if "TensorrtExecutionProvider" not in providers:
        assert status["ort-trt"]


def test_backend_selection_and_errors(bundle: Path, tmp_path: Path) -> None:
    status = available_backends()
    auto = resolve_backend("auto", bundle)
    assert status[auto] is None and auto != "ort-trt"
    if status["ort-cuda"] is not None:
        with pytest.raises(MissingDependencyError, match="ort-cuda"):
            load_bundle(bundle, backend="ort-cuda")
    if status["trt"] is not None:
        with pytest.raises(MissingDependencyError, match="trt"):
            load_bundle(bundle, backend="trt")
    with pytest.raises(ConfigError, match="tensorrt-fast"):
        load_bundle(bundle, backend="tensorrt-fast")
    with pytest.raises(ArtifactError, match="manifest.json"):
        load_bundle(tmp_path / "nowhere", backend="ort-cpu")


def test_bundle_integrity_errors(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "run", kind="run")
    with pytest.raises(ArtifactError, match="not a bundle"):
        load_bundle(tmp_path / "run", backend="ort-cpu")

    write_tiny_bundle(tmp_path / "b")
    with (tmp_path / "b" / "model.onnx").open("ab") as f:
        f.write(b"\x00")  # still loads, but no longer matches the manifest's sha256
    with pytest.raises(ArtifactError, match="sha256"):
        load_bundle(tmp_path / "b", backend="ort-cpu", verify=True)

    io = IOSpec(inputs=(TensorSpec("image", ("batch", 3, SIZE, SIZE)),), outputs=IOSpec.classifier(SIZE, 5).outputs)
    write_tiny_bundle(tmp_path / "wrong-io", io=io)
    with pytest.raises(ArtifactError, match="expects"):
        load_bundle(tmp_path / "wrong-io", backend="ort-cpu")

    (tmp_path / "b" / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx"):
        load_bundle(tmp_path / "b", backend="ort-cpu")


def test_latency_and_reports(bundle: Path) -> None:
    runtime = load_runtime(bundle, "ort-cpu", threads=1)
    res = measure_latency(runtime, batch=4, warmup=2, iters=20)
    assert res.backend == "ort-cpu" and res.provider == "CPUExecutionProvider"
    assert res.iters == 20 and res.warmup_iters == 2 and res.batch == 4 and res.input_shape == (3, SIZE, SIZE)
    assert 0 < res.min_ms <= res.p50_ms <= res.p90_ms <= res.p99_ms <= res.max_ms
    # known call times -> known statistics (percentiles by linear interpolation, as numpy's default)
    known = summarize(np.array([0.001, 0.002, 0.003, 0.010]), backend="x", provider="y", batch=8, warmup_iters=0,
                      shape=(3, SIZE, SIZE))
    assert (known.p50_ms, known.mean_ms, known.min_ms, known.max_ms) == pytest.approx((2.5, 4.0, 1.0, 10.0))
    assert known.p90_ms == pytest.approx(7.9) and known.throughput == pytest.approx(2000.0)  # 8 images / 4 ms
    timed = measure_latency(runtime, batch=1, warmup=0, warmup_seconds=0.01, iters=1, seconds=0.05)
    assert timed.iters >= 1 and timed.warmup_iters >= 1
    with pytest.raises(ConfigError, match="need batch >= 1"):
        measure_latency(runtime, batch=0)

    rows = [res.to_dict(), {**timed.to_dict(), "provider": "a|b"}]
    table = markdown_table(rows, ["backend", "provider", "batch", "p50_ms", "throughput"])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| backend") and lines[1].endswith(":|")
    assert "a\\|b" in table and f"{res.p50_ms:.2f}" in table
    text = csv(rows, ["backend", "batch", "p50_ms"])
    assert text.splitlines()[0] == "backend,batch,p50_ms" and len(text.splitlines()) == 3
    assert markdown_table([]) == ""

    env = environment()
    for key in ("cpu", "cpu_count", "os", "python", "numpy", "onnxruntime", "tensorrt", "gpus", "jetson_model"):
        assert key in env
    assert env["numpy"] == np.__version__ and isinstance(env["gpus"], list)
    assert json.dumps(env)


_NO_TORCH = BLOCK_TORCH + textwrap.dedent("""
    import edgeprompt.bench
    import edgeprompt.export.tensorrt as ept
    import edgeprompt.preprocess
    import edgeprompt.runtime
    from edgeprompt.bench import measure_latency
    from edgeprompt.runtime import available_backends, load_bundle

    bundle, image = sys.argv[1], sys.argv[2]
    predictor = load_bundle(bundle, backend="ort-cpu", threads=1)
    top = predictor.predict([image], top_k=2)[0]
    measure_latency(predictor.runtime, batch=2, warmup=1, iters=3)
    available_backends()
    ept.trtexec_command("model.onnx", "model.engine", predictor.runtime.io, trt_major=10)
    print(top[0].label)
""") + torch_leaks()


def test_runtime_works_without_torch(bundle: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    _images(1)[0].save(image)
    expected = load_bundle(bundle, backend="ort-cpu", threads=1).predict([image], top_k=1)[0][0].label
    env = {**os.environ, "PYTHONPATH": str(Path(edgeprompt.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(bundle), str(image)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_predict_streams_jsonl_and_csv_and_reads_paths_from_stdin(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    import io
    import json

    from tests.conftest import make_folder
    from tests.helpers import run_cli

    write_tiny_bundle(tmp_path / "b")
    data = make_folder(tmp_path / "imgs", per_class=2, size=16)
    files = sorted(str(p) for p in data.rglob("*.png"))
    code, out, err = run_cli(["predict", str(tmp_path / "b"), str(data), "--format", "jsonl", "-k", "2"], capsys)
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [x["image"] for x in lines] == files and all(len(x["top"]) == 2 for x in lines)
    want = {x["image"]: x["top"] for x in json.loads(run_cli(["predict", str(tmp_path / "b"), str(data), "-k", "2",
                                                                "--json"], capsys)[1].splitlines()[-1])["predictions"]}
    assert {x["image"]: x["top"] for x in lines} == want  # streaming gives the batch answer
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(files[:3]) + "\n\n"))
    code, out, _ = run_cli(["predict", str(tmp_path / "b"), "-", "--format", "csv", "-k", "1"], capsys)
    rows = out.splitlines()
    assert code == 0 and rows[0] == "image,label1,p1" and [r.split(",")[0] for r in rows[1:]] == files[:3]
    code, _, err = run_cli(["predict", str(tmp_path / "b"), str(data), "--format", "yaml"], capsys)
    assert code == 2 and "--format" in err


def test_numpy_frames_match_the_path_route(tmp_path: Path) -> None:
    """An OpenCV-style BGR frame (or an RGB one, said so) gives the pixels and predictions of the same image file."""
    import numpy as np
    from PIL import Image

    from edgeprompt.errors import ConfigError
    from edgeprompt.preprocess import preprocess_batch

    write_tiny_bundle(tmp_path / "b")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "f.png")
    with load_bundle(tmp_path / "b", backend="ort-cpu") as p:
        spec = p.manifest.preprocess
        want = preprocess_batch([tmp_path / "f.png"], spec)
        assert np.array_equal(preprocess_batch([rgb], spec, "rgb"), want)
        assert np.array_equal(preprocess_batch([rgb[..., ::-1]], spec, "bgr"), want)
        assert p.predict([rgb[..., ::-1]], top_k=2, channels="bgr") == p.predict([tmp_path / "f.png"], top_k=2)
        with pytest.raises(ConfigError, match="channels='rgb' or 'bgr'"):
            p.predict([rgb])
        with pytest.raises(ConfigError, match=r"\(H, W, 3\) uint8"):
            p.predict([rgb.astype(np.float32)], channels="rgb")


def test_manifests_of_the_previous_schema_still_load_with_their_precision(tmp_path: Path) -> None:
    """Schema 1 kept the precision in extra["export"]; it is read from there once, and written back as schema 2."""
    from edgeprompt.manifest import SCHEMA_VERSION, Manifest

    write_tiny_bundle(tmp_path / "b")
    d = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert d["schema_version"] == SCHEMA_VERSION == 2 and d["precision"] == "fp32"
    old = {k: v for k, v in d.items() if k != "precision"} | {"schema_version": 1}
    old["extra"] = {**old["extra"], "export": {"precision": "fp16"}}
    m = Manifest.from_dict(old)
    assert m.precision == "fp16" and m.to_dict()["schema_version"] == 2 and m.to_dict()["precision"] == "fp16"
    assert Manifest.from_dict({k: v for k, v in old.items() if k != "extra"}).precision == "fp32"
    with pytest.raises(ArtifactError, match="precision 'fp8'"):
        Manifest.from_dict(d | {"precision": "fp8"})
    with pytest.raises(ArtifactError, match="reads 1, 2"):
        Manifest.from_dict(d | {"schema_version": 3})
