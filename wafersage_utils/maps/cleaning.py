"""Clustering-based label cleaning and sampling (the paper's stage 1, made measurable).

Two independent witnesses judge each given label:
- out-of-fold class probabilities from a classifier trained on the other lots (confident learning, via
  cleanlab, estimates how many labels are wrong), and
- K-Means clusters fitted within each label: a map that lies nearer to another label's clusters than
  to its own is suspect.
A map is quarantined when confident learning flags it and its clusters do not vouch for its label; the two
combine into a consistency score for ranking. Quarantined maps are kept with a suggested label, never deleted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from cleanlab.multilabel_classification.filter import find_label_issues as cl_find_label_issues
from cleanlab.multilabel_classification.rank import get_label_quality_scores
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)


def embed_features(X: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Standardised features reduced by PCA to at most n_components dimensions."""
    Z = StandardScaler().fit_transform(X)
    n = min(n_components, Z.shape[1], Z.shape[0])
    return PCA(n_components=n, random_state=seed).fit_transform(Z).astype(np.float32)


def choose_k(Z: np.ndarray, k_max: int, seed: int) -> int:
    """K for one label's maps: best silhouette over 2..k_max (1 when too few maps)."""
    if len(Z) < 10 or k_max < 2:
        return 1
    best, best_k = -1.0, 1
    sample = min(len(Z), 1000)
    for k in range(2, min(k_max, len(Z) // 5) + 1):
        lab = KMeans(k, n_init=4, random_state=seed).fit_predict(Z)
        score = silhouette_score(Z, lab, sample_size=sample, random_state=seed)
        if score > best:
            best, best_k = score, k
    return best_k


@dataclass
class LabelClusters:
    """K-Means centroids fitted within each label key."""

    centroids: dict[str, np.ndarray]  # key -> (k, d)
    k_chosen: dict[str, int]


def fit_label_clusters(Z: np.ndarray, keys: np.ndarray, k: int, k_max: int, seed: int) -> LabelClusters:
    """K-Means within each label; k > 0 fixes K, k == 0 chooses it by silhouette up to k_max."""
    cents, chosen = {}, {}
    for key in sorted(set(keys)):
        Zk = Z[keys == key]
        kk = min(k if k > 0 else choose_k(Zk, k_max, seed), len(Zk))
        cents[key] = KMeans(kk, n_init=4, random_state=seed).fit(Zk).cluster_centers_
        chosen[key] = kk
    return LabelClusters(cents, chosen)


def cluster_agreement(Z: np.ndarray, keys: np.ndarray, lc: LabelClusters) -> pd.DataFrame:
    """Per map: distance to its own label's nearest centroid, to any other label's, and their ratio."""
    names = sorted(lc.centroids)
    d = np.stack([np.min(np.linalg.norm(Z[:, None, :] - lc.centroids[n][None], axis=2), axis=1) for n in names], 1)
    own_idx = np.array([names.index(k) for k in keys])
    d_own = d[np.arange(len(Z)), own_idx]
    d_other = np.where(np.arange(len(names))[None, :] == own_idx[:, None], np.inf, d)
    nearest_other = d_other.argmin(1)
    d_oth = d_other[np.arange(len(Z)), nearest_other]
    own_cluster = np.array([
        int(np.argmin(np.linalg.norm(lc.centroids[k] - z, axis=1))) for z, k in zip(Z, keys)])
    return pd.DataFrame({"d_own": d_own, "d_other": d_oth, "nearest_other": np.array(names)[nearest_other],
                         "cluster": own_cluster, "cluster_agreement": d_oth / (d_own + d_oth + 1e-12)})


def find_label_issues(Y: np.ndarray, P: np.ndarray, agreement: np.ndarray, weight: float,
                      cluster_veto: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Consistency score per map, the quarantine mask, and confident learning's count of label errors.

    A map is quarantined when confident learning (cleanlab, multi-label, out-of-fold probabilities P)
    flags its given labels and its clusters do not vouch for them: its cluster agreement
    d_other / (d_own + d_other) is below `cluster_veto` (0.5 means equally near another label's clusters).
    consistency = weight * cleanlab's label quality + (1 - weight) * cluster agreement, for ranking.
    """
    given = [list(np.flatnonzero(row)) for row in Y]
    flagged = cl_find_label_issues(given, P, filter_by="confident_learning")
    consistency = weight * get_label_quality_scores(given, P) + (1.0 - weight) * agreement
    return consistency, flagged & (agreement < cluster_veto), int(flagged.sum())


def detection_rates(quarantined: np.ndarray, truly_noisy: np.ndarray) -> dict[str, float]:
    """Precision and recall of the quarantine against known injected noise."""
    tp = int((quarantined & truly_noisy).sum())
    return {"precision": tp / max(int(quarantined.sum()), 1), "recall": tp / max(int(truly_noisy.sum()), 1)}


def sample_typical_and_hard(df: pd.DataFrame, n_typical: int, n_hard: int) -> pd.Series:
    """Per label key, among kept maps: 'typical' nearest their cluster centre, 'hard' farthest from it.

    Expects columns key, quarantined, d_own, cluster; ranks round-robin over clusters so every cluster
    contributes. Returns the role per row ('typical', 'hard' or '').
    """
    role = pd.Series("", index=df.index)
    kept = df[~df["quarantined"] & (df["key"] != "")]
    for _, g in kept.groupby("key", sort=True):
        rank = g.groupby("cluster")["d_own"].rank(method="first")
        typical = g.assign(r=rank).sort_values(["r", "d_own", "id"]).index[:n_typical]
        rest = g.drop(typical)
        rank_far = rest.groupby("cluster")["d_own"].rank(method="first", ascending=False)
        hard = rest.assign(r=rank_far).sort_values(["r", "id"]).index[:n_hard]
        role[typical], role[hard] = "typical", "hard"
    return role
