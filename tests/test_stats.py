"""Wafer-level bootstrap intervals and paired tests against hand-computed values."""
import numpy as np
import pytest

from wafersage_utils.evaluation import stats


def test_cluster_interval_mean_is_over_questions_and_interval_orders():
    values = [1, 0, 1, 1, 0, 0, 1, 1]
    wafers = ["a", "a", "b", "b", "c", "c", "d", "d"]
    r = stats.cluster_interval(values, wafers, n_resamples=500, seed=0)
    assert r["mean"] == pytest.approx(5 / 8) and r["n_wafers"] == 4
    assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0


def test_cluster_interval_is_wider_than_a_question_level_one_when_wafers_cluster():
    # every wafer's 10 questions share one outcome: 20 wafers, not 200 independent questions
    rng = np.random.default_rng(0)
    per_wafer = rng.integers(0, 2, 20)
    values = np.repeat(per_wafer, 10)
    wafers = np.repeat(np.arange(20), 10)
    r = stats.cluster_interval(values, wafers, n_resamples=2000, seed=0)
    p = values.mean()
    naive_half = 1.96 * np.sqrt(p * (1 - p) / len(values))
    assert (r["ci_high"] - r["ci_low"]) / 2 > 2 * naive_half


def test_paired_difference_sign_and_p_value():
    wafers = np.repeat(np.arange(30), 3)
    a = np.full(90, 0.5)
    r = stats.paired_difference(a, a + 0.1, wafers, n_resamples=500)
    assert r["mean"] == pytest.approx(0.1) and r["ci_low"] == pytest.approx(0.1) and r["p_value"] == 0.0
    rng = np.random.default_rng(1)
    b = a + rng.normal(0, 0.2, 90)
    r = stats.paired_difference(a, b, wafers, n_resamples=1000)
    assert r["ci_low"] < 0 < r["ci_high"] and r["p_value"] > 0.05


def test_identical_models_get_a_zero_width_interval_not_nan():
    # two models that answer every question alike (RL that did not move the adapter): BCa alone returns NaN
    wafers = np.repeat(np.arange(30), 4)
    same = np.random.default_rng(0).random(120)
    d = stats.paired_difference(same, same, wafers)
    assert (d["mean"], d["ci_low"], d["ci_high"]) == (0.0, 0.0, 0.0) and d["p_value"] == 1.0
    flat = stats.cluster_interval(np.full(120, 0.25), wafers)
    assert flat["ci_low"] == flat["mean"] == flat["ci_high"] == 0.25
    one_off = stats.paired_difference(np.zeros(120), np.r_[1.0, np.zeros(119)], wafers)
    assert 0.0 <= one_off["ci_low"] <= one_off["mean"] <= one_off["ci_high"] and one_off["ci_high"] > 0


def test_paired_difference_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1, 2], [1], ["a", "b"])
    with pytest.raises(ValueError, match="missing values"):
        stats.cluster_interval([1.0, np.nan], ["a", "b"])


def test_mcnemar_exact_against_hand_computed_binomial():
    # 8 questions only A gets right, 2 only B: two-sided exact p = 2 * P(X <= 2 | n 10, 0.5) = 2 * 56 / 1024
    a = [True] * 8 + [False] * 2 + [True] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5
    r = stats.mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (8, 2)
    assert r["p_value"] == pytest.approx(2 * 56 / 1024)
    assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_compare_models_keys_and_paired_values():
    import pandas as pd
    rows = pd.DataFrame({
        "split": ["val"] * 6 + ["test"] * 6,
        "wafer_id": [f"w{i // 2}" for i in range(12)],
        "category": ["defect_type", "location"] * 6,
        "labels": [["Loc"], ["Loc"], ["Scratch"], ["Scratch"], ["Center", "Loc"], ["Center", "Loc"]] * 2,
        "sft": ["This wafer map shows a scratch defect pattern.", "x"] * 6,
        "rl": ["This wafer map shows a localized defect pattern.", "x"] * 6,
        "sft_score": [0.2, 0.5, 0.4, 0.5, 0.6, 0.5] * 2,
        "rl_score": [0.3, 0.5, 0.4, 0.7, 0.6, 0.5] * 2,
    })
    out = stats.compare_models(rows, ["sft", "rl"], [("sft", "rl")], ("val", "test"), n_resamples=200)
    for split in ("val", "test"):
        assert out[f"rl_minus_sft/rule_score_{split}"] == pytest.approx(0.3 / 6)
        assert out[f"rl/rule_score_{split}"] == pytest.approx(3.0 / 6)
        assert out[f"rl/rule_score_{split}_ci_low"] <= out[f"rl/rule_score_{split}"] <= out[f"rl/rule_score_{split}_ci_high"]
        # single-pattern type questions: a Loc wafer and a Scratch wafer (the Center+Loc one is mixed)
        assert out[f"sft/type_accuracy_{split}"] == 0.5 and out[f"rl/type_accuracy_{split}"] == 0.5
        assert out[f"rl_minus_sft/type_accuracy_{split}_mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="base"):
        stats.compare_models(rows, ["sft", "rl"], [("base", "rl")])
    with pytest.raises(ValueError, match="rl_score"):
        stats.compare_models(rows.drop(columns="rl_score"), ["sft", "rl"], [("sft", "rl")])
