"""VQA synthesis: no leakage, self-consistent references, the difficulty rule, duplicates, paraphrase
checks, and export round trips (TRL formats, the public WaferSAGE schemas)."""
import json

import pandas as pd
import pytest

from tests.chat_server import last_user_text
from wafersage_utils.chat import llm
from wafersage_utils.corpus import describe, exports, knowledge, teacher, vqa
from wafersage_utils.corpus.rubric import rules_rubric
from wafersage_utils.maps import facts, render

KB = knowledge.load_knowledge()


def _pairs(maps):
    out, tally = [], {}
    for row in maps.head(150).itertuples():
        f = facts.measure(row.wafer_map)
        labels = list(row.labels)
        d = describe.grounded_description(row.id, labels, f, KB, 0)
        wafer = {"id": row.id, "lot": row.lot, "split": "train", "labels": labels, "image": "", "role": "typical"}
        out.append((wafer, row.wafer_map, vqa.wafer_pairs(row.id, labels, False, f, d, rules_rubric(labels, f, KB), 9, 0, tally)))
    return out


@pytest.fixture(scope="module")
def pairs(small_synth):
    """Pairs of 150 generated wafers (grounded descriptions, rules rubrics), with their maps."""
    return _pairs(small_synth)


def test_no_question_outside_consistency_checks_names_a_pattern(pairs):
    assert not [t.text for t in vqa.TEMPLATES if vqa.names_a_pattern(t.text)]
    qs = [(p["category"], p["question"]) for _, _, ps in pairs for p in ps]
    assert not [q for c, q in qs if c != "consistency" and vqa.names_a_pattern(q)]
    assert any(vqa.names_a_pattern(q) for c, q in qs if c == "consistency")  # the checks may, and do


def _own_rubric_failures(pairs):
    kept = [p for _, _, ps in pairs for p in ps if not p["reference_problem"]]  # the others are quarantined
    assert len(kept) >= 0.97 * sum(len(ps) for _, _, ps in pairs)
    return [(p["template"], vqa.self_check(p, 0.9)) for p in kept if vqa.self_check(p, 0.9)]


def test_every_reference_answer_passes_its_own_rubric(pairs):
    failures = _own_rubric_failures(pairs)
    assert not failures, failures[:5]


def test_a_repair_drops_the_terms_only_the_left_out_sentence_stated(pairs):
    """A Center map whose main region lies elsewhere: the repair leaves its sentence out, and its clock
    positions go from the rubric with it; what the kept sentences state stays asked for."""
    repaired = [p for _, _, ps in pairs for p in ps if p["reference_repaired"] and p["premise"] is None]
    assert repaired
    from wafersage_utils.corpus.scoring import term_found
    for p in repaired:
        for t in p["terms"].values():
            assert all(term_found(x, p["answer"], 0.8) for x in t["must_hit"] if "o'clock" in x), (p["answer"], t)
    before = {"spatial": {"must_hit": ["center", "2 o'clock"], "must_avoid": ["edge"]}}
    kept = vqa._without_repaired_terms(before, "Failures lie at the center. The main region is at 2 o'clock.",
                                       "Failures lie at the center.")
    assert kept == {"spatial": {"must_hit": ["center"], "must_avoid": ["edge"]}}


def test_references_are_repaired_to_agree_with_their_labels(pairs):
    from wafersage_utils.corpus import consistency
    repaired = [p for _, _, ps in pairs for p in ps if p["reference_repaired"]]
    assert repaired  # generated Loc maps without a measured region and Edge-Rings measured as arcs do occur
    for wafer, m, ps in pairs:
        f = facts.measure(m)
        for p in ps:
            if not p["reference_problem"]:
                assert consistency.reference_problems(p["answer"], wafer["labels"], f, p["category"]) == [], p["answer"]


def test_a_contradicting_answer_fails_the_self_check(pairs):
    p = next(p for _, _, ps in pairs for p in ps if p["category"] == "defect_type" and p["terms"]["morphology"]["must_avoid"])
    wrong = dict(p, answer=f"This wafer map shows a {p['terms']['morphology']['must_avoid'][0]} defect pattern.")
    assert vqa.self_check(wrong, 0.9).startswith("answer contains a must-avoid term")
    assert "scores" in vqa.self_check(dict(p, answer="Nothing to report."), 0.9)


def test_pairs_cover_every_category_with_false_premises(pairs):
    for _, _, ps in pairs:
        assert 7 <= len(ps) <= 9 and {p["category"] for p in ps} >= {"defect_type", "spatial", "morphology", "root_cause"}
    consistency = [p for _, _, ps in pairs for p in ps if p["category"] == "consistency"]
    assert {p["premise"] for p in consistency} == {True, False}
    assert all(p["answer"].startswith("No.") for p in consistency if p["premise"] is False)
    assert {p["template"] for _, _, ps in pairs for p in ps} >= set(vqa.CARD_PROMPTS)


def test_yes_and_no_answers_are_balanced_per_kind_of_check(pairs):
    from collections import Counter
    counts = Counter((p["template"], p["premise"]) for _, _, ps in pairs for p in ps
                     if p["category"] == "consistency" and p["template"] != "card_choice")
    kinds = {k for k, _ in counts}
    assert len(kinds) >= 4 and all(abs(counts[(k, True)] - counts[(k, False)]) <= 1 for k in kinds), counts


