"""Sim-to-real: a run's models, trained on generated maps, measured on real ones, and where the two differ.

Stage 07 of a synthetic run scores its SFT model on every labelled map of a real file with the scorer
(:mod:`.scorer`, output in <run>/scores/<file>/), beside the run's classical baseline (stage 01's features and
gradient boosting) refit on the run's generated training maps only and applied to the same real maps. Both
are scored by the same bootstrap (:func:`.scorer.bootstrap_scores`).

Where the generator's maps differ from real ones is measured per class, not judged by eye: a classifier is
asked to tell generated maps of a class from real maps of the same class on stage 01's features (5-fold
cross-validated AUC; 0.5 means it cannot, 1.0 means every map gives itself away), and the features whose
standardised means differ most are named. A class with a high AUC and a low real F1 is where to improve the
generator first.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.metrics import roc_auc_score

from ..maps import classify
from ..maps.features import extract_features, feature_names
from ..maps.loaders import DATA_ENV, resolve_data_path
from ..maps.table import read_table
from ..runner.runs import atomic_write_text, project_path
from . import scorer
from .stats import mcnemar
from .classification import exact_matches, labels_of_key


def baseline_predictions(X_train: np.ndarray, train_keys, X_real: np.ndarray, classifier: str = "hgb",
                         seed: int = 0) -> list[list[str]]:
    """Stage 01's baseline (one binary classifier per pattern on the features) fitted on the training maps
    and asked about the real ones: label lists, as the scorer's parsed answers are."""
    keys = list(train_keys)
    models = classify.fit_pattern_models(X_train, classify.label_matrix(keys), classifier, seed)
    pred = classify.suggested_keys(classify.predict_pattern_probs(models, X_real), sorted(set(keys)))
    return [labels_of_key(k) for k in pred]


def domain_gap(X_gen: np.ndarray, gen_keys, X_real: np.ndarray, real_keys, max_per_side: int = 1500,
               seed: int = 0, top: int = 3) -> pd.DataFrame:
    """Per class present on both sides: how well generated maps can be told from real ones (cross-validated
    AUC of a gradient-boosting classifier on the features, up to `max_per_side` maps a side) and the `top`
    features whose means differ most, in pooled standard deviations (signed: generated minus real)."""
    names = np.array(feature_names())
    gen_keys, real_keys = np.asarray(list(gen_keys)), np.asarray(list(real_keys))
    rng = np.random.default_rng(seed)
    rows = []
    for cls in sorted(set(gen_keys) & set(real_keys)):
        g, r = np.flatnonzero(gen_keys == cls), np.flatnonzero(real_keys == cls)
        g = rng.choice(g, min(len(g), max_per_side), replace=False)
        r = rng.choice(r, min(len(r), max_per_side), replace=False)
        if min(len(g), len(r)) < 10:
            continue
        X = np.vstack([X_gen[g], X_real[r]])
        y = np.r_[np.ones(len(g)), np.zeros(len(r))]
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            p = cross_val_predict(clf, X, y, cv=folds, method="predict_proba")[:, 1]
        sd = np.sqrt(0.5 * (X_gen[g].var(axis=0) + X_real[r].var(axis=0))) + 1e-9
        d = (X_gen[g].mean(axis=0) - X_real[r].mean(axis=0)) / sd
        order = np.argsort(-np.abs(d))[:top]
        rows.append({"label": cls, "n_generated": len(g), "n_real": len(r), "domain_auc": float(roc_auc_score(y, p)),
                     "differs_most": ", ".join(f"{names[i]} {d[i]:+.1f} sd" for i in order)})
    return pd.DataFrame(rows)


def real_features(maps: pd.DataFrame) -> np.ndarray:
    return extract_features(list(maps["wafer_map"]), progress=False)


