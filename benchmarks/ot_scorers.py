"""How good is the OT split each scorer gives before any tuning: the prompt at its start (the zero-shot prior) against
the given labels' leave-one-out class prototypes (``methods/ot.py``; ``ot_scorer`` of NLPrompt and VisPrompt).

For each noise rate, over data seeds × tuning seeds (the tuning seed draws the shots and the noise, as ``tune``):
each scorer's top-1 on the training images, the OT split's clean precision / recall and its pseudo-labels' accuracy,
and how often ``auto`` picks the prototypes (they agree with the given labels more often than the prior does).
Seconds, no training; docs/defaults.md quotes it.

    python benchmarks/ot_scorers.py [--noise sym:0.25,sym:0.5,sym:0.75,asym:0.25] [--data-seeds 0,1,2] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from edgeprompt.backbone import create_backbone
from edgeprompt.config import TrainConfig, TuneConfig
from edgeprompt.features.cache import FeatureCache
from edgeprompt.methods.ot import agreement, ot_split, prototype_log_probs, split_quality
from edgeprompt.methods.zeroshot import zero_shot_logits
from edgeprompt.progress import NullReporter
from edgeprompt.train.run import load_tuning_set
from edgeprompt.world import shapes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edgeprompt-noisy-defaults", help="data and cache, as noisy_defaults.py")
    ap.add_argument("--noise", default="sym:0.25,sym:0.5,sym:0.75,asym:0.25")
    ap.add_argument("--data-seeds", default="0,1,2")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    backbone = create_backbone("edgeprompt-tiny", "shapes", "cpu")
    cache = FeatureCache(backbone, str(out / "cache"))
    print("| noise | scorer | top-1 % | split precision | split recall | pseudo-labels right % | auto picks it |\n"
          "|---|---|---|---|---|---|---|")
    for noise in args.noise.split(","):
        rows: dict[str, list[tuple[float, float, float, float, bool]]] = {"prior": [], "prototypes": []}
        for ds in (int(s) for s in args.data_seeds.split(",")):
            data = out / f"data-{ds}"
            if not (data / "test").is_dir():
                shapes.write_dataset(data, task="shape", per_class=16, seed=ds, overwrite=True)
            for seed in range(1, args.seeds + 1):
                cfg = TuneConfig(train=str(data / "train"), out=str(out / "unused"), method="coop", shots=16,
                                 noise=noise, train_cfg=TrainConfig(seed=seed))
                _, few, given, _ = load_tuning_set(cfg, NullReporter())
                centre, _ = cache.features(few.paths, None, False, None)
                y, true = torch.tensor(given), torch.tensor(few.labels)
                lp = {"prior": zero_shot_logits(backbone, list(few.classnames), centre).log_softmax(-1).double(),
                      "prototypes": prototype_log_probs(centre, y, few.num_classes, backbone.logit_scale)}
                protos = agreement(lp["prototypes"], y) > agreement(lp["prior"], y)
                for name, log_probs in lp.items():
                    clean, pseudo, _ = ot_split(log_probs, y)
                    q = split_quality(clean, true == y)
                    rows[name].append((float((log_probs.argmax(-1) == true).double().mean()), q["precision"],
                                       q["recall"], float((pseudo == true).double().mean()),
                                       protos == (name == "prototypes")))
        for name, r in rows.items():
            m = [statistics.fmean(v[i] for v in r) for i in range(4)]
            print(f"| {noise} | {name} | {100 * m[0]:.1f} | {m[1]:.2f} | {m[2]:.2f} | {100 * m[3]:.1f} | "
                  f"{sum(v[4] for v in r)} of {len(r)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
