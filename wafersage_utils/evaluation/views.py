"""Asking about a map in several views and voting: its defect type does not depend on how it is turned.

Why. A wafer's defect type is the same under the eight symmetries of the square (quarter turns, mirrored or
not), but a small model's answer is not: it answers a map turned by a quarter differently from the map as it
is on some maps near its decision boundaries. Asking the same question about the map in several views and
taking the answer most views give (test-time augmentation) averages that out. It costs one generation per
view, so it is a choice per model, made on validation maps like the defect-free bias
(:func:`.calibration.choose_views`) and saved with the model (`views` in `wafersage.json`): the scorer, stages
05 to 07 and sim-to-real then ask every map in that many views. The model card's `pipeline(...)` snippet and `make serve` ask one view.

Views. `views = 1`: the map as it is; 4: its four quarter turns; 8: those and their mirror images
(:func:`..maps.conventions.symmetry`, view 0 always the map itself). The maps are turned as die grids,
before rendering, so a turned map is rendered exactly as any map is.

Vote. The label set (defect-free, one pattern, or a mixed map's patterns) named by the most views wins; a tie
goes to the tied set the earliest view named, so the map as it is decides whenever it is among the tied.
The answer reported for a map is the earliest view's answer that names the winning set.

Settled votes. Once the views asked so far decide the vote whatever the rest would name (:func:`settled`: with 4
views, as soon as view 0 and view 1 agree, since two more can at most tie and a tie goes to the earlier view),
the remaining views of that map need not be asked: the scorer asks each further view only about the maps whose
vote is still open, which gives the same prediction as asking every view (tested) at about 60% of the passes
on real maps.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ..maps.conventions import VIEW_COUNTS, label_key, symmetry
from .classification import exact_matches, macro_f1


def check_views(views, where: str = "views") -> int:
    """`views` as an int of VIEW_COUNTS, or a clear error naming `where`."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or int(views) not in VIEW_COUNTS:
        raise ValueError(f"{where}: {views!r}; expected one of {list(VIEW_COUNTS)} (the map as it is, its quarter "
                         "turns, or those and their mirror images)")
    return int(views)


def view_maps(maps: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Every map in view k (0: as it is)."""
    return list(maps) if k == 0 else [symmetry(np.asarray(m), k) for m in maps]


def vote(labels: list[list[str]]) -> int:
    """The index of the view whose labels win: the label set most views name, ties to the earliest view."""
    if not labels:
        raise ValueError("no views to vote over")
    keys = [label_key(x) for x in labels]
    counts = Counter(keys)
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if counts[k] == top)


def settled(labels: list[list[str]], total: int) -> bool:
    """Whether the vote over `total` views is decided by the labels of its first `len(labels)` views, whatever
    the remaining views name: no other label set, seen or not, can reach the leader's count, or reach it
    while holding the tie (a set first named by an earlier view)."""
    if not labels:
        return total == 0
    left = total - len(labels)
    keys = [label_key(x) for x in labels]
    counts, first = Counter(keys), {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    lead = keys[vote(labels)]
    if left > counts[lead]:  # a set no view has named yet could take every remaining view and pass it
        return False
    return all(n + left < counts[lead] or (n + left == counts[lead] and first[lead] < first[k])
               for k, n in counts.items() if k != lead)


def voted(per_view: list[list], views: int) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """(labels, index of the winning view, views agreeing with it) per map, from `per_view[v][i]`: the labels
    view v gave map i, voting over the first `views` views. An entry None is a view not asked because the
    map's vote was settled before it (:func:`settled`): the vote and the count of agreeing views are over the
    views asked."""
    n = len(per_view[0])
    winner, agree = np.zeros(n, int), np.zeros(n, int)
    labels = []
    for i in range(n):
        asked = [(v, per_view[v][i]) for v in range(views) if per_view[v][i] is not None]
        w = asked[vote([x for _, x in asked])][0]
        winner[i] = w
        labels.append(per_view[w][i])
        agree[i] = sum(label_key(x) == label_key(labels[i]) for _, x in asked)
    return labels, winner, agree


def sweep(true: list[list[str]], per_view: list[list[list[str]]], candidates=VIEW_COUNTS) -> pd.DataFrame:
    """Accuracy and macro-F1 of each single view and of the vote over each candidate count (rows: what, views,
    view, accuracy, macro_f1, mean). `views` is the count a row stands for as a candidate: 1 for view 0 alone,
    the count for a vote, 0 for a turned view alone (shown, never chosen); `view` is the single view (-1: a vote)."""
    rows = []
    for v, pred in enumerate(per_view):
        rows.append({"what": f"view {v} alone", "views": 1 if v == 0 else 0, "view": v, "pred": pred})
    for c in candidates:
        if c > 1 and c <= len(per_view):
            rows.append({"what": f"vote over {c} views", "views": c, "view": -1, "pred": voted(per_view, c)[0]})
    out = []
    for r in rows:
        acc = float(exact_matches(true, r["pred"]).mean())
        f1 = macro_f1(true, r["pred"])
        out.append({"what": r["what"], "views": r["views"], "view": r["view"], "accuracy": acc, "macro_f1": f1,
                    "mean": (acc + f1) / 2})
    return pd.DataFrame(out)


def choose(table: pd.DataFrame, candidates=VIEW_COUNTS) -> int:
    """The candidate count whose vote has the best mean of accuracy and macro-F1; ties to fewer views."""
    rows = table[table["views"].isin(list(candidates))]
    best = rows["mean"].max()
    return int(rows[rows["mean"] >= best - 1e-12]["views"].min())


def table_metrics(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    """The sweep as flat metrics: `<prefix>/<what, spaces as _>/accuracy` and `.../macro_f1` per row."""
    return {f"{prefix}/{w.replace(' ', '_')}/{m}": float(v) for w, row in table.set_index("what").iterrows()
            for m, v in (("accuracy", row["accuracy"]), ("macro_f1", row["macro_f1"]))}


def figure(table: pd.DataFrame, chosen: int, title: str = ""):
    """Accuracy and macro-F1 of each single view and each vote, the chosen vote marked."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    x = np.arange(len(table))
    for off, col in ((-0.2, "accuracy"), (0.2, "macro_f1")):
        ax.bar(x + off, table[col], 0.4, label=col.replace("_", "-"))
    lo = float(min(table["accuracy"].min(), table["macro_f1"].min()))
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    labels = [w.replace("vote over ", "vote ").replace(" alone", "") for w in table["what"]]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    for i, (v, view) in enumerate(zip(table["views"], table["view"])):
        if view == -1 and v == chosen or (chosen == 1 and view == 0):
            ax.get_xticklabels()[i].set_fontweight("bold")
    ax.set_ylabel("validation")
    ax.set_title(title or f"views of each map (chosen: {chosen})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
