"""A run's REPORT.md: what ran (command, commit, machine), each stage's wall time, its written section, its
metrics (all of them, folded) and its figures, generated from the run folder alone.

    python -m wafersage_utils.runner.run_report results/default

The runner writes it after every pipeline run; stages add prose and tables with `Stage.write_section` and
figures with `Stage.save_figure` (which records which stage drew each one).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

from .runs import FIGURE_INDEX, SECTIONS, atomic_write_text

REPORT = "REPORT.md"
CI_SUFFIXES = ("_ci_low", "_ci_high")


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(v)


def metrics_table(metrics: dict) -> list[str]:
    """Every metric, one row each; a value with its interval (`<key>_ci_low/_ci_high`) on one row."""
    lines = ["| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        if k.endswith(CI_SUFFIXES):
            continue
        lo, hi = metrics.get(f"{k}_ci_low"), metrics.get(f"{k}_ci_high")
        cell = _fmt(v) + (f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else "")
        lines.append(f"| `{k}` | {cell.replace('|', '/')} |")
    return lines


def _header(run_dir: Path) -> list[str]:
    env = _read_json(run_dir / "environment.json", {})
    git = env.get("git", {})
    params = run_dir / "params.yaml"
    changed = yaml.safe_load(params.read_text()) if params.exists() else {}
    changed = {s: v for s, v in (changed or {}).items() if v}
    lines = [f"# Run `{run_dir.name}`", "",
             "Generated from this folder by `python -m wafersage_utils.runner.run_report "
             f"results/{run_dir.name}`; do not edit.", "",
             f"- Command: `{_read_json(run_dir / 'status.json', {}).get('command', '?')}` (the last one; "
             "`make run` for `default`)",
             f"- Commit: `{git.get('commit', '?')}`" + (" **with uncommitted changes**" if git.get("dirty") else
                                                        " (clean tree)") + " (the last invocation's; each stage's below)",
             f"- Machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, torch threads "
             f"{env.get('torch_threads', '?')}, device {env.get('device', 'cpu')}"
             + (f", numerics fingerprint `{num['fingerprint']}` (torch {num.get('torch_cpu')}, "
                f"{', '.join(num.get('blas', [])) or 'no BLAS found'})" if (num := env.get("numerics")) else ""),
             "- Settings: the recipe (`wafersage_utils/recipe.py`) with "
             + (f"these changes: `{json.dumps(changed)}`" if changed else "no changes"),
             "  (every value a stage ran with: `settings/<stage>.json`)", ""]
    return lines


def report_markdown(run_dir: Path) -> str:
    """The whole report as markdown."""
    run_dir = Path(run_dir)
    status = _read_json(run_dir / "status.json", {"stages": {}})["stages"]
    figures = _read_json(run_dir / "figures" / FIGURE_INDEX, {})
    lines = _header(run_dir) + ["| stage | state | wall time | commit | executed notebook |", "|---|---|---|---|---|"]
    for stem, s in sorted(status.items()):
        git = s.get("git") or {}
        commit = f"`{git['commit'][:7]}`" + (" (dirty)" if git.get("dirty") else "") if git.get("commit") else "?"
        lines.append(f"| {stem} | {s.get('state', '?')} | {s.get('wall_s', float('nan')):.0f} s | {commit} | "
                     f"[{stem}.ipynb]({stem}.ipynb) |")
    total = sum(s.get("wall_s", 0.0) for s in status.values())
    lines += ["", f"Total: {total / 60:.1f} minutes.", ""]
    stems = sorted({p.stem for p in (run_dir / "metrics").glob("*.json")} | set(status))
    for stem in stems:
        lines += [f"## {stem}", ""]
        section = run_dir / SECTIONS / f"{stem}.md"
        if section.exists():
            lines += [section.read_text().strip(), ""]
        for slug in [k for k, v in figures.items() if v == stem]:
            lines += [f"![{slug}](figures/fig_{slug}.png)", ""]
        metrics = _read_json(run_dir / "metrics" / f"{stem}.json", None)
        if metrics:
            lines += [f"<details><summary>All {len(metrics)} metrics of {stem}</summary>", "",
                      *metrics_table(metrics), "", "</details>", ""]
    unindexed = sorted(p.stem[4:] for p in (run_dir / "figures").glob("fig_*.png") if p.stem[4:] not in figures)
    if unindexed:
        lines += ["## Other figures", ""] + [f"![{s}](figures/fig_{s}.png)" for s in unindexed] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_run_report(run_dir: Path) -> Path:
    """Write results/<run>/REPORT.md (atomically) and return its path."""
    out = Path(run_dir) / REPORT
    atomic_write_text(out, report_markdown(Path(run_dir)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wafersage_utils.runner.run_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run folder, e.g. results/default")
    args = ap.parse_args(argv)
    if not (args.run_dir / "status.json").exists():
        print(f"error: {args.run_dir}: no status.json; not a run folder (run the pipeline first)", file=sys.stderr)
        return 2
    print(write_run_report(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
