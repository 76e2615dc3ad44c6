"""Can a score fail? Floors, ceilings and one-change perturbations of every answer metric (issue 28).

A score means little without the values of answers that know nothing. `floor_answers` builds, for each
question, the answers of trivial strategies: `empty` (nothing), `question` (the question copied back),
`other_reference` (the reference answer of another wafer's question of the same category), `label_sentence`
(the true label alone in a fixed sentence), and the ceiling `reference` (the reference answer itself).
`floor_metrics` scores them with the same metric functions as the models, and `range_share` says how much of
the distance from the highest floor to the ceiling a model covers.

`perturb` changes one thing of a reference answer (a clock position, a zone, a shape, a negation, the pattern
name, the root cause); a metric that does not drop by a stated margin when the answer is made wrong in that
way is insensitive to it, and `perturbation_table` says so per metric and kind of change.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..corpus.describe import PATTERN_NAMES, grounded_description
from ..corpus.knowledge import PatternKnowledge
from ..corpus.scoring import DIMENSIONS
from ..corpus.vqa import reference_answer, type_sentence
from ..maps.conventions import NONE_LABEL, PATTERNS
from .answers import is_mixed, type_correct
from .classification import rule_scores

FLOORS = ("empty", "question", "other_reference", "label_sentence")
CEILING = "reference"
CHANGES = ("clock", "zone", "shape", "negation", "pattern", "cause")
#: The drop a metric must show for a one-change perturbation to count as sensitive (issue 28's targets).
MARGINS = {"rule_score": 0.1, "judge_score": 1.0}

Scorer = Callable[[pd.DataFrame, list[str]], np.ndarray]  # (question rows, answers) -> one score per row


def answer_scorers(rule, judge) -> dict[str, Scorer]:
    """The answer metrics of stage 07 as scorers: the rule score overall (`rule_score`) and per dimension
    (`rule_<d>`), the judge's overall score (`judge_score`), and type correctness (`type_accuracy`: 1 or 0 on
    single-pattern defect-type questions, NaN on the others). The rule scores of one call are shared."""
    memo: dict = {}

    def rules(rows, answers):
        key = (tuple(rows.index), tuple(answers))
        if key not in memo:
            memo.clear()
            memo[key] = rule_scores(list(answers), rows["terms"], rule)
        return memo[key]

    def types(rows, answers):
        single = (rows["category"] == "defect_type").to_numpy() & ~rows["labels"].map(is_mixed).to_numpy()
        return np.array([float(type_correct(a or "", list(lab))) if s else np.nan
                         for a, lab, s in zip(answers, rows["labels"], single)])
    out: dict[str, Scorer] = {"rule_score": lambda r, a: rules(r, a)["S"].to_numpy()}
    for d in DIMENSIONS:
        out[f"rule_{d}"] = lambda r, a, d=d: rules(r, a)[d].to_numpy()
    out["judge_score"] = lambda r, a: judge.score(r, list(a), progress=False)["judge_overall"].to_numpy()
    out["type_accuracy"] = types
    return out


def highest_floor(metrics: dict, metric: str) -> float:
    """The highest of the trivial answers' means for a metric (the floor a model must clear)."""
    vals = [metrics.get(f"floor/{k}/{metric}", np.nan) for k in FLOORS if k != "label_sentence" or metric != "type_accuracy"]
    vals = [v for v in vals if np.isfinite(v)]
    return max(vals) if vals else float("nan")


def label_sentence(labels) -> str:
    """The label alone, in one fixed sentence (what an answer that knows only the class would say): the
    reference answers' own type sentence (`vqa.type_sentence`)."""
    labels = [x for x in labels if x != NONE_LABEL] or [NONE_LABEL]
    return type_sentence(labels)


