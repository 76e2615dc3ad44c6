"""Reading answers back into labels: where a defect-type answer may stop being generated (`statement_end`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wafersage_utils.evaluation.answers import parse_labels, statement_end

ROOT = Path(__file__).resolve().parent.parent

# Sentences and pieces of sentences an answer may hold: type statements, descriptions, numbers with decimal
# points, defect-free wordings, words that name a pattern outside a statement, breaks of every kind.
PIECES = ["This wafer map shows an edge-ring defect pattern.", "This wafer map shows a localized defect pattern.",
          "The defect pattern on this wafer is center and scratch.", "It is a Donut.", "No scratch is visible.",
          "This wafer map shows no systematic defect pattern.", "The wafer is defect-free!", "about 2.5 dies long",
          "A ring of failing dies sits near the edge.", "Is it random?", "The main failing region is a blob",
          " ", "  ", "\n", ".", "?", "near-full", "edge-loc", " scratch ", "3.", "o'clock"]


def assert_cut_keeps_labels(answer: str) -> None:
    """At every prefix where generation could stop, the cut answer reads as the whole answer does."""
    for n in range(len(answer) + 1):
        end = statement_end(answer[:n])
        if end is not None:
            assert parse_labels(answer[:n][:end]) == parse_labels(answer), (answer[:n], answer)
            assert answer.startswith(answer[:n][:end])
            return


@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_an_answer_cut_where_its_statement_ends_parses_as_the_whole(pieces):
    assert_cut_keeps_labels("".join(pieces))


def test_the_committed_models_answers_cut_where_their_statement_ends_parse_as_the_whole():
    answers = pd.read_csv(ROOT / "results/default/scores/wm811k_dev/per_map.csv.gz")["answer"]
    sample = answers.sample(300, random_state=0).tolist()
    for a in sample:
        assert_cut_keeps_labels(a + " And more follows.")
    # Each states its type in its first sentence, so each can stop right after it.
    assert all(statement_end(a + " And") == a.index(". ") + 1 for a in sample if ". " in a)


@pytest.mark.parametrize("answer, end", [
    ("This wafer map shows an edge-ring defect pattern.", None),  # finished? only a following break tells
    ("This wafer map shows an edge-ring defect pattern. The", 49),
    ("about 2.5 dies long. This wafer map shows a center defect pattern.\n", 66),
    ("The ring is wide. The pattern is a donut. More", 41),
    ("It is a Donut. More", None),  # names a pattern but states no type: the parser reads the whole answer
    ("No systematic defect pattern is visible.\nThe", 40),
    ("A ring of failing dies sits near the edge. Nothing else", None),  # no statement: the parser reads it all
])
def test_statement_end_by_hand(answer, end):
    assert statement_end(answer) == end
