"""Feature extraction speed: vectorised vs the straightforward per-map implementation, side by side.

    python tests/benchmarks/bench_features.py [--n 811457] [--n-ref 3000]

Maps are real WM-811K maps from ../shared/data (resampled with replacement to --n, so the shape
distribution is WM-811K's), or generated maps when the sample is absent. Target: all 811,457 maps in
under 120 s on 2 cores, and at least 10x the per-map rate. Run it alone: other processes on the
two cores distort both timings.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wafersage_utils.maps import features, loaders, synth


def load_maps() -> tuple[list[np.ndarray], str]:
    path = loaders.DEFAULT_FILES["wm811k"]
    if path.exists():
        return list(loaders.load_wm811k(path).wafer_map), f"WM-811K dev sample ({path.name})"
    df = synth.generate(synth.SynthConfig(n_wafers=5000, seed=0))
    return list(df.wafer_map), "generated maps (WM-811K sample not found)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=811_457, help="maps for the vectorised run (WM-811K has 811,457)")
    ap.add_argument("--n-ref", type=int, default=3000, help="maps for the per-map run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pool, what = load_maps()
    rng = np.random.default_rng(args.seed)
    maps = [pool[i] for i in rng.integers(0, len(pool), args.n)]
    print(f"source: {what}; {len(pool)} distinct maps, {len({m.shape for m in pool})} shapes")

    features.extract_features(maps[:2000])  # warm caches and imports
    t0 = time.perf_counter()
    fast = features.extract_features(maps)
    t_fast = time.perf_counter() - t0
    ref_maps = maps[: args.n_ref]
    t0 = time.perf_counter()
    slow = np.stack([features.features_reference(m) for m in ref_maps])
    t_ref = time.perf_counter() - t0
    max_diff = float(np.abs(fast[: args.n_ref] - slow).max())

    rate_fast, rate_ref = args.n / t_fast, args.n_ref / t_ref
    print(f"vectorised: {args.n} maps in {t_fast:.1f} s = {rate_fast:,.0f} maps/s")
    print(f"per-map:    {args.n_ref} maps in {t_ref:.1f} s = {rate_ref:,.0f} maps/s "
          f"(811,457 maps would take {811_457 / rate_ref:.0f} s)")
    print(f"ratio vectorised / per-map: {rate_fast / rate_ref:.1f}x; max |difference| {max_diff:.2e}")
    print(f"811,457 maps at the vectorised rate: {811_457 / rate_fast:.0f} s (target < 120 s)")
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
