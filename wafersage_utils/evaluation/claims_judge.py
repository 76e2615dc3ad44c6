"""The offline judge: an answer's claims held against the map's measured facts and its label (issue 28).

The embedding judge it replaces as the offline default scored sentence similarity to the reference: two
answers that differ only in a clock position, a zone or a negation scored about the same. This judge reads
what an answer claims, negation-aware, in the same words the hallucination checks read:

- spatial: zones with failures ("in the edge zone") and zones said to be clear, clock positions, "no distinct
  failing region", and the yes / no verdict of a consistency question;
- morphology: the pattern named (or denied, or "no systematic pattern") and the shape words (blob, ring,
  line, arc), affirmed or denied;
- root_cause: the causes named, from the knowledge base.

Each claim is checked against the facts (`maps/facts.py`) and the label: a zone holds failures, an hour
has clustered failures within one hour, a pattern is the label, a shape is a measured region's shape, a
cause is a candidate of the label (a cause of another pattern, or one the label contradicts, is wrong).

Precision P is the share of the answer's claims the facts support; recall R is the share of the
reference answer's claims that the facts support (an error of the reference is never expected of the
answer) which the answer also makes. The score is 10 P R, overall and per rubric dimension: an empty answer
scores 0, a wrong clock position costs both a supported claim and precision. It reads no image and writes
no prose; it is a checker of claims, and its name says so (`claims:facts`).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..corpus.claims import CAUSAL, ZONE_TOLERANCE
from ..corpus.knowledge import PatternKnowledge
from ..corpus.rubric import rubric_of
from ..corpus.scoring import (
    DIMENSIONS,
    PATTERN_WORDS,
    SHAPE_WORDS,
    ZONE_WORDS,
    clauses,
    clock_hours,
    location_claims_text,
    negated_at,
    term_found,
)
from ..maps.conventions import NONE_LABEL
from ..maps.facts import fails_near
from .answers import solution_text

KIND_DIMENSION = {"zone": "spatial", "clear": "spatial", "clock": "spatial", "no_region": "spatial",
                  "verdict": "spatial", "pattern": "morphology", "not_pattern": "morphology", "shape": "morphology",
                  "not_shape": "morphology", "cause": "root_cause"}
_NO_REGION = re.compile(r"\bno (distinct|clear|single)? ?(failing|defect)? ?region\b|\bdo(es)? not (group|cluster)\b")
_NO_PATTERN = re.compile(r"\bno (systematic|clear|distinct|obvious|specific)( defect| failure)? (pattern|signature)\b"
                         r"|\bdefect[- ]free\b")
_VERDICT = re.compile(r"^\s*(yes|no)\b", re.IGNORECASE)
_ZONE_DENSITY = 0.08  # the facts' zone rule (as check_description's default)
CAUSE_THRESHOLD = 0.9  # fuzzy match of a cause of the knowledge base (stricter than the rubric's 0.8: causes are long)


def _all_causes(kb: dict[str, PatternKnowledge]) -> list[str]:
    return sorted({c for k in kb.values() for c in k.candidate_causes + k.contradicting_causes})


def _matches(pattern: re.Pattern, text: str) -> tuple[bool, bool]:
    """(affirmed somewhere, denied somewhere) for the matches of `pattern` in the clauses of `text`."""
    yes = no = False
    for clause in clauses(text):
        for m in pattern.finditer(clause):
            if negated_at(clause, m.start(), m.end()):
                no = True
            else:
                yes = True
    return yes, no


def answer_claims(text: str, kb: dict[str, PatternKnowledge]) -> set[tuple]:
    """What an answer claims, as (kind, value) pairs (kinds: :data:`KIND_DIMENSION`)."""
    text = solution_text(text or "")
    low = text.lower()
    out: set[tuple] = set()
    m = _VERDICT.match(low)
    if m:
        out.add(("verdict", m.group(1)))
    if _NO_PATTERN.search(low):
        out.add(("pattern", NONE_LABEL))
    for name, rx in PATTERN_WORDS.items():
        yes, no = _matches(rx, low)
        if yes:
            out.add(("pattern", name))
        if no and not yes:
            out.add(("not_pattern", name))
    # places and shapes are read outside the sentences about causes ("center-to-edge deposition gradient")
    place = location_claims_text(" ".join(s for s in re.split(r"(?<=[.!?])\s+", low) if not CAUSAL.search(s)))
    if _NO_REGION.search(place):
        out.add(("no_region", True))
    for words, said, denied in ((ZONE_WORDS, "zone", "clear"), (SHAPE_WORDS, "shape", "not_shape")):
        for value, rx in words.items():
            yes, no = _matches(rx, place)
            if yes or no:
                out.add((said if yes else denied, value))
    out |= {("clock", h) for h in clock_hours(place)}
    out |= {("cause", c) for c in _all_causes(kb) if c.lower() in low or term_found(c, text, CAUSE_THRESHOLD)}
    return out


def supported(claim: tuple, labels: list[str], facts: dict, kb: dict[str, PatternKnowledge]) -> bool:
    """Does the map (its facts and label) bear the claim out?"""
    kind, value = claim
    regions = facts["regions"]
    shapes = {r["shape"] for r in regions} | ({"ring"} if facts["ring_zones"] else set())
    zone_holds = (lambda z: z in facts["zones_with_failures"]
                  or facts["zone_clustered_density"][z] >= ZONE_TOLERANCE * _ZONE_DENSITY)
    if kind == "zone":
        return zone_holds(value)
    if kind == "clear":
        return not zone_holds(value)
    if kind == "clock":
        return fails_near(value, facts)
    if kind == "no_region":
        return not regions and not facts["ring_zones"]
    if kind == "pattern":
        return value in labels
    if kind == "not_pattern":
        return value not in labels
    if kind == "shape":
        return value in shapes
    if kind == "not_shape":
        return value not in shapes
    if kind == "cause":
        own = {c for lab in labels for c in kb[lab].candidate_causes}
        return value in own
    if kind == "verdict":
        return True  # checked against the reference's verdict (recall), not against the facts
    raise ValueError(f"claim kind {kind!r}: expected one of {sorted(KIND_DIMENSION)}")


def _close(claim: tuple, made: set[tuple]) -> bool:
    """Is an expected claim among the answer's (a clock position within one hour counts)?"""
    if claim in made:
        return True
    if claim[0] == "clock":
        return any(k == "clock" and min((v - claim[1]) % 12, (claim[1] - v) % 12) <= 1 for k, v in made)
    return False


