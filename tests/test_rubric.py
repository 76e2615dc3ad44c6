"""Rubric schema validation and phrase splitting; a reference answer scores high, a contradiction low."""
import pytest
from pydantic import ValidationError

from wafersage_utils.corpus.rubric import Rubric, split_terms
from wafersage_utils.corpus.scoring import rule_score, term_match


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
    # good misses "outer ring (r > 0.75)" and "thin band": 3 of 4 spatial terms, 2 of 3 morphology, every cause
    assert rule_score(good, t)["S"] == pytest.approx(0.4 * 3 / 4 + 0.35 * 2 / 3 + 0.25)
    assert rule_score(bad, t)["S"] < 0.1


def _generated_rows(n=120, **generator):
    from wafersage_utils.corpus import describe, knowledge, rubric
    from wafersage_utils.maps import facts, synth
    kb = knowledge.load_knowledge()
    df = synth.generate(synth.SynthConfig(n_wafers=n, seed=3, mixed_fraction=0.1, label_noise=0.0, **generator))
    rows = []
    for mid, m, labels in zip(df.id, df.wafer_map, df.labels_true):
        f = facts.measure(m)
        rows.append((labels, f, describe.grounded_description(mid, labels, f, kb, 0), rubric.rules_rubric(labels, f, kb)))
    return rows


def test_rules_rubric_scores_its_reference_high_and_other_patterns_low():
    _check_own_and_other_scores(_generated_rows())


def test_a_root_cause_named_in_the_answer_is_not_a_place_claim():
    answer = ("Clustered failures lie at the center and mid-radius. The edge zone is clear of clustered failures. "
              "The donut pattern may indicate edge bead removal fault reaching inwards.")
    rubric = {"spatial": {"must_hit": ["center", "mid-radius"], "must_avoid": ["edge"]},
              "root_cause": {"must_hit": ["edge bead removal fault reaching inwards"], "must_avoid": []}}
    s = rule_score(answer, rubric)["dimensions"]
    assert s["spatial"]["violations"] == [] and s["root_cause"]["hits"] == ["edge bead removal fault reaching inwards"]
    # the same words as a place claim still count, and a cause the rubric does not know is not masked
    placed = answer.replace("The edge zone is clear of clustered failures.", "Failures also reach the edge.")
    assert rule_score(placed, rubric)["dimensions"]["spatial"]["violations"] == ["edge"]
    assert rule_score(answer, {"spatial": rubric["spatial"]})["dimensions"]["spatial"]["violations"] == ["edge"]


def test_a_shape_inside_a_cause_is_not_a_shape_claim():
    rubric = {"morphology": {"must_hit": ["blob"], "must_avoid": ["ring"]},
              "root_cause": {"must_hit": [], "must_avoid": ["clamp ring contact"]}}
    s = rule_score("A compact blob. Clamp-ring contact is unlikely.", rubric)["dimensions"]["morphology"]
    assert s["violations"] == [] and s["hits"] == ["blob"]


def test_mask_phrases_keeps_the_rest_of_the_answer():
    from wafersage_utils.corpus.scoring import mask_phrases
    text = "Failures at 3 o'clock; likely an Edge-Bead Removal faults, or a chuck."
    assert mask_phrases(text, ["edge bead removal fault"], 0.8) == "Failures at 3 o'clock; likely an cause, or a chuck."
    assert mask_phrases(text, ["spin coat"], 0.8) == text
    assert mask_phrases("An edge non-uniformity in plasma etch.", ["etch", "edge non-uniformity in plasma etch"],
                        0.8) == "An cause."  # the longer phrase first, not 'etch' alone


def test_ring_is_not_found_in_during():
    assert term_match("ring", "A thin line; robot end-effector contact during handling.") < 0.8
    assert term_match("ring", "A thin rings of failures.") >= 0.8  # spelling variants keep their first letter
    assert term_match("center", "A blob at the centre.") >= 0.8
    assert term_match("crosshatch", "a cross hatch texture") >= 0.8  # a one-word term over two words


def _check_own_and_other_scores(rows):
    import numpy as np
    own = np.array([rule_score(d["full"], r.terms())["S"] for _, _, d, r in rows])
    pairs = [(rule_score(rows[j][2]["full"], rows[i][3].terms())["S"], own[i])
             for i in range(len(rows)) for j in (i + 7, i + 13) if rows[j % len(rows)][0] != rows[i][0]
             for j in [j % len(rows)]]
    other = np.array([p[0] for p in pairs])
    assert own.mean() > 0.85 and own.min() > 0.6
    assert other.mean() < 0.6 and np.mean([o > x for x, o in pairs]) > 0.9


def test_grounded_descriptions_claim_only_what_the_facts_show():
    for labels, f, d, _ in _generated_rows(80):
        spatial = d["spatial"].lower()
        for z in ("mid-radius", "edge"):
            if z not in f["zones_with_failures"] and f"in the {z} zone" in spatial:
                raise AssertionError(f"{labels}: claims a region in the {z} zone; facts: {f['zones_with_failures']}")
        for reg in f["regions"]:
            if "from_clock" in reg:
                assert f"from {reg['from_clock']} to {reg['to_clock']} o'clock" in spatial
        assert "cause" not in spatial and "may indicate" not in spatial  # spatial-only output has no causes
        assert set(d["structured"]["defect_types"]) == set(labels)
        assert not set(d["structured"]["zones"]) - set(f["zones_with_failures"])


def test_descriptions_are_seeded_and_varied():
    from wafersage_utils.corpus import describe, knowledge
    from wafersage_utils.maps import facts, synth
    kb = knowledge.load_knowledge()
    df = synth.generate(synth.SynthConfig(n_wafers=60, seed=4, mixed_fraction=0.0, label_noise=0.0))
    outs = [describe.grounded_description(i, l, facts.measure(m), kb, 0)["full"]
            for i, m, l in zip(df.id, df.wafer_map, df.labels_true)]
    again = [describe.grounded_description(i, l, facts.measure(m), kb, 0)["full"]
             for i, m, l in zip(df.id, df.wafer_map, df.labels_true)]
    assert outs == again
    openers = {o.split(".")[0].split(" pattern")[0][:20] for o in outs}
    assert len(openers) >= 2 and len(set(outs)) >= 0.9 * len(outs)
