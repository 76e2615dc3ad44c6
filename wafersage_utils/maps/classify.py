"""Per-pattern classifiers on map features: out-of-fold probabilities, decoding to label keys, baseline.

One binary classifier per pattern (presence), so mixed maps need no class of their own; a label key is
decoded as the most likely among the keys seen in training, treating patterns as independent.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .conventions import PATTERNS

log = logging.getLogger(__name__)


def make_classifier(model: str, seed: int):
    """The probabilistic classifier used for out-of-fold probabilities and the baseline."""
    if model == "hgb":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, early_stopping=True,
                                              validation_fraction=0.15, n_iter_no_change=15, random_state=seed)
    if model == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    raise ValueError(f"classifier: expected 'hgb' or 'logreg', got {model!r}")


def label_matrix(keys) -> np.ndarray:
    """Multi-hot (N, 8) pattern matrix of label keys ('none' is all zeros)."""
    return np.array([[p in k.split("+") for p in PATTERNS] for k in keys], dtype=np.int64)


def oof_probabilities(X: np.ndarray, Y: np.ndarray, strata: np.ndarray, groups: np.ndarray, n_folds: int,
                      model: str, seed: int, pooled: np.ndarray | None = None, cnn_epochs: int = 10) -> np.ndarray:
    """Out-of-fold probability (N, K) of each pattern being present, folds disjoint by group (lot).

    One binary classifier per pattern on the features, so mixed maps need no class of their own. With
    `pooled` maps (N, 2, S, S), a small CNN with one output per pattern is trained in the same folds and the
    two probabilities are averaged: the two views err on different maps.
    """
    from .embedding import pattern_net_probabilities
    P = np.zeros(Y.shape)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rare mixtures have fewer members than folds
        for fold, (tr, te) in enumerate(cv.split(X, strata, groups)):
            P[te] = predict_pattern_probs(fit_pattern_models(X[tr], Y[tr], model, seed + 100 * fold), X[te])
            if pooled is not None:
                P[te] = 0.5 * P[te] + 0.5 * pattern_net_probabilities(pooled[tr], Y[tr], pooled[te], cnn_epochs,
                                                                      seed + fold)
            log.info("out-of-fold probabilities: fold %d/%d done", fold + 1, n_folds)
    return P


def suggested_keys(P: np.ndarray, candidates: list[str]) -> np.ndarray:
    """Most likely label key per map among `candidates`, patterns taken as independent given P (N, K)."""
    C = label_matrix(candidates).astype(np.float64)  # (M, K)
    logp = np.log(np.clip(P, 1e-6, 1 - 1e-6))
    log1m = np.log(np.clip(1 - P, 1e-6, 1 - 1e-6))
    score = logp @ C.T + log1m @ (1 - C).T  # (N, M) log-likelihood of each candidate key
    return np.asarray(candidates)[score.argmax(1)]




def _fit_binary(X: np.ndarray, y: np.ndarray, model: str, seed: int):
    """A fitted binary classifier, or the constant rate when one class is missing."""
    if y.min() == y.max():
        return float(y.max())
    return make_classifier(model, seed).fit(X, y)


def _predict_binary(clf, X: np.ndarray) -> np.ndarray:
    return np.full(len(X), clf) if isinstance(clf, float) else clf.predict_proba(X)[:, 1]


def fit_pattern_models(X: np.ndarray, Y: np.ndarray, model: str, seed: int) -> list:
    """One binary presence classifier per pattern column of Y (N, K)."""
    return [_fit_binary(X, Y[:, k], model, seed + k) for k in range(Y.shape[1])]


def predict_pattern_probs(models: list, X: np.ndarray) -> np.ndarray:
    """Presence probability (N, K) of each pattern."""
    return np.stack([_predict_binary(m, X) for m in models], axis=1)


def classification_report(y_true, y_pred, labels: list[str] | None = None) -> dict:
    """Accuracy, macro-F1 over the true classes, and per-class recall, for label keys."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = labels or sorted(set(y_true))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "per_class_recall": {lab: float(r) for lab, r in zip(labels, recall)}, "n": int(len(y_true))}


def pattern_f1(y_true, y_pred) -> float:
    """Macro-F1 over the eight patterns in the multi-label view of label keys ('none' has no pattern)."""
    from sklearn.metrics import f1_score
    T, Pm = label_matrix(y_true), label_matrix(y_pred)
    present = T.sum(0) > 0
    return float(f1_score(T[:, present], Pm[:, present], average="macro", zero_division=0))
