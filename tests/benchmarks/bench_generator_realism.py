"""How realistic is the generator? Generator settings side by side, measured on real maps.

    python tests/benchmarks/bench_generator_realism.py [--clumping 0 1.5] [--seeds 0 1 2] [--n 4500]
    python tests/benchmarks/bench_generator_realism.py --settings "loc_area_dies=0" ""   # any SynthConfig fields

With no --settings it compares the generator before 2026-12-01 (one background rate on every grid, a smooth
rise to the edge, 2-die scratches) with today's defaults.

For each generator setting and seed: generate `--n` maps as stage 01 does (balanced classes, 5% mixed; no
label noise, so the measure is the generator's, not the cleaning's), fit stage 01's classical baseline
(features + one gradient-boosting model per pattern) on them alone, and score it on real WM-811K maps of
the public development sample: the "Training" half by default (`--half Test` is the held-back check once a
setting is chosen). The better the generated maps stand in for real ones, the higher the real-map macro-F1.
Prints per setting the macro-F1 and accuracy of each seed, and per class F1, their means over seeds, the
difference to the first setting and that difference's spread over seeds (the same seed draws the same
lots, so the difference is paired). A setting is a comma-separated list of SynthConfig fields
(`loc_area_dies=24,background_clumping=1.5`; empty: the defaults); `--clumping V ...` is short for
`--settings background_clumping=V ...`. Run it alone: gradient boosting's threads slow tenfold beside another job.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from wafersage_utils.evaluation.scorer import bootstrap_scores
from wafersage_utils.evaluation.sim_to_real import baseline_predictions
from wafersage_utils.maps import loaders, synth
from wafersage_utils.maps.conventions import NONE_LABEL, PATTERNS, label_key
from wafersage_utils.maps.features import extract_features


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clumping", type=float, nargs="+", default=None,
                    help="background_clumping values to compare (the first is the reference)")
    ap.add_argument("--settings", nargs="+", default=None,
                    help="generator settings to compare, each KEY=VALUE[,KEY=VALUE] over SynthConfig fields "
                         "(the first is the reference; default: the previous background and scratch width against the defaults)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="generator seeds")
    ap.add_argument("--n", type=int, default=4500, help="generated maps per fit (stage 01's default)")
    ap.add_argument("--half", default="Training", choices=["Training", "Test", "all"],
                    help="real maps scored: WM-811K's own Training or Test half, or all")
    args = ap.parse_args()
    if args.settings is not None and args.clumping is not None:
        ap.error("--settings and --clumping: give one")
    settings = [f"background_clumping={c:g}" for c in args.clumping] if args.clumping else \
        (args.settings if args.settings is not None else [PREVIOUS, ""])
    parsed = [(setting or "defaults", parse_setting(setting)) for setting in settings]
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
    for name, overrides in parsed:
        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            cfg = synth.SynthConfig(**{"n_wafers": args.n, "seed": seed, "class_mix": "balanced",
                                       "mixed_fraction": 0.05, "label_noise": 0.0} | overrides)
            gen = synth.generate(cfg)
            keys = [label_key(x) for x in gen["labels"]]
            pred = baseline_predictions(extract_features(list(gen["wafer_map"])), keys, X_real, seed=seed)
            s = bootstrap_scores(truth, pred, n_resamples=10)
            f1 = s["per_class"].set_index("label")["f1"]
            rows.append([s["macro_f1"], s["accuracy"]] + [float(f1.get(c, np.nan)) for c in CLASSES])
            print(f"{name} seed {seed}: macro-F1 {rows[-1][0]:.3f}  accuracy {rows[-1][1]:.3f}  "
                  f"none F1 {rows[-1][2 + CLASSES.index('none')]:.3f}  Loc F1 {rows[-1][2 + CLASSES.index('Loc')]:.3f}  "
                  f"Scratch F1 {rows[-1][2 + CLASSES.index('Scratch')]:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        results[name] = np.array(rows)
    ref = next(iter(results.values())).mean(axis=0)
    columns = ["macro-F1", "accuracy"] + [f"{c} F1" for c in CLASSES]
    print("\nMean over seeds (difference to the first setting); per-seed spread of the difference: 'sd'.")
    for name, r in results.items():
        m, first = r.mean(axis=0), next(iter(results.values()))
        sd = (r - first).std(axis=0, ddof=1) if len(r) > 1 else np.zeros(len(m))
        print(f"\n{name}")
        for i, col in enumerate(columns):
            print(f"  {col:<16} {m[i]:.3f} ({m[i] - ref[i]:+.3f}, sd {sd[i]:.3f})")
    return 0


CLASSES = list(PATTERNS) + [NONE_LABEL]
PREVIOUS = "background_area_exponent=0,edge_fail_extra=0,scratch_width_dies=0,background_by_class=pooled"  # the generator before 2026-12-01


def parse_setting(text: str) -> dict:
    """'loc_area_dies=24,background_clumping=1.5' -> SynthConfig keyword arguments, typed as the fields are."""
    fields = {f.name: f.type for f in dataclasses.fields(synth.SynthConfig)}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"setting {part!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        kind = {"int": int, "float": float, "str": str}.get(str(fields[key]), float)
        out[key] = kind(value)
    return out


if __name__ == "__main__":
    sys.exit(main())
