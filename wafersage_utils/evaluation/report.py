"""The write-up: stage 07's paper-style tables and figures from saved answers and scores, and the README's
headline table refreshed from the reference runs (`python -m wafersage_utils.evaluation.report`)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..corpus.consistency import PROBLEMS as REFERENCE_PROBLEMS
from ..corpus.scoring import DIMENSIONS
from ..runner.runs import PROJECT_ROOT, atomic_write_text
from .sensitivity import highest_floor

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
REFERENCE_RUNS = ("default", "wm811k", "mixedwm38")  # the committed reference runs, in the README's order
DATA = {"synthetic": "generated maps", "wm811k": "WM-811K (real)", "mixedwm38": "MixedWM38 (real)"}


def score_table(metrics: dict, models: list[str], judge_name: str) -> pd.DataFrame:
    """Per model: rule score, judge score, type accuracy and macro-F1 on the test split, each with its interval."""
    rows = []
    for m in models:
        row = {"model": m}
        for key in ("rule_score", "judge_score", "type_accuracy", "type_macro_f1"):
            v, lo, hi = (metrics.get(f"{m}/{key}{s}") for s in ("", "_ci_low", "_ci_high"))
            row[key] = v
            row[f"{key}_ci"] = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and np.isfinite(lo) else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["judge"] = judge_name
    return out


def dimension_table(rows: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Mean rule and judge score per model and rubric dimension (columns `<m>_rule_<d>`, `<m>_judge_<d>`)."""
    out = []
    for m in models:
        rec = {"model": m}
        for d in DIMENSIONS:
            rec[f"rule_{d}"] = rows[f"{m}_rule_{d}"].mean()
            rec[f"judge_{d}"] = rows[f"{m}_judge_{d}"].mean()
        out.append(rec)
    return pd.DataFrame(out)


def model_scores(table: pd.DataFrame, metrics: dict):
    """Rule score (0-1) and judge score (0-10) per model with their 95% wafer-bootstrap intervals."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
    for ax, key, scale, title in ((axes[0], "rule_score", 1.0, "rule score"),
                                  (axes[1], "judge_score", 10.0, f"judge score ({table.attrs.get('judge', '')})")):
        ms = table["model"].tolist()
        v = np.array([metrics.get(f"{m}/{key}", np.nan) for m in ms], float)
        lo = np.array([metrics.get(f"{m}/{key}_ci_low", np.nan) for m in ms], float)
        hi = np.array([metrics.get(f"{m}/{key}_ci_high", np.nan) for m in ms], float)
        ax.barh(ms, v, xerr=np.nan_to_num(np.vstack([v - lo, hi - v])), color="#4393c3", capsize=3)
        floor = highest_floor(metrics, key)
        if np.isfinite(floor):  # what a trivial answer already scores, and the reference itself
            ax.axvline(floor, color="#999999", ls="--", lw=1, label=f"highest floor {floor:.2f}")
            ax.axvline(metrics.get(f"ceiling/reference/{key}", scale), color="black", lw=1, label="reference")
            ax.legend(fontsize=7, loc="lower right", frameon=False)
        ax.set(xlim=(0, scale), title=f"{title}, test", xlabel="mean (95% interval over wafers)")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


FLOOR_LABELS = {"empty": "empty answer", "question": "question copied", "other_reference": "another wafer's reference",
                "label_sentence": "label in a fixed sentence", "reference": "the reference (ceiling)"}


def floor_figure(floors: pd.DataFrame, scripted: pd.DataFrame, perturbations: pd.DataFrame, models: list[str]):
    """Can the scores fail? Left two panels: rule and judge score of the models and the scripted baseline on
    the same questions (bars), with the trivial answers' scores as lines (floors, grey; the reference, black).
    Right: each metric's mean drop when a reference answer is made wrong in one way, in units of its margin
    (under 1: insensitive to that change, hatched)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    names = {"scripted": "scripted (classical label)", "scripted_true": "scripted (true label)"}
    for ax, key, scale in ((axes[0], "rule_score", 1.0), (axes[1], "judge_score", 10.0)):
        who = scripted["answers"].tolist()
        ax.barh([names.get(w, w) for w in who], scripted[key], color=["#4393c3" if w in models else "#92c5de"
                                                                      for w in who])
        colours = dict(zip(FLOOR_LABELS, ["#bdbdbd", "#969696", "#fd8d3c", "#d94801", "black"]))
        for _, r in floors.iterrows():
            ax.axvline(r[key], color=colours.get(r["answer"], "#999999"), lw=1.2,
                       ls="-" if r["answer"] == "reference" else "--", label=FLOOR_LABELS.get(r["answer"], r["answer"]))
        ax.set(xlim=(0, scale), title=f"{key.replace('_', ' ')}, test")
        ax.invert_yaxis()
    axes[0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=3, frameon=False,
                   title="lines: trivial answers (floors) and the reference (ceiling)", title_fontsize=6)
    drops = perturbations.pivot(index="change", columns="metric", values="mean_drop")
    margins = perturbations.groupby("metric")["margin"].first()
    ratio = drops / margins
    sns.heatmap(ratio, annot=drops.round(2), fmt="", cmap="RdYlGn", vmin=0, vmax=2, cbar=False, ax=axes[2])
    for i, change in enumerate(ratio.index):
        for j, metric in enumerate(ratio.columns):
            if not ratio.loc[change, metric] >= 1:
                axes[2].add_patch(plt.Rectangle((j, i), 1, 1, fill=False, hatch="//", lw=0, color="#444444"))
    axes[2].set(title="mean drop per one-change error\n(hatched: under margin = insensitive)", xlabel="", ylabel="")
    fig.tight_layout()
    return fig


