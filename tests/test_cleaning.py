"""Label cleaning finds injected noise, sampling and splits behave, the baseline scores."""
import numpy as np
import pandas as pd
import pytest

from wafersage_utils.maps import classify, cleaning, features, splits
from wafersage_utils.maps.conventions import label_key


@pytest.fixture(scope="module")
def cleaned(small_synth):
    df = small_synth
    keys = df.labels.map(label_key).to_numpy()
    X = features.extract_features(list(df.wafer_map))
    Y = classify.label_matrix(keys)
    P = classify.oof_probabilities(X, Y, keys, df.lot.to_numpy(), 4, "hgb", 0)
    Z = cleaning.embed_features(X, 16, 0)
    lc = cleaning.fit_label_clusters(Z, keys, 0, 4, 0)
    agree = cleaning.cluster_agreement(Z, keys, lc)
    cons, quar, n_flagged = cleaning.find_label_issues(Y, P, agree.cluster_agreement.to_numpy(), 0.5, 0.5)
    truth = df.labels_true.map(label_key).to_numpy()
    return dict(df=df, keys=keys, X=X, P=P, agree=agree, quar=quar, truth=truth, cons=cons, n_flagged=n_flagged)


def test_quarantine_finds_injected_noise_on_a_small_set(cleaned):
    rates = cleaning.detection_rates(cleaned["quar"], cleaned["truth"] != cleaned["keys"])
    # 600 maps, 60 wrong labels; the 3000-map default reaches P 0.83 / R 0.90 (see the README).
    assert rates["precision"] >= 0.6 and rates["recall"] >= 0.6, rates
    assert cleaned["quar"].sum() <= cleaned["n_flagged"]


def test_suggested_labels_repair_most_quarantined_noise(cleaned):
    sug = classify.suggested_keys(cleaned["P"], sorted(set(cleaned["keys"])))
    hit = cleaned["quar"] & (cleaned["truth"] != cleaned["keys"])
    assert (sug[hit] == cleaned["truth"][hit]).mean() > 0.6


def test_consistency_is_lower_for_wrong_labels(cleaned):
    wrong = cleaned["truth"] != cleaned["keys"]
    assert np.median(cleaned["cons"][wrong]) < np.median(cleaned["cons"][~wrong])


def test_sampling_takes_typical_and_hard_from_kept_maps(cleaned):
    df = cleaned["df"].assign(key=cleaned["keys"], quarantined=cleaned["quar"],
                              d_own=cleaned["agree"].d_own.to_numpy(), cluster=cleaned["agree"].cluster.to_numpy())
    role = cleaning.sample_typical_and_hard(df, 5, 3)
    assert not (df.quarantined & (role != "")).any()
    per = pd.crosstab(df.key, role)
    assert (per["typical"] == 5).all() and (per["hard"] == 3).all()
    for _, g in df.assign(role=role).groupby("key"):
        assert g.loc[g.role == "typical", "d_own"].mean() < g.loc[g.role == "hard", "d_own"].mean()


def test_splits_are_lot_disjoint_and_stratified(small_synth):
    keys = small_synth.labels.map(label_key).to_numpy()
    groups = splits.split_groups(small_synth.lot, small_synth.id)
    split = splits.lot_disjoint_split(keys, groups, 0.15, 0.15, 0)
    assert splits.shared_groups(split, groups) == 0
    share = pd.Series(split).value_counts(normalize=True)
    assert 0.08 < share["test"] < 0.25 and 0.08 < share["val"] < 0.25
    assert set(keys[split == "test"]) == set(keys)  # every class in test
    # Without lots, every wafer is its own group.
    assert len(set(splits.split_groups(["", ""], ["a", "b"]))) == 2
    with pytest.raises(ValueError, match="test_fraction"):
        splits.lot_disjoint_split(keys, groups, 0.15, 0.7, 0)


def test_shared_groups_detects_a_leak():
    assert splits.shared_groups(["train", "test", "train"], ["a", "a", "b"]) == 1


def test_baseline_beats_majority(cleaned):
    keys, X = cleaned["keys"], cleaned["X"]
    split = splits.lot_disjoint_split(keys, splits.split_groups(cleaned["df"].lot, cleaned["df"].id), 0.15, 0.2, 0)
    tr, te = split == "train", split == "test"
    models = classify.fit_pattern_models(X[tr], classify.label_matrix(keys[tr]), "hgb", 0)
    pred = classify.suggested_keys(classify.predict_pattern_probs(models, X[te]), sorted(set(keys[tr])))
    rep = classify.classification_report(cleaned["truth"][te], pred)
    majority = pd.Series(keys[tr]).value_counts().index[0]
    assert rep["accuracy"] > (cleaned["truth"][te] == majority).mean() + 0.4  # majority is about 0.11
    assert 0 < classify.pattern_f1(cleaned["truth"][te], pred) <= 1


def test_stratified_cap_keeps_every_class():
    keys = np.array(["a"] * 90 + ["b"] * 9 + ["c"])
    idx = splits.stratified_cap(keys, 20, 0)
    assert len(idx) <= 20 + 3 and set(keys[idx]) == {"a", "b", "c"}
    assert len(splits.stratified_cap(keys, 0, 0)) == 100


def test_stratified_cap_never_exceeds_n_with_more_classes_than_n():
    keys = np.repeat([f"c{i}" for i in range(15)], 4)
    idx = splits.stratified_cap(keys, 12, 0)
    assert len(idx) == 12 and len(set(keys[idx])) == 12
