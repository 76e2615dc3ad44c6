"""The offline claims judge (issue 28): an answer's claims against the map's facts, able to fail."""
import json

import numpy as np
import pandas as pd
import pytest

from wafersage_utils.corpus.knowledge import load_knowledge
from wafersage_utils.evaluation import classification, judge, sensitivity
from wafersage_utils.evaluation.claims_judge import ClaimsJudge, answer_claims, judge_claims, supported

KB = load_knowledge()
# A Center map: one compact blob in the center zone around 9 o'clock; the edge holds nothing.
FACTS = {"regions": [{"shape": "blob", "zone": "center", "clock": 9, "clock_sectors": [8, 9, 10]}], "ring_zones": [],
         "zones_with_failures": ["center"], "zone_clustered_density": {"center": 0.4, "mid-radius": 0.0, "edge": 0.0},
         "clock_sectors": [8, 9, 10], "scattered": False, "near_full": False}
REF = ("This wafer map shows a center defect pattern. The main failing region is a compact blob in the center "
       "zone around 9 o'clock. The edge is clear.")
DIMS = ["spatial", "morphology"]


def score(answer, reference=REF, labels=("Center",)):
    return judge_claims(answer, reference, list(labels), FACTS, KB, DIMS)


def test_claims_are_read_negation_aware():
    got = answer_claims(REF, KB)
    assert {("pattern", "Center"), ("shape", "blob"), ("zone", "center"), ("clock", 9), ("clear", "edge")} <= got
    assert ("zone", "edge") not in got
    denied = answer_claims("This wafer map does not show a center defect pattern; it is not a blob.", KB)
    assert ("not_pattern", "Center") in denied and ("not_shape", "blob") in denied and ("pattern", "Center") not in denied
    assert ("shape", "ring") not in answer_claims("This wafer map shows an edge-ring defect pattern.", KB)


def test_the_reference_scores_ten_and_saying_nothing_zero():
    assert score(REF)["overall"] == pytest.approx(10.0)
    assert score("")["overall"] == 0.0 and score("   ")["spatial"] == 0.0


@pytest.mark.parametrize("wrong", [
    REF.replace("9 o'clock", "3 o'clock"),                      # clock
    REF.replace("center zone", "edge zone"),                    # zone
    REF.replace("The edge is clear", "The edge is full"),       # a clear zone said to hold failures
    REF.replace("shows a center", "does not show a center"),    # negation
    REF.replace("center defect pattern", "scratch defect pattern"),  # pattern
    REF.replace("compact blob", "thin line"),                   # shape
])
def test_one_wrong_claim_costs_more_than_a_point(wrong):
    assert score(wrong)["overall"] <= 10.0 - 1.0


def test_an_error_of_the_reference_is_not_expected_of_the_answer():
    bad_reference = REF + " A second region lies at the edge around 3 o'clock."  # the facts show neither
    assert score(REF, reference=bad_reference)["overall"] == pytest.approx(10.0)


def test_verdicts_must_agree_with_the_reference():
    ref = "No. The main failing region lies around 9 o'clock, not at 3 o'clock."
    assert score("No. The failures lie around 9 o'clock.", ref)["overall"] == pytest.approx(10.0)
    assert score("Yes. The failures lie around 9 o'clock.", ref)["overall"] < 9.0


def test_causes_of_another_pattern_are_wrong():
    own, other = KB["Center"].candidate_causes[0], KB["Scratch"].candidate_causes[0]
    assert supported(("cause", own), ["Center"], FACTS, KB) and not supported(("cause", other), ["Center"], FACTS, KB)
    ref = f"The center pattern may indicate {own}."
    rows = {"root_cause": 1}
    assert judge_claims(ref, ref, ["Center"], FACTS, KB, list(rows))["overall"] == pytest.approx(10.0)
    wrong = judge_claims(f"The center pattern may indicate {other}.", ref, ["Center"], FACTS, KB, list(rows))
    assert wrong["root_cause"] == 0.0 and wrong["overall"] == pytest.approx(2.5)  # the pattern right: P 1/2, R 1/2


def test_the_judge_needs_the_facts_and_names_a_missing_wafer():
    with pytest.raises(ValueError, match="facts"):
        judge.make_judge("claims", None)
    j = judge.make_judge("claims", None, facts={"w": FACTS}, kb=KB)
    rows = pd.DataFrame({"wafer_id": ["w", "x"], "labels": [["Center"]] * 2, "answer": [REF] * 2,
                         "terms": [json.dumps({"spatial": {"must_hit": ["center"]}})] * 2})
    with pytest.raises(KeyError, match="'x'"):
        j.score(rows, [REF, REF])
    out = j.score(rows.iloc[:1], [REF])
    assert out["judge"].iloc[0] == "claims:facts" and out["judge_overall"].iloc[0] == pytest.approx(10.0)
    assert np.isnan(out["judge_root_cause"].iloc[0])  # a dimension the question does not ask is not scored


def test_every_metric_of_stage_07_sees_every_change_on_the_smoke_run(smoke_run):
    """The suite's perturbation check: the rule score (0.1) and the claims judge (1 point) drop for a wrong
    clock position, zone, negation and pattern name on the smoke run's test references."""
    from wafersage_utils.corpus.scoring import RuleParams
    vqa = pd.read_parquet(smoke_run / "data" / "vqa.parquet")
    facts_df = pd.read_parquet(smoke_run / "data" / "facts.parquet")
    facts = {i: json.loads(f) for i, f in zip(facts_df["id"], facts_df["facts"])}
    rows = vqa[classification.rewardable(vqa["terms"])].reset_index(drop=True)
    rows["labels"] = rows["labels"].map(list)
    scorers = sensitivity.answer_scorers(RuleParams(), ClaimsJudge(facts, KB))
    table, _ = sensitivity.perturbation_table(rows, {k: scorers[k] for k in ("rule_score", "judge_score")}, KB)
    got = table.set_index(["metric", "change"])
    for metric in ("rule_score", "judge_score"):
        for change in ("clock", "zone", "negation", "pattern"):
            assert got.loc[(metric, change), "n"] > 0 and got.loc[(metric, change), "sensitive"], (metric, change)
