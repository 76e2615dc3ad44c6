"""The paper's rubric schema as a validated model, and proper splitting of rubric phrases into terms.

Schema: `defect_types`; `spatial_rubric` {zone, distribution, clock_position, coordinates_hint,
spatial_avoid[]}; `morphology_rubric` {pattern_type, density, geometric_structure, texture_description,
morphology_avoid[]}; `root_cause_rubric` {equipment_category, process_step, potential_causes[],
root_cause_avoid[]}; `summary`. The public rubric data split these fields on every comma, which breaks
phrases like "center (0,0) clear"; :func:`split_terms` splits only at top level.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, field_validator

from ..maps.conventions import VOCAB
from ..maps.facts import fails_near
from .consistency import LOCAL
from .describe import PATTERN_NAMES, density_word
from .scoring import term_found

_OPEN, _CLOSE = "([{", ")]}"
_ALIASES = {v.lower().replace("-", " ").replace("_", " "): v for v in VOCAB} | {
    "near full": "Near-full", "edge loc": "Edge-Loc", "edge ring": "Edge-Ring", "local": "Loc", "normal": "none"}


def split_terms(text: str | list[str]) -> list[str]:
    """Terms of a rubric field: split at top-level commas, semicolons and new lines only (never inside
    brackets or quotes), stripped, without empties or duplicates; a list is split item by item."""
    if isinstance(text, list):
        out: list[str] = []
        for item in text:
            out += [t for t in split_terms(item) if t not in out]
        return out
    terms, buf, depth, quote = [], [], 0, ""
    for ch in str(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'" and (not buf or buf[-1] in " ("):
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif ch in ",;\n" and depth == 0:
            terms.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    terms.append("".join(buf))
    out = []
    for t in (t.strip(" .\t\"'") for t in terms):
        if t and t not in out:
            out.append(t)
    return out


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpatialRubric(_Part):
    zone: str = ""
    distribution: str = ""
    clock_position: str = ""
    coordinates_hint: str = ""
    spatial_avoid: list[str] = []


class MorphologyRubric(_Part):
    pattern_type: str = ""
    density: str = ""
    geometric_structure: str = ""
    texture_description: str = ""
    morphology_avoid: list[str] = []


class RootCauseRubric(_Part):
    equipment_category: str = ""
    process_step: str = ""
    potential_causes: list[str] = []
    root_cause_avoid: list[str] = []


class Rubric(_Part):
    """One wafer's rubric, as the paper's schema."""

    defect_types: list[str]
    spatial_rubric: SpatialRubric
    morphology_rubric: MorphologyRubric
    root_cause_rubric: RootCauseRubric
    summary: str = ""

    @field_validator("defect_types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            key = str(name).strip().lower().replace("-", " ").replace("_", " ")
            if key not in _ALIASES:
                raise ValueError(f"unknown defect type {name!r}; expected names from {list(VOCAB)}")
            out.append(_ALIASES[key])
        if not out:
            raise ValueError("defect_types is empty; use ['none'] for a defect-free map")
        return out

    def terms(self) -> dict[str, dict[str, list[str]]]:
        """must_hit / must_avoid term lists per scoring dimension."""
        s, m, r = self.spatial_rubric, self.morphology_rubric, self.root_cause_rubric
        return {
            "spatial": {"must_hit": split_terms([s.zone, s.distribution, s.clock_position, s.coordinates_hint]),
                        "must_avoid": split_terms(s.spatial_avoid)},
            "morphology": {"must_hit": split_terms([m.pattern_type, m.density, m.geometric_structure,
                                                    m.texture_description]),
                           "must_avoid": split_terms(m.morphology_avoid)},
            "root_cause": {"must_hit": split_terms([r.equipment_category, r.process_step] + r.potential_causes),
                           "must_avoid": split_terms(r.root_cause_avoid)},
        }


def _avoid_names() -> dict[str, str]:
    """Pattern names as must-avoid terms: 'center pattern', since 'center' alone is also a place."""
    return PATTERN_NAMES | {"Center": "center pattern"}


def _hours(hour: int) -> str:
    return f"{hour} o'clock"


def _opposite(hour: int) -> int:
    return (hour + 6 - 1) % 12 + 1


# A pattern name is a wrong answer unless the facts show what would make it plausible.
PLAUSIBLE = {
    "Center": lambda f: any(r["zone"] == "center" for r in f["regions"]),
    "Donut": lambda f: "mid-radius" in f["ring_zones"] or any(r["shape"] == "ring" for r in f["regions"]),
    "Edge-Ring": lambda f: "edge" in f["ring_zones"],
    "Edge-Loc": lambda f: any(r["zone"] == "edge" for r in f["regions"]),
    "Loc": lambda f: any(r["shape"] in ("blob", "arc") for r in f["regions"]),
    "Scratch": lambda f: any(r["shape"] == "line" for r in f["regions"]),
    "Random": lambda f: f["scattered"],
    "Near-full": lambda f: f["near_full"],
}


def contradicting_causes(labels: list[str], kb: dict, threshold: float = 0.8) -> list[str]:
    """Causes the labels rule out. On a mixture, a cause one pattern contradicts but another's candidate
    contains (fuzzy, as the scorer matches) is left out: it cannot be held against the map."""
    candidates = [c for lab in labels for c in kb[lab].candidate_causes]
    out = []
    for c in (c for lab in labels for c in kb[lab].contradicting_causes):
        if c not in out and c not in candidates and not any(term_found(c, cand, threshold) for cand in candidates):
            out.append(c)
    return out


def rules_rubric(labels: list[str], f: dict, kb: dict, summary: str = "") -> Rubric:
    """The offline rubric: must-hit terms from the facts and the knowledge base, must-avoid terms from what
    the facts rule out (empty zones, the opposite clock position, implausible patterns, contradicting causes)."""
    regions = f["regions"]
    local = [r for r in regions if r["shape"] != "ring"][:1]
    clock = []
    for r in local:
        clock += [_hours(r["from_clock"]), _hours(r["to_clock"])] if "from_clock" in r else \
            ([_hours(r["clock"])] if r.get("clock") else [])
    avoid_clock = [_hours(_opposite(r["clock"])) for r in local if r.get("clock") and "from_clock" not in r
                   and not fails_near(_opposite(r["clock"]), f)]
    # A label names where its failures are (Center, Edge-Ring, Edge-Loc): that zone is never to be avoided.
    implied = {z for lab, z in (("Center", "center"), ("Edge-Ring", "edge"), ("Edge-Loc", "edge")) if lab in labels}
    AVOID_NAMES = _avoid_names()  # noqa: N806
    avoid_patterns = [AVOID_NAMES[p] for p, ok in PLAUSIBLE.items() if p not in labels and not ok(f)]
    ringed = bool({"Edge-Ring", "Donut"} & set(labels))  # their names hold the word "ring"
    shapes = sorted({r["shape"] for r in regions})
    causes = [c for lab in labels for c in kb[lab].candidate_causes]
    return Rubric(
        defect_types=labels,
        spatial_rubric=SpatialRubric(
            zone=", ".join(f["zones_with_failures"]), clock_position=", ".join(clock),
            # a localized label with no measured region: the facts cannot say where, and "no distinct failing
            # region" would contradict the label (consistency.py)
            distribution="continuous ring" if f["ring_zones"] else "scattered" if f["scattered"] else
            "" if regions or set(labels) & set(LOCAL) else "no distinct failing region",
            spatial_avoid=[z for z in ("center", "mid-radius", "edge") if z not in f["zones_with_failures"] and z not in implied]
            + avoid_clock),
        morphology_rubric=MorphologyRubric(
            pattern_type=", ".join(PATTERN_NAMES[lab] for lab in labels if lab != "none") or "no systematic pattern",
            density=density_word(f) if regions or f["ring_zones"] else "",
            geometric_structure=", ".join(shapes),
            morphology_avoid=avoid_patterns + (["ring"] if "ring" not in shapes and not f["ring_zones"] and not ringed
                                               else [])),
        root_cause_rubric=RootCauseRubric(
            equipment_category=", ".join(kb[labels[0]].equipment_categories[:1]),
            process_step=", ".join(kb[labels[0]].process_steps[:1]), potential_causes=causes,
            root_cause_avoid=contradicting_causes(labels, kb)),
        summary=summary)


def rubric_of(value) -> dict:
    """A rubric column value (the VQA table's `terms` JSON, or a dict) as {dimension: {must_hit, must_avoid}}."""
    rubric = json.loads(value) if isinstance(value, str) else dict(value)
    if not isinstance(rubric, dict) or not rubric:
        raise ValueError(f"rubric {value!r}: expected a JSON object of dimensions with must_hit / must_avoid")
    return rubric
