"""World v2 experiment: quality of the current weights (edgeprompt-tiny/shapes in this tree)."""
import json, statistics, sys, time
from pathlib import Path
import torch
from edgeprompt import api
from edgeprompt.config import TrainConfig, TuneConfig

out = Path(sys.argv[1]); seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 50
cells = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
data = out / "data"
if not (data / "test").is_dir():
    api.data_shapes(data, task="shape", per_class=16, seed=0, overwrite=True)
T = "a photo of a"
CELLS = cells or [
    ("zs", "zeroshot", {}, "none"),
    ("coop-t4", "coop", {"ctx_init": T}, "none"),
    ("coop-t16", "coop", {"ctx_init": T, "n_ctx": 16}, "none"),
    ("coop-r16", "coop", {}, "none"),
    ("csc-t16", "coop", {"ctx_init": T, "n_ctx": 16, "class_specific": True}, "none"),
    ("coop-t16@50", "coop", {"ctx_init": T, "n_ctx": 16}, "sym:0.5"),
    ("dspt-t16@50", "dspt", {"ctx_init": T, "n_ctx": 16}, "sym:0.5"),
    ("dspt-t16@75", "dspt", {"ctx_init": T, "n_ctx": 16}, "sym:0.75"),
]
res = {}
torch.set_num_threads(2)
for seed in range(1, seeds + 1):
    for name, method, opts, noise in CELLS:
        t0 = time.perf_counter()
        run = out / "runs" / f"{name}-s{seed}"
        api.tune(TuneConfig(train=str(data / "train"), out=str(run), method=method, method_options=opts, shots=16,
                            noise=noise, crop_scale=0.5, cache_dir=str(out / "cache"), overwrite=True,
                            train_cfg=TrainConfig(epochs=epochs, seed=seed, eval_every=0)))
        top1 = api.evaluate(run, data / "test", cache_dir=str(out / "cache"))["top1"]
        res.setdefault(name, []).append(100 * top1)
        print(f"s{seed} {name:14s} {100*top1:5.1f}  ({time.perf_counter()-t0:.0f}s)", flush=True)
# linear probe on centre features
from edgeprompt.artifact import load_run
from edgeprompt.train.cache import FeatureCache
from edgeprompt.data import load_labeled
r = load_run(out / "runs" / "zs-s1")
cache = FeatureCache(r.backbone, out / "cache")
tr, te = load_labeled(data / "train"), load_labeled(data / "test")
xtr, _ = cache.features(tr.paths); xte, _ = cache.features(te.paths)
import torch.nn.functional as F
xtr, xte = F.normalize(xtr.float(), dim=-1), F.normalize(xte.float(), dim=-1)
ytr, yte = torch.tensor(tr.labels), torch.tensor(te.labels)
W = torch.zeros(xtr.shape[1], len(tr.classnames), requires_grad=True); b = torch.zeros(len(tr.classnames), requires_grad=True)
opt = torch.optim.LBFGS([W, b], max_iter=500)
def closure():
    opt.zero_grad(); l = F.cross_entropy(30 * xtr @ W + b, ytr) + 1e-3 * (W ** 2).sum(); l.backward(); return l
opt.step(closure)
lp = float(((xte @ W + b).argmax(-1) == yte).float().mean()) * 100
print("linear probe (all train images, centre):", round(lp, 1), "logit scale", r.backbone.logit_scale)
print(json.dumps({k: round(statistics.fmean(v), 1) for k, v in res.items()}))
