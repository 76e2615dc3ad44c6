"""The paper's rubric schema as a validated model, and proper splitting of rubric phrases into terms.

Schema: `defect_types`; `spatial_rubric` {zone, distribution, clock_position, coordinates_hint,
spatial_avoid[]}; `morphology_rubric` {pattern_type, density, geometric_structure, texture_description,
morphology_avoid[]}; `root_cause_rubric` {equipment_category, process_step, potential_causes[],
root_cause_avoid[]}; `summary`. The public rubric data split these fields on every comma, which breaks
phrases like "center (0,0) clear"; :func:`split_terms` splits only at top level.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from .conventions import VOCAB

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
