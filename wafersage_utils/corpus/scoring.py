"""The rubric rule score of the paper, with fuzzy phrase matching and negation awareness.

Per dimension: C = share of must-hit terms found, H = min(1, hit_scale * C), A = max(0, 1 -
avoid_penalty * n) with n must-avoid terms found, D = w_hit * H + w_avoid * A; overall S = the weighted
mean of the dimensions (paper: 0.4 spatial, 0.35 morphology, 0.25 root cause). A term is found when a
run of whole words in a clause of the answer matches it (rapidfuzz ratio at or above the threshold) and that clause does
not negate it: "no scratch" or "not at the center" is not a hit for "scratch" or "center", and a negated
must-avoid term is not a violation. Stages 03 (rubric checks), 06 (RL reward) and 07 (evaluation) share
this one implementation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

DIMENSIONS = ("spatial", "morphology", "root_cause")

# Words that negate what follows them within a clause, and phrases that negate what precedes them.
_NEG_BEFORE = re.compile(r"\b(no|not|without|never|neither|nor|absent|free of|lack of|lacks|lacking|"
                         r"rather than|instead of|isn't|aren't|wasn't|weren't|doesn't|don't|didn't|cannot|"
                         r"can't|none of|nothing)\b")
_NEG_AFTER = re.compile(r"^(is |are |was |were )?(absent|not (present|seen|observed|visible|found)|ruled out|"
                        r"excluded|unlikely)\b")
# Clause boundaries: sentence ends, semicolons, commas and contrastive conjunctions.
_CLAUSE = re.compile(r"[.;:!?\n]|,|\b(but|however|whereas|while|although|though)\b")
_NEG_WINDOW = 4  # words before a match that may negate it
_CLEAR_AFTER = re.compile(r"\b(clear|free of|unaffected|spared)\b")  # "the center ... is clear of failures"


@dataclass(frozen=True)
class RuleParams:
    """Every constant of the rule score (the paper's values as defaults)."""

    hit_scale: float = 1.5
    avoid_penalty: float = 0.25
    w_hit: float = 0.6
    w_avoid: float = 0.4
    threshold: float = 0.8  # fuzzy match threshold on rapidfuzz's ratio / 100 (the paper fitted 0.713)
    weights: dict = field(default_factory=lambda: {"spatial": 0.4, "morphology": 0.35, "root_cause": 0.25})


def clauses(text: str) -> list[str]:
    """The answer split into clauses, lower-cased."""
    parts = _CLAUSE.split(text.lower())
    return [p.strip() for p in parts if p and p.strip() and p.strip() not in
            {"but", "however", "whereas", "while", "although", "though"}]


def _negated(words: list[str], start: int, end: int, needle_words: set[str]) -> bool:
    """Does a negation cue stand before the match, inside it (beyond the term's own words), or after it?"""
    inside = [w for w in words[start:end] if w not in needle_words]
    before = " ".join(words[max(0, start - _NEG_WINDOW): start] + inside)
    after = " ".join(words[end: end + 6])
    return bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(after) or _CLEAR_AFTER.search(after))


def negated_at(clause: str, start: int, end: int) -> bool:
    """Is the span clause[start:end] negated by words before it or a phrase right after it?"""
    before = " ".join(clause[:start].lower().split()[-_NEG_WINDOW:])
    after = " ".join(clause[end:].lower().split()[:6])
    return bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(after) or _CLEAR_AFTER.search(after))


def term_match(term: str, answer: str, stop_at: float = 1.0) -> float:
    """The best fuzzy match (rapidfuzz ratio / 100) of `term` with a run of whole words in a clause of
    `answer` that does not negate it; 0 when there is none. The scan stops at the first match reaching
    `stop_at`. Whole words keep 'ring' from matching inside 'handling'; numbers must match exactly, so
    '4 o'clock' is not found in '10 o'clock' however close the strings are."""
    needle = default_process(term)
    if not needle:
        return 0.0
    needle_words = set(needle.split())
    numbers = [w for w in needle.split() if w.isdigit()]
    k = len(needle.split())
    best = 0.0
    for clause in clauses(answer):
        words = default_process(clause).split()
        for n in {max(1, k - 1), k, k + 1}:
            for i in range(0, len(words) - n + 1):
                window = words[i: i + n]
                if numbers and [w for w in window if w.isdigit()] != numbers:
                    continue
                r = fuzz.ratio(needle, " ".join(window)) / 100.0
                if r > best and not _negated(words, i, i + n, needle_words):
                    best = r
                    if best >= stop_at:
                        return best
    return best


def term_found(term: str, answer: str, threshold: float) -> bool:
    """Is `term` affirmed somewhere in `answer`: a non-negated :func:`term_match` at or above `threshold`?

    The term is compared (rapidfuzz ratio, so 'centre' matches 'center' and 'scratches' 'scratch') with
    every run of whole words of about its length in each clause; a match counts unless the clause negates it.
    """
    return term_match(term, answer, stop_at=threshold) >= threshold


def dimension_score(answer: str, must_hit: list[str], must_avoid: list[str], p: RuleParams = RuleParams()) -> dict:
    """C, H, A, D of one rubric dimension, with the terms hit and violated."""
    hits = [t for t in must_hit if term_found(t, answer, p.threshold)]
    violations = [t for t in must_avoid if term_found(t, answer, p.threshold)]
    c = len(hits) / len(must_hit) if must_hit else 1.0
    h, a, d = combine(c, len(violations), p)
    return {"C": c, "H": h, "A": a, "D": d, "hits": hits, "violations": violations}


def combine(c: float, n_violations: int, p: RuleParams) -> tuple[float, float, float]:
    """H, A and D of a dimension from its hit share C and its count of must-avoid violations."""
    h = min(1.0, p.hit_scale * c)
    a = max(0.0, 1.0 - p.avoid_penalty * n_violations)
    return h, a, p.w_hit * h + p.w_avoid * a


def rule_score(answer: str, rubric: dict[str, dict], p: RuleParams = RuleParams()) -> dict:
    """Overall score S and per-dimension scores; rubric maps dimension -> {must_hit, must_avoid}.

    Dimensions absent from the rubric are left out and the weights of the others renormalised.
    """
    dims = {d: dimension_score(answer, rubric[d].get("must_hit", []), rubric[d].get("must_avoid", []), p)
            for d in DIMENSIONS if d in rubric}
    if not dims:
        raise ValueError(f"rubric has none of the dimensions {DIMENSIONS}")
    total = sum(p.weights[d] for d in dims)
    return {"S": sum(p.weights[d] * s["D"] for d, s in dims.items()) / total, "dimensions": dims}
