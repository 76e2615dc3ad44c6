"""The smoke chain's metrics against a stored snapshot: a change in behaviour shows up as a diff of named keys.

    WAFERSAGE_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_notebooks.py -k snapshot   # after a
    deliberate change: rewrites this machine's tests/fixtures/smoke_metrics/<fingerprint>.json (review its
    diff before committing; a change of behaviour must be recorded on every machine kind that has a snapshot)

One snapshot per machine kind, named by the numerics fingerprint of `runner.runs.numerics_record`: the smoke
chain is small (a few hundred maps), so the float sums of another CPU's kernels (AVX2 against AVX-512, another
BLAS build) move a clustering decision in stage 01 and every stage after it moves further than any tolerance a
behaviour check could allow. A machine compares with its own snapshot; a machine kind without one compares
with every stored snapshot and passes if one matches (kinds can agree), and otherwise the check cannot tell a
change of behaviour from a change of machine, and says so (`check` returns None).

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

SNAPSHOTS = Path(__file__).resolve().parent / "fixtures" / "smoke_metrics"
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


def machine_snapshot() -> Path:
    """This machine kind's snapshot file (it may not exist yet)."""
    from wafersage_utils.runner.runs import numerics_record
    return SNAPSHOTS / f"{numerics_record()['fingerprint']}.json"


def check(run_dir: Path) -> tuple[dict[str, tuple] | None, str]:
    """(differences, against what) of a run from this machine's snapshot, or, for a machine kind without one,
    from the closest stored snapshot if that one matches (else None: no verdict). With
    WAFERSAGE_UPDATE_SNAPSHOT=1 this machine's snapshot is rewritten first."""
    current = numeric_metrics(run_dir)
    own = machine_snapshot()
    if os.environ.get("WAFERSAGE_UPDATE_SNAPSHOT") == "1":
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    if own.exists():
        return differences(json.loads(own.read_text()), current), own.name
    stored = {p.name: differences(json.loads(p.read_text()), current) for p in sorted(SNAPSHOTS.glob("*.json"))}
    if not stored:
        return None, f"no snapshot in {SNAPSHOTS}"
    name = min(stored, key=lambda n: len(stored[n]))
    if not stored[name]:
        return {}, name
    return None, (f"no snapshot for this machine kind ({own.stem}); the closest stored one, {name}, differs in "
                  f"{len(stored[name])} metrics, which a machine difference alone can do")
