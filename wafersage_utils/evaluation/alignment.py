"""Aligning the rule score with a judge: Bayesian optimisation (optuna's TPE) of the rule score's constants.

The paper fitted the hit weight, the avoid weight and the fuzzy threshold (0.9 / 0.1 / 0.713) to maximise the
Spearman correlation of the rule score with its LLM judge, and reported rho 0.286. Here the search also
covers the dimension weights, runs on a calibration split, and the correlation before and after is reported
on a separate held-out split, so the gain is not the optimiser's own overfit.

Only ratios matter to a rank correlation, so the search samples dimension weights normalised to sum to 1,
and with the paper's combination w_hit in [0, 1] with w_avoid = 1 - w_hit; with the product (the default)
it samples the avoid penalty in [0, 1] instead. Fuzzy matching is the expensive part: each term's
best match in each answer (`scoring.term_match`) is computed once, after which a trial is array arithmetic.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..corpus.rubric import rubric_of
from ..corpus.scoring import DIMENSIONS, RuleParams, combine, dimension_texts, implied_violations, term_match
from .answers import solution_text


def match_table(answers, terms) -> list[dict]:
    """Per answer and rubric dimension: the best non-negated fuzzy match (0 to 1) of each must-hit and
    must-avoid term, computed once for every threshold a search will try, and the number of implied
    violations (which no threshold changes). Root-cause phrases are masked for spatial and morphology at
    the recipe's threshold (`scoring.dimension_texts`), whatever threshold a search then tries."""
    out = []
    for a, t in zip(answers, terms):
        text = solution_text(a or "")
        rub = rubric_of(t)
        texts = dimension_texts(text, rub, RuleParams().threshold)
        out.append({d: (np.array([term_match(x, texts[d]) for x in rub[d].get("must_hit", [])], float),
                        np.array([term_match(x, texts[d]) for x in rub[d].get("must_avoid", [])], float),
                        len(implied_violations(texts[d], d, rub[d].get("must_hit", []), rub[d].get("must_avoid", []))))
                    for d in DIMENSIONS if d in rub})
    return out


def scores_from_matches(matches: list[dict], p: RuleParams) -> np.ndarray:
    """The rule score S of every answer from its precomputed matches (identical to `scoring.rule_score`)."""
    out = np.empty(len(matches))
    for i, dims in enumerate(matches):
        total = num = 0.0
        for d, (hit, avoid, implied) in dims.items():
            c = float((hit >= p.threshold).mean()) if len(hit) else 1.0
            n = int((avoid >= p.threshold).sum()) + (implied if p.implied_avoid else 0)
            num += p.weights[d] * combine(c, n, p)[2]
            total += p.weights[d]
        out[i] = num / total if total else np.nan
    return out


def spearman(a, b) -> float:
    """Spearman's rho over the pairs where both values are present (NaN with fewer than 3 or no spread)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(sps.spearmanr(a[ok], b[ok]).statistic)


def params_from_trial(trial, base: RuleParams, threshold_range=(0.5, 1.0)) -> RuleParams:
    """The constants one trial tries: the fuzzy threshold and the dimension weights, and per combination its
    own constants (paper: the hit weight, the avoid weight being 1 - it; product: the avoid penalty)."""
    threshold = trial.suggest_float("threshold", *threshold_range)
    raw = {d: trial.suggest_float(f"weight_{d}", 0.05, 1.0) for d in DIMENSIONS}
    total = sum(raw.values())
    weights = {d: v / total for d, v in raw.items()}
    if base.combine == "paper":
        w_hit = trial.suggest_float("w_hit", 0.0, 1.0)
        return replace(base, w_hit=w_hit, w_avoid=1.0 - w_hit, threshold=threshold, weights=weights)
    return replace(base, avoid_penalty=trial.suggest_float("avoid_penalty", 0.0, 1.0), threshold=threshold,
                   weights=weights)


def align(calibration: list[dict], judge_calibration, held_out: list[dict], judge_held_out,
          base: RuleParams = RuleParams(), n_trials: int = 200, seed: int = 0,
          threshold_range=(0.5, 1.0)) -> dict:
    """Maximise Spearman(rule score, judge) on the calibration matches; report before/after on held-out ones.

    Returns the fitted RuleParams, rho before and after on both splits, and the optuna study (its trials
    are the optimisation history).
    """
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    jc, jh = np.asarray(judge_calibration, float), np.asarray(judge_held_out, float)
    if len(calibration) != len(jc) or len(held_out) != len(jh):
        raise ValueError(f"matches and judge scores differ in length: {len(calibration)} vs {len(jc)}, "
                         f"{len(held_out)} vs {len(jh)}")

    def objective(trial):
        rho = spearman(scores_from_matches(calibration, params_from_trial(trial, base, threshold_range)), jc)
        return -1.0 if np.isnan(rho) else rho

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    own = {"w_hit": base.w_hit} if base.combine == "paper" else {"avoid_penalty": base.avoid_penalty}
    study.enqueue_trial({**own, "threshold": base.threshold,
                         **{f"weight_{d}": base.weights[d] for d in DIMENSIONS}})  # the defaults are trial 0
    study.optimize(objective, n_trials=n_trials)
    fitted = params_from_trial(optuna.trial.FixedTrial(study.best_params), base, threshold_range)
    return {"params": fitted, "study": study,
            "spearman_before_calibration": spearman(scores_from_matches(calibration, base), jc),
            "spearman_after_calibration": spearman(scores_from_matches(calibration, fitted), jc),
            "spearman_before": spearman(scores_from_matches(held_out, base), jh),
            "spearman_after": spearman(scores_from_matches(held_out, fitted), jh)}


def fitted_table(result: dict, base: RuleParams = RuleParams(), paper: dict | None = None) -> pd.DataFrame:
    """Default, fitted and (if given) the paper's constants side by side."""
    def row(p: RuleParams):
        return {"combine": p.combine, "w_hit": p.w_hit, "w_avoid": p.w_avoid, "avoid_penalty": p.avoid_penalty,
                "threshold": p.threshold,
                **{f"weight_{d}": p.weights[d] / sum(p.weights.values()) for d in DIMENSIONS}}
    out = {"default": row(base), "fitted": row(result["params"])}
    if paper:
        out["paper"] = paper
    return pd.DataFrame(out).T


def pooled(rows: pd.DataFrame, models: list[str], split: str) -> tuple[list[str], list, np.ndarray]:
    """Every model's answers on one split, pooled: (answers, rubrics, judge scores), without the answers the
    judge could not score (NaN). Columns: model M's answer in M, its judge score in `M_judge`."""
    part = rows[rows["split"] == split]
    answers = [a for m in models for a in part[m]]
    terms = [t for _ in models for t in part["terms"]]
    scores = np.concatenate([part[f"{m}_judge"].to_numpy(float) for m in models]) if models else np.array([])
    ok = np.isfinite(scores)
    return [a for a, k in zip(answers, ok) if k], [t for t, k in zip(terms, ok) if k], scores[ok]