def confusions(tables: dict[str, pd.DataFrame], subset: str = "test split, single-pattern maps"):
    """Row-normalised confusion matrices, one panel per predictor; each row names its count of maps, and the
    title which maps the panels show."""
    n = len(tables)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, (name, cm) in zip(axes[0], tables.items()):
        norm = cm.div(cm.sum(axis=1).replace(0, 1), axis=0)
        sns.heatmap(norm, annot=cm.values, fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                    annot_kws={"fontsize": 6}, yticklabels=[f"{r} (n={int(cm.loc[r].sum())})" for r in cm.index])
        ax.set(title=name, xlabel="answered", ylabel="label")
        ax.tick_params(labelsize=6)
    fig.suptitle(subset, fontsize=8)
    fig.tight_layout()
    return fig


def alignment_scatter(rule_before, rule_after, judge, rho_before: float, rho_after: float, judge_name: str):
    """Rule score against the judge on the held-out split, with the default and the fitted constants."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    for ax, x, title in ((axes[0], rule_before, f"default constants: rho {rho_before:.3f}"),
                         (axes[1], rule_after, f"fitted constants: rho {rho_after:.3f}")):
        ax.hexbin(x, judge, gridsize=25, cmap="Blues", mincnt=1, bins="log")  # thousands of answers: density, not dots
        ax.set(xlabel="rule score", title=title)
    axes[0].set_ylabel(f"judge ({judge_name})")
    fig.tight_layout()
    return fig


def error_rates(rates: pd.DataFrame):
    """Error taxonomy: rate per category (rows) and model (columns)."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rates) + 1.2))
    long = rates.reset_index(names="category").melt(id_vars="category", var_name="model", value_name="rate")
    sns.barplot(data=long, y="category", x="rate", hue="model", ax=ax, errorbar=None)
    ax.set(xlabel="share of the answers where the error is possible", ylabel="", xlim=(0, 1))
    sns.move_legend(ax, "lower right", frameon=False)
    fig.tight_layout()
    return fig


def _cell(m: dict, key: str, digits: int = 3) -> str:
    v, lo, hi = m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if v is None or not np.isfinite(v):
        return "-"
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and np.isfinite(lo) else ""
    return f"{v:.{digits}f}{ci}"