def judge_claims(answer: str, reference: str, labels: list[str], facts: dict, kb: dict[str, PatternKnowledge],
                 dims: list[str], read=None) -> dict[str, float]:
    """10 P R overall and for each of `dims` (see the module's docstring); a verdict that differs from the
    reference's is a wrong claim. `read(text)` returns a text's claims (default: :func:`answer_claims`)."""
    read = read or (lambda t: answer_claims(t, kb))
    made = read(answer)
    expected = {c for c in read(reference) if supported(c, labels, facts, kb)}
    ref_verdict = {c for c in expected if c[0] == "verdict"}
    good = {c for c in made if (c[0] != "verdict" and supported(c, labels, facts, kb)) or c in ref_verdict}
    out = {}
    for dim in [*dims, "overall"]:
        keep = (lambda c: True) if dim == "overall" else (lambda c, d=dim: KIND_DIMENSION[c[0]] == d)
        m, g, e = {c for c in made if keep(c)}, {c for c in good if keep(c)}, {c for c in expected if keep(c)}
        precision = len(g) / len(m) if m else 1.0
        recall = sum(_close(c, g) for c in e) / len(e) if e else (1.0 if (answer or "").strip() else 0.0)
        out[dim] = 10.0 * precision * recall
    return out


def result_frame(name: str, scores: list[dict | None], errors: list[str], extra: dict | None = None) -> pd.DataFrame:
    """The frame every judge returns (`judge.py`'s too): `judge`, `judge_overall`, `judge_<dimension>` (NaN
    where a dimension was not asked or nothing could be scored), `judge_error`, and any `extra` columns."""
    cols = {"judge": [name] * len(scores),
            "judge_overall": [s["overall"] if s else np.nan for s in scores]}
    for d in DIMENSIONS:
        cols[f"judge_{d}"] = [s.get(d, np.nan) if s else np.nan for s in scores]
    cols["judge_error"] = errors
    return pd.DataFrame(cols | (extra or {}))


class ClaimsJudge:
    """The offline judge of stage 07: claims against the facts (module docstring). `facts` maps wafer id to
    its facts; rows need wafer_id, labels, answer (the reference) and terms (for the dimensions)."""

    kind = "claims"
    name = "claims:facts"

    def __init__(self, facts: dict[str, dict], kb: dict[str, PatternKnowledge]):
        self.facts, self.kb = facts, kb
        self._memo: dict[str, frozenset] = {}  # text -> its claims: references are read for every model scored

    def claims(self, text: str) -> frozenset:
        if text not in self._memo:
            self._memo[text] = frozenset(answer_claims(text, self.kb))
        return self._memo[text]

    def score(self, rows: pd.DataFrame, answers: list[str], progress: bool = True) -> pd.DataFrame:
        scores = []
        for (_, r), a in zip(rows.iterrows(), answers):
            if r["wafer_id"] not in self.facts:
                raise KeyError(f"claims judge: no facts for wafer {r['wafer_id']!r} (facts.parquet of the run)")
            dims = [d for d in DIMENSIONS if d in rubric_of(r["terms"])]
            scores.append(judge_claims(a or "", r["answer"], list(r["labels"]), self.facts[r["wafer_id"]], self.kb, dims,
                                       self.claims))
        return result_frame(self.name, scores, [""] * len(scores))
