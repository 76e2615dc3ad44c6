"""Stages 02 and 03 with the `openai` backends end to end, against the scripted local server: hallucinations
quarantined with reasons, LLM rubrics validated and grounded, failed requests quarantined, and a rerun that
resumes (only what failed is requested again; everything else comes from the cache)."""
import json
import re
import shutil

import pytest

from tests.chat_server import last_user_text
from tests.conftest import ROOT
from wafersage_utils.corpus import tables
from wafersage_utils.runner import pipeline


def responder(request):
    text = last_user_text(request)
    if "Rewrite this question" in text:
        return "Tell me, " + text.split("Question: ")[1][0].lower() + text.split("Question: ")[1][1:]
    if "Write a grading rubric" in text:
        labs = re.search(r"Defect type \(from inspection\): (.+?)\.\s", text).group(1)
        types = ["none"] if "(none)" in labs else labs.split(" + ")
        return json.dumps({"defect_types": types, "spatial_rubric": {"zone": "edge", "spatial_avoid": ["center", "edge"]},
                           "morphology_rubric": {"pattern_type": types[0].lower()},
                           "root_cause_rubric": {"potential_causes": ["process drift"]}, "summary": "edge failures"})
    if "Do not discuss root causes" in text:
        return "Failures cluster at the edge around 6 o'clock."  # wrong for maps without failures there
    labs = re.search(r"inspection label is: (.+?)\. Describe", text).group(1)
    types = ["none"] if "(none)" in labs else labs.split(" + ")
    if "Answer with one JSON object" in text:
        return json.dumps({"defect_types": types + (["Scratch"] if types == ["Donut"] else []), "zones": ["edge"]})
    return f"A {labs} pattern. It could be clamp ring contact." if types == ["Center"] else f"A {labs} pattern."


def _run(tmp_path, url, only="02-03", force=False):
    sets = ["02_describe.backend=openai", f"02_describe.base_url={url}", "02_describe.concurrency=4",
            "02_describe.max_retries=0", "02_describe.timeout_s=5", "03_rubrics.backend=openai",
            f"03_rubrics.base_url={url}", "03_rubrics.max_retries=0"]
    run = pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only=only, run_name="openai", overrides=sets,
                                results_dir=tmp_path, force=force)
    m3 = run / "metrics" / "03_rubrics.json"
    return run, json.loads((run / "metrics" / "02_describe.json").read_text()), json.loads(m3.read_text()) if only != "02" else {}


@pytest.mark.slow
def test_openai_backends_end_to_end_with_resume(smoke_run, tmp_path, server):
    (tmp_path / "openai" / "data").mkdir(parents=True)
    shutil.copy(smoke_run / "data" / "maps.parquet", tmp_path / "openai" / "data" / "maps.parquet")
    n_ok = 60
    url, script = server(["ok"] * n_ok, default="400", responder=responder)
    run, m2, _ = _run(tmp_path, url, only="02")  # the server fails after n_ok answers
    n = m2["n_maps"]
    assert m2["requests_sent"] == 4 * n and len(script.requests) == 4 * n
    desc = tables.read_corpus(run / "data" / "descriptions.parquet", "descriptions")
    failed = desc["reason"].str.startswith("request:")
    assert failed.sum() >= n - n_ok // 4 and "400" in desc.loc[failed, "reason"].iloc[0]

    url2, script2 = server([], responder=responder)  # the server is healthy again: rerun resumes
    run, m2, m3 = _run(tmp_path, url2, force=True)
    assert m2["requests_sent"] == 4 * n - n_ok == len(script2.requests) - m3["requests_sent"]
    desc = tables.read_corpus(run / "data" / "descriptions.parquet", "descriptions")
    assert not desc["reason"].str.startswith("request:").any()
    # Every map is told it has failures at the edge around 6 o'clock: maps without them are quarantined.
    assert 0 < m2["hallucination/zone/rate"] < 1 and 0 < m2["hallucination/descriptions_rate"] < 1
    assert m2["hallucination/pattern/contradicted"] > 0  # a scratch claimed on donut maps
    assert m2["hallucination/root_cause/contradicted"] > 0  # clamp ring contact claimed on center maps
    assert desc["quarantined"].sum() == round(m2["hallucination/descriptions_rate"] * n)
    assert desc.loc[desc["quarantined"], "reason"].str.contains("zone: failures claimed at the edge|clock: 6|pattern: Scratch|root_cause: cause 'clamp ring").all()
    rub = tables.read_corpus(run / "data" / "rubrics.parquet", "rubrics")
    assert len(rub) == m3["n_input"] == (~desc["quarantined"]).sum() and m3["n_rubrics"] == len(rub)
    spatial_avoid = rub["spatial_must_avoid"].map(list)
    assert not spatial_avoid.map(lambda a: "edge" in a).any()  # every kept map has edge failures: grounded away
    again_run, again2, again3 = _run(tmp_path, url2, force=True)
    assert again2["requests_sent"] == 0 and again3["requests_sent"] == 0 and again2["n_cached"] == n

    # Stage 04 with model paraphrases on top of these rubrics.
    sets = ["04_vqa.paraphrase_backend=openai", f"04_vqa.base_url={url2}", "04_vqa.max_retries=0", "04_vqa.paraphrase_share=0.5"]
    pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="04", run_name="openai", overrides=sets, results_dir=tmp_path)
    m4 = json.loads((run / "metrics" / "04_vqa.json").read_text())
    assert m4["paraphrase/kept"] == m4["paraphrase/sent"] > 0 and m4["leaking_questions"] == 0
    qa = tables.read_corpus(run / "data" / "vqa.parquet", "vqa")
    assert qa["question"].str.startswith("Tell me, ").sum() > 0.3 * len(qa)