def results_markdown(run_dir: Path) -> str:
    """Stage 07's section of the run report: scores per model with intervals, paired differences, error rates
    and the alignment of the rule score with the judge."""
    m = json.loads((run_dir / "metrics" / "07_eval.json").read_text())
    models = m["models"]
    lines = [f"Test split: {m['n_test_questions']} questions on {m['n_test_wafers']} wafers; brackets are 95% "
             f"intervals that resample wafers. Judge: {m['judge']} ({m['judge_kind']}).", "",
             "| model | rule score | judge score (0-10) | type accuracy | type macro-F1 |", "|---|---|---|---|---|"]
    rows = [(n, n) for n in models] + [("baseline", "classical baseline (stage 01)"), ("majority", "majority class")]
    for key, label in rows:
        lines.append(f"| {label} | {_cell(m, f'{key}/rule_score')} | {_cell(m, f'{key}/judge_score')} | "
                     f"{_cell(m, f'{key}/type_accuracy')} | {_cell(m, f'{key}/type_macro_f1')} |")
    if any(k.endswith("/type_exact_match") for k in m):
        lines += ["", "Over every test map, mixed ones included (type accuracy above: single-pattern maps only):", "",
                  "| model | exact-match accuracy | pattern macro-F1 (defect-free left out) |", "|---|---|---|"]
        lines += [f"| {label} | {_cell(m, f'{key}/type_exact_match')} | {_cell(m, f'{key}/type_pattern_macro_f1')} |"
                  for key, label in rows if f"{key}/type_exact_match" in m]
    pairs = sorted({k.split("/")[0] for k in m if "_minus_" in k.split("/")[0]})
    if pairs:
        lines += ["", "| paired difference | rule score (p) | judge score (p) | type accuracy McNemar p |",
                  "|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p.replace('_minus_', ' - ')} | {_cell(m, f'{p}/rule_score', 4)} "
                         f"({m.get(f'{p}/rule_score_p', float('nan')):.2f}) | {_cell(m, f'{p}/judge_score')} "
                         f"({m.get(f'{p}/judge_score_p', float('nan')):.2f}) | "
                         f"{m.get(f'{p}/type_accuracy_test_mcnemar_p', float('nan')):.3f} |")
    if "ceiling/reference/rule_score" in m:
        lines += ["", "Can the scores fail? The same metrics on trivial answers (floors) and on the reference itself "
                  "(ceiling), over the test questions above; and each model's share of the range from the highest "
                  "floor to the ceiling:", "",
                  "| answers | rule score | judge score (0-10) | type accuracy |", "|---|---|---|---|"]
        for kind, label in FLOOR_LABELS.items():
            pre = "ceiling" if kind == "reference" else "floor"
            lines.append(f"| {label} | " + " | ".join(_cell(m, f"{pre}/{kind}/{k}") for k in
                                                      ("rule_score", "judge_score", "type_accuracy")) + " |")
        lines += [f"| {n}: share of the floor-to-ceiling range | {_cell(m, f'{n}/rule_score_range_share')} | "
                  f"{_cell(m, f'{n}/judge_score_range_share')} | |" for n in models]
        if "scripted/rule_score" in m:
            lines += ["", f"The scripted baseline (stage 01's classical label written up by the grounded teacher from "
                      f"the measured facts) beside the models, on the {m.get('scripted_rows/n_questions', '?')} test "
                      "questions it answers (all but the consistency checks):", "",
                      "| answers | rule score | judge score (0-10) | type accuracy |", "|---|---|---|---|"]
            for who in [*models, "scripted", "scripted_true"]:
                label = {"scripted": "scripted baseline (classical label)",
                         "scripted_true": "scripted, true label (must equal the reference)"}.get(who, who)
                lines.append(f"| {label} | " + " | ".join(_cell(m, f"scripted_rows/{who}/{k}") for k in
                                                          ("rule_score", "judge_score", "type_accuracy")) + " |")
        if "perturbation/n_questions" in m:
            bad = set(m.get("perturbation/insensitive", []))
            lines += ["", f"Perturbations: the mean drop of each metric when a reference answer is made wrong in one "
                      f"way ({m.get('perturbation/n_questions', '?')} test questions; margins 0.1 rule score, 1 judge "
                      "point; **insensitive** where the drop stays under the margin):", "",
                      "| change | rule score drop | judge score drop |", "|---|---|---|"]
            for c in ("clock", "zone", "shape", "negation", "pattern", "cause"):
                cells = []
                for metric in ("rule_score", "judge_score"):
                    v = m.get(f"perturbation/{metric}/{c}")
                    cells.append("-" if v is None else f"{v:.3f}" + (" **insensitive**" if f"{metric}/{c}" in bad else ""))
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if "references/references" in m:
        found = ", ".join(f"{p.replace('_', ' ')} {m.get(f'references/{p}', 0)}" for p in REFERENCE_PROBLEMS)
        lines += ["", f"References that disagree with their label or the measured map: "
                  f"{m['references/references_with_a_problem']} of {m['references/references']} "
                  f"({found}; `tables/eval_reference_problems.csv`)."]
    cats = sorted({k.split("/")[2][:-5] for k in m if k.startswith("errors/") and k.endswith("_rate")})
    lines += ["", "| error rate | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {c.replace('_', ' ')} | " + " | ".join(_cell(m, f"errors/{n}/{c}_rate") for n in models) + " |"
              for c in cats]
    lines += ["", f"Alignment, Spearman of rule score and judge on test (fitted on validation): "
              f"{m['alignment/spearman_before']:.3f} with the default constants, "
              f"{m['alignment/spearman_after']:.3f} with the fitted ones."]
    return "\n".join(lines)