def test_difficulty_rule():
    assert vqa.difficulty("easy", False) == "easy" and vqa.difficulty("easy", True) == "medium"
    assert vqa.difficulty("hard", True) == "hard" and vqa.difficulty("medium", False) == "medium"


def test_pairs_are_deterministic(small_synth):
    row = small_synth.iloc[3]
    f = facts.measure(row.wafer_map)
    d = describe.grounded_description(row.id, list(row.labels), f, KB, 0)
    r = rules_rubric(list(row.labels), f, KB)
    a, b = (vqa.wafer_pairs(row.id, list(row.labels), False, f, d, r, 9, 0) for _ in range(2))
    assert a == b and a != vqa.wafer_pairs(row.id, list(row.labels), False, f, d, r, 9, 1)


def test_near_duplicates():
    assert vqa.near_duplicates(["Where are the defects?", "Where are the defects ?", "What caused it?",
                                "where are the defects?"]) == [False, True, False, True]


def _rows(pairs, run_dir):
    rows = []
    for wafer, m, ps in pairs[:12]:
        path = render.render_cached([m], 64, run_dir / "data" / "images")[0]
        rows += vqa.pair_rows(dict(wafer, image=str(path.relative_to(run_dir))), ps)
    return pd.DataFrame(rows)


def test_public_schema_round_trip(pairs, tmp_path):
    qa = _rows(pairs, tmp_path)
    pngs = exports.image_bytes(qa, tmp_path)
    for kind, build in (("vqa", exports.to_public_vqa), ("rubric", exports.to_public_rubric)):
        path = exports.write_public(build(qa, tmp_path), tmp_path / f"{kind}.parquet")
        back = exports.load_public(path)
        assert list(back["id"]) == list(qa["id"]) and list(back["question"]) == list(qa["question"])
        assert list(back["answer"]) == list(qa["answer"]) and list(back["labels"]) == list(qa["labels"])
        assert list(back["difficulty"]) == list(qa["difficulty"]) and list(back["image_bytes"]) == pngs
        assert list(back["wafer_id"]) == list(qa["wafer_id"])
    assert list(back["must_hit"]) == list(qa["must_hit"]) and list(back["terms"]) == list(qa["terms"])
    from datasets import load_dataset
    ds = load_dataset("parquet", data_files=str(tmp_path / "vqa.parquet"), split="train")
    assert ds.features["image"].__class__.__name__ == "Image" and ds[0]["image"].size == (64, 64)
    # Rows read back train like our own: the SFT builder takes them as they are.
    assert len(exports.to_sft_dataset(back, tmp_path)) == len(qa)


def test_load_public_names_what_is_missing(tmp_path):
    pd.DataFrame({"id": ["a"], "query": ["q"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: neither .* missing"):
        exports.load_public(tmp_path / "bad.parquet")


def test_trl_formats(pairs, tmp_path):
    qa = _rows(pairs, tmp_path)
    sft = exports.to_sft_dataset(qa, tmp_path, "reasoning")
    ex = sft[0]
    assert [m["role"] for m in ex["messages"]] == ["user", "assistant"] and ex["images"][0].size == (64, 64)
    assert ex["messages"][0]["content"][0]["type"] == "image"
    assert ex["messages"][1]["content"][0]["text"].startswith("<REASONING>")
    grpo = exports.to_grpo_dataset(qa, tmp_path)[0]
    assert grpo["prompt"][0]["content"][0]["text"] == vqa.SYSTEM_PROMPT
    assert json.loads(grpo["rubric"]) and isinstance(grpo["must_hit"], list)


def test_paraphrases_that_leak_or_ramble_are_rejected(server, tmp_path):
    answers = {"Where are the defects located on the wafer?": "In which part of the wafer do the failing dies sit?",
               "What does the cluster of failing dies look like?": "Where is the donut?",
               "Describe the shape of the failing region.": "Sure!\nHere it is"}

    def responder(request):
        return answers[last_user_text(request).split("Question: ")[1]]
    url, _ = server([], responder=responder)
    s = llm.ChatSettings(model="p", base_url=url, timeout_s=5, max_retries=0)
    qs = list(answers)
    got, why = teacher.paraphrase_questions(llm.ChatClient(s, tmp_path), s, qs, [False] * 3, teacher.load_prompts(),
                                            progress=False)
    assert got == ["In which part of the wafer do the failing dies sit?", qs[1], qs[2]]
    assert why == ["", "names a pattern", "not one question"]


def test_drop_reasons_name_duplicates_and_failed_references(pairs):
    rows = pd.DataFrame(vqa.pair_rows(pairs[0][0], pairs[0][2]))
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)  # the first question again
    rows.loc[1, "answer"] = "Nothing to report."
    why = vqa.drop_reasons(rows, 0.9, 90.0)
    assert why.iloc[-1] == "near-duplicate question" and "scores" in why.iloc[1]
    assert (why.drop(index=[1, len(rows) - 1]) == "").all()
