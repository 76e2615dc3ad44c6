"""The rule score: the recipe's and the paper's arithmetic, fuzzy hits, negation handled both ways, and the
claims a rubric's own terms rule out."""
from dataclasses import replace

import pytest

from wafersage_utils.corpus.scoring import (
    PAPER,
    RuleParams,
    clauses,
    dimension_score,
    implied_violations,
    rule_score,
    term_found,
)

P = RuleParams()


@pytest.mark.parametrize("answer, term, found", [
    ("A dense ring of failures along the edge.", "edge", True),
    ("Failures concentrate at the wafer centre.", "center", True),  # spelling variant, fuzzy
    ("There is no scratch on this wafer.", "scratch", False),
    ("The failures are not at the center but along the edge.", "center", False),
    ("The failures are not at the center but along the edge.", "edge", True),
    ("No scratch, but a thin arc near 3 o'clock.", "arc", True),
    ("A scratch is absent.", "scratch", False),
    ("Scratches are not observed; a blob sits at mid-radius.", "scratch", False),
    ("A long scratch runs from 2 to 8 o'clock.", "scratch", True),
    ("A long scratch runs from 2 to 8 o'clock.", "8 o'clock", True),
    ("The main region lies around 10 o'clock.", "4 o'clock", False),
    ("The main region lies around 10 o'clock.", "10 o'clock", True),
    ("It lies around 3 o'clock, not at 9 o'clock.", "9 o'clock", False),
    ("A line in the edge zone from 2 to 5 o'clock.", "2 o'clock", True),  # the start of a range is a position
    ("A line in the edge zone from 2 to 5 o'clock.", "3 o'clock", False),
    ("Edge-Ring pattern", "edge ring", True),
    ("The map shows a donut.", "scratch", False),
    ("without any random failures", "random", False),
])
def test_term_found(answer, term, found):
    assert term_found(term, answer, P.threshold) is found


def test_paper_arithmetic():
    s = dimension_score("ring at the edge", ["edge", "ring", "mid-radius"], ["center"], PAPER)
    assert s["C"] == pytest.approx(2 / 3) and s["H"] == 1.0 and s["A"] == 1.0 and s["D"] == pytest.approx(1.0)
    s = dimension_score("blob at the center near the edge", ["ring"], ["center", "edge", "blob"], PAPER)
    assert s["C"] == 0 and s["A"] == pytest.approx(0.25) and s["D"] == pytest.approx(0.4 * 0.25)
    s = dimension_score("one hit", ["hit", "miss", "other"], [], PAPER)
    assert s["H"] == pytest.approx(0.5) and s["D"] == pytest.approx(0.6 * 0.5 + 0.4)
    assert dimension_score("", ["edge"], ["center"], PAPER)["D"] == pytest.approx(0.4)  # the paper's floor


def test_product_arithmetic_has_no_floor_and_no_saturation():
    assert dimension_score("", ["edge"], ["center"], P)["D"] == 0.0  # saying nothing scores nothing
    s = dimension_score("ring at the edge", ["edge", "ring", "mid-radius"], ["center"], P)
    assert s["H"] == pytest.approx(2 / 3) and s["D"] == pytest.approx(2 / 3)  # a missing term costs its share
    s = dimension_score("ring at the edge and the center", ["edge", "ring"], ["center"], P)
    assert s["A"] == pytest.approx(0.5) and s["D"] == pytest.approx(0.5)  # one wrong claim halves it
    with pytest.raises(ValueError, match="combine"):
        RuleParams(combine="mean")


@pytest.mark.parametrize("answer, dim, hit, avoid, expected", [
    # a second region elsewhere may be right: clock positions are never implied, only listed
    ("A line in the edge zone from 8 to 11 o'clock.", "spatial", ["edge", "2 o'clock", "5 o'clock"], [], []),
    ("Failures in the mid-radius zone.", "spatial", ["edge"], [], ["mid-radius"]),
    ("Failures in the center zone.", "spatial", ["edge"], ["center"], []),  # the listed term decides, once
    ("The center is clear; failures at the edge.", "spatial", ["edge"], [], []),
    ("A compact blob.", "morphology", ["line"], [], ["blob"]),
    ("An edge-ring pattern: a ring along the edge.", "morphology", ["ring"], [], []),
    ("This is an edge-ring pattern.", "morphology", ["blob"], [], []),  # a class name is not a shape
    ("A compact blob.", "morphology", ["scratch"], [], []),  # terms that name no shape imply none
    ("A compact blob at 4 o'clock.", "root_cause", ["etch"], [], []),
])
def test_implied_violations(answer, dim, hit, avoid, expected):
    assert implied_violations(answer, dim, hit, avoid) == expected
    listed = dimension_score(answer, hit, avoid, replace(P, implied_avoid=False), dim)["violations"]
    assert dimension_score(answer, hit, avoid, P, dim)["violations"] == listed + expected


def test_negated_avoid_term_is_not_a_violation():
    s = dimension_score("The ring is at the edge, not at the center.", ["edge"], ["center"], P)
    assert s["violations"] == [] and s["A"] == 1.0


def test_overall_weights_and_missing_dimensions():
    rubric = {"spatial": {"must_hit": ["edge"], "must_avoid": ["center"]},
              "morphology": {"must_hit": ["ring"], "must_avoid": ["scratch"]},
              "root_cause": {"must_hit": ["etch"], "must_avoid": ["handling"]}}
    good = rule_score("A continuous ring along the edge, likely plasma etch non-uniformity.", rubric)
    bad = rule_score("A scratch at the center from wafer handling.", rubric)
    assert good["S"] == pytest.approx(1.0) and bad["S"] == 0.0
    assert rule_score("A scratch at the center from wafer handling.", rubric, PAPER)["S"] == pytest.approx(0.4 * 0.75)
    only = rule_score("ring", {"morphology": rubric["morphology"]})
    assert only["S"] == pytest.approx(1.0) and list(only["dimensions"]) == ["morphology"]
    with pytest.raises(ValueError):
        rule_score("x", {})
    custom = replace(PAPER, w_hit=0.9, w_avoid=0.1)
    assert rule_score("scratch", rubric, custom)["S"] < rule_score("scratch", rubric, PAPER)["S"]


def test_clauses_split_on_contrast():
    assert clauses("No scratch, but a ring. Edge only") == ["no scratch", "a ring", "edge only"]


def test_terms_that_carry_their_own_negation():
    assert term_found("no systematic pattern", "The map shows no systematic pattern.", P.threshold)
    assert not term_found("ring", "Failures come from wafer handling.", P.threshold)  # no sub-word hits