def side_by_side(per_class: dict[str, pd.DataFrame], gap: pd.DataFrame | None = None, title: str = ""):
    """Per class: real-map F1 of each predictor with its 95% interval (bars), and the generator's domain AUC."""
    import matplotlib.pyplot as plt
    labels = list(next(iter(per_class.values()))["label"])
    n = len(per_class)
    fig, axes = plt.subplots(1, 2 if gap is not None and len(gap) else 1, figsize=(12, 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]} if gap is not None and len(gap) else None)
    ax = axes[0, 0]
    x = np.arange(len(labels))
    for i, (name, t) in enumerate(per_class.items()):
        t = t.set_index("label").reindex(labels)
        err = np.vstack([t["f1"] - t["f1_ci_low"], t["f1_ci_high"] - t["f1"]]).clip(min=0)
        ax.bar(x + (i - (n - 1) / 2) * 0.8 / n, t["f1"], 0.8 / n, yerr=err, capsize=2, label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 on real maps")
    ax.legend(fontsize=8)
    ax.set_title(title or "Trained on generated maps, scored on real ones")
    if gap is not None and len(gap):
        g = gap.set_index("label").reindex([lab for lab in labels if lab in set(gap["label"])])
        axes[0, 1].barh(g.index, g["domain_auc"], color="grey")
        axes[0, 1].axvline(0.5, color="k", lw=0.8, ls="--")
        axes[0, 1].set_xlim(0.4, 1.0)
        axes[0, 1].invert_yaxis()
        axes[0, 1].set_xlabel("generated vs real, AUC (0.5: alike)")
        axes[0, 1].set_title("How far the generator is from real maps")
    fig.tight_layout()
    return fig


def resolve_real(real_check: str, run_source: str) -> tuple[Path | None, str]:
    """(file, '') of the real maps to check a run against, or (None, why not): nothing asked, the run's own
    source (its test split already measures that), or no file (the public samples live in ../shared/data)."""
    if not real_check:
        return None, "real_check is empty"
    if real_check == run_source:
        return None, f"the run is trained on {run_source}: its own test split measures that"
    try:
        path = resolve_data_path(real_check) if real_check in DATA_ENV else Path(real_check)
    except FileNotFoundError as exc:
        return None, str(exc)
    return (path, "") if path.exists() else (None, f"{path}: no such file")


def compare(sft_folder: str | Path, real_path: Path, run_data: Path, out: Path, max_maps: int = 0,
            batch_size: int = 128, n_bootstrap: int = 1000, seed: int = 0, classifier: str = "hgb") -> dict:
    """Stage 07's sim-to-real section: the run's SFT model scored on the real maps (the scorer's files in `out`,
    the baseline's per-class table beside them), the baseline refit on the run's generated training maps
    (stage 01's maps.parquet and features.npy in `run_data`), a paired test and the per-class domain gap.
    Returns metrics (flat 'sim2real/...' keys), the per-class table and the figure."""
    maps, skipped = scorer.load_labelled(real_path, max_maps, seed)
    folder, kind = scorer.resolve_model(sft_folder)
    vlm = scorer.score_loaded(folder, kind, maps, skipped, real_path, out, batch_size, True, n_bootstrap, seed,
                              max_maps=max_maps, record_paths=project_path)
    generated = read_table(Path(run_data) / "maps.parquet")
    train = ((generated["split"] == "train") & (generated["key"] != "") & ~generated["quarantined"]).to_numpy()
    X_gen, gen_keys = np.load(Path(run_data) / "features.npy")[train], generated.loc[train, "key"]
    X_real = real_features(maps)
    truth = [list(x) for x in maps["labels"]]
    base_pred = baseline_predictions(X_gen, gen_keys, X_real, classifier, seed)
    base = scorer.bootstrap_scores(truth, base_pred, n_bootstrap, seed)
    gap = domain_gap(X_gen, gen_keys, X_real, ["+".join(x) for x in truth], seed=seed)
    paired = mcnemar(vlm["_per_map"]["correct"].to_numpy(), exact_matches(truth, base_pred))
    atomic_write_text(Path(out) / "baseline_per_class.csv", base["per_class"].to_csv(index=False))
    per_class = vlm["_per_class"].merge(base["per_class"], on="label", how="outer", suffixes=("_sft", "_baseline"))
    per_class = per_class.merge(gap, on="label", how="left") if len(gap) else per_class
    fig = side_by_side({"SFT (VLM)": vlm["_per_class"], "baseline (features + HGB)": base["per_class"]}, gap,
                       f"Trained on generated maps, scored on {len(maps)} real maps ({Path(real_path).name})")
    metrics = {"sim2real/data": Path(real_path).name, "sim2real/n_maps": vlm["n_maps"],
               "sim2real/sft/maps_per_second": vlm["maps_per_second"], "sim2real/mcnemar_p": paired["p_value"],
               "sim2real/sft/unparsed_share": vlm["unparsed_share"]}
    for name, m in (("sft", vlm), ("baseline", base)):
        metrics |= {f"sim2real/{name}/{k}": m[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                                            "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high")}
    metrics |= {f"sim2real/domain_auc/{r.label}": r.domain_auc for r in gap.itertuples()}
    return {"metrics": metrics, "per_class": per_class, "figure": fig}
