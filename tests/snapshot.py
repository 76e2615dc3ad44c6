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

Hosts of one kind can still part ways: two AVX-512 hosts with one fingerprint, one kernel build and the same
packages gave this chain different stage 01 results (2026-12-02; the default run: 417 against 419 quarantined).
So a kind may hold host variants, `<fingerprint>+<name>.json`, and a run passes if it matches any of its kind's
files. `WAFERSAGE_UPDATE_SNAPSHOT=variant` adds this host's values as a variant beside the kind's snapshot (for a
host of a known kind whose chain is known good); `=1` after a deliberate change rewrites the kind's snapshot
and removes its variants, which each such host then records again.

Timings, speeds and cache keys are left out. Counts must match within 2% (at least 2): CPU kernels and thread
counts move a clustering decision or a sampled map now and then. Shares and scores within 0.05 absolute (the
smoke chain trains a few steps on a few hundred maps, so one answer more or less moves a share by a few
points); other numbers within 5%.
"""
from __future__ import annotations

import hashlib
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


def kind_variants(own: Path) -> list[Path]:
    """The host variants stored beside a kind's snapshot (`<fingerprint>+<name>.json`)."""
    return sorted(own.parent.glob(f"{own.stem}+*.json"))


def check(run_dir: Path) -> tuple[dict[str, tuple] | None, str]:
    """(differences, against what) of a run from this machine kind's snapshot or its host variants (the one that
    matches, else the closest), or, for a machine kind without one, from the closest stored snapshot if that one
    matches (else None: no verdict). WAFERSAGE_UPDATE_SNAPSHOT=1 first rewrites this kind's snapshot and removes
    its variants; =variant adds this host's values as a variant."""
    current = numeric_metrics(run_dir)
    own = machine_snapshot()
    update = os.environ.get("WAFERSAGE_UPDATE_SNAPSHOT", "")
    if update == "1":
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        for variant in kind_variants(own):
            variant.unlink()
    elif update == "variant":
        own.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(current, indent=1, sort_keys=True) + "\n"
        (own.parent / f"{own.stem}+{hashlib.sha256(text.encode()).hexdigest()[:8]}.json").write_text(text)
    elif update:
        raise ValueError(f"WAFERSAGE_UPDATE_SNAPSHOT={update!r}: expected 1 (rewrite this kind's snapshot) or "
                         "variant (add this host's values beside it)")
    mine = ([own] if own.exists() else []) + kind_variants(own)
    if mine:
        diffs = {p.name: differences(json.loads(p.read_text()), current) for p in mine}
        name = min(diffs, key=lambda n: len(diffs[n]))
        return diffs[name], name
    stored = {p.name: differences(json.loads(p.read_text()), current) for p in sorted(SNAPSHOTS.glob("*.json"))}
    if not stored:
        return None, f"no snapshot in {SNAPSHOTS}"
    name = min(stored, key=lambda n: len(stored[n]))
    if not stored[name]:
        return {}, name
    return None, (f"no snapshot for this machine kind ({own.stem}); the closest stored one, {name}, differs in "
                  f"{len(stored[name])} metrics, which a machine difference alone can do")