def other_references(rows: pd.DataFrame, seed: int = 0) -> list[str]:
    """For each row, the reference answer of a row of the same category about another wafer (a seeded
    derangement within each category; a category holding a single wafer keeps '' for its rows)."""
    rng = np.random.default_rng(seed)
    out = [""] * len(rows)
    pos = np.arange(len(rows))
    for _, idx in rows.groupby("category", sort=True).indices.items():
        idx = pos[idx]
        wafers = rows["wafer_id"].to_numpy()[idx]
        if len(set(wafers)) < 2:
            continue
        order = rng.permutation(len(idx))
        answers = rows["answer"].to_numpy()[idx]
        for k, i in enumerate(idx):
            # walk the permutation from this row's place to the first row of another wafer
            for step in range(1, len(idx) + 1):
                j = order[(k + step) % len(idx)]
                if wafers[j] != wafers[k]:
                    out[i] = str(answers[j])
                    break
    return out


def floor_answers(rows: pd.DataFrame, seed: int = 0) -> dict[str, list[str]]:
    """The trivial answers and the ceiling, each one list aligned with `rows` (question, answer, labels,
    category, wafer_id)."""
    return {"empty": [""] * len(rows), "question": list(rows["question"]),
            "other_reference": other_references(rows, seed),
            "label_sentence": [label_sentence(x) for x in rows["labels"]],
            CEILING: list(rows["answer"])}


