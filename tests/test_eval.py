"""Stage 07's building blocks: judge replies, the embedding judge, alignment, the classification view and the
error taxonomy, on hand-made cases with known answers."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.chat_server import last_user_text
from wafersage_utils.chat import llm
from wafersage_utils.corpus.knowledge import load_knowledge
from wafersage_utils.corpus.scoring import RuleParams, rule_score, term_match
from wafersage_utils.evaluation import alignment, classification, judge, taxonomy
from wafersage_utils.maps.conventions import label_key

RUBRIC = {"spatial": {"must_hit": ["center"], "must_avoid": ["edge"]},
          "morphology": {"must_hit": ["round blob"], "must_avoid": []}}


# --- judge replies ---------------------------------------------------------------------------------------

def test_parse_judgement_accepts_fenced_json_and_numeric_strings():
    text = 'Here you go:\n```json\n{"spatial": 7, "morphology": "8.5", "overall": 8, "why": "ok"}\n```'
    assert judge.parse_judgement(text, ["spatial", "morphology"]) == {"spatial": 7.0, "morphology": 8.5, "overall": 8.0}


@pytest.mark.parametrize("text, message", [
    ("no json here", "no JSON object"),
    ('{"spatial": 7}', "missing key 'overall'"),
    ('{"spatial": 11, "overall": 5}', "'spatial' is 11"),
    ('{"spatial": "high", "overall": 5}', "'spatial' is 'high'"),
    ('{"spatial": true, "overall": 5}', "'spatial' is True"),
    ('{"spatial": 5, "overall": NaN}', "'overall'"),
    ('[1, 2]', "no JSON object"),
])
def test_parse_judgement_refuses_malformed_replies(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        judge.parse_judgement(text, ["spatial"])


def _rows():
    return pd.DataFrame({"question": ["Where are the failures?"], "answer": ["A round blob at the center."],
                         "terms": [json.dumps(RUBRIC)]})


def test_llm_judge_repairs_once_then_scores(server, tmp_path):
    def responder(request):
        if "could not be used" in last_user_text(request):
            return '{"spatial": 9, "morphology": 6, "overall": 8}'
        return '{"spatial": 9, "overall": 8}'  # forgets a dimension the first time
    url, script = server([], responder=responder)
    settings = llm.ChatSettings(model="judge-m", base_url=url, max_retries=0)
    j = judge.LLMJudge(llm.ChatClient(settings, tmp_path), settings)
    out = j.score(_rows(), ["The center holds a round blob."], progress=False)
    assert out.loc[0, ["judge_spatial", "judge_morphology", "judge_overall"]].tolist() == [9.0, 6.0, 8.0]
    assert out.loc[0, "judge"] == "llm:judge-m" and out.loc[0, "judge_repaired"] and out.loc[0, "judge_error"] == ""
    first = script.requests[0]["messages"][-1]["content"][-1]["text"]
    assert "round blob" in first and "must_hit" in first and "A round blob at the center." in first
    assert [m["role"] for m in script.requests[-1]["messages"]] == ["system", "user", "assistant", "user"]
    # a second run answers from the cache: no new request
    n = len(script.requests)
    j.score(_rows(), ["The center holds a round blob."], progress=False)
    assert len(script.requests) == n


def test_an_image_seeing_judge_gets_the_map_and_the_question_but_no_reference(server, tmp_path):
    import base64
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "w1.png").write_bytes(png)
    url, script = server([], responder=lambda r: '{"spatial": 3, "morphology": 4, "overall": 3}')
    settings = llm.ChatSettings(model="vlm-judge", base_url=url, max_retries=0)
    j = judge.make_judge("openai", tmp_path / "cache", settings, sees_image=True, image_root=tmp_path)
    out = j.score(_rows().assign(image="images/w1.png"), ["The center holds a round blob."], progress=False)
    assert out.loc[0, "judge_overall"] == 3.0 and out.loc[0, "judge"] == "llm-image:vlm-judge"
    content = script.requests[0]["messages"][-1]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = content[-1]["text"]
    assert "round blob" in text and "A round blob at the center." not in text and "must_hit" not in text
    assert "no reference" in script.requests[0]["messages"][0]["content"]
    with pytest.raises(ValueError, match="needs an LLM judge"):
        judge.make_judge("embedding", tmp_path, sees_image=True)


def test_llm_judge_keeps_a_reply_that_stays_bad_as_an_error(server, tmp_path):
    url, _ = server([], responder=lambda r: "I would give it a seven.")
    settings = llm.ChatSettings(model="judge-m", base_url=url, max_retries=0)
    out = judge.LLMJudge(llm.ChatClient(settings, tmp_path), settings).score(_rows(), ["x"], progress=False)
    assert np.isnan(out.loc[0, "judge_overall"]) and "after repair" in out.loc[0, "judge_error"]


def test_embedding_judge_ranks_a_faithful_answer_above_an_unrelated_one():
    j = judge.EmbeddingJudge()
    rows = pd.concat([_rows()] * 3, ignore_index=True)
    out = j.score(rows, ["A round blob of failing dies at the center.", "Scratches run across the edge.", ""],
                  progress=False)
    assert j.kind == "embedding" and set(out["judge"]) == {"embedding:all-MiniLM-L6-v2"}
    s = out["judge_overall"].tolist()
    assert s[0] > s[1] > 0 and s[0] > s[2] and all(0 <= x <= 10 for x in s)
    assert out["judge_root_cause"].isna().all()  # not in the rubric
    assert out.loc[0, "judge_morphology"] > out.loc[1, "judge_morphology"]


def test_embedding_judge_encodes_each_text_once_and_scores_as_a_fresh_judge_would():
    j, fresh = judge.EmbeddingJudge(), judge.EmbeddingJudge()
    rows = pd.concat([_rows()] * 2, ignore_index=True)
    first = ["A round blob of failing dies at the center.", "Scratches run across the edge."]
    second = ["A round blob of failing dies at the center.", "Failures ring the edge."]
    j.score(rows, first, progress=False)
    encoded = []
    real = j.model.encode
    j.model.encode = lambda texts, **kw: (encoded.extend(texts), real(texts, **kw))[1]
    again = j.score(rows, second, progress=False)
    assert encoded == ["Failures ring the edge."]  # references and the repeated answer come from the memo
    expect = fresh.score(rows, second, progress=False)
    cols = [c for c in expect.columns if c.startswith("judge_") and c != "judge_error"]
    np.testing.assert_allclose(again[cols].to_numpy(float), expect[cols].to_numpy(float), atol=1e-4)


# --- alignment -------------------------------------------------------------------------------------------

def test_scores_from_matches_equal_the_rule_score():
    answers = ["A round blob at the centre, not at the edge.", "Failures at the edge.", "", "round blobs near center"]
    m = alignment.match_table(answers, [json.dumps(RUBRIC)] * 4)
    for p in (RuleParams(), RuleParams(threshold=0.6, w_hit=0.9, w_avoid=0.1)):
        fast = alignment.scores_from_matches(m, p)
        slow = [rule_score(a, RUBRIC, p)["S"] for a in answers]
        assert fast == pytest.approx(slow)


def test_term_match_is_the_best_non_negated_ratio():
    assert term_match("center", "failures at the center") == 1.0
    assert term_match("center", "the center is clear") < 0.6  # the exact match is negated; only other words are left
    assert 0.6 < term_match("center", "failures at the centre") < 1.0


def test_alignment_finds_a_known_optimum_and_reports_held_out_rho():
    # The judge only cares about morphology (the 'round blob'); the default weights rank spatial (0.4) above
    # morphology (0.35), so they order a center-only answer above a blob-only one: the fit must reverse that.
    rng = np.random.default_rng(0)
    def make(n):
        hit_c, hit_m = rng.random(n) < 0.5, rng.random(n) < 0.5
        answers = [("failures at the center" if c else "failures at mid-radius") + (" forming a round blob" if m else "")
                   for c, m in zip(hit_c, hit_m)]
        return alignment.match_table(answers, [json.dumps(RUBRIC)] * n), hit_m * 8.0 + rng.normal(0, 0.5, n)
    cal, jc = make(120)
    held, jh = make(120)
    res = alignment.align(cal, jc, held, jh, n_trials=60, seed=0)
    w = res["params"].weights
    assert w["morphology"] > w["spatial"]
    assert res["spearman_after"] > res["spearman_before"] + 0.1
    assert res["spearman_after_calibration"] >= res["spearman_before_calibration"]
    assert len(res["study"].trials) == 60 and res["study"].trials[0].params["threshold"] == RuleParams().threshold
    table = alignment.fitted_table(res, paper={"w_hit": 0.9, "w_avoid": 0.1, "threshold": 0.713})
    assert list(table.index) == ["default", "fitted", "paper"]


# --- classification view ---------------------------------------------------------------------------------

def test_classification_view_by_hand():
    true = [["Loc"], ["Loc"], ["Scratch"], ["Center", "Loc"], ["none"]]
    pred = [["Loc"], ["Scratch"], ["Scratch"], ["Center"], []]
    c = classification.classification(true, pred)
    assert c["accuracy"] == 0.5 and c["accuracy_mixed"] == 0.0 and c["unparsed_share"] == 0.2
    assert c["recall/Loc"] == pytest.approx(1 / 3) and c["recall/Scratch"] == 1.0 and c["recall/none"] == 0.0
    # per label F1 over present labels: Center 1, Loc 2/(2+0+2)=... computed by sklearn on the indicator matrix
    f1 = {"Center": 1.0, "Loc": 2 * 1 / (2 * 1 + 0 + 2), "Scratch": 2 / 3, "none": 0.0}
    assert c["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    conf = classification.confusion(true, pred)
    assert conf.loc["Loc", "Scratch"] == 1 and conf.loc["none", classification.UNPARSED] == 1
    assert "Center" not in conf.index  # mixed wafers are not in the single-label matrix


def test_type_table_intervals_bracket_the_estimate_and_names_are_kept():
    types = pd.DataFrame({"wafer_id": [f"w{i}" for i in range(40)],
                          "labels": [["Loc"] if i % 2 else ["Scratch"] for i in range(40)]})
    model = [["Loc"] if i % 4 == 1 else ["Scratch"] for i in range(40)]  # right on 30 of 40
    table, m = classification.type_table(types, {"sft": model, "majority": classification.majority_labels(["Scratch"], 40)},
                                     n_resamples=300)
    assert m["sft/type_accuracy"] == 0.75 and m["majority/type_accuracy"] == 0.5
    assert m["sft/type_accuracy_ci_low"] < 0.75 < m["sft/type_accuracy_ci_high"]
    assert m["sft/type_macro_f1_ci_low"] <= m["sft/type_macro_f1"] <= m["sft/type_macro_f1_ci_high"]
    assert list(table.index) == ["sft", "majority"]
    assert classification.labels_of_key("Center+Loc") == ["Center", "Loc"] and classification.labels_of_key(float("nan")) == []


def _interval_by_drawing_each_time(wafer_ids, statistic, n_resamples, seed=0, strata=None):
    """wafer_interval as it was before the draws were shared (2026-12-02): the reference for the faster one."""
    codes, uniq = pd.factorize(pd.Series(list(wafer_ids)), sort=True)
    if len(uniq) < 2:
        codes = np.arange(len(codes))
    order = np.argsort(codes, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(codes))[:-1])
    if strata is None:
        pools = [np.arange(len(groups))]
    else:
        of_wafer = pd.Series(list(strata)).astype(str).to_numpy()[[g[0] for g in groups]]
        pools = [np.flatnonzero(of_wafer == v) for v in np.unique(of_wafer)]
    rng = np.random.default_rng(seed)
    boot = np.array([statistic(np.concatenate([groups[i] for pool in pools for i in pool[rng.integers(0, len(pool), len(pool))]]))
                     for _ in range(n_resamples)], float)
    boot = boot[np.isfinite(boot)]
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def test_shared_draws_and_counted_f1_give_the_intervals_of_drawing_each_time():
    """The type table draws its resamples once and counts F1 from binarised labels; every interval must be
    what drawing anew for each measure and calling sklearn on each resample gave (several questions per wafer,
    mixed wafers, labels nobody predicts)."""
    rng = np.random.default_rng(3)
    vocab = ["Center", "Loc", "Scratch", "none", "Donut"]
    wafers = [f"w{i}" for i in rng.integers(0, 60, 150)]
    labels = [list(rng.choice(vocab, size=int(rng.integers(1, 3)), replace=False)) for _ in wafers]
    labels = [["none"] if "none" in x else x for x in labels]
    pred = [x if rng.random() < 0.6 else [str(rng.choice(vocab[:3]))] for x in labels]
    _, m = classification.type_table(pd.DataFrame({"wafer_id": wafers, "labels": labels}), {"sft": pred}, n_resamples=150, seed=4)
    keys = [label_key(x) for x in labels]
    f1 = _interval_by_drawing_each_time(wafers, lambda idx: classification.macro_f1([labels[i] for i in idx], [pred[i] for i in idx]),
                                        150, seed=4, strata=keys)
    pf1 = _interval_by_drawing_each_time(wafers, lambda idx: classification.pattern_macro_f1([labels[i] for i in idx], [pred[i] for i in idx]),
                                         150, seed=4, strata=keys)
    right = classification.exact_matches(labels, pred).astype(float)
    exact = _interval_by_drawing_each_time(wafers, lambda idx: right[idx].mean(), 150, seed=4)
    assert (m["sft/type_macro_f1_ci_low"], m["sft/type_macro_f1_ci_high"]) == pytest.approx(f1, abs=1e-12)
    assert (m["sft/type_pattern_macro_f1_ci_low"], m["sft/type_pattern_macro_f1_ci_high"]) == pytest.approx(pf1, abs=1e-12)
    assert (m["sft/type_exact_match_ci_low"], m["sft/type_exact_match_ci_high"]) == pytest.approx(exact, abs=1e-12)
    one = ["a"] * 5  # a single wafer: its rows are resampled each on its own, as before
    assert classification.wafer_interval(one, lambda idx: float(np.mean(idx)), 50, seed=1) == \
        pytest.approx(_interval_by_drawing_each_time(one, lambda idx: float(np.mean(idx)), 50, seed=1), abs=1e-12)


def test_type_table_adds_exact_match_and_pattern_f1_where_wafers_are_mixed():
    """MixedWM38's measures, known by hand: exact match over every wafer, macro-F1 over the patterns alone."""
    labels = [["Center", "Scratch"], ["Center"], ["Scratch"], ["none"]] * 10
    pred = [["Center"], ["Center"], ["Scratch"], ["none"]] * 10  # the mixed wafers lose their Scratch
    _, m = classification.type_table(pd.DataFrame({"wafer_id": [f"w{i}" for i in range(40)], "labels": labels}),
                                     {"sft": pred}, n_resamples=200)
    assert m["sft/type_exact_match"] == 0.75 and m["sft/type_accuracy"] == 1.0 and m["sft/type_accuracy_mixed"] == 0
    # Center: F1 1; Scratch: 10 of 20 found, no false alarm: F1 2/3; defect-free left out.
    assert m["sft/type_pattern_macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["sft/type_exact_match_ci_low"] <= 0.75 <= m["sft/type_exact_match_ci_high"]
    _, single = classification.type_table(pd.DataFrame({"wafer_id": ["a", "b"], "labels": [["Loc"], ["none"]]}),
                                          {"sft": [["Loc"], ["none"]]}, n_resamples=20)
    assert "sft/type_exact_match" not in single  # no mixed wafer: the single-label measures say it all


# --- error taxonomy --------------------------------------------------------------------------------------

def _facts():
    """A center blob and nothing else (the measured-facts fields the claim checks read)."""
    return {"zones_with_failures": ["center"], "zone_clustered_density": {"center": 0.3, "mid-radius": 0.0, "edge": 0.0},
            "ring_zones": [], "clock_sectors": [], "scattered": False, "near_full": False, "fail_ratio": 0.05,
            "regions": [{"zone": "center", "shape": "blob", "clock_sectors": []}]}


def test_error_taxonomy_on_hand_made_answers():
    f, kb = _facts(), load_knowledge()
    e = taxonomy.answer_errors("This wafer map shows a center and scratch defect pattern.", "defect_type", ["Center"], f, kb)
    assert e["over_splitting"] is True and e["missed_pattern"] is False
    e = taxonomy.answer_errors("This wafer map shows no systematic defect pattern.", "defect_type", ["Center"], f, kb,
                             subtle=True)
    assert e["missed_pattern"] is True and e["missed_subtle"] is True and e["over_splitting"] is False
    e = taxonomy.answer_errors("The failures cluster at the edge around 3 o'clock.", "spatial", ["Center"], f, kb)
    assert e["hallucinated_location"] is True and e["wrong_root_cause"] is None and e["evidence"]
    e = taxonomy.answer_errors("The failures cluster at the center; the edge is clear.", "spatial", ["Center"], f, kb)
    assert e["hallucinated_location"] is False
    rates = taxonomy.error_rates(pd.DataFrame([
        taxonomy.answer_errors("It shows a center pattern.", "defect_type", ["Center"], f, kb),
        taxonomy.answer_errors("It shows a scratch and center pattern.", "defect_type", ["Center"], f, kb)]))
    e = taxonomy.answer_errors("The likely cause is an edge bead removal fault.", "root_cause",
                             ["Center"], f, kb)
    assert e["wrong_root_cause"] is True, e["evidence"]
    e = taxonomy.answer_errors("Check the spin-coat or chuck center effect.", "root_cause", ["Center"], f, kb)
    assert e["wrong_root_cause"] is False
    assert rates["over_splitting_rate"] == 0.5 and rates["over_splitting_n"] == 2 and rates["wrong_root_cause_n"] == 0


def test_a_truncated_answer_claims_nothing_with_its_unfinished_sentence():
    # Cut by the token limit: "The edge zone is" would read as a claim of failures at the edge (issue 28).
    f, kb = _facts(), load_knowledge()
    cut = "The failures cluster at the center. The edge zone is"
    e = taxonomy.answer_errors(cut, "spatial", ["Center"], f, kb)
    assert e["truncated"] is True and e["hallucinated_location"] is False
    whole = taxonomy.answer_errors("The failures cluster at the center. The edge zone is full of failures.", "spatial",
                                   ["Center"], f, kb)
    assert whole["truncated"] is False and whole["hallucinated_location"] is True  # a finished claim still counts
    assert taxonomy.complete_part("The edge zone is") == "" and not taxonomy.is_truncated("A ring (edge).")


# --- answer backends -------------------------------------------------------------------------------------

def test_openai_answer_backend_sends_image_and_question_and_caches(server, tmp_path):
    import base64
    import io

    from PIL import Image

    from wafersage_utils.chat import backends
    from wafersage_utils.evaluation import inference
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    rows = pd.DataFrame({"question": ["What type of defect pattern is visible?", "Where are the failures?"],
                         "image_bytes": [buf.getvalue()] * 2})
    url, script = server([], responder=lambda r: f"answer to: {last_user_text(r)}")
    chat = backends.make_chat("openai", "served-model", tmp_path / "cache", base_url=url)
    out = inference.answer_rows(chat, rows, tmp_path, max_tokens=16, progress=False)
    assert out == ["answer to: What type of defect pattern is visible?", "answer to: Where are the failures?"]
    sent = script.requests[0]
    assert sent["model"] == "served-model" and sent["max_tokens"] == 16 and sent["temperature"] == 0.0
    url_part = sent["messages"][0]["content"][0]["image_url"]["url"]
    assert base64.b64decode(url_part.split(",", 1)[1]) == buf.getvalue()
    n = len(script.requests)
    assert inference.answer_rows(chat, rows, tmp_path, max_tokens=16, progress=False) == out
    assert len(script.requests) == n  # answered from the cache


def test_answer_backend_refusals_are_clear():
    from wafersage_utils.chat import backends
    with pytest.raises(ValueError, match="expected one of"):
        backends.make_chat("tgi", "m", Path("."))
    with pytest.raises(ValueError, match="needs a base_url"):
        backends.make_chat("openai", "m", Path("."))
    if not backends.vllm_available():
        with pytest.raises(RuntimeError, match="needs the vllm package and a CUDA GPU"):
            backends.make_chat("vllm", "m", Path("."))


# --- the shape question (stage 05's check of what a model sees) ---------------------------------------------

def test_read_shape_reads_back_every_pre_training_answer():
    """The parser and the base's pre-training wording must agree: the answer visual_questions teaches for each
    generated map reads back as the shape the facts measured (scattered maps: 'none')."""
    from wafersage_utils.corpus.describe import seeded_rng
    from wafersage_utils.corpus.tables import main_shape
    from wafersage_utils.evaluation import inference
    from wafersage_utils.maps.facts import measure
    from wafersage_utils.maps.synth import SynthConfig, generate
    from wafersage_utils.training import models
    maps = generate(SynthConfig(n_wafers=150, seed=5, mixed_fraction=0.1, label_noise=0.0))
    seen = set()
    for i, m in enumerate(maps["wafer_map"]):
        f = measure(m)
        asked = dict(models.visual_questions(f, seeded_rng(f"t{i}", 0)))
        answer = asked[inference.SHAPE_QUESTION]
        expected = main_shape(f).replace("scattered", "none")
        assert inference.read_shape(answer) == expected, (answer, expected)
        seen.add(expected)
    assert seen == set(inference.SHAPES)  # every shape occurred


@pytest.mark.parametrize("answer, shape", [
    ("A thin line in the mid-radius zone.", "line"), ("A dense blob in the center zone.", "blob"),
    ("A closed ring around the edge zone.", "ring"), ("Curved arcs along the edge.", "arc"),
    ("Nearly every die fails.", "near-full"), ("No group stands out; the failures are sparse.", "none"),
    ("The failures outline a cluster during the test.", ""), ("", ""),
    # a class name that holds a shape word is not a shape reading (issue 28: "SFT reads a ring on 93-100% of
    # Edge-Ring maps" may only have meant that it named the class)
    ("This is an Edge-Ring pattern.", ""), ("Edge-Ring at the edge-ring zone", ""),
    ("Edge-Ring: a closed ring at the edge.", "ring"), ("A ring-like band.", "ring"),
])
def test_read_shape_by_hand(answer, shape):
    from wafersage_utils.evaluation import inference
    assert inference.read_shape(answer) == shape


def test_shape_reading_asks_the_shape_question_and_scores_by_label(tmp_path):
    from wafersage_utils.evaluation import inference

    class Scripted:  # answers by the image bytes it is shown
        name = "scripted"

        def __init__(self):
            self.questions = []

        def complete_many(self, requests, desc="", progress=True):
            out = []
            for r in requests:
                parts = r["messages"][-1]["content"]
                self.questions.append(next(p["text"] for p in parts if p["type"] == "text"))
                png = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
                out.append(llm.ChatResult({"YQ==": "A thin line in the edge zone.",  # base64 of the byte 'a'
                                           "Yg==": "No group stands out; many failures are scattered."}.get(
                    png.split(",", 1)[1], "I cannot tell.")))
            return out

    wafers = pd.DataFrame({"wafer_id": ["w1", "w2", "w3", "w4"], "labels": [["Loc"], ["Loc"], ["Scratch"], ["Random"]],
                           "image_bytes": [b"a", b"c", b"a", b"b"]})
    measured = pd.Series({"w1": "blob", "w2": "blob", "w3": "line", "w4": "scattered"})
    chat = Scripted()
    reading = inference.shape_reading(chat, wafers, measured, tmp_path, progress=False)
    assert chat.questions == [inference.SHAPE_QUESTION] * 4
    assert list(reading["read"]) == ["line", "", "line", "none"]
    assert list(reading["measured"]) == ["blob", "blob", "line", "none"]
    table = inference.shape_agreement(reading)
    assert table.loc["Loc", "n"] == 2 and table.loc["Loc", "agreement"] == 0.0 and table.loc["Loc", "unread"] == 0.5
    assert table.loc["Scratch", "agreement"] == 1.0 and table.loc["Random", "agreement"] == 1.0
    with pytest.raises(ValueError, match="no measured shape for wafers"):
        inference.shape_reading(chat, wafers, measured.drop("w4"), tmp_path, progress=False)


def test_macro_f1_interval_keeps_a_rare_class_in_every_resample():
    """A class of three wafers the model never finds costs macro-F1 in every resample (stratified by label
    set), so the interval does not reach up to the average of the other classes alone."""
    labels = [["Near-full"]] * 3 + [["Loc"]] * 60 + [["none"]] * 60
    pred = [["none"]] * 3 + [["Loc"]] * 60 + [["none"]] * 60
    types = pd.DataFrame({"wafer_id": [f"w{i}" for i in range(len(labels))], "labels": labels})
    _, m = classification.type_table(types, {"sft": pred}, n_resamples=400)
    point = m["sft/type_macro_f1"]  # Near-full 0, Loc 1, none 120/123: about 0.66
    assert point == pytest.approx((0 + 1 + 120 / 123) / 3)
    assert m["sft/type_macro_f1_ci_high"] < 0.7  # a resample without Near-full would score about 0.99
    from wafersage_utils.evaluation.scorer import bootstrap_scores
    s = bootstrap_scores(labels, pred, n_resamples=400)
    assert s["macro_f1"] == pytest.approx(point) and s["macro_f1_ci_high"] < 0.7
    assert s["accuracy_ci_low"] < s["accuracy"] < s["accuracy_ci_high"]
    # The scorer scores a class absent from a resample as F1 0: without stratification a rare class found
    # every time would pull 5% of resamples a third down; within its stratum it is always there and found.
    right = bootstrap_scores(labels, labels[:3] + pred[3:], n_resamples=400)
    assert right["macro_f1"] == pytest.approx((1 + 1 + 1) / 3) and right["macro_f1_ci_low"] > 0.95
