"""Floors, ceilings, one-change perturbations and the scripted baseline (issue 28): each check can fail."""
import json

import numpy as np
import pandas as pd
import pytest

from wafersage_utils.corpus.knowledge import load_knowledge
from wafersage_utils.corpus.scoring import RuleParams
from wafersage_utils.evaluation import classification, sensitivity

KB = load_knowledge()
REF = ("This wafer map shows a center defect pattern. The main failing region is a compact blob in the center "
       "zone around 9 o'clock, about 14 dies long and 10 wide (73 dies).")


@pytest.mark.parametrize("change, expected", [
    ("clock", "around 3 o'clock"), ("zone", "blob in the edge zone"), ("shape", "compact ring"),
    ("negation", "is not a compact blob"), ("pattern", "shows an edge-ring defect pattern")])
def test_each_change_makes_one_thing_wrong(change, expected):
    out = sensitivity.perturb(REF, change, ["Center"], KB)
    assert out is not None and expected in out and out != REF
    if change != "pattern":
        assert "center defect pattern" in out  # the class name is not a zone word


def test_changes_that_do_not_apply_say_so():
    assert sensitivity.perturb("There is no distinct failing region.", "clock", ["none"], KB) is None
    assert sensitivity.perturb("No systematic process cause is indicated.", "pattern", ["none"], KB) is None
    assert sensitivity.perturb("from 10 to 12 o'clock", "clock", ["Edge-Loc"], KB) == "from 4 to 6 o'clock"
    assert sensitivity.perturb("The edge zone is clear of clustered failures.", "negation", ["Center"], KB) \
        == "The edge zone is full of clustered failures."
    assert sensitivity.perturb("This wafer map shows no systematic defect pattern.", "pattern", ["none"], KB) \
        == "This wafer map shows a scratch defect pattern."
    cause = KB["Scratch"].candidate_causes[0]
    swapped = sensitivity.perturb(f"The scratch pattern may indicate {cause}.", "cause", ["Scratch"], KB)
    assert swapped is not None and cause not in swapped


def _rows():
    return pd.DataFrame({
        "wafer_id": ["a", "a", "b", "c"], "category": ["spatial", "defect_type", "spatial", "spatial"],
        "question": ["Where?", "Which type?", "Where?", "Where?"], "labels": [["Center"], ["Center"], ["none"], ["Loc"]],
        "answer": ["center zone", "This wafer map shows a center defect pattern.", "no region", "edge zone"]})


def test_floor_answers_are_what_they_claim():
    rows = _rows()
    f = sensitivity.floor_answers(rows, seed=0)
    assert f["empty"] == [""] * 4 and f["question"] == list(rows["question"]) and f["reference"] == list(rows["answer"])
    assert f["label_sentence"][1] == "This wafer map shows a center defect pattern."
    assert f["label_sentence"][2] == "This wafer map shows no systematic defect pattern."
    other = f["other_reference"]
    for i, r in rows.iterrows():  # another wafer's reference of the same category, never its own wafer's
        same = rows[(rows["category"] == r["category"]) & (rows["wafer_id"] != r["wafer_id"])]["answer"]
        assert (other[i] in set(same)) if len(same) else other[i] == ""


def test_floor_metrics_and_range_share():
    rows = _rows()
    length = {"chars": lambda r, a: np.array([len(x) for x in a], float)}
    metrics, table = sensitivity.floor_metrics(rows, length)
    assert metrics["floor/empty/chars"] == 0 and metrics["ceiling/reference/chars"] == rows["answer"].str.len().mean()
    assert set(table["answer"]) == {*sensitivity.FLOORS, "reference"}
    assert sensitivity.range_share(0.75, 0.5, 1.0) == 0.5 and np.isnan(sensitivity.range_share(1, 1, 1))


def test_a_metric_blind_to_a_change_is_marked_insensitive():
    rows = pd.DataFrame({"wafer_id": ["a", "b"], "category": ["spatial"] * 2, "question": ["Where?"] * 2,
                         "labels": [["Center"], ["Loc"]],
                         "answer": ["A compact blob in the center zone around 9 o'clock.",
                                    "A thin line in the edge zone from 2 to 4 o'clock."]})
    scorers = {"blind": lambda r, a: np.ones(len(a)),  # cannot fail: every answer scores 1
               "clock_aware": lambda r, a: np.array([1.0 if ("9 o'clock" in x or "2 to 4" in x) else 0.0 for x in a])}
    table, metrics = sensitivity.perturbation_table(rows, scorers, KB, margins={"blind": 0.1, "clock_aware": 0.1})
    got = table.set_index(["metric", "change"])
    assert not got.loc[("blind", "clock"), "sensitive"] and got.loc[("blind", "clock"), "mean_drop"] == 0
    assert got.loc[("clock_aware", "clock"), "sensitive"] and metrics["perturbation/clock_aware/clock"] == 1.0
    assert got.loc[("blind", "cause"), "n"] == 0


def test_the_rule_score_drops_for_a_wrong_pattern_name():
    # The rubric of a Center defect-type question: naming another class must cost at least the margin.
    rows = pd.DataFrame({"wafer_id": ["a"], "category": ["defect_type"], "question": ["Which type?"],
                         "labels": [["Center"]], "answer": ["This wafer map shows a center defect pattern."],
                         "terms": [json.dumps({"morphology": {"must_hit": ["center pattern"],
                                                              "must_avoid": ["edge-ring", "scratch", "donut"]}})]})
    rule = {"rule_score": lambda r, a: classification.rule_scores(a, r["terms"], RuleParams())["S"].to_numpy()}
    table, _ = sensitivity.perturbation_table(rows, rule, KB)
    assert table.set_index("change").loc["pattern", "mean_drop"] >= 0.1


def test_scripted_answers_with_the_true_labels_are_the_references(smoke_run):
    vqa = pd.read_parquet(smoke_run / "data" / "vqa.parquet")
    facts_df = pd.read_parquet(smoke_run / "data" / "facts.parquet")
    facts = {i: json.loads(f) for i, f in zip(facts_df["id"], facts_df["facts"])}
    seed = json.loads((smoke_run / "settings" / "02_describe.json").read_text())["seed"]
    truth = {w: list(lab) for w, lab in zip(vqa["wafer_id"], vqa["labels"])}
    got = sensitivity.scripted_answers(vqa, truth, facts, KB, seed)
    made = [(g, a) for g, a in zip(got, vqa["answer"]) if g is not None]
    assert len(made) >= 0.5 * len(vqa) and all(g == a for g, a in made)
    wrong = {w: ["Scratch"] if lab != ["Scratch"] else ["Center"] for w, lab in truth.items()}
    changed = sensitivity.scripted_answers(vqa, wrong, facts, KB, seed)
    types = vqa["category"] == "defect_type"
    assert all(c != a for c, a, t in zip(changed, vqa["answer"], types) if t)  # another label, another answer
