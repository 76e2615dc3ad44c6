"""The reference consistency check (issue 28) finds hand-made bad references and passes good ones."""
import pytest

from wafersage_utils.corpus import consistency

FACTS = {"fail_ratio": 0.05, "scattered": False, "regions": [{"zone": "center", "shape": "blob"}],
         "zone_fail_density": {"center": 0.40, "mid-radius": 0.03, "edge": 0.02}}


@pytest.mark.parametrize("answer, labels, category, problem", [
    ("This wafer map shows a localized defect pattern. No distinct failing region stands out from the background.",
     ["Loc"], "defect_type", "no_region_for_local_label"),
    ("The main failing region is a curved arc in the edge zone from 4 to 5 o'clock.", ["Edge-Ring"], "spatial",
     "edge_ring_only_arcs"),
    ("The main failing region is a thin line in the mid-radius zone from 9 to 9 o'clock.", ["Scratch"], "spatial",
     "line_with_equal_ends"),
    ("Clustered failures lie at the edge. The center zone is clear of clustered failures.", ["Edge-Loc"], "spatial",
     "clear_zone_with_failures"),
    ("This wafer map shows a center defect pattern. The main failing region is an arc in the edge zone from 4 to "
     "5 o'clock.", ["Center"], "morphology", "center_label_main_region_elsewhere"),
    ("This wafer map shows a donut defect pattern. The main failing region is a compact blob in the mid-radius zone "
     "around 7 o'clock.", ["Donut"], "morphology", "donut_as_compact_blob"),
    ("This wafer map shows an edge-local defect pattern.", ["Center"], "defect_type", "label_not_named"),
])
def test_each_hand_made_bad_reference_is_caught(answer, labels, category, problem):
    found = [p for p, _ in consistency.reference_problems(answer, labels, FACTS, category)]
    assert problem in found


@pytest.mark.parametrize("answer, labels, category", [
    ("This wafer map shows a center defect pattern. The main failing region is a compact blob in the center zone "
     "around 9 o'clock. The mid-radius and edge zones are clear of clustered failures.", ["Center"], "morphology"),
    ("This wafer map shows no systematic defect pattern. No distinct failing region stands out.", ["none"], "defect_type"),
    ("Failures form a continuous ring around the whole edge zone. A further region is a partial arc in the edge zone "
     "from 12 to 1 o'clock.", ["Edge-Ring"], "spatial"),
])
def test_good_references_pass(answer, labels, category):
    assert consistency.reference_problems(answer, labels, FACTS, category) == []


def test_counts_over_a_corpus():
    import pandas as pd
    rows = pd.DataFrame({"wafer_id": ["w", "w"], "category": ["spatial", "spatial"], "labels": [["Scratch"], ["Scratch"]],
                         "answer": ["A thin line from 3 to 3 o'clock.", "A thin line from 3 to 5 o'clock."]})
    counts, table = consistency.problem_counts(rows, {"w": FACTS})
    assert counts["line_with_equal_ends"] == 1 and counts["references"] == 2 and counts["references_with_a_problem"] == 1
    assert table["problem"].tolist() == ["line_with_equal_ends"]


@pytest.mark.parametrize("answer, labels, category, expected, fixed", [
    ("This wafer map shows a localized defect pattern. No distinct failing region stands out from the background.",
     ["Loc"], "defect_type", "This wafer map shows a localized defect pattern.", ["no_region_for_local_label"]),
    ("The main failing region is a thin line in the mid-radius zone from 9 to 9 o'clock.", ["Scratch"], "spatial",
     "The main failing region is a thin line in the mid-radius zone around 9 o'clock.", ["line_with_equal_ends"]),
    ("Clustered failures lie at the edge. The center zone is clear of clustered failures.", ["Edge-Loc"], "spatial",
     "Clustered failures lie at the edge.", ["clear_zone_with_failures"]),
    (("This wafer map shows a donut defect pattern. The main failing region is a compact blob in the mid-radius "
      "zone around 7 o'clock. Clustered failures are dense."), ["Donut"], "morphology",
     "This wafer map shows a donut defect pattern. Clustered failures are dense.", ["donut_as_compact_blob"]),
])
def test_a_bad_reference_is_repaired_at_the_source(answer, labels, category, expected, fixed):
    text, done, left = consistency.repair(answer, labels, FACTS, category)
    assert (text, done, left) == (expected, fixed, [])
    assert consistency.reference_problems(text, labels, FACTS, category) == []


def test_what_cannot_be_repaired_is_left_as_a_problem():
    # the type statement is never dropped, so a wrong one stays a problem (the pair is quarantined in stage 04)
    _, _, left = consistency.repair("This wafer map shows an edge-local defect pattern.", ["Center"], FACTS, "defect_type")
    assert left == ["label_not_named"]
    _, _, left = consistency.repair("No distinct failing region stands out from the background.", ["Loc"], FACTS, "spatial")
    assert left == ["nothing_left"]
    good = "This wafer map shows a center defect pattern."
    assert consistency.repair(good, ["Center"], FACTS, "defect_type") == (good, [], [])


def test_stage_04_quarantines_a_reference_left_with_a_problem():
    import json

    import pandas as pd

    from wafersage_utils.corpus import vqa
    qa = pd.DataFrame({"wafer_id": ["a", "a"], "question": ["Where?", "Which type?"], "answer": ["x", "y"],
                       "terms": [json.dumps({"spatial": {"must_hit": [], "must_avoid": []}})] * 2,
                       "reference_problem": ["nothing_left", ""]})
    reasons = vqa.drop_reasons(qa, 0.0, 90.0)
    assert reasons[0] == "reference contradicts its label or map (nothing_left)" and reasons[1] == ""
