"""Train / validation / test splits disjoint by lot (by wafer where lots are unknown), stratified."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def split_groups(lots, ids) -> np.ndarray:
    """Grouping unit per map: its lot, or its own id where the lot is unknown (empty)."""
    return np.array([f"lot:{lot}" if lot else f"wafer:{i}" for lot, i in zip(lots, ids)])


def _one_fold(strata: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one stratified, group-disjoint fold holding about `fraction` of the rows."""
    n_splits = max(2, int(round(1.0 / fraction)))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rare classes have fewer members than folds
        _, held = next(iter(cv.split(np.zeros(len(strata)), strata, groups)))
    mask = np.zeros(len(strata), dtype=bool)
    mask[held] = True
    return mask


def lot_disjoint_split(strata, groups, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per row; no group appears in two splits."""
    strata, groups = np.asarray(strata), np.asarray(groups)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 0.5:
            raise ValueError(f"{name}: expected a fraction in (0, 0.5), got {f}")
    split = np.full(len(strata), "train", dtype=object)
    test = _one_fold(strata, groups, test_fraction, seed)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = _one_fold(strata[rest], groups[rest], val_fraction / (1.0 - test_fraction), seed + 1)
    split[rest[val]] = "val"
    return split


def shared_groups(split, groups) -> int:
    """Number of groups (lots) that appear in more than one split; must be 0."""
    seen: dict[str, set] = {}
    for s, g in zip(split, groups):
        seen.setdefault(g, set()).add(s)
    return sum(len(v) > 1 for v in seen.values())


def stratified_cap(keys, n: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified sample of at most n rows (all rows when n <= 0 or n >= len)."""
    keys = np.asarray(keys)
    if n <= 0 or n >= len(keys):
        return np.arange(len(keys))
    rng = np.random.default_rng(seed)
    names, counts = np.unique(keys, return_counts=True)
    quota = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(int)
    picked = [rng.choice(np.flatnonzero(keys == k), size=min(q, c), replace=False)
              for k, q, c in zip(names, quota, counts)]
    out = np.concatenate(picked)
    if len(out) > n:  # more classes than n: one row each from n of them, chosen at random
        out = rng.choice(out, size=n, replace=False)
    return np.sort(out)
