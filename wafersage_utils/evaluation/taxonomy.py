"""The paper's error taxonomy, computed from each answer's claims held against the wafer's measured facts.

Categories, each a rate over the answers where the error is possible:

- `over_splitting`: a single-pattern wafer's defect-type answer names two or more patterns (one pattern
  split into several). Over defect-type questions on single-pattern wafers.
- `missed_pattern`: a defect-type answer leaves out a pattern the wafer has (answering "no pattern", or
  naming one pattern of a mixed wafer). Over defect-type questions on patterned wafers. `missed_subtle` is
  the same error on the wafers whose fail ratio is in the lowest third of the split: the faint patterns the
  paper calls subtle.
- `wrong_root_cause`: a root-cause answer proposes a cause that the knowledge base lists as contradicting
  the wafer's pattern (`claims.check_description`). Over root-cause questions.
- `hallucinated_location`: an answer puts failures in a zone, or at a clock position, where the facts
  measure no clustered failures (zone and clock claims of `claims.check_description`). Over all answers;
  `hallucinated_clock` counts clock positions only.

Negation is respected throughout ("the center is clear" claims nothing about the center). An answer cut by the
token limit ("... The edge zone is") is read without its unfinished last sentence: a half sentence claims
nothing (`complete_part`; `truncated` counts such answers).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..corpus.claims import check_description
from ..maps.conventions import NONE_LABEL
from .answers import is_mixed, parse_labels, solution_text

CATEGORIES = ("over_splitting", "missed_pattern", "missed_subtle", "wrong_root_cause", "hallucinated_location",
              "hallucinated_clock")


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


def is_truncated(text: str) -> bool:
    """Does the answer stop mid-sentence (no closing punctuation), as one cut by the token limit does?"""
    t = (text or "").rstrip()
    return bool(t) and not re.search(r"[.!?][\"')\]]*$", t)


def complete_part(text: str) -> str:
    """The answer up to its last finished sentence ('' when not even the first one is finished)."""
    if not is_truncated(text):
        return text or ""
    ends = list(_SENTENCE_END.finditer((text or "").rstrip() + " "))
    ends = [m for m in ends if m.end() <= len((text or "").rstrip())]
    return text[: ends[-1].end()].rstrip() if ends else ""


def answer_errors(answer: str, category: str, labels: list[str], facts: dict, kb: dict, subtle: bool = False) -> dict:
    """Each taxonomy category for one answer: True (error), False (possible, not made) or None (not possible),
    with the contradicted claims as evidence. A truncated answer's unfinished sentence is not read."""
    full = solution_text(answer or "")
    text = complete_part(full)
    patterns = [x for x in labels if x != NONE_LABEL]
    out: dict = {c: None for c in CATEGORIES}
    if category == "defect_type":
        named = [x for x in parse_labels(text) if x != NONE_LABEL]
        if patterns and not is_mixed(labels):
            out["over_splitting"] = len(named) >= 2
        if patterns:
            out["missed_pattern"] = not set(patterns) <= set(named)
            out["missed_subtle"] = out["missed_pattern"] if subtle else None
    checks = check_description({"full": text, "spatial": text if category == "spatial" else ""}, labels, facts, kb)
    bad = [c for c in checks if c["contradicted"]]
    if category == "root_cause":
        out["wrong_root_cause"] = any(c["kind"] == "root_cause" for c in bad)
    out["hallucinated_location"] = any(c["kind"] in ("zone", "clock") for c in bad)
    out["hallucinated_clock"] = any(c["kind"] == "clock" for c in bad)
    out["evidence"] = "; ".join(c["reason"] for c in bad)
    out["truncated"] = is_truncated(full)
    return out


def error_table(rows: pd.DataFrame, answers, facts: dict[str, dict], kb: dict) -> pd.DataFrame:
    """:func:`answer_errors` for every row (`wafer_id`, `category`, `labels`) and its answer; `facts` maps
    wafer id -> measured facts (with `fail_ratio`). Subtle wafers: fail ratio in the lowest third of `rows`."""
    ratios = pd.Series({w: facts[w]["fail_ratio"] for w in set(rows["wafer_id"])})
    cut = ratios.quantile(1 / 3) if len(ratios) else 0.0
    out = [answer_errors(a, c, list(lab), facts[w], kb, subtle=facts[w]["fail_ratio"] <= cut)
           for a, c, lab, w in zip(answers, rows["category"], rows["labels"], rows["wafer_id"])]
    return pd.DataFrame(out, index=rows.index)


def error_rates(table: pd.DataFrame) -> dict:
    """Per category: the rate over the answers where it was possible, and how many those were."""
    out = {}
    for c in CATEGORIES:
        col = table[c].dropna().astype(bool)
        out[f"{c}_rate"] = float(col.mean()) if len(col) else float("nan")
        out[f"{c}_n"] = len(col)
    return out


def examples(table: pd.DataFrame, rows: pd.DataFrame, answers, category: str, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to n answers showing one error (a seeded draw), with the question, the answer and the evidence."""
    hit = table[category].fillna(False).astype(bool).to_numpy()
    pick = np.flatnonzero(hit)
    if len(pick) > n:
        pick = np.sort(np.random.default_rng(seed).choice(pick, n, replace=False))
    sel = rows.iloc[pick]
    return sel.assign(model_answer=[list(answers)[i] for i in pick], evidence=table["evidence"].iloc[pick].to_numpy(),
                      error=category)
