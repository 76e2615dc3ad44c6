"""Model backends of stages 02 and 03 against the scripted local server: prompts, the four outputs,
JSON parsing, rubric validation with one repair turn, grounded avoid lists."""
import json

import pytest

from tests.chat_server import last_user_text
from tests.test_synth import _one
from wafersage_utils.chat import llm
from wafersage_utils.corpus import knowledge, teacher
from wafersage_utils.corpus.rubric import rules_rubric
from wafersage_utils.maps import facts

KB = knowledge.load_knowledge()
PROMPTS = teacher.load_prompts()
PNG = b"\x89PNG fake image bytes"
GOOD_RUBRIC = {"defect_types": ["Edge-Loc"],
               "spatial_rubric": {"zone": "edge", "clock_position": "3 o'clock", "spatial_avoid": ["center", "edge"]},
               "morphology_rubric": {"pattern_type": "edge-local", "density": "dense",
                                     "morphology_avoid": ["scratch", "edge-local"]},
               "root_cause_rubric": {"equipment_category": "wafer handling robot",
                                     "potential_causes": ["clamp contact at one edge position"],
                                     "root_cause_avoid": ["clamp contact at one edge position"]},
               "summary": "edge-local cluster at 3 o'clock"}


def settings(url):
    return llm.ChatSettings(model="teacher", base_url=url, timeout_s=2, max_retries=1, concurrency=2)


def teacher_responder(request):
    text = last_user_text(request)
    if "Answer with one JSON object" in text:
        return '```json\n{"defect_types": ["Edge-Loc"], "zones": ["edge"], "clock_positions": [3]}\n```'
    if "Do not discuss root causes" in text:
        return "Dense failures at the edge around 3 o'clock; the center is clear."
    return "An edge-local cluster at 3 o'clock. It may indicate clamp contact at one edge position."


