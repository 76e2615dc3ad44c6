"""The classification view of the evaluation, and wafer-resampling intervals for statistics that are not means.

Answers to defect-type questions are read back into the label vocabulary (`answers.parse_labels`,
multi-label aware) and scored like a classifier: exact-set accuracy on single-pattern and on mixed wafers,
macro-F1 over the pattern labels (one-vs-rest on the label sets, so a mixed wafer counts for each of its
patterns), per-class recall and a confusion matrix. The classical baseline of stage 01 and the majority
class answer the same questions, so every row of the table is measured on the same wafers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.preprocessing import MultiLabelBinarizer

from ..corpus.rubric import rubric_of
from ..corpus.scoring import DIMENSIONS, RuleParams, rule_score
from ..maps.conventions import NONE_LABEL, VOCAB, label_key
from .answers import is_mixed, parse_labels, solution_text

UNPARSED, MULTIPLE = "(no label)", "(several)"


def labels_of_key(key) -> list[str]:
    """A label key of stage 01 ('Center+Loc', 'none') as a label list; [] for a missing prediction."""
    if not isinstance(key, str) or not key:
        return []
    return [x for x in key.split("+") if x]


def _binarised(true: list[list[str]], pred: list[list[str]]):
    mlb = MultiLabelBinarizer(classes=list(VOCAB))
    return mlb.fit_transform(true), mlb.fit_transform(pred)


def exact_matches(true: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """Per question: the predicted label set is the true one (an empty prediction is never right)."""
    return np.array([bool(p) and label_key(p) == label_key(t) for t, p in zip(true, pred)], bool)


def macro_f1(true: list[list[str]], pred: list[list[str]], patterns_only: bool = False) -> float:
    """Macro-F1 over the labels that occur in the truth (a label nobody has cannot be recalled); with
    `patterns_only` the defect-free label is left out."""
    yt, yp = _binarised(true, pred)
    keep = (yt.sum(axis=0) > 0) & np.array([not patterns_only or v != NONE_LABEL for v in VOCAB])
    if not keep.any():
        return float("nan")
    return float(f1_score(yt[:, keep], yp[:, keep], average="macro", zero_division=0))


def pattern_macro_f1(true: list[list[str]], pred: list[list[str]]) -> float:
    """Macro-F1 over the eight patterns that occur in the truth, defect-free left out (MixedWM38's measure)."""
    return macro_f1(true, pred, patterns_only=True)


def classification(true: list[list[str]], pred: list[list[str]]) -> dict:
    """Accuracy (exact set) on single-pattern and mixed wafers, macro-F1, per-class recall, unparsed share."""
    correct = exact_matches(true, pred)
    mixed = np.array([is_mixed(t) for t in true], bool)
    out = {"accuracy": float(correct[~mixed].mean()) if (~mixed).any() else float("nan"),
           "accuracy_mixed": float(correct[mixed].mean()) if mixed.any() else float("nan"),
           "macro_f1": macro_f1(true, pred), "unparsed_share": float(np.mean([not p for p in pred])),
           "n": len(true), "n_mixed": int(mixed.sum())}
    yt, yp = _binarised(true, pred)
    for j, lab in enumerate(VOCAB):
        if yt[:, j].sum():
            out[f"recall/{lab}"] = float((yt[:, j] & yp[:, j]).sum() / yt[:, j].sum())
    return out


def confusion(true: list[list[str]], pred: list[list[str]]) -> pd.DataFrame:
    """Counts of single-pattern wafers by true label (rows) and answered label (columns); an answer naming
    several labels is '(several)', one naming none '(no label)'."""
    rows = [(t[0], p[0] if len(p) == 1 else (UNPARSED if not p else MULTIPLE))
            for t, p in zip(true, pred) if not is_mixed(t) and len(t) == 1]
    df = pd.DataFrame(rows, columns=["true", "answered"])
    cols = [c for c in [*VOCAB, MULTIPLE, UNPARSED] if c in set(df["answered"])]
    idx = [c for c in VOCAB if c in set(df["true"])]
    return pd.crosstab(df["true"], df["answered"]).reindex(index=idx, columns=cols, fill_value=0)


def wafer_resamples(wafer_ids, n_resamples: int = 1000, seed: int = 0, strata=None) -> list[np.ndarray]:
    """The row indices of each resample of :func:`wafer_interval` (the same draws for the same arguments, so
    that several predictors or measures on the same rows share them instead of drawing them again).

    Each resample draws wafers with replacement (within each stratum, where `strata` gives one value per row)
    and lists the rows of every drawn wafer, in draw order. A single wafer cannot be resampled: its rows are,
    each on its own. No row at all: no resample."""
    codes, uniq = pd.factorize(pd.Series(list(wafer_ids)), sort=True)
    if not len(codes):
        return []
    if len(uniq) < 2:
        codes = np.arange(len(codes))
    order = np.argsort(codes, kind="stable")  # rows grouped by wafer: wafer w's rows are order[start[w]:][:size[w]]
    size = np.bincount(codes)
    start = np.cumsum(size) - size
    if strata is None:
        pools = [np.arange(len(size))]
    else:
        of_wafer = pd.Series(list(strata)).astype(str).to_numpy()[order[start]]
        pools = [np.flatnonzero(of_wafer == v) for v in np.unique(of_wafer)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        drawn = np.concatenate([pool[rng.integers(0, len(pool), len(pool))] for pool in pools])
        n = size[drawn]
        offset = np.cumsum(n) - n  # where each drawn wafer's rows begin in the resample
        out.append(order[np.repeat(start[drawn] - offset, n) + np.arange(n.sum())])
    return out


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite values ((NaN, NaN) where none is)."""
    boot = np.asarray(values, float)
    boot = boot[np.isfinite(boot)]
    if not len(boot):  # the statistic is undefined on every resample (no class to average, say)
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


def wafer_interval(wafer_ids, statistic, n_resamples: int = 1000, level: float = 0.95,
                   seed: int = 0, strata=None, resamples: list[np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile interval of `statistic(indices)` over resamples of whole wafers: each resample draws
    wafers with replacement and passes the row indices of all their questions. For statistics that are not
    means over questions (macro-F1); means use `stats.cluster_interval` (BCa).

    `strata` (one value per row, e.g. the true label set) resamples the wafers of each stratum among
    themselves, so every stratum keeps its size: what a macro-average over classes needs, since a class of
    three wafers is absent from 5% of plain resamples, which then average over fewer classes.

    A single wafer cannot be resampled: its questions are, each on its own (as `stats.cluster_interval`
    does). With no row at all the interval is undefined (NaN, NaN). `resamples`: the draws of
    :func:`wafer_resamples` for these arguments, made once and shared."""
    if resamples is None:
        resamples = wafer_resamples(wafer_ids, n_resamples, seed, strata)
    return percentile_interval([statistic(idx) for idx in resamples], level)


def _macro_f1_counts(yt: np.ndarray, yp: np.ndarray, keep_labels: np.ndarray):
    """A statistic over row indices: macro-F1 of binarised truth `yt` and prediction `yp` (rows x VOCAB) over
    the labels in `keep_labels` that occur in the rows' truth: :func:`macro_f1` from counts (the same value:
    F1 = 2 TP / (true + predicted) per label, sklearn's formula with zero_division 0)."""
    yt, yp = yt.astype(bool), yp.astype(bool)

    def statistic(idx: np.ndarray) -> float:
        t, p = yt[idx], yp[idx]
        true_n, pred_n, tp = t.sum(axis=0), p.sum(axis=0), (t & p).sum(axis=0)
        keep = (true_n > 0) & keep_labels
        if not keep.any():
            return float("nan")
        return float(np.mean(2 * tp[keep] / (true_n[keep] + pred_n[keep])))
    return statistic


def type_table(types: pd.DataFrame, predictions: dict[str, list[list[str]]], n_resamples: int = 1000,
               seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The classification view of every predictor on the same defect-type questions.

    `types`: one defect-type question per row (`wafer_id`, `labels`); `predictions`: predictor name -> label
    lists in the same order (parsed model answers, the classical baseline, the majority class). Returns the
    table (one row per predictor) and flat metrics `<name>/type_accuracy`, `<name>/type_macro_f1` with
    wafer-resampling `_ci_low` / `_ci_high` (macro-F1: stratified by label set), `<name>/type_accuracy_mixed` and `<name>/type_recall/<label>`.
    Where some wafers carry mixed patterns, also over every question: `<name>/type_exact_match` (exact set)
    and `<name>/type_pattern_macro_f1` (the patterns, defect-free left out), with intervals: MixedWM38's
    measures.
    """
    true = [list(x) for x in types["labels"]]
    table, metrics = {}, {}
    wafers = list(types["wafer_id"])
    single = np.array([not is_mixed(t) for t in true], bool)
    keys = [label_key(t) for t in true]  # macro-F1 intervals resample within each label set (wafer_interval)
    plain = wafer_resamples(wafers, n_resamples, seed)  # drawn once, shared by every predictor and measure
    by_label = wafer_resamples(wafers, n_resamples, seed, strata=keys)
    for name, pred in predictions.items():
        if len(pred) != len(true):
            raise ValueError(f"{name}: {len(pred)} predictions for {len(true)} questions")
        c = classification(true, pred)
        table[name] = c

        right = exact_matches(true, pred).astype(float)

        def acc(idx, right=right):
            idx = idx[single[idx]]
            return right[idx].mean() if len(idx) else np.nan

        def exact(idx, right=right):
            return right[idx].mean() if len(idx) else np.nan

        yt, yp = _binarised(true, pred)
        f1 = _macro_f1_counts(yt, yp, np.ones(len(VOCAB), bool))
        pattern_f1 = _macro_f1_counts(yt, yp, np.array([v != NONE_LABEL for v in VOCAB]))
        measures = [("type_accuracy", acc, c["accuracy"], plain), ("type_macro_f1", f1, c["macro_f1"], by_label)]
        if not single.all():
            measures += [("type_exact_match", exact, float(right.mean()), plain),
                         ("type_pattern_macro_f1", pattern_f1, pattern_macro_f1(true, pred), by_label)]
        for key, fn, value, draws in measures:
            lo, hi = wafer_interval(wafers, fn, resamples=draws)
            metrics |= {f"{name}/{key}": value, f"{name}/{key}_ci_low": lo, f"{name}/{key}_ci_high": hi}
        metrics[f"{name}/type_accuracy_mixed"] = c["accuracy_mixed"]
        metrics |= {f"{name}/type_recall/{k.split('/')[1]}": v for k, v in c.items() if k.startswith("recall/")}
    return pd.DataFrame(table).T, metrics


def parsed_answers(answers) -> list[list[str]]:
    return [parse_labels(a or "") for a in answers]


def majority_labels(train_keys, n: int) -> list[list[str]]:
    """The most common training label set, answered for every one of n questions."""
    top = pd.Series(list(train_keys)).value_counts().idxmax()
    return [labels_of_key(top) or [NONE_LABEL]] * n


def rule_scores(answers, terms, params=None) -> pd.DataFrame:
    """The rule score of each answer against its rubric: overall `S` and each dimension's D (NaN where the
    rubric has no such dimension), on the <SOLUTION> part of tagged answers."""
    p = params or RuleParams()
    out = []
    for a, t in zip(answers, terms):
        r = rule_score(solution_text(a or ""), rubric_of(t), p)
        out.append({"S": r["S"], **{d: r["dimensions"][d]["D"] if d in r["dimensions"] else np.nan for d in DIMENSIONS}})
    return pd.DataFrame(out)


def rewardable(terms) -> np.ndarray:
    """Rows whose rubric has at least one term to hit or avoid (any answer scores 1 on the others)."""
    return np.array([any(v.get("must_hit") or v.get("must_avoid") for v in rubric_of(t).values()) for t in terms], bool)


def sample_wafers(rows: pd.DataFrame, max_questions: int, seed: int) -> pd.DataFrame:
    """Per split, whole wafers in a seeded order while their questions fit in `max_questions` (0: all rows),
    so that a capped evaluation keeps the wafer structure its intervals rely on."""
    if not max_questions:
        return rows.reset_index(drop=True)
    parts = []
    for _, part in rows.groupby("split", sort=True):
        wafers = part["wafer_id"].drop_duplicates().sample(frac=1.0, random_state=seed)
        per = part.groupby("wafer_id").size().reindex(wafers)
        parts.append(part[part["wafer_id"].isin(per.index[per.cumsum() <= max_questions])])
    return pd.concat(parts).reset_index(drop=True)


def add_scores(rows: pd.DataFrame, models: list[str], rule, judge) -> dict:
    """Score every model's answers (column M) in place: rule score `M_score` and per dimension
    `M_rule_<d>`, judge score `M_judge` and `M_judge_<d>`, and `judge` (which judge gave them).
    Returns each model's share of answers the judge could not score."""
    shares = {}
    for m in models:
        r = rule_scores(rows[m], rows["terms"], rule)
        rows[f"{m}_score"] = r["S"].to_numpy()
        rows[[f"{m}_rule_{d}" for d in DIMENSIONS]] = r[list(DIMENSIONS)].to_numpy()
        j = judge.score(rows, list(rows[m]))
        rows[f"{m}_judge"] = j["judge_overall"].to_numpy()
        rows[[f"{m}_judge_{d}" for d in DIMENSIONS]] = j[[f"judge_{d}" for d in DIMENSIONS]].to_numpy()
        shares[f"{m}/judge_error_share"] = float((j["judge_error"] != "").mean())
    rows["judge"] = judge.name
    return shares
