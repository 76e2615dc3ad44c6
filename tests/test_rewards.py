"""RL rewards on hand-made answers, and the audit that refuses rewards that cannot teach."""
import json

import pandas as pd
import pytest

from wafersage_utils.corpus.rubric import rubric_of
from wafersage_utils.training import rewards

RUBRIC = json.dumps({"spatial": {"must_hit": ["edge", "ring"], "must_avoid": ["center"]}})


def conv(text):
    return [{"role": "assistant", "content": text}]


def test_format_score_structure():
    assert rewards.format_score("<REASONING>a ring</REASONING>\n<SOLUTION>Edge ring.</SOLUTION>") == 1.0
    assert rewards.format_score("<SOLUTION>Edge ring.</SOLUTION>") == 0.5  # no reasoning
    assert rewards.format_score("<REASONING>x</REASONING><SOLUTION>a</SOLUTION><SOLUTION>b</SOLUTION>") == 0.5
    assert rewards.format_score("<REASONING>x</REASONING>\n<SOLUTION> </SOLUTION>") == 0.0  # empty solution
    assert rewards.format_score("<REASONING>x</REASONING> trailing <SOLUTION>y</SOLUTION> more") == 0.5
    assert rewards.format_score("Edge ring.") == 0.0
    assert rewards.format_score("") == 0.0


def test_rubric_reward_hits_avoids_negations():
    fn = rewards.RubricReward()
    good, half, bad, negated = ("A ring of failures along the edge.", "Failures at the edge.",
                                "A ring at the edge and the center.", "No ring; the edge is clear, not the center.")
    s = fn(completions=[conv(good), conv(half), conv(bad), conv(negated)], rubric=[RUBRIC] * 4)
    # D = H x A: good: C 1, A 1 -> 1; half: C 0.5 -> 0.5; bad: C 1, one violation, A 0.5 -> 0.5
    assert s[0] == pytest.approx(1.0)
    assert s[1] == pytest.approx(0.5)
    assert s[2] == pytest.approx(0.5)
    # "no ring", "edge is clear": neither hit counts; "not the center" is no violation: nothing right, 0
    assert s[3] == pytest.approx(0.0)


def test_rubric_reward_reads_the_solution_only():
    fn = rewards.RubricReward()
    text = "<REASONING>The center is hit.</REASONING>\n<SOLUTION>A ring along the edge.</SOLUTION>"
    assert fn(completions=[text], rubric=[RUBRIC]) == [pytest.approx(1.0)]
    whole = rewards.RubricReward(solution_only=False)
    assert whole(completions=[text], rubric=[RUBRIC])[0] < 1.0  # the reasoning's 'center' is a violation


def test_rubric_reward_rejects_missing_or_bad_rubric():
    with pytest.raises(ValueError, match="rubric"):
        rewards.RubricReward()(completions=["x"])
    with pytest.raises(ValueError, match="expected a JSON object"):
        rubric_of("[]")


def _rows(n=6):
    return pd.DataFrame({"question": [f"Where are the failures on wafer {i}?" for i in range(n)],
                         "answer": ["A ring along the edge."] * n,
                         "reasoning_answer": ["<REASONING>ring</REASONING>\n<SOLUTION>A ring along the edge.</SOLUTION>"] * n,
                         "terms": [RUBRIC] * n})


def test_audit_scores_every_kind_and_passes_a_useful_reward():
    rows = _rows()
    fns = {"rubric": rewards.RubricReward(), "format": rewards.format_reward}
    samples = ["<REASONING>x</REASONING>\n<SOLUTION>Failures at the center.</SOLUTION>",
               "<REASONING>x</REASONING>\n<SOLUTION>A ring along the edge.</SOLUTION>"] * 3
    table = rewards.audit(rows, fns, {"sft samples": samples})
    assert set(table["answers"]) >= {"constant: empty", "constant: center", "constant: edge ring",
                                     "constant: question copied", "random (another row's reference)", "reference",
                                     "sft samples"}
    ref = table[(table["answers"] == "reference") & (table["reward"] == "rubric")].iloc[0]
    empty = table[(table["answers"] == "constant: empty") & (table["reward"] == "rubric")].iloc[0]
    assert ref["mean"] == pytest.approx(1.0) and empty["mean"] == 0.0  # no floor: an empty answer earns nothing
    rewards.check_audit(table[table["reward"] == "rubric"], "sft samples")  # varies, half at the max: passes


def test_audit_refuses_a_constant_reward():
    table = rewards.audit(_rows(), {"constant": lambda prompts=None, completions=None, **k: [0.5] * len(completions)},
                          {"sft samples": ["anything"] * 6})
    with pytest.raises(ValueError, match="'constant' is constant"):
        rewards.check_audit(table, "sft samples")


def test_audit_refuses_a_saturated_reward():
    samples = ["<REASONING>x</REASONING>\n<SOLUTION>A ring along the edge.</SOLUTION>"] * 6
    table = rewards.audit(_rows(), {"rubric": rewards.RubricReward()}, {"sft samples": samples})
    with pytest.raises(ValueError, match="saturated: 100%"):
        rewards.check_audit(table, "sft samples")


def test_audit_sample_count_must_match():
    with pytest.raises(ValueError, match="3 answers for 6 rows"):
        rewards.audit(_rows(), {"format": rewards.format_reward}, {"sft": ["a"] * 3})


def test_label_reward_scores_the_type_statement_only():
    fn = rewards.label_reward
    answers = ["This wafer map shows a center defect pattern. The center zone holds a blob.",  # right
               "This wafer map shows a scratch defect pattern.",  # wrong
               "This wafer map shows a center and scratch defect pattern.",  # hedge: Jaccard 1/2
               "A ring of failing dies runs around the edge.",  # describes, states no type: neutral
               "<REASONING>maybe scratch</REASONING>\n<SOLUTION>The wafer shows a center defect pattern.</SOLUTION>",
               "It shows a random pattern. The edge-local pattern is consistent with local damage.",
               "This wafer map shows no systematic defect pattern."]  # defect-free statement
    s = fn(completions=[conv(a) for a in answers], labels=[["Center"]] * 6 + [["none"]])
    assert s == [pytest.approx(v) for v in (1.0, 0.0, 0.5, 0.5, 1.0, 0.5, 1.0)]
    assert fn(completions=["This wafer map shows a donut and edge-ring defect pattern."],
              labels=[["Donut", "Edge-Ring", "Scratch"]]) == [pytest.approx(2 / 3)]  # mixed wafer: partial
    with pytest.raises(ValueError, match="labels"):
        fn(completions=["x"])
    with pytest.raises(ValueError, match="without labels"):
        fn(completions=["This wafer map shows a center defect pattern."], labels=[[]])


def test_audit_passes_labels_to_the_label_reward():
    rows = _rows().assign(labels=[["Edge-Ring"]] * 6,
                          answer="This wafer map shows an edge-ring defect pattern.",
                          reasoning_answer="This wafer map shows an edge-ring defect pattern.")
    samples = ["This wafer map shows an edge-ring defect pattern.", "This wafer map shows a center defect pattern."] * 3
    table = rewards.audit(rows, {"label": rewards.label_reward}, {"sft samples": samples}, tagged=False)
    got = table.set_index("answers")["mean"]
    assert got["reference"] == pytest.approx(1.0) and got["sft samples"] == pytest.approx(0.5)
    assert got["constant: empty"] == pytest.approx(0.5)  # states no type: neutral, not rewarded
    rewards.check_audit(table, "sft samples")
