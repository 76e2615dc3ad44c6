"""Rubric schema validation and phrase splitting; a reference answer scores high, a contradiction low."""
import pytest
from pydantic import ValidationError

from wafersage_utils.rubric import Rubric, split_terms
from wafersage_utils.scoring import rule_score


@pytest.mark.parametrize("text, terms", [
    ("center (0,0) clear, edge ring", ["center (0,0) clear", "edge ring"]),
    ("dense; continuous\nthin band", ["dense", "continuous", "thin band"]),
    ('"from 2, to 8 o\'clock", arc', ["from 2, to 8 o'clock", "arc"]),
    ("edge, edge, , ring.", ["edge", "ring"]),
    (["a, b", "b", "c [x, y]"], ["a", "b", "c [x, y]"]),
])
def test_split_terms(text, terms):
    assert split_terms(text) == terms


def _rubric(**over):
    raw = {
        "defect_types": ["Edge Ring"],
        "spatial_rubric": {"zone": "edge", "distribution": "continuous band", "clock_position": "all clock positions",
                           "coordinates_hint": "outer ring (r > 0.75)", "spatial_avoid": ["center", "mid-radius"]},
        "morphology_rubric": {"pattern_type": "ring", "density": "dense", "geometric_structure": "thin band",
                              "texture_description": "", "morphology_avoid": ["scratch", "blob"]},
        "root_cause_rubric": {"equipment_category": "plasma etch", "process_step": "etch",
                              "potential_causes": ["edge non-uniformity"], "root_cause_avoid": ["handling damage"]},
        "summary": "Edge ring.",
    }
    raw.update(over)
    return raw


def test_schema_validates_and_normalises_types():
    r = Rubric.model_validate(_rubric())
    assert r.defect_types == ["Edge-Ring"]
    t = r.terms()
    assert "outer ring (r > 0.75)" in t["spatial"]["must_hit"] and t["morphology"]["must_avoid"] == ["scratch", "blob"]
    with pytest.raises(ValidationError, match="unknown defect type 'Ring-ish'"):
        Rubric.model_validate(_rubric(defect_types=["Ring-ish"]))
    with pytest.raises(ValidationError, match="extra"):
        Rubric.model_validate(_rubric(colour="red"))
    with pytest.raises(ValidationError):
        Rubric.model_validate({"defect_types": ["Loc"]})  # buckets missing


def test_reference_answer_scores_high_and_contradiction_low():
    t = Rubric.model_validate(_rubric()).terms()
    good = ("A dense, continuous band of failures forms a thin ring along the edge at all clock positions, the "
            "center clear; likely an edge non-uniformity in plasma etch during the etch step.")
    bad = "A scratch runs through the center, a blob at mid-radius; handling damage is the likely cause."
    assert rule_score(good, t)["S"] > 0.85 and rule_score(bad, t)["S"] < 0.25
