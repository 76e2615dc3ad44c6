"""Figures shared by the notebooks, all in the fixed palette of :data:`.maps.conventions.PALETTE`."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap

from .maps.conventions import PALETTE

WAFER_CMAP = ListedColormap([np.array(c) / 255.0 for c in PALETTE])


def show_map(ax, m: np.ndarray, title: str = "") -> None:
    """Draw one wafer map (no die / pass / fail) without axes."""
    ax.imshow(m, cmap=WAFER_CMAP, vmin=0, vmax=2, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)


def map_grid(rows: list[tuple[str, list[np.ndarray], list[str]]], ncols: int, cell: float = 1.2):
    """A grid of maps: one row per (row label, maps, titles)."""
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * cell, len(rows) * cell * 1.1), squeeze=False)
    for r, (label, maps, titles) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c < len(maps):
                show_map(ax, maps[c], titles[c] if c < len(titles) else "")
            else:
                ax.set_axis_off()
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def class_counts(before: pd.Series, after: pd.Series, title: str = "Maps per label"):
    """Side-by-side bar chart of label counts before and after cleaning."""
    df = pd.DataFrame({"before cleaning": before, "after cleaning (kept)": after}).fillna(0).sort_values("before cleaning")
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(df))))
    df.plot.barh(ax=ax, width=0.8)
    ax.set_xlabel("maps")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def embedding_scatter(xy: np.ndarray, labels, quarantined: np.ndarray, title: str):
    """2-D embedding coloured by label, quarantined maps ringed in black."""
    fig, ax = plt.subplots(figsize=(7.5, 6))
    sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=np.asarray(labels), s=8, linewidth=0, ax=ax, palette="tab20")
    q = np.asarray(quarantined, dtype=bool)
    ax.scatter(xy[q, 0], xy[q, 1], s=30, facecolors="none", edgecolors="black", linewidths=0.7, label="quarantined")
    ax.legend(fontsize=6, markerscale=1.5, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def confusion(y_true, y_pred, labels: list[str], title: str):
    """Row-normalised confusion matrix heat map."""
    from sklearn.metrics import confusion_matrix
    cm = confusion_matrix(y_true, y_pred, labels=labels, normalize="true")
    fig, ax = plt.subplots(figsize=(0.55 * len(labels) + 2, 0.5 * len(labels) + 1.5))
    sns.heatmap(cm, annot=True, fmt=".2f", cmap="Blues", xticklabels=labels, yticklabels=labels, ax=ax,
                cbar=False, annot_kws={"fontsize": 6})
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def side_by_side(left: pd.DataFrame, right: pd.DataFrame, names: tuple[str, str], n: int):
    """One row per class present in both tables: n maps of `left` then n of `right` (columns key, wafer_map)."""
    rows = []
    for cls in sorted(set(left["key"]) & set(right["key"])):
        a = list(left.loc[left["key"] == cls, "wafer_map"][:n])
        b = list(right.loc[right["key"] == cls, "wafer_map"][:n])
        rows.append((cls, a + b, [names[0]] * len(a) + [names[1]] * len(b)))
    return map_grid(rows, 2 * n)


def examples_by_role(maps: pd.DataFrame, roles: tuple[str, ...], n: int, max_classes: int = 9):
    """Rows 'class · role' of sampled maps (columns key, role, wafer_map), largest classes first."""
    sampled = maps[maps["role"] != ""]
    classes = sampled["key"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[:max_classes]
    rows = [(f"{cls} · {role}", list(sampled.loc[(sampled["key"] == cls) & (sampled["role"] == role), "wafer_map"][:n]), [])
            for cls in classes for role in roles]
    return map_grid(rows, n)


def maps_with_text(maps: list[np.ndarray], texts: list[str], titles: list[str], width: int = 95):
    """Each map beside its text (a description), one row per map."""
    import textwrap
    fig, axes = plt.subplots(len(maps), 2, figsize=(11, 2.3 * len(maps)), gridspec_kw={"width_ratios": [1, 4]},
                             squeeze=False)
    for (ax_map, ax_txt), m, text, title in zip(axes, maps, texts, titles):
        show_map(ax_map, m, title)
        ax_txt.set_axis_off()
        wrapped = "\n".join(textwrap.fill(line, width) for line in text.splitlines())  # keep the text's own lines
        ax_txt.text(0, 1, wrapped, va="top", ha="left", fontsize=7.5, transform=ax_txt.transAxes)
    fig.tight_layout()
    return fig


def fact_distributions(facts_df: pd.DataFrame, keys: pd.Series):
    """Where failures are, per label: zones (share of maps), clock sectors (all maps), main region shape."""
    single = keys.where(keys.str.count(r"\+") == 0, "mixed")
    zones = pd.DataFrame([{z: z in zs for z in ("center", "mid-radius", "edge")} for zs in facts_df["zones"]])
    fig = plt.figure(figsize=(15, 4.2))
    ax1 = fig.add_subplot(1, 3, 1)
    sns.heatmap(zones.groupby(single.to_numpy()).mean(), annot=True, fmt=".2f", cmap="Reds", vmin=0, vmax=1,
                cbar=False, ax=ax1)
    ax1.set_title("Share of maps with clustered failures, by zone", fontsize=9)
    ax1.set(xlabel="zone", ylabel="label")
    ax2 = fig.add_subplot(1, 3, 2, projection="polar")
    counts = np.bincount([s % 12 for ss in facts_df["clock_sectors"] for s in ss], minlength=12)
    ax2.bar(np.radians(np.arange(12) * 30.0), counts, width=np.radians(26), color=np.array(PALETTE[2]) / 255)
    ax2.set_theta_zero_location("N")
    ax2.set_theta_direction(-1)
    ax2.set_xticks(np.radians(np.arange(12) * 30.0), ["12"] + [str(h) for h in range(1, 12)])
    ax2.set_title("Clock sectors holding clustered failures (maps)", fontsize=9)
    ax3 = fig.add_subplot(1, 3, 3)
    sns.heatmap(pd.crosstab(single.to_numpy(), facts_df["main_shape"].to_numpy(), normalize="index"), annot=True,
                fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax3)
    ax3.set_title("Dominant structure (share of each label's maps)", fontsize=9)
    ax3.set(xlabel="structure", ylabel="label")
    fig.tight_layout()
    return fig


def reason_bars(reasons: pd.Series, title: str):
    """Counts of quarantine reasons by kind (a note in the axes when there are none)."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    counts = reasons[reasons != ""].value_counts()
    if counts.empty:
        ax.text(0.5, 0.5, "nothing quarantined", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        counts.sort_values().plot.barh(ax=ax, color="#b2182b")
        ax.set_xlabel("descriptions")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def score_separation(own: np.ndarray, other: np.ndarray, title: str):
    """Histograms of rule scores of matching and mismatched answers against the same rubrics."""
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, 1, 26)
    ax.hist(own, bins=bins, alpha=0.7, label="the map's own description", color="#2166ac")
    ax.hist(other, bins=bins, alpha=0.7, label="a description of another pattern", color="#b2182b")
    ax.set_xlabel("rule score S")
    ax.set_ylabel("rubrics")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def vqa_overview(qa: pd.DataFrame):
    """Pairs per category and difficulty, and answer length (words) per category."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
    order = ["easy", "medium", "hard"]
    ct = pd.crosstab(qa["category"], qa["difficulty"]).reindex(columns=[c for c in order if c in set(qa["difficulty"])])
    ct.plot.barh(stacked=True, ax=ax1, color=["#92c5de", "#4393c3", "#2166ac"][: ct.shape[1]])
    ax1.set(xlabel="pairs", ylabel="", title="Pairs per category and difficulty")
    words = qa.assign(words=qa["answer"].str.split().map(len))
    sns.boxplot(data=words, x="words", y="category", ax=ax2, color="#d1e5f0", fliersize=2)
    ax2.set(xlabel="answer length (words)", ylabel="", title="Answer lengths")
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], title: str):
    """Training loss (and evaluation loss where logged), learning rate and gradient norm per step."""
    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    train = h.dropna(subset=["loss"]) if "loss" in h else h.iloc[0:0]
    axes[0].plot(train["step"], train["loss"], label="train")
    if "eval_loss" in h:
        ev = h.dropna(subset=["eval_loss"])
        axes[0].plot(ev["step"], ev["eval_loss"], "o-", label="validation")
    axes[0].set(xlabel="optimizer step", ylabel="loss (assistant tokens)", title=title)
    axes[0].legend()
    for ax, col, name in ((axes[1], "learning_rate", "learning rate"), (axes[2], "grad_norm", "gradient norm")):
        if col in train:
            ax.plot(train["step"], train[col].astype(float))
        ax.set(xlabel="optimizer step", title=name)
    fig.tight_layout()
    return fig


def answers_by_model(maps: list[np.ndarray], questions: list[str], answers: dict[str, list[str]],
                     titles: list[str], width: int = 100):
    """Each map beside one question and every model's answer to it."""
    import textwrap
    texts = []
    for i, q in enumerate(questions):
        lines = [textwrap.fill(f"Q: {q}", width)] + [textwrap.fill(f"{name}: {a[i]}", width)
                                                      for name, a in answers.items()]
        texts.append("\n".join(lines))
    fig, axes = plt.subplots(len(maps), 2, figsize=(11, 2.0 * len(maps)), gridspec_kw={"width_ratios": [1, 5]},
                             squeeze=False)
    for (ax_map, ax_txt), m, text, title in zip(axes, maps, texts, titles):
        show_map(ax_map, m, title)
        ax_txt.set_axis_off()
        ax_txt.text(0, 1, text, va="top", ha="left", fontsize=7, transform=ax_txt.transAxes)
    fig.tight_layout()
    return fig


