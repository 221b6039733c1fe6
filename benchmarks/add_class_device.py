"""Adding classes on the device: an ``--open-classes`` bundle changed with onnxruntime alone, against the torch path.

Tune CoOp (shared context) on 15 of the world's 20 shapes, export it with ``--open-classes``, then, in a fresh
interpreter where torch cannot be imported (as on a Jetson without it):
  - time ``change_bundle_classes`` adding one class (median of ``--repeats``; the text graph's share reported apart),
    and the whole ``edgeprompt classes BUNDLE --add NAME`` command from process start;
  - add the other 5 classes and predict the clean test split of all 20 with the changed bundle.
The same 5 classes added to the run with torch (``edgeprompt classes RUN``) and evaluated give the reference: the
two paths should agree on (nearly) every image.

    python benchmarks/add_class_device.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from base_to_new import N_NEW, manifest  # the same split and the same CSV writer (this folder is on sys.path)

import edgeprompt
from edgeprompt.config import ExportConfig, TrainConfig, TuneConfig
from edgeprompt.data import load_labeled
from edgeprompt.export import export_run
from edgeprompt.train.classes import change_classes
from edgeprompt.train.run import evaluate, tune
from edgeprompt.world import shapes

DEVICE = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
            raise ImportError(name + " is blocked: this is the device side")
sys.meta_path.insert(0, _Blocker())
import json, statistics, time
from pathlib import Path
from edgeprompt.runtime import load_bundle
from edgeprompt.runtime.classes import change_bundle_classes
bundle, out, threads, repeats = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
new, paths = json.loads(sys.argv[5]), json.loads(sys.argv[6])
one = [change_bundle_classes(bundle, out / "one", add=new[:1], overwrite=True, threads=threads)
       for _ in range(repeats)]
t0 = time.perf_counter()
five = change_bundle_classes(bundle, out / "five", add=new, overwrite=True, threads=threads)
add5 = time.perf_counter() - t0
p = load_bundle(out / "five", backend="ort-cpu", threads=threads)
labels = [r[0].label for r in p.predict(paths, top_k=1)]
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip"))
print(json.dumps({"add1_s": statistics.median(r["time_s"] for r in one),
                  "add1_text_graph_s": statistics.median(r["encode_s"] for r in one), "add5_s": add5,
                  "labels": labels, "torch_imported": leaked}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-add-class")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "test").is_dir():
        shapes.write_dataset(data, task="shape", per_class=16, seed=0, overwrite=True)
    test = load_labeled(data / "test")
    names = list(test.classnames)
    base, new = names[:-N_NEW], names[-N_NEW:]  # base_to_new.py's split
    rows = [(str(p.resolve()), test.classnames[y]) for p, y in zip(test.paths, test.labels, strict=True)]
    base_csv = manifest(out / "train-base.csv", data / "train", set(base))
    cache = str(out / "cache")
    run = out / "coop-base"
    tune(TuneConfig(train=str(base_csv), out=str(run), method="coop", shots=16, cache_dir=cache, overwrite=True,
                    method_options={"class_specific": False}, train_cfg=TrainConfig(seed=1, eval_every=0)))
    bundle = out / "bundle"
    export_run(ExportConfig(source=str(run), out=str(bundle), open_classes=True, overwrite=True))
    # torch: the same classes added to the run, evaluated on all 20
    added = change_classes(run, out / "coop-all", add=new, overwrite=True)["run_dir"]
    ref = evaluate(added, str(data / "test"), cache_dir=cache)
    # the device: a fresh interpreter without torch
    env = {**os.environ, "PYTHONPATH": str(Path(edgeprompt.__file__).parents[1])}
    dev = json.loads(subprocess.run(
        [sys.executable, "-c", DEVICE, str(bundle), str(out / "device"), str(args.threads), str(args.repeats),
         json.dumps(new), json.dumps([p for p, _ in rows])], capture_output=True, text=True, env=env,
        check=True).stdout)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from edgeprompt.cli.main import main; main(sys.argv[1:])",
                    "classes", str(bundle), "--add", new[0], "--out", str(out / "cli"), "--overwrite"],
                   env=env, check=True, capture_output=True)
    cli_s = time.perf_counter() - t0
    top1 = sum(lab == want for lab, (_, want) in zip(dev["labels"], rows, strict=True)) / len(rows)
    is_new = [want in new for _, want in rows]
    hits = [lab == want for lab, (_, want) in zip(dev["labels"], rows, strict=True)]
    new_top1 = sum(h for h, n in zip(hits, is_new, strict=True) if n) / sum(is_new)
    print(f"\nbundle: CoOp tuned on {len(base)} base classes, exported with --open-classes; added on the device: "
          f"{', '.join(new)}; {args.threads} threads\n")
    print("| | value |\n|---|---|")
    print(f"| add one class, change_bundle_classes (median of {args.repeats}) | {1000 * dev['add1_s']:.0f} ms |")
    print(f"| of which the text graph (tokenize + onnxruntime) | {1000 * dev['add1_text_graph_s']:.0f} ms |")
    print(f"| add five classes | {1000 * dev['add5_s']:.0f} ms |")
    print(f"| `edgeprompt classes BUNDLE --add NAME`, whole command from process start | {cli_s:.2f} s |")
    print(f"| top-1 on all 20 after adding on the device | {100 * top1:.1f} % |")
    print(f"| of which the 5 added classes' images | {100 * new_top1:.1f} % |")
    print(f"| the torch path (classes added to the run, evaluated) | {100 * ref['top1']:.1f} % |")
    print(f"| torch imported on the device side | {dev['torch_imported'] or 'no'} |")
    print(json.dumps({"add1_ms": 1000 * dev["add1_s"], "add1_text_graph_ms": 1000 * dev["add1_text_graph_s"],
                      "add5_ms": 1000 * dev["add5_s"], "cli_s": cli_s, "device_top1": top1, "device_new_top1": new_top1,
                      "torch_top1": ref["top1"], "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