def _real_cell(run_dir: Path, m01: dict) -> str:
    """Macro-F1 of the run's SFT model on the public real WM-811K maps: the scorer's output under scores/
    (sim-to-real, for a run trained on other maps); '-' for a WM-811K run (its test split is the measure)."""
    path = run_dir / "scores" / "wm811k_dev" / "metrics.json"
    if m01.get("source") == "wm811k" or not path.exists():
        return "-"
    s = json.loads(path.read_text())
    return f"{s['macro_f1']:.3f} [{s['macro_f1_ci_low']:.3f}, {s['macro_f1_ci_high']:.3f}]"


def _run_row(run_dir: Path) -> str:
    m = json.loads((run_dir / "metrics" / "07_eval.json").read_text())
    m01 = json.loads((run_dir / "metrics" / "01_clean.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())["stages"]
    minutes = sum(s.get("wall_s", 0.0) for s in status.values()) / 60
    data = DATA.get(m01.get("source", ""), m01.get("source", "?"))
    final = "rl" if "rl" in m["models"] else "sft"
    command = "make run" if run_dir.name == "default" else f"make run PARAMS=params/{run_dir.name}.yaml"
    n_type = m.get("type_eval_maps") if m.get("type_eval") == "split" else m["n_test_wafers"]
    # A data set of mixed maps is measured as its literature does: exact match over every map, macro-F1 over
    # the eight patterns (marked *); the others by single-pattern accuracy and macro-F1 over every label.
    acc, f1 = ("type_exact_match", "type_pattern_macro_f1") if m01.get("source") == "mixedwm38" \
        else ("type_accuracy", "type_macro_f1")
    star = "\\*" if acc == "type_exact_match" else ""
    return (f"| [{run_dir.name}](results/{run_dir.name}/REPORT.md) | {data} | {n_type} | "
            f"{final.upper()}: {_cell(m, f'{final}/{acc}')}{star} | {_cell(m, f'{final}/{f1}')}{star} | "
            f"{_cell(m, f'baseline/{acc}')}{star} | {_cell(m, f'baseline/{f1}')}{star} | {_real_cell(run_dir, m01)} | "
            f"{_cell(m, 'sft/rule_score')} | {_cell(m, f'{final}/rule_score')}{_floor(m, 'rule_score')} | "
            f"{_cell(m, f'{final}/judge_score', 2)}{_floor(m, 'judge_score', 1)} | {minutes:.0f} min | `{command}` |")


def _floor(m: dict, key: str, digits: int = 2) -> str:
    """' (floor x, ceiling y)': the highest score of a trivial answer for the metric and the reference answer's
    own score, where stage 07 measured them."""
    f, c = highest_floor(m, key), m.get(f"ceiling/reference/{key}", float("nan"))
    if not np.isfinite(f):
        return ""
    return f" (floor {f:.{digits}f}, ceiling {c:.{digits}f})" if np.isfinite(c) else f" (floor {f:.{digits}f})"


def _scripted_row(run_dir: Path) -> str:
    m = json.loads((run_dir / "metrics" / "07_eval.json").read_text())
    if "scripted/rule_score" not in m:
        return f"| {run_dir.name} | not measured yet (stage 07 predates the check) | | | | |"
    final = "rl" if "rl" in m["models"] else "sft"
    return (f"| {run_dir.name} | {m['scripted/rule_score']:.3f} / {m['scripted_rows/' + final + '/rule_score']:.3f} | "
            f"{m['scripted/judge_score']:.2f} / {m['scripted_rows/' + final + '/judge_score']:.2f} | "
            f"{_cell(m, 'scripted/type_accuracy')} / {_cell(m, f'scripted_rows/{final}/type_accuracy')} | "
            f"{highest_floor_text(m)} | {', '.join(m.get('perturbation/insensitive', [])) or 'none'} |")


def highest_floor_text(m: dict) -> str:
    return f"{highest_floor(m, 'rule_score'):.2f} / {highest_floor(m, 'judge_score'):.1f}"


def headline_markdown(run_dirs: list[Path]) -> str:
    """The README's headline table: one row per reference run, the numbers a reader compares with the paper
    (the final model's: RL where the run has one)."""
    lines = ["| run | maps | test maps | type accuracy | type macro-F1 | baseline accuracy | baseline macro-F1 | "
             "SFT on real WM-811K, macro-F1 | rule score SFT | rule score, final | judge (0-10), final | wall time | "
             "made by |", "|---" * 13 + "|"]
    rows = [_run_row(Path(r)) for r in run_dirs]
    lines += rows
    if any("\\*" in row for row in rows):  # a MixedWM38 row shows the marked measures
        lines += ["", ("\\* MixedWM38: exact-match accuracy over every test map (single and mixed) and macro-F1 "
                       "over the eight patterns, the data set's usual measures.")]
    lines += ["", "Floors are the highest score of a trivial answer (empty, the question copied, another wafer's "
              "reference, the label in a fixed sentence); the ceiling is the reference answer itself, scored the same way "
              "(below 1 and 10 where a reference misses terms of its own rubric or claims what its map's facts do not "
              "show). "
              "The scripted baseline is stage 01's classical label written up by the grounded teacher from the "
              "measured facts, on the same test questions as the final model (all but the consistency checks):", "",
              "| run | rule score, scripted / final | judge, scripted / final | type accuracy, scripted / final | "
              "highest floor, rule / judge | insensitive to (one-change perturbations) |", "|---" * 6 + "|"]
    lines += [_scripted_row(Path(r)) for r in run_dirs]
    return "\n".join(lines)


def refresh_readme(run_dirs: list[Path], readme: Path) -> str:
    """Replace the README's block between the results markers with the headline table (atomic write)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} block to refresh")
    block = (f"{README_START}\n<!-- made by: python -m wafersage_utils.evaluation.report; do not edit -->\n"
             f"{headline_markdown(run_dirs)}\n{README_END}")
    new = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.DOTALL)
    atomic_write_text(readme, new)
    return block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wafersage_utils.evaluation.report",
                                 description="Refresh the README's headline table from the reference runs.")
    ap.add_argument("run_dirs", type=Path, nargs="*", help="run folders (default: the reference runs present in "
                    f"results/: {', '.join(REFERENCE_RUNS)})")
    ap.add_argument("--readme", type=Path, default=PROJECT_ROOT / "README.md")
    args = ap.parse_args(argv)
    runs = args.run_dirs or [PROJECT_ROOT / "results" / r for r in REFERENCE_RUNS
                             if (PROJECT_ROOT / "results" / r / "metrics" / "07_eval.json").exists()]
    missing = [r for r in runs if not (r / "metrics" / "07_eval.json").exists()]
    if missing or not runs:
        print(f"error: {missing or 'results/'}: no metrics/07_eval.json; run stage 07 first", file=sys.stderr)
        return 2
    print(refresh_readme(runs, args.readme))
    return 0

if __name__ == "__main__":
    sys.exit(main())
