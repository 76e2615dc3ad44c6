"""`python -m wafersage_utils.score MODEL DATA [--out DIR] [--max-maps N] [--batch-size B]` (also `wafersage-score`).

Scores an exported model (or a run folder's SFT model) on a labelled WM-811K pickle or MixedWM38 .npz; the
work is in :mod:`wafersage_utils.evaluation.scorer`, where the measures are defined. Prints the headline
numbers; with --out writes metrics.json, per_class.csv, per_map.csv.gz and confusion.png. This command and the
keys accuracy, macro_f1, n_maps, maps_per_second (exact_match, pattern_macro_f1 for mixed maps) are stable.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .evaluation.model_info import MissingModelInfo
from .maps.conventions import VIEW_COUNTS
from .evaluation.scorer import score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wafersage-score", description=__doc__.split("\n\n")[1])
    ap.add_argument("model", help="exported model folder (merged or adapter, with wafersage.json) or a run folder")
    ap.add_argument("data", help="labelled maps: WM-811K-layout pickle (.pkl, .pkl.xz, ...) or MixedWM38 .npz")
    ap.add_argument("--out", default=None, help="folder for metrics.json, per_class.csv, per_map.csv.gz, confusion.png")
    ap.add_argument("--max-maps", type=int, default=0, help="score a seeded random sample of this many maps (0: all)")
    ap.add_argument("--batch-size", type=int, default=128, help="maps per generation batch")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample and the resamples")
    ap.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: a GPU when there is one)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--full-answers", action="store_true",
                    help="generate each answer to its end (default: stop after the sentence that states the type)")
    ap.add_argument("--views", type=int, default=None, choices=VIEW_COUNTS,
                    help="ask each map in this many views and vote (default: the model's own, from wafersage.json)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        m = score(args.model, args.data, args.out, args.max_maps, args.batch_size, not args.quiet, args.bootstrap,
                  args.seed, args.device, args.full_answers, views_override=args.views)
    except (MissingModelInfo, FileNotFoundError, ValueError, LookupError) as exc:
        print(f"wafersage-score: {exc}", file=sys.stderr)
        return 2
    keys = ("accuracy", "macro_f1", "exact_match", "pattern_macro_f1", "unparsed_share", "n_maps",
            "n_unlabelled_skipped", "maps_per_second")
    print(json.dumps({k: round(m[k], 4) if isinstance(m[k], float) else m[k] for k in keys if k in m}, indent=1))
    print(m["_per_class"][["label", "support", "precision", "recall", "f1"]].round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
