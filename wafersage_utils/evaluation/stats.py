"""Intervals and paired tests that respect the unit of sampling: the wafer, not the question.

Questions about one wafer are correlated (the same picture, the same model mistake), so every interval
resamples wafers with all their questions (a cluster bootstrap through `scipy.stats.bootstrap`), and paired
comparisons resample the per-wafer differences of two models answering the same questions.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from .answers import is_mixed, type_accuracy_by, type_correct


def _by_wafer(values, wafers) -> tuple[np.ndarray, np.ndarray]:
    df = pd.DataFrame({"v": np.asarray(values, dtype=float), "w": list(wafers)})
    if df["v"].isna().any():
        raise ValueError(f"{int(df['v'].isna().sum())} missing values: score every question before the interval")
    g = df.groupby("w", sort=True)["v"]
    return g.sum().to_numpy(), g.size().to_numpy(dtype=float)


def _ratio(s, n, axis=-1):
    return s.sum(axis=axis) / n.sum(axis=axis)


def cluster_interval(values, wafers, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean over questions with a bootstrap interval from resampling wafers (BCa, via scipy).

    Defined for every sample a run can produce: all wafers alike gives [mean, mean]; a single wafer cannot
    be resampled, so its questions are (percentile; `resampled` says so); a single value gives [v, v]; a BCa
    interval that comes out non-finite (a degenerate jackknife) is replaced by the percentile one. No value at
    all gives NaN throughout (the mean itself is undefined).
    """
    s, n = _by_wafer(values, wafers)
    if not len(s):  # nothing scored (an LLM judge that answered nothing usable on a split): undefined, not an error
        nan = float("nan")
        return {"mean": nan, "ci_low": nan, "ci_high": nan, "n_wafers": 0, "resampled": "none"}
    mean = float(s.sum() / n.sum())
    out = {"mean": mean, "ci_low": mean, "ci_high": mean, "n_wafers": len(s), "resampled": "wafers"}
    if len(s) < 2:
        v = np.asarray(values, dtype=float)
        out["resampled"] = "questions"
        if len(v) > 1 and not np.allclose(v, mean, rtol=0.0, atol=1e-12):
            idx = np.random.default_rng(seed).integers(0, len(v), size=(n_resamples, len(v)))
            lo, hi = np.quantile(v[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
            out.update(ci_low=float(lo), ci_high=float(hi))
        return out
    if np.allclose(s, mean * n, rtol=0.0, atol=1e-12):
        # every wafer has the same mean (two models that answered alike, say): every resample gives `mean`,
        # and BCa, which divides by the spread of the jackknife, would return NaN
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap((s, n), _ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                            confidence_level=level, method="BCa", rng=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
        if not (np.isfinite(lo) and np.isfinite(hi)):
            res = sps.bootstrap((s, n), _ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                                confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
            lo, hi = res.confidence_interval
    out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def paired_difference(a, b, wafers, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of b - a over paired questions, with a wafer-resampling bootstrap interval; `p_value` is the
    two-sided bootstrap share of resampled differences on the other side of zero."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b) or len(a) != len(list(wafers)):
        raise ValueError(f"paired scores must have equal lengths: {len(a)}, {len(b)}, {len(list(wafers))}")
    out = cluster_interval(b - a, wafers, n_resamples, level, seed)
    s, n = _by_wafer(b - a, wafers)
    if not len(s):
        out["p_value"] = float("nan")
        return out
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(0, len(s), size=(n_resamples, len(s)))
    boot = s[idx].sum(axis=1) / n[idx].sum(axis=1)
    out["p_value"] = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    return out


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test of two models' right/wrong on the same questions (binomial on the discordant pairs)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs paired answers: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def compare_models(rows: pd.DataFrame, models: list[str], pairs: list[tuple[str, str]], splits=("val", "test"),
                   n_resamples: int = 2000, seed: int = 0, score: str = "score", metric: str = "rule_score",
                   with_types: bool = True) -> dict:
    """Every headline comparison of models answering the same questions, as flat metrics.

    `rows` holds one question per row with `split`, `wafer_id`, `category` and `labels`, and for each model
    M its answer in column M and its score in `M_<score>` (the rule score by default). Per model and split:
    the mean score with its wafer-cluster interval (`M/<metric>_<split>`, `_ci_low`, `_ci_high`) and, with
    `with_types`, the single-pattern type accuracy (`M/type_accuracy_<split>`). Per pair (a, b): the paired
    bootstrap difference b - a (`b_minus_a/<metric>_<split>`, its interval and `_p`) and, with `with_types`, the
    exact McNemar p-value of the type answers (`b_minus_a/type_accuracy_<split>_mcnemar_p`).
    """

    need = {"split", "wafer_id", "category", "labels"} | set(models) | {f"{m}_{score}" for m in models}
    missing = sorted(need - set(rows.columns))
    if missing:
        raise ValueError(f"compare_models: rows lack the columns {missing}")
    unknown = sorted({m for p in pairs for m in p} - set(models))
    if unknown:
        raise ValueError(f"compare_models: pairs name {unknown}, which are not among the models {models}")
    out: dict = {}
    for split in splits:
        part = rows[rows["split"] == split]
        for m in models:
            ci = cluster_interval(part[f"{m}_{score}"], part["wafer_id"], n_resamples, seed=seed)
            out |= {f"{m}/{metric}_{split}": ci["mean"], f"{m}/{metric}_{split}_ci_low": ci["ci_low"],
                    f"{m}/{metric}_{split}_ci_high": ci["ci_high"]}
        for a, b in pairs:
            d = paired_difference(part[f"{a}_{score}"], part[f"{b}_{score}"], part["wafer_id"], n_resamples, seed=seed)
            key = f"{b}_minus_{a}/{metric}_{split}"
            out |= {key: d["mean"], f"{key}_ci_low": d["ci_low"], f"{key}_ci_high": d["ci_high"],
                    f"{key}_p": d["p_value"]}
    if not with_types:
        return out
    types = rows[rows["category"] == "defect_type"]
    for (m, split), r in type_accuracy_by(types, list(models), tuple(splits)).iterrows():
        out[f"{m}/type_accuracy_{split}"] = r["single"]
    for split in splits:
        single = types[(types["split"] == split) & ~types["labels"].map(is_mixed)]
        right = {m: [type_correct(x, list(lab)) for x, lab in zip(single[m], single["labels"])] for m in models}
        for a, b in pairs:
            out[f"{b}_minus_{a}/type_accuracy_{split}_mcnemar_p"] = mcnemar(right[a], right[b])["p_value"]
    return out
