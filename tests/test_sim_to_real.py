"""Where generated maps differ from real ones: the domain gap must tell alike from unlike."""
from __future__ import annotations

import numpy as np

from wafersage_utils.evaluation import sim_to_real
from wafersage_utils.maps.features import feature_names


def test_domain_gap_is_chance_for_alike_maps_and_high_for_shifted_ones():
    rng = np.random.default_rng(0)
    d = len(feature_names())
    gen = rng.normal(size=(400, d))
    real_alike, real_shifted = rng.normal(size=(400, d)), rng.normal(size=(400, d))
    real_shifted[:, 5] += 3.0  # one feature moved by three standard deviations
    keys = ["Loc"] * 200 + ["none"] * 200
    gap = sim_to_real.domain_gap(np.vstack([gen, gen]), keys + ["Scratch"] * 400, np.vstack([real_alike, real_shifted]),
                                 ["Loc"] * 200 + ["none"] * 200 + ["Random"] * 400).set_index("label")
    assert set(gap.index) == {"Loc", "none"}  # Scratch and Random exist on one side only
    assert abs(gap.loc["Loc", "domain_auc"] - 0.5) < 0.12
    real_gap = sim_to_real.domain_gap(gen, keys, real_shifted, keys).set_index("label")
    assert (real_gap["domain_auc"] > 0.95).all()
    assert all(r.startswith(feature_names()[5]) for r in real_gap["differs_most"])


def test_baseline_predicts_label_lists_of_the_training_keys():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(0, 1, (60, 4)), rng.normal(5, 1, (60, 4))])
    pred = sim_to_real.baseline_predictions(X, ["none"] * 60 + ["Center"] * 60, X, "logreg", 0)
    assert pred[0] == ["none"] and pred[-1] == ["Center"]
