"""Free-text answers to defect-type questions, read back into the label vocabulary (multi-label aware).

A type statement ("This wafer map shows an edge-ring defect pattern.", "The defect pattern on this wafer is
center and scratch.", "It is a Donut.") is looked for first; its pattern names are the answer. Without one,
every pattern name affirmed anywhere in the answer counts ("no scratch" does not). "No systematic pattern",
"defect-free" or "none" read as the defect-free label. An answer that names nothing parses to no label at
all, which is never correct. Stages 05 (type accuracy), 06 and 07 share this parser.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..corpus.claims import PATTERN_WORDS, affirmed
from ..maps.conventions import NONE_LABEL, VOCAB, label_key

_NONE = re.compile(r"\b(no (systematic|clear|distinct|obvious|specific)( defect| failure)? (pattern|signature)|"
                   r"defect[- ]free|no defect pattern|pattern is none|normal wafer)\b")
# A sentence that states the type: "... shows a(n) X (defect) pattern", "the (defect) pattern ... is X".
_STATEMENT = re.compile(r"(shows?|has|is|displays?|exhibits?) (an? |the )?(?P<a>[\w\- ,]+?) (defect |failure )?"
                        r"(pattern|signature|class|type)\b|(pattern|class|type|signature)( on this wafer)? "
                        r"(is|are|:) (an? |the )?(?P<b>[\w\- ,]+)")
# Plain names in a type statement: the short forms the teacher writes ("edge-local", "localized", "center").
_NAMES = {"Center": r"\bcent(er|re|ral)\b", "Donut": r"\b(donut|doughnut|annul(us|ar))\b",
          "Edge-Ring": r"\bedge[- ]ring\b", "Edge-Loc": r"\bedge[- ]loc(al|ali[sz]ed)?\b",
          "Loc": r"(?<!edge[- ])\b(locali[sz]ed|local|loc)\b", "Near-full": r"\bnear[- ]full\b",
          "Scratch": r"\bscratch(es)?\b", "Random": r"\brandom\b"}


_SOLUTION = re.compile(r"<SOLUTION>(.*?)(</SOLUTION>|$)", re.S | re.I)


def solution_text(answer: str) -> str:
    """The part between <SOLUTION> tags of a reasoning-style answer; the whole answer when untagged."""
    m = _SOLUTION.search(answer or "")
    return m.group(1).strip() if m else (answer or "")


def _names_in(phrase: str) -> set[str]:
    return {lab for lab, rx in _NAMES.items() if re.search(rx, phrase)}


# The strict form of a type statement: "... shows a(n) X defect pattern" (the wording of every reference answer).
_STRICT = re.compile(r"(shows?|has|is|displays?|exhibits?) (an? |the )?(?P<a>[\w\- ,]+?) (defect|failure) pattern\b")


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n")


def _first_statement(text: str, statement: re.Pattern) -> set[str]:
    """Labels of the first sentence of `text` that states a type in the form `statement` matches, or that
    calls the wafer defect-free ({'none'}); the empty set when no sentence does."""
    for sentence in _SENTENCE_BREAK.split(text):
        if _NONE.search(sentence):
            return {NONE_LABEL}
        m = statement.search(sentence)
        found = _names_in(next((g for g in m.groupdict().values() if g), "")) if m else set()
        if found:
            return found
    return set()


def stated_labels(answer: str) -> list[str]:
    """Labels of the answer's first strict type statement ("... shows a center defect pattern", "no
    systematic defect pattern"), in vocabulary order; [] when no sentence states a type that way. Pattern
    words used otherwise ("a ring of failing dies", "it shows a random pattern" to a consistency question,
    "the edge-local pattern is consistent with local contamination") do not count, unlike in
    :func:`parse_labels`, which reads any answer to a type question."""
    found = _first_statement(solution_text(answer).lower(), _STRICT)
    return [lab for lab in VOCAB if lab in found]


def statement_end(answer: str) -> int | None:
    """Where the sentence that :func:`parse_labels` reads ends in a plain (untagged) answer, once the text
    shows that sentence is finished (a break follows it); None while no finished sentence states a type or
    calls the wafer defect-free. Whatever follows cannot change the parsed labels: they come from the first
    such sentence, and a finished sentence stays the same sentence however the answer goes on. So a
    defect-type answer can stop being generated there (:mod:`.scorer`)."""
    start = 0
    for m in _SENTENCE_BREAK.finditer(answer):
        if _first_statement(answer[start:m.start()].lower(), _STATEMENT):
            return m.start()
        start = m.end()
    return None


def parse_labels(answer: str) -> list[str]:
    """Labels an answer names, in vocabulary order; ['none'] for a defect-free answer, [] when it names none."""
    text = solution_text(answer).lower()
    found = _first_statement(text, _STATEMENT)
    if not found:
        found = {lab for lab, rx in PATTERN_WORDS.items() if affirmed(rx, text)}
    return [lab for lab in VOCAB if lab in found]


def type_correct(answer: str, labels: list[str]) -> bool:
    """Exact set match of the parsed labels with the wafer's labels."""
    parsed = parse_labels(answer)
    return bool(parsed) and label_key(parsed) == label_key(labels)


def is_mixed(labels) -> bool:
    """A wafer with more than one defect pattern (the defect-free label does not count)."""
    return len([x for x in labels if x != NONE_LABEL]) > 1


def type_accuracy(answers, labels) -> dict:
    """Accuracy on single-pattern wafers, on mixed wafers (exact set match), and the share with no label."""
    correct = np.array([type_correct(a, lab) for a, lab in zip(answers, labels)], bool)
    mixed = np.array([is_mixed(lab) for lab in labels], bool)
    unparsed = np.array([not parse_labels(a) for a in answers], bool)

    def mean(mask):  # None (JSON null) where there is nothing to average
        return float(correct[mask].mean()) if mask.any() else None
    return {"single": mean(~mixed), "mixed": mean(mixed), "all": mean(np.ones_like(mixed)),
            "n_single": int((~mixed).sum()), "n_mixed": int(mixed.sum()), "unparsed_share": float(unparsed.mean())
            if len(unparsed) else None}


def type_accuracy_by(rows: pd.DataFrame, models: list[str], splits: tuple[str, ...]) -> pd.DataFrame:
    """:func:`type_accuracy` for each model (a column of answers in `rows`) and split, one row each."""
    out = {(m, sp): type_accuracy(list(rows.loc[rows["split"] == sp, m]),
                                  [list(x) for x in rows.loc[rows["split"] == sp, "labels"]])
           for m in models for sp in splits}
    return pd.DataFrame(out).T.rename_axis(["model", "split"])
