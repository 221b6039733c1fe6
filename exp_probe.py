import sys, torch, torch.nn.functional as F
from pathlib import Path
from edgeprompt.artifact import load_run
from edgeprompt.train.cache import FeatureCache
from edgeprompt.data import load_labeled
out = Path(sys.argv[1]); data = out / "data"
r = load_run(out / "runs" / "zs-s1")
cache = FeatureCache(r.backbone, out / "cache")
tr, te = load_labeled(data / "train"), load_labeled(data / "test")
xtr, _ = cache.features(tr.paths); xte, _ = cache.features(te.paths)
xtr, xte = F.normalize(xtr.float(), dim=-1), F.normalize(xte.float(), dim=-1)
ytr, yte = torch.tensor(tr.labels), torch.tensor(te.labels)
W = torch.zeros(xtr.shape[1], len(tr.classnames), requires_grad=True); b = torch.zeros(len(tr.classnames), requires_grad=True)
opt = torch.optim.Adam([W, b], lr=0.01)
for i in range(1000):
    opt.zero_grad(); l = F.cross_entropy(20 * xtr @ W + b, ytr) + 1e-4 * (W ** 2).sum(); l.backward(); opt.step()
lp = float(((xte @ W + b).argmax(-1) == yte).float().mean()) * 100
proto = F.normalize(torch.stack([xtr[ytr == c].mean(0) for c in range(len(tr.classnames))]), dim=-1)
pa = float(((xte @ proto.T).argmax(-1) == yte).float().mean()) * 100
print(f"linear probe {lp:.1f}  prototype {pa:.1f}  (train n={len(ytr)})")
# zero-shot per class
import numpy as np
from edgeprompt.train.trainer import predict as batched_logits
pred = batched_logits(r.method, xte).argmax(-1)
for c, n in enumerate(tr.classnames):
    m = yte == c
    print(f"  {n:12s} zs {float((pred[m]==c).float().mean())*100:5.1f}")
