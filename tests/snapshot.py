"""The smoke chain's metrics against a stored snapshot: a change in behaviour shows up as a diff of named keys.

    WAFERSAGE_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_notebooks.py -k snapshot   # after a
    deliberate change: rewrites tests/fixtures/smoke_metrics.json (review its diff before committing)

Timings, speeds and cache keys are left out. Counts must match within 2% (at least 2): CPU kernels and thread
counts move a clustering decision or a sampled map now and then. Shares and scores within 0.05 absolute (the
smoke chain trains a few steps on a few hundred maps, so one answer more or less moves a share by a few
points); other numbers within 5%.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "smoke_metrics.json"
VOLATILE = ("seconds", "wall_s", "per_second", "cache_key", "n_cached", "runtime", "optim", "resumed")


def numeric_metrics(run_dir: Path) -> dict[str, float | int | bool]:
    """Every stage's scalar metrics, keyed `<stage>:<metric>`, without the volatile ones."""
    out = {}
    for path in sorted((Path(run_dir) / "metrics").glob("*.json")):
        for k, v in json.loads(path.read_text()).items():
            if isinstance(v, (int, float)) and not any(s in k for s in VOLATILE):
                out[f"{path.stem}:{k}"] = v
    return out


def _close(old, new) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return old == new
    if isinstance(old, float) and math.isnan(old):
        return isinstance(new, float) and math.isnan(new)
    if isinstance(new, float) and math.isnan(new):
        return False
    if isinstance(old, int) and isinstance(new, int):
        return abs(old - new) <= max(2, 0.02 * abs(old))
    if -1.0 <= old <= 1.0 and -1.0 <= new <= 1.0:
        return abs(old - new) <= 0.05
    return abs(old - new) <= 0.05 * max(abs(old), abs(new))


def differences(snapshot: dict, current: dict) -> dict[str, tuple]:
    """{key: (snapshot value, current value)} for keys that appeared, vanished or moved beyond tolerance."""
    keys = set(snapshot) | set(current)
    return {k: (snapshot.get(k, "<absent>"), current.get(k, "<absent>")) for k in sorted(keys)
            if k not in snapshot or k not in current or not _close(snapshot[k], current[k])}


def check(run_dir: Path) -> dict[str, tuple]:
    """The differences of a run from the snapshot; with WAFERSAGE_UPDATE_SNAPSHOT=1 the snapshot is rewritten."""
    current = numeric_metrics(run_dir)
    if os.environ.get("WAFERSAGE_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    return differences(json.loads(SNAPSHOT.read_text()), current)
