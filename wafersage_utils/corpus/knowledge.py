"""The root-cause knowledge base: a YAML file mapping each pattern to equipment, process steps and causes.

The packaged default (`corpus/data/root_causes.yaml`) starts from the project's domain notes; users point
the `knowledge_base` parameter at their own copy. Loading validates it and names the file and field at fault.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..maps.conventions import NONE_LABEL, VOCAB

DEFAULT_KB = Path(__file__).resolve().parent / "data" / "root_causes.yaml"


class PatternKnowledge(BaseModel):
    """What one pattern usually points to (hypotheses, never ground truth)."""

    model_config = ConfigDict(extra="forbid")
    equipment_categories: list[str]
    process_steps: list[str]
    candidate_causes: list[str]
    contradicting_causes: list[str]
    sources: list[str]

    @field_validator("*")
    @classmethod
    def _clean(cls, v: list[str]) -> list[str]:
        out = [str(x).strip() for x in v]
        if any(not x for x in out):
            raise ValueError("empty entry")
        return out

    @model_validator(mode="after")
    def _disjoint(self):
        both = set(self.candidate_causes) & set(self.contradicting_causes)
        if both:
            raise ValueError(f"causes listed as both candidate and contradicting: {sorted(both)}")
        return self


def load_knowledge(path: str | Path = "") -> dict[str, PatternKnowledge]:
    """Read and validate a knowledge base (the packaged default when path is empty)."""
    path = Path(path) if path else DEFAULT_KB
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: knowledge base not found") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping from pattern name to its entry")
    unknown = sorted(set(raw) - set(VOCAB))
    missing = [p for p in VOCAB if p not in raw]
    if unknown or missing:
        raise ValueError(f"{path}: patterns must be exactly {list(VOCAB)}; unknown {unknown}, missing {missing}")
    out = {}
    for name in VOCAB:
        try:
            out[name] = PatternKnowledge.model_validate(raw[name])
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "entry"
            raise ValueError(f"{path}: pattern {name!r}, field {field!r}: {err['msg']}") from exc
        if name != NONE_LABEL and not out[name].candidate_causes:
            raise ValueError(f"{path}: pattern {name!r}, field 'candidate_causes': needs at least one cause")
    return out
