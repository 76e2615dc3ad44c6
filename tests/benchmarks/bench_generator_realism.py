"""How realistic is the generator? Generator settings side by side, measured on real maps.

    python tests/benchmarks/bench_generator_realism.py [--clumping 0 1.5] [--seeds 0 1 2] [--n 4500]

For each generator setting and seed: generate `--n` maps as stage 01 does (balanced classes, 5% mixed; no
label noise, so the measure is the generator's, not the cleaning's), fit stage 01's classical baseline
(features + one gradient-boosting model per pattern) on them alone, and score it on real WM-811K maps of
the public development sample: the "Training" half by default (`--half Test` is the held-back check once a
setting is chosen). The better the generated maps stand in for real ones, the higher the real-map macro-F1.
Prints per setting the macro-F1 and accuracy of each seed, their means and the difference to the first
setting, plus the defect-free class's F1 (real background failures come in clumps; read as Loc when the
generator's are independent). Run it alone: gradient boosting's threads slow tenfold beside another job.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wafersage_utils.evaluation.scorer import bootstrap_scores
from wafersage_utils.evaluation.sim_to_real import baseline_predictions
from wafersage_utils.maps import loaders, synth
from wafersage_utils.maps.conventions import label_key
from wafersage_utils.maps.features import extract_features


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clumping", type=float, nargs="+", default=[0.0, 1.5],
                    help="background_clumping values to compare (the first is the reference)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="generator seeds")
    ap.add_argument("--n", type=int, default=4500, help="generated maps per fit (stage 01's default)")
    ap.add_argument("--half", default="Training", choices=["Training", "Test", "all"],
                    help="real maps scored: WM-811K's own Training or Test half, or all")
    args = ap.parse_args()
    path = loaders.DEFAULT_FILES["wm811k"]
    if not path.exists():
        print(f"{path} not found: the real maps are needed", file=sys.stderr)
        return 2
    real = loaders.load_wm811k(path)
    if args.half != "all":
        real = real[real["original_split"] == args.half].reset_index(drop=True)
    truth = [list(x) for x in real["labels"]]
    X_real = extract_features(list(real["wafer_map"]))
    print(f"real: {len(real)} WM-811K maps ({args.half}); generated: {args.n} a fit; seeds {args.seeds}")
    results = {}
    for clumping in args.clumping:
        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            gen = synth.generate(synth.SynthConfig(n_wafers=args.n, seed=seed, class_mix="balanced",
                                                   mixed_fraction=0.05, label_noise=0.0,
                                                   background_clumping=clumping))
            keys = [label_key(x) for x in gen["labels"]]
            pred = baseline_predictions(extract_features(list(gen["wafer_map"])), keys, X_real, seed=seed)
            s = bootstrap_scores(truth, pred, n_resamples=10)
            none_f1 = float(s["per_class"].set_index("label").loc["none", "f1"])
            rows.append((s["macro_f1"], s["accuracy"], none_f1))
            print(f"clumping {clumping:g} seed {seed}: macro-F1 {rows[-1][0]:.3f}  accuracy {rows[-1][1]:.3f}  "
                  f"none F1 {rows[-1][2]:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        results[clumping] = np.array(rows)
    ref = results[args.clumping[0]].mean(axis=0)
    print("\nsetting            macro-F1   accuracy   none F1   (mean over seeds; difference to the first)")
    for clumping, r in results.items():
        m = r.mean(axis=0)
        print(f"clumping {clumping:<8g}  {m[0]:.3f} ({m[0] - ref[0]:+.3f})  {m[1]:.3f} ({m[1] - ref[1]:+.3f})  "
              f"{m[2]:.3f} ({m[2] - ref[2]:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