def reward_audit(table: pd.DataFrame):
    """The reward audit: mean (bar) and min-max range (line) of every reward on each kind of answer."""
    rewards = list(dict.fromkeys(table["reward"]))
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.5 * len(rewards), 0.45 * table["answers"].nunique() + 1.2),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes[0], rewards):
        t = table[table["reward"] == name].reset_index(drop=True)
        y = np.arange(len(t))
        ax.barh(y, t["mean"], color="#92c5de", label="mean")
        ax.hlines(y, t["min"], t["max"], color="#2166ac", lw=1.5, label="min to max")
        for yi, share in zip(y, t["share_at_max"]):
            ax.text(1.02, yi, f"{share:.0%} at max", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_yticks(y, t["answers"])
        ax.invert_yaxis()
        ax.set(xlim=(0, 1.0), xlabel="reward", title=f"reward '{name}'")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def rl_curves(history: list[dict]):
    """GSPO instruments per optimizer step, from the trainer's whole log: mean reward (and each reward) on
    the steps that generated, the share of groups whose rewards are all equal (no advantage, no learning),
    and the share of clipped sequences on every step (only the off-policy steps can clip)."""
    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3))

    def series(col):  # the steps that logged `col`
        d = h.dropna(subset=[col])
        return d["step"], d[col].astype(float)

    for col in [c for c in h if c == "reward" or (c.startswith("rewards/") and c.endswith("/mean"))]:
        x, v = series(col)
        axes[0].plot(x, v.rolling(5, min_periods=1).mean(), label=col.replace("rewards/", "").replace("/mean", ""))
    axes[0].set(xlabel="optimizer step", ylabel="mean reward (rolling 5)", title="Rewards of the sampled groups")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    if "frac_reward_zero_std" in h:
        x, v = series("frac_reward_zero_std")
        axes[1].plot(x, v.rolling(5, min_periods=1).mean(), color="#b2182b")
    axes[1].axhline(0.2, color="grey", ls="--", lw=0.8)
    axes[1].set(xlabel="optimizer step", ylim=(-0.02, 1.02), title="Groups with zero reward variance (rolling 5)")
    for col in [c for c in h if c.startswith("clip_ratio/") and c.endswith("_mean")]:
        x, v = series(col)
        axes[2].plot(x, v.rolling(5, min_periods=1).mean(), label=col.replace("clip_ratio/", ""))
    axes[2].set(xlabel="optimizer step", title="Clipped share of the sequence ratio (rolling 5)")
    if axes[2].lines:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def paired_scores(rows: pd.DataFrame, a: str, b: str, name_a: str, name_b: str, by: str = "category",
                  value: str = "rule score"):
    """Two models' scores (`value` names them) on the same questions: mean per group side by side, and the
    per-wafer difference b - a as a histogram."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    long = rows.melt(id_vars=[by], value_vars=[a, b], var_name="model", value_name="score")
    long["model"] = long["model"].map({a: name_a, b: name_b})
    sns.barplot(data=long, y=by, x="score", hue="model", ax=ax1, errorbar=None,
                palette=["#92c5de", "#2166ac"])
    ax1.set(xlabel=f"mean {value}", ylabel="", title=f"{name_a} and {name_b} on the same questions")
    sns.move_legend(ax1, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title=None)  # clear of the bars
    diff = rows.groupby("wafer_id")[[a, b]].mean()
    ax2.hist(diff[b] - diff[a], bins=30, color="#4393c3")
    ax2.axvline(0, color="black", lw=0.8)
    ax2.set(xlabel=f"{name_b} - {name_a}, mean per wafer", ylabel="wafers", title="Per-wafer difference")
    fig.tight_layout()
    return fig


def shape_reading(reading: pd.DataFrame, shapes: tuple[str, ...], min_maps: int = 5):
    """One heat map per model (column `model` of `reading`): for each label and measured shape with at least
    `min_maps` maps, the share read as each shape; the agreement with the measured shapes in the title."""
    models = list(dict.fromkeys(reading["model"]))
    cols = list(shapes) + ["(unread)"]
    key = reading["label"] + " · " + reading["measured"]
    counts = key[reading["model"] == models[0]].value_counts()
    rows = sorted(counts.index[counts >= min_maps])
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 0.32 * len(rows) + 1.6), squeeze=False)
    for ax, name in zip(axes[0], models):
        part = reading["model"] == name
        table = pd.crosstab(key[part], reading.loc[part, "read"].replace("", "(unread)"), normalize="index")
        sns.heatmap(table.reindex(index=rows, columns=cols, fill_value=0.0), annot=True, fmt=".2f", cmap="Blues",
                    vmin=0, vmax=1, cbar=False, ax=ax, yticklabels=ax is axes[0][0], annot_kws={"fontsize": 6})
        agree = (reading.loc[part, "read"] == reading.loc[part, "measured"]).mean()
        ax.set(xlabel="shape read from the answer", ylabel="label · measured shape" if ax is axes[0][0] else "",
               title=f"{name}: names the measured shape on {agree:.0%}")
    fig.tight_layout()
    return fig