def test_prompts_file_is_checked(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("conventions: x\n")
    with pytest.raises(ValueError, match=r"p.yaml: missing .*label_hint"):
        teacher.load_prompts(bad)
    with_label = teacher.teacher_prompts(PROMPTS, ["Edge-Loc"], True)
    without = teacher.teacher_prompts(PROMPTS, ["Edge-Loc"], False)
    assert "Edge-Loc" in with_label["full"] and "Edge-Loc" not in without["full"]
    assert "Edge-Loc" not in with_label["spatial"]  # the spatial prompt never gives the answer away
    assert all("12 o'clock is the top" in v for v in with_label.values())


@pytest.mark.parametrize("text, ok", [('{"a": 1}', True), ('Here you go:\n```json\n{"a": 1}\n```', True),
                                      ('{"a": 1} and more text', True), ("[1, 2]", False), ('{"a": ', False),
                                      ("no json", False)])
def test_parse_json_object(text, ok):
    if ok:
        assert teacher.parse_json_object(text) == {"a": 1}
    else:
        with pytest.raises(ValueError):
            teacher.parse_json_object(text)


def test_describe_with_chat_returns_the_four_outputs(server, tmp_path):
    url, script = server([], responder=teacher_responder)
    client = llm.ChatClient(settings(url), tmp_path)
    out = teacher.describe_with_chat(client, client.settings, [(["Edge-Loc"], PNG), (["Center"], PNG + b"2")],
                                     PROMPTS, give_label=True, progress=False)
    assert len(script.requests) == 8 and [o["error"] for o in out] == ["", ""]
    assert out[0]["structured"]["clock_positions"] == [3] and "3 o'clock" in out[0]["spatial"]
    assert all(r["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png") for r in script.requests)
    again = teacher.describe_with_chat(llm.ChatClient(settings(url), tmp_path), client.settings,
                                       [(["Edge-Loc"], PNG)], PROMPTS, True, progress=False)
    assert again[0]["cached"] and len(script.requests) == 8


def test_describe_records_bad_structured_json_and_failed_requests(server, tmp_path):
    url, _ = server([], responder=lambda r: "not json at all" if "JSON object" in last_user_text(r) else "fine")
    client = llm.ChatClient(settings(url), tmp_path)
    out = teacher.describe_with_chat(client, client.settings, [(["Loc"], PNG)], PROMPTS, True, progress=False)
    assert out[0]["full"] == "fine" and out[0]["structured"] == {} and out[0]["error"].startswith("structured: no JSON")
    url2, _ = server([], default="500")
    client2 = llm.ChatClient(settings(url2), tmp_path / "b")
    out2 = teacher.describe_with_chat(client2, client2.settings, [(["Loc"], PNG)], PROMPTS, True, progress=False)
    assert out2[0]["full"] == "" and "full: InternalServerError 500" in out2[0]["error"]


def test_rubric_is_repaired_once_with_the_validation_error(server, tmp_path):
    def responder(request):
        if request["messages"][-1]["role"] == "user" and "did not validate" in last_user_text(request):
            return json.dumps(GOOD_RUBRIC)
        return json.dumps({k: v for k, v in GOOD_RUBRIC.items() if k != "defect_types"})
    url, script = server([], responder=responder)
    client = llm.ChatClient(settings(url), tmp_path)
    out = teacher.rubrics_with_chat(client, client.settings, [(["Edge-Loc"], {"full": "x", "spatial": "y"})],
                                    PROMPTS, progress=False)
    assert out[0]["rubric"] is not None and out[0]["repaired"] and out[0]["error"] == ""
    repair = script.requests[-1]["messages"]
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert "defect_types" in repair[-1]["content"] and "Field required" in repair[-1]["content"]


def test_rubric_that_stays_invalid_is_reported_not_raised(server, tmp_path):
    url, script = server([], responder=lambda r: '{"defect_types": ["Swirl"]}')
    client = llm.ChatClient(settings(url), tmp_path)
    out = teacher.rubrics_with_chat(client, client.settings, [(["Edge-Loc"], {"full": "x"})], PROMPTS, progress=False)
    assert out[0]["rubric"] is None and "unknown defect type 'Swirl'" in out[0]["error"]
    assert "after repair" in out[0]["error"] and len(script.requests) == 2


def test_llm_rubric_avoid_lists_are_grounded():
    m, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    f = facts.measure(m)
    grounded = rules_rubric(["Edge-Loc"], f, KB)
    r = teacher.ground_rubric(teacher.validate_rubric(json.dumps(GOOD_RUBRIC)), grounded, ["Edge-Loc"], f, KB)
    assert "edge" not in r.spatial_rubric.spatial_avoid and "center" in r.spatial_rubric.spatial_avoid
    assert "edge-local" not in r.morphology_rubric.morphology_avoid and "scratch" in r.morphology_rubric.morphology_avoid
    assert "clamp contact at one edge position" not in r.root_cause_rubric.root_cause_avoid
    assert set(grounded.root_cause_rubric.root_cause_avoid) <= set(r.root_cause_rubric.root_cause_avoid)


def test_grounding_never_leaves_a_term_both_hit_and_avoided():
    m, _ = _one("Center", cx=0.0, cy=0.0, radius=0.22, density=1.0)
    f = facts.measure(m)
    llm_rubric = teacher.validate_rubric(json.dumps({
        "defect_types": ["Center"], "spatial_rubric": {"zone": "center, edge", "spatial_avoid": ["edge; 6 o'clock"]},
        "morphology_rubric": {"pattern_type": "center"}, "root_cause_rubric": {}}))
    r = teacher.ground_rubric(llm_rubric, rules_rubric(["Center"], f, KB), ["Center"], f, KB)
    t = r.terms()
    assert all(not set(v["must_hit"]) & set(v["must_avoid"]) for v in t.values())
    assert "edge" in t["spatial"]["must_hit"] and "edge" not in t["spatial"]["must_avoid"]
    assert "6 o'clock" not in t["spatial"]["must_avoid"]  # a centred blob has failures in every sector
