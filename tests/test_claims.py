"""Hallucination checks: grounded descriptions never contradict the facts; invented places, clock positions,
patterns and contradicting causes are caught, and negated mentions are not claims."""
import pytest

from tests.test_synth import _one
from wafersage_utils.corpus import claims, describe, knowledge
from wafersage_utils.maps import facts
from wafersage_utils.maps.conventions import label_key

KB = knowledge.load_knowledge()


@pytest.fixture(scope="module")
def center_blob():
    m, _ = _one("Center", cx=0.0, cy=0.0, radius=0.22, density=1.0)
    return facts.measure(m)


@pytest.fixture(scope="module")
def edge_loc_3():
    m, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    return facts.measure(m)


def test_grounded_descriptions_make_no_contradicted_claim(small_synth):
    checks, n_claims = [], 0
    for row in small_synth.itertuples():
        f = facts.measure(row.wafer_map)
        labels = list(row.labels_true)
        d = describe.grounded_description(row.id, labels, f, KB, 0)
        items = claims.check_description(d, labels, f, KB)
        bad = [i["reason"] for i in items if i["contradicted"]]
        assert not bad, f"{row.id} ({label_key(labels)}): {bad}\n{d['full']}"
        checks.append(items)
        n_claims += len(items)
    s = claims.summarise(checks)
    assert n_claims > 3 * len(small_synth) and s["hallucination/descriptions_rate"] == 0.0
    assert s["hallucination/zone/claims"] > 0 and s["hallucination/clock/claims"] > 0


def _kinds(desc, labels, f):
    return sorted({i["kind"] for i in claims.check_description(desc, labels, f, KB) if i["contradicted"]})


def test_invented_zone_clock_and_pattern_are_caught(center_blob):
    ok = {"spatial": "A dense blob of failing dies sits at the center of the wafer; the edge is clear."}
    assert _kinds(ok, ["Center"], center_blob) == []
    edge = {"spatial": "Failures cluster along the edge of the wafer."}
    assert _kinds(edge, ["Center"], center_blob) == ["zone"]
    clock = {"spatial": "A blob at the center, plus failing dies near 9 o'clock."}
    assert _kinds(clock, ["Center"], center_blob) == []  # a centred blob covers every sector near the middle
    scratch = {"full": "A long scratch crosses the wafer center."}
    assert _kinds(scratch, ["Center"], center_blob) == ["pattern"]


def test_clock_claims_hold_within_an_hour(edge_loc_3):
    for text, bad in [("Failures at the edge around 3 o'clock.", False), ("Edge failures from 2 to 4 o'clock.", False),
                      ("Edge failures near 9 o'clock.", True), ("Edge failures between 8 and 10 o'clock.", True),
                      ("The failures are not at 9 o'clock but at 3 o'clock.", False)]:
        assert ("clock" in _kinds({"spatial": text}, ["Edge-Loc"], edge_loc_3)) == bad, text


def test_negated_mentions_are_not_claims(center_blob):
    d = {"spatial": "No failures at the edge. There is no scratch, and the mid-radius is clear of failures."}
    c = claims.extract_claims(d)
    assert c["zone"] == [] and c["pattern"] == []


def test_structured_json_claims_are_checked(edge_loc_3):
    d = {"structured": {"defect_types": ["Edge-Loc"], "zones": ["edge"], "clock_positions": [3, "9 o'clock"]}}
    items = claims.check_description(d, ["Edge-Loc"], edge_loc_3, KB)
    assert [(i["kind"], i["claim"]) for i in items if i["contradicted"]] == [("clock", 9)]
    unknown = {"structured": {"defect_types": ["Swirl"]}}
    assert _kinds(unknown, ["Edge-Loc"], edge_loc_3) == ["pattern"]


def test_contradicting_cause_is_caught_but_place_words_in_causes_are_not_claims(center_blob):
    d = {"full": "A center blob. This is most likely clamp ring contact.",
         "root_cause": "Possible cause: edge bead removal fault."}
    items = claims.check_description(d, ["Center"], center_blob, KB)
    assert sorted(i["claim"] for i in items if i["contradicted"]) == ["clamp ring contact", "edge bead removal fault"]
    assert all(i["kind"] == "root_cause" for i in items if i["contradicted"])


def test_summary_rates():
    checks = [[{"kind": "zone", "contradicted": True}, {"kind": "clock", "contradicted": False}],
              [{"kind": "zone", "contradicted": False}], []]
    s = claims.summarise(checks)
    assert s["hallucination/zone/rate"] == 0.5 and s["hallucination/clock/rate"] == 0.0
    assert s["hallucination/descriptions_rate"] == pytest.approx(1 / 3)


def test_sentences_stating_the_type_are_not_location_claims():
    c = claims.extract_claims({"full": "The defect pattern on this wafer is center and edge-ring and scratch. "
                                       "Failures lie at the edge around 3 o'clock."})
    assert c["zone"] == ["edge"] and c["clock"] == [3] and c["pattern"] == ["Edge-Ring", "Scratch"]