def floor_metrics(rows: pd.DataFrame, scorers: dict[str, Scorer], seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Every scorer's mean over `rows` for each floor and the ceiling: flat metrics
    `floor/<kind>/<metric>` and `ceiling/reference/<metric>`, and the same as a table (kind x metric)."""
    answers = floor_answers(rows, seed)
    table = {}
    for kind, texts in answers.items():
        table[kind] = {name: _mean(fn(rows, texts)) for name, fn in scorers.items()}
    metrics = {f"{'ceiling' if kind == CEILING else 'floor'}/{kind}/{name}": v
               for kind, vals in table.items() for name, v in vals.items()}
    return metrics, pd.DataFrame(table).T.rename_axis("answer").reset_index()


def _mean(values) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def range_shares(metrics: dict, models: list[str], keys=("rule_score", "judge_score")) -> dict:
    """`<m>/<key>_range_share` for each model: its share of the range from the highest floor to the ceiling."""
    return {f"{m}/{k}_range_share": range_share(metrics[f"{m}/{k}"], highest_floor(metrics, k),
                                                metrics[f"ceiling/{CEILING}/{k}"]) for m in models for k in keys}


def range_share(score: float, floor: float, ceiling: float) -> float:
    """The share of the floor-to-ceiling range a score covers (0 at the floor, 1 at the ceiling; may leave
    [0, 1]); NaN when the range is empty."""
    span = ceiling - floor
    return float((score - floor) / span) if span > 1e-12 else float("nan")


# ---------------------------------------------------------------- the scripted baseline

def scripted_answers(rows: pd.DataFrame, labels_of: dict, facts: dict[str, dict], kb: dict[str, PatternKnowledge],
                     seed: int) -> list[str | None]:
    """What the grounded teacher writes for each question when told `labels_of[wafer_id]` (the classical
    classifier's label, say) instead of the true one, from the map's measured facts: a system that knows a
    label and the measurements and no more. None for consistency checks (their question depends on the map).
    With the true labels and stage 02's seed these are the reference answers themselves, repaired as stage 04
    repairs them (a test holds it)."""
    memo: dict[tuple, dict] = {}
    out = []
    for wafer, template in zip(rows["wafer_id"], rows["template"]):
        labels = list(labels_of[wafer])
        key = (wafer, tuple(labels))
        if key not in memo:
            memo[key] = grounded_description(wafer, labels, facts[wafer], kb, seed)
        out.append(reference_answer(template, labels, memo[key], facts[wafer]))
    return out


def scripted_comparison(rows: pd.DataFrame, models: list[str], scorers: dict[str, Scorer], labels: dict[str, dict],
                        facts: dict[str, dict], kb: dict[str, PatternKnowledge], seed: int) -> tuple[pd.DataFrame, dict]:
    """The models (answer columns of `rows`) beside scripted answers (one per entry of `labels`: name ->
    wafer -> labels told to the teacher), on the rows the scripted answers cover (all but consistency
    checks): a table (answers x metric) and flat metrics `<scripted name>/<metric>`,
    `scripted_rows/<answers>/<metric>` and `scripted_rows/n_questions`."""
    made = {name: scripted_answers(rows, lab, facts, kb, seed) for name, lab in labels.items()}
    written = np.array([a is not None for a in next(iter(made.values()))]) if made else np.ones(len(rows), bool)
    part = rows[written]
    side = {m: list(part[m]) for m in models} | {k: [a for a, w in zip(v, written) if w] for k, v in made.items()}
    table = pd.DataFrame({who: {k: _mean(fn(part, ans)) for k, fn in scorers.items()} for who, ans in side.items()})
    table = table.T.rename_axis("answers").reset_index()
    metrics = {f"scripted_rows/{r['answers']}/{k}": float(r[k]) for _, r in table.iterrows() for k in scorers}
    metrics |= {f"{r['answers']}/{k}": float(r[k]) for _, r in table.iterrows() for k in scorers if r["answers"] in made}
    metrics["scripted_rows/n_questions"] = int(len(part))
    return table, metrics


# ---------------------------------------------------------------- one-change perturbations

_CLOCK = re.compile(r"\b(1[0-2]|[1-9])(?= o'clock|\s+to\s+(?:1[0-2]|[1-9]) o'clock)")
_ZONES = {"center": "edge", "centre": "edge", "edge": "center", "mid-radius": "edge"}
_ZONE = re.compile(r"(?<![\w-])(mid-radius|center|centre|edge)\b(?![-\w])(?! (defect )?pattern)")  # not a class name
_SHAPE_SWAP = {"blob": "ring", "ring": "line", "line": "blob", "arc": "blob"}
_SHAPE = re.compile(r"(?<![\w-])(blob|ring|line|arc)(s?)\b")
_VERBS = {"shows": "does not show", "lies": "does not lie", "lie": "do not lie", "forms": "does not form",
          "form": "do not form", "appears": "does not appear", "indicates": "does not indicate",
          "points to": "does not point to", "may indicate": "cannot indicate", "could point to": "cannot point to"}
_AFFIRM = [(re.compile(r"\b(is|are|was|were)\b(?! not\b)"), lambda m: f"{m.group(1)} not"),
           (re.compile(r"\b(" + "|".join(sorted(map(re.escape, _VERBS), key=len, reverse=True)) + r")\b"),
            lambda m: _VERBS[m.group(1)]),
           (re.compile(r"^yes\b", re.I), lambda m: "No")]
_NEGATED = [(re.compile(r"\b(is|are|was|were) not\b"), lambda m: m.group(1)),
            (re.compile(r"\bno\b", re.I), lambda m: "a" if m.group(0) == "no" else "A"),
            (re.compile(r"\bclear of\b"), lambda m: "full of")]


def _sub_first(pattern: re.Pattern, repl, text: str) -> str | None:
    out, n = pattern.subn(repl, text, count=1)
    return out if n else None


def _other_label(label: str) -> str:
    """Another class, the same for a label every time (three places on in PATTERNS; Scratch for none)."""
    pats = list(PATTERNS)
    return pats[(pats.index(label) + 3) % len(pats)] if label in pats else "Scratch"


def _articles(text: str) -> str:
    """'a' / 'an' agreeing with the word after it again, after a swap."""
    text = re.sub(r"\b([Aa])n (?=[^aeiouAEIOU\W])", r"\1 ", text)
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def perturb(text: str, change: str, labels, kb: dict[str, PatternKnowledge]) -> str | None:
    """The answer with one thing made wrong, or None when the answer has nothing of that kind to change.

    clock: every hour of a clock position moved by six hours; zone: each zone word swapped (center <-> edge,
    mid-radius -> edge); shape: each shape word swapped for another; negation: the first affirmation denied
    (or, in an answer that denies, the first denial affirmed); pattern: the named pattern replaced by another
    class's name; cause: the candidate causes named replaced by those of another class.
    """
    text = text or ""
    labels = [x for x in labels if x in PATTERNS] or [NONE_LABEL]
    if change == "clock":
        out, n = _CLOCK.subn(lambda m: str((int(m.group(1)) + 5) % 12 + 1), text)
        return out if n else None
    if change == "zone":
        out, n = _ZONE.subn(lambda m: _ZONES[m.group(1)], text)
        return _articles(out) if n else None
    if change == "shape":
        out, n = _SHAPE.subn(lambda m: _SHAPE_SWAP[m.group(1)] + m.group(2), text)
        return out if n else None
    if change == "negation":
        for pat, repl in _NEGATED:  # an answer that denies is affirmed, else an affirming one denied
            out = _sub_first(pat, repl, text)
            if out is not None:
                return out
        for pat, repl in _AFFIRM:
            out = _sub_first(pat, repl, text)
            if out is not None:
                return out
        return None
    if change == "pattern":
        out = text
        for lab in labels:
            other = PATTERN_NAMES[_other_label(lab)]
            if lab == NONE_LABEL:  # "no systematic defect pattern" -> "a scratch defect pattern"
                out = re.sub(r"\bno systematic (defect )?pattern", lambda m: f"a {other} {m.group(1) or ''}pattern", out,
                             flags=re.I)
                continue
            name = PATTERN_NAMES[lab]
            out = re.sub(rf"(?<![\w-]){re.escape(name)}(?= (defect )?pattern)", other, out, flags=re.I)
        return _articles(out) if out != text else None
    if change == "cause":
        out = text
        for lab in labels:
            if lab == NONE_LABEL or lab not in kb:
                continue
            other = kb[_other_label(lab)]
            for k, cause in enumerate(sorted(kb[lab].candidate_causes, key=len, reverse=True)):
                swap = other.candidate_causes[k % len(other.candidate_causes)] if other.candidate_causes else "no cause"
                out = re.sub(re.escape(cause), swap, out, flags=re.I)
        return out if out != text else None
    raise ValueError(f"change {change!r}: expected one of {CHANGES}")


def perturbation_table(rows: pd.DataFrame, scorers: dict[str, Scorer], kb: dict[str, PatternKnowledge],
                       margins: dict[str, float] | None = None) -> tuple[pd.DataFrame, dict]:
    """Each metric's mean drop when the reference answer is changed in one way, over the rows where that
    change applies: (table with metric, change, n, score_reference, score_changed, mean_drop, margin,
    sensitive; flat metrics `perturbation/<metric>/<change>` = mean drop)."""
    margins = margins or MARGINS
    refs = list(rows["answer"])
    base = {name: np.asarray(fn(rows, refs), dtype=float) for name, fn in scorers.items()}
    out, metrics = [], {}
    for change in CHANGES:
        changed = [perturb(a, change, lab, kb) for a, lab in zip(refs, rows["labels"])]
        keep = np.array([c is not None and c != a for c, a in zip(changed, refs)])
        part = rows[keep]
        texts = [c for c, k in zip(changed, keep) if k]
        for name, fn in scorers.items():
            if not keep.any():
                out.append({"metric": name, "change": change, "n": 0, "score_reference": np.nan,
                            "score_changed": np.nan, "mean_drop": np.nan, "margin": margins.get(name, np.nan),
                            "sensitive": False})
                continue
            after = np.asarray(fn(part, texts), dtype=float)
            before = base[name][keep]
            drop = _mean(before - after)
            margin = margins.get(name, np.nan)
            out.append({"metric": name, "change": change, "n": int(keep.sum()),
                        "score_reference": _mean(before), "score_changed": _mean(after),
                        "mean_drop": drop, "margin": margin, "sensitive": bool(drop >= margin)})
            metrics[f"perturbation/{name}/{change}"] = drop
    table = pd.DataFrame(out)
    metrics["perturbation/n_questions"] = int(len(rows))
    metrics["perturbation/insensitive"] = [f"{r.metric}/{r.change}" for r in table.itertuples() if r.n and not r.sensitive]
    return table, metrics
