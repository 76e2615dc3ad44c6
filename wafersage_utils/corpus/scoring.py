"""The rubric rule score, with fuzzy phrase matching, negation awareness and implied contradictions.

Per dimension: C = share of must-hit terms found, H = min(1, hit_scale * C), A = max(0, 1 - avoid_penalty * n)
with n the violations, and D = H * A (`combine="product"`, the default since 2026-11-30: an answer that says
nothing scores 0, and one wrong claim costs a share of what it got right) or the paper's D = w_hit * H +
w_avoid * A (`combine="paper"`, with the paper's hit_scale 1.5 and avoid_penalty 0.25 in :data:`PAPER`: an
empty answer scores w_avoid, and H saturates once two thirds of the terms appear). Overall S = the weighted
mean of the dimensions (0.4 spatial, 0.35 morphology, 0.25 root cause).

Violations are the must-avoid terms found and, with `implied_avoid`, the claims the dimension's own must-hit
terms rule out, which no rubric lists one by one: a zone the spatial terms do not name, a shape word (blob,
ring, line, arc) the morphology terms do not name. (Clock positions are not implied: a rubric names the
main region's positions only, and an answer may rightly place a second region elsewhere.) A term is found when a
run of whole words in a clause of the answer matches it (rapidfuzz ratio at or above the threshold) and that clause does
not negate it: "no scratch" or "not at the center" is not a hit for "scratch" or "center", and a negated
must-avoid term is not a violation. A one-word term is found only in a word of its first letter (so
'centre' is 'center' and 'scratches' 'scratch', but 'during' is not 'ring'). Spatial and morphology are scored
with the rubric's root-cause phrases masked (:func:`dimension_texts`): "edge bead removal fault" names a
process, not a place, and "clamp ring contact" is not a ring. Stages 03 (rubric checks), 04 (the reference
gate), 06 (RL reward) and 07 (evaluation) share this one implementation.
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


# Claim words, shared with the hallucination checks (claims.py) and the claims judge.
ZONE_WORDS = {
    "center": re.compile(r"\b(cent(er|re|ral)|wafer middle|middle of the wafer)\b"),
    "mid-radius": re.compile(r"\b(mid[- ]?radi(us|al)|middle ring|halfway to the edge|intermediate radi(us|i))\b"),
    "edge": re.compile(r"\b(edges?|rim|periphery|peripheral|outer (ring|zone|region|area|band|radius))\b"),
}
PATTERN_WORDS = {
    "Center": re.compile(r"\b(cent(er|re)[- ]?(type )?(pattern|defect)|central (blob|cluster))\b"),
    "Donut": re.compile(r"\b(donut|doughnut|annulus|annular)\b"),
    "Edge-Ring": re.compile(r"\bedge[- ]ring\b"),
    "Edge-Loc": re.compile(r"\bedge[- ]loc(al|ali[sz]ed)?\b"),
    "Loc": re.compile(r"(?<!edge[- ])\b(locali[sz]ed|loc)\b(?![- ]ring)"),
    "Near-full": re.compile(r"\b(near[- ]full|nearly (every|all) dies?)\b"),
    "Scratch": re.compile(r"\bscratch(es)?\b"),
    "Random": re.compile(r"\brandom\b"),
}
SHAPE_WORDS = {  # the facts' region shapes as an answer words them (describe.SHAPE_WORDS' canonical words)
    "blob": re.compile(r"\bblobs?\b"),
    "ring": re.compile(r"\brings?\b(?![- ]like)"),
    "line": re.compile(r"\blines?\b"),
    "arc": re.compile(r"\barcs?\b"),
}
HOUR = r"(1[0-2]|[1-9])"
_OCLOCK = r"\s*(?:o['’`]?\s*clock|:00)"
_RANGE = re.compile(rf"\b{HOUR}(?:{_OCLOCK})?\s*(?:to|and|through|-|–)\s*{HOUR}{_OCLOCK}")
_SINGLE = re.compile(rf"\b{HOUR}{_OCLOCK}")
_HOUR_TERM = re.compile(rf"^(?:around |at )?{HOUR}{_OCLOCK}$")


@dataclass(frozen=True)
class RuleParams:
    """Every constant of the rule score (the recipe's values as defaults; :data:`PAPER` is the paper's)."""

    hit_scale: float = 1.0
    avoid_penalty: float = 0.5
    w_hit: float = 0.6  # paper combination only
    w_avoid: float = 0.4  # paper combination only
    threshold: float = 0.8  # fuzzy match threshold on rapidfuzz's ratio / 100 (the paper fitted 0.713)
    weights: dict = field(default_factory=lambda: {"spatial": 0.4, "morphology": 0.35, "root_cause": 0.25})
    combine: str = "product"  # product: D = H x A | paper: D = w_hit H + w_avoid A
    implied_avoid: bool = True  # count claims the dimension's own must-hit terms rule out as violations

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"rule score combine {self.combine!r}: expected one of {COMBINES}")


COMBINES = ("product", "paper")


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


def affirmed(pattern: re.Pattern, text: str) -> list[str]:
    """Matches of `pattern` in clauses that do not negate them."""
    out = []
    for clause in clauses(text):
        out += [m.group(0) for m in pattern.finditer(clause) if not negated_at(clause, m.start(), m.end())]
    return out


def clock_hours(text: str) -> list[int]:
    """Clock hours affirmed in a text, both ends of ranges included."""
    out = []
    for clause in clauses(text):
        spans = []
        for m in _RANGE.finditer(clause):
            spans.append((m.start(), m.end()))
            if not negated_at(clause, m.start(), m.end()):
                out += [int(m.group(1)), int(m.group(2))]
        for m in _SINGLE.finditer(clause):
            if not any(a <= m.start() < b for a, b in spans) and not negated_at(clause, m.start(), m.end()):
                out.append(int(m.group(1)))
    return out


def term_match(term: str, answer: str, stop_at: float = 1.0) -> float:
    """The best fuzzy match (rapidfuzz ratio / 100) of `term` with a run of whole words in a clause of
    `answer` that does not negate it; 0 when there is none. The scan stops at the first match reaching
    `stop_at`. Whole words keep 'ring' from matching inside 'handling'; numbers must match exactly, so
    '4 o'clock' is not found in '10 o'clock' however close the strings are; a clock position ('4 o'clock')
    is found where the answer affirms that hour, also as an end of a range ('from 2 to 4 o'clock')."""
    hour = _HOUR_TERM.match(term.strip().lower())
    if hour:  # a clock position is found where the answer affirms that hour, alone or as the end of a range
        return 1.0 if int(hour.group(1)) in clock_hours(answer) else 0.0
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
                if k == 1 and window[0][0] != needle[0]:  # one word: spelling variants keep the first letter
                    continue
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


def dimension_score(answer: str, must_hit: list[str], must_avoid: list[str], p: RuleParams = RuleParams(),
                    dim: str | None = None) -> dict:
    """C, H, A, D of one rubric dimension, with the terms hit and violated (`dim` names the dimension, for
    the implied contradictions: spatial and morphology have them)."""
    hits = [t for t in must_hit if term_found(t, answer, p.threshold)]
    violations = [t for t in must_avoid if term_found(t, answer, p.threshold)]
    if p.implied_avoid and dim:
        violations += implied_violations(answer, dim, must_hit, must_avoid)
    c = len(hits) / len(must_hit) if must_hit else 1.0
    h, a, d = combine(c, len(violations), p)
    return {"C": c, "H": h, "A": a, "D": d, "hits": hits, "violations": violations}


def combine(c: float, n_violations: int, p: RuleParams) -> tuple[float, float, float]:
    """H, A and D of a dimension from its hit share C and its count of violations."""
    h = min(1.0, p.hit_scale * c)
    a = max(0.0, 1.0 - p.avoid_penalty * n_violations)
    return h, a, (h * a if p.combine == "product" else p.w_hit * h + p.w_avoid * a)


def location_claims_text(answer: str) -> str:
    """The answer with pattern names masked, so that 'edge-ring' or 'center pattern' is not read as a place
    or a shape (a class is checked as a class)."""
    text = answer.lower()
    for rx in PATTERN_WORDS.values():
        text = rx.sub("pattern", text)
    return text


def implied_violations(answer: str, dim: str, must_hit: list[str], must_avoid: list[str] = ()) -> list[str]:
    """Claims of the answer that the dimension's must-hit terms rule out: spatial: zones not named;
    morphology: shape words not named. A dimension whose terms name no zone or shape implies nothing
    of that kind, and a claim a must-avoid term already names
    is left to that term (counted once, found or not as the term decides)."""
    text = location_claims_text(answer)
    terms = " ; ".join(must_hit).lower()
    listed = " ; ".join(must_avoid).lower()
    out = []
    if dim == "spatial":
        named = {z for z, rx in ZONE_WORDS.items() if rx.search(terms)}
        if named:
            out += [z for z, rx in ZONE_WORDS.items() if z not in named and not rx.search(listed) and affirmed(rx, text)]
    elif dim == "morphology":
        named = {s for s, rx in SHAPE_WORDS.items() if rx.search(terms)}
        if named:
            out += [s for s, rx in SHAPE_WORDS.items() if s not in named and not rx.search(listed) and affirmed(rx, text)]
    return out


_WORD = re.compile(r"[^\W_]+")  # the words default_process keeps: runs of letters and digits
_SENTENCE_BREAK = re.compile(r"[.;:!?\n]")
CAUSE_MASK = "cause"  # what a masked root-cause phrase reads as: no zone, shape, clock or negation


def mask_phrases(answer: str, phrases: list[str], threshold: float) -> str:
    """The answer with every run of whole words that matches one of `phrases` (rapidfuzz ratio / 100 at or
    above `threshold`, within a sentence part; the longest phrases first, so 'edge non-uniformity in plasma
    etch' goes whole before 'etch'; one-word phrases only in a word of their first letter) replaced by
    :data:`CAUSE_MASK`; punctuation, and so clauses, stay. An answer that does not come near a
    phrase (partial ratio below the threshold) is not scanned word by word."""
    low = default_process(answer)
    needles = sorted({n for n in map(default_process, phrases) if n}, key=len, reverse=True)
    needles = [n for n in needles if fuzz.partial_ratio(n, low) >= 100 * threshold]
    if not needles:
        return answer
    words = [(m.start(), m.end(), m.group(0).lower()) for m in _WORD.finditer(answer)]
    found = []  # every window that matches a phrase, inside one sentence part
    for needle in needles:
        k = len(needle.split())
        for n in {max(1, k - 1), k, k + 1}:
            for i in range(len(words) - n + 1):
                if k == 1 and words[i][2][0] != needle[0]:
                    continue
                if _SENTENCE_BREAK.search(answer, words[i][0], words[i + n - 1][1]):
                    continue
                r = fuzz.ratio(needle, " ".join(w for _, _, w in words[i: i + n])) / 100.0
                if r >= threshold:
                    found.append((-len(needle), -r, n, i))
    taken = [False] * len(words)
    spans = []
    for _, _, n, i in sorted(found):  # the longest phrases first; of one phrase the best window, then the shortest
        if not any(taken[i: i + n]):
            taken[i: i + n] = [True] * n
            spans.append((words[i][0], words[i + n - 1][1]))
    for a, b in sorted(spans, reverse=True):
        answer = answer[:a] + CAUSE_MASK + answer[b:]
    return answer


def dimension_texts(answer: str, rubric: dict[str, dict], threshold: float) -> dict[str, str]:
    """The text each dimension of `rubric` is scored on: root cause the answer itself; spatial and morphology
    the answer with the rubric's root-cause phrases (must-hit and must-avoid) masked, so that a cause's name
    is not read as a place or a shape claim."""
    causes = [t for k in ("must_hit", "must_avoid") for t in rubric.get("root_cause", {}).get(k, [])]
    masked = mask_phrases(answer, causes, threshold) if causes else answer
    return {d: (answer if d == "root_cause" else masked) for d in DIMENSIONS if d in rubric}


def rule_score(answer: str, rubric: dict[str, dict], p: RuleParams = RuleParams()) -> dict:
    """Overall score S and per-dimension scores; rubric maps dimension -> {must_hit, must_avoid}.

    Dimensions absent from the rubric are left out and the weights of the others renormalised; spatial and
    morphology are scored with the rubric's root-cause phrases masked (:func:`dimension_texts`).
    """
    texts = dimension_texts(answer, rubric, p.threshold)
    dims = {d: dimension_score(texts[d], rubric[d].get("must_hit", []), rubric[d].get("must_avoid", []), p, d)
            for d in DIMENSIONS if d in rubric}
    if not dims:
        raise ValueError(f"rubric has none of the dimensions {DIMENSIONS}")
    total = sum(p.weights[d] for d in dims)
    return {"S": sum(p.weights[d] * s["D"] for d, s in dims.items()) / total, "dimensions": dims}


#: The paper's rule score: H = min(1, 1.5 C), A = max(0, 1 - 0.25 n), D = 0.6 H + 0.4 A, listed terms only.
PAPER = RuleParams(hit_scale=1.5, avoid_penalty=0.25, combine="paper", implied_avoid=False)
