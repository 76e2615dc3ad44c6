"""The pipeline's `openai` backends against our own server, end to end: stages 02 and 03 with the smoke run's
SFT model as teacher and rubric writer, and stage 07 with that model as an extra answering row and as the LLM
judge. With a tiny model the answers are poor; what is checked is the wiring (requests reach the server and
come back parsed), the caching (a rerun sends nothing) and the quarantine of bad replies (prose where JSON was
asked for)."""
import json
import shutil

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT
from wafersage_utils.chat.llm import ResponseCache
from wafersage_utils.corpus import tables, teacher
from wafersage_utils.runner import pipeline
from wafersage_utils.serving import cli, schema


@pytest.fixture(scope="module")
def served(sft_run):
    """The smoke run's exported SFT model behind the server, as `<run>-sft`."""
    path, name = cli.resolve_model(str(sft_run), "sft")
    cfg = schema.ServeConfig(model_path=path, served_model_name=name, port=0, batch_size=8, max_tokens_limit=256)
    with cli.BackgroundServer(cfg) as srv:
        yield srv, name


def _metrics(run, stage):
    return json.loads((run / "metrics" / f"{stage}.json").read_text())


def _copy_maps(smoke_run, tmp_path, name):
    (tmp_path / name / "data").mkdir(parents=True)
    shutil.copy(smoke_run / "data" / "maps.parquet", tmp_path / name / "data" / "maps.parquet")


def _stages(tmp_path, name, only, sets, force=False):
    return pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only=only, run_name=name, overrides=sets,
                                 results_dir=tmp_path, force=force)


@pytest.mark.slow
def test_describe_and_rubrics_through_the_server(smoke_run, served, tmp_path):
    (srv, name), engine = served, served[0].app.state.engine
    # 02: the served model as the teacher.
    _copy_maps(smoke_run, tmp_path, "teacher")
    sets2 = ["02_describe.backend=openai", f"02_describe.base_url={srv.url}", f"02_describe.model={name}",
             "02_describe.max_tokens=48", "02_describe.max_retries=0"]
    before = engine.stats["rows"]
    run = _stages(tmp_path, "teacher", "02", sets2)
    m2 = _metrics(run, "02_describe")
    # Four prompts per map; an empty reply is asked once more (the client's malformed-reply retry).
    assert engine.stats["rows"] - before == m2["requests_sent"] >= 4 * m2["n_maps"]
    assert engine.stats["max_batch"] > 1  # the stage's concurrent requests were batched
    desc = tables.read_corpus(run / "data" / "descriptions.parquet", "descriptions")
    # Every request was answered (no transport or HTTP error reached the stage) ...
    assert not desc["reason"].str.contains("Connection|Timeout|RateLimit|BadRequest|InternalServer|APIError").any()
    # ... and the tiny model's answers are bad: prose where the structured prompt asked for JSON, places that
    # contradict the measured facts. Those descriptions are quarantined with the reason.
    assert desc["reason"].str.contains("no JSON object").any()
    assert desc["quarantined"].any() and desc.loc[desc["quarantined"], "reason"].str.len().gt(0).all()
    # A rerun is answered from the cache, except the requests whose reply stayed empty after the client's retry:
    # failures are never cached, so they are asked again (once more each, at most). Which replies come out
    # empty can change with the batch a request lands in (padding moves the tiny model's greedy tokens), so
    # under load a first run may leave a few.
    failed = len(teacher.OUTPUTS) * m2["n_maps"] - len(ResponseCache(run / "data" / "llm_cache"))
    before = engine.stats["rows"]
    again = _metrics(_stages(tmp_path, "teacher", "02", sets2, force=True), "02_describe")["requests_sent"]
    assert failed <= again <= 2 * failed and engine.stats["rows"] - before == again



@pytest.mark.slow
def test_rubrics_through_the_server(smoke_run, served, tmp_path):
    (srv, name), engine = served, served[0].app.state.engine
    # 03: the served model writes rubrics for the offline teacher's descriptions.
    _copy_maps(smoke_run, tmp_path, "rubrics")
    # The packaged rubric prompt carries the JSON schema (about 1,800 tokens); after it the tiny model writes
    # only newlines, an empty reply that the client retries once and never caches (a real endpoint's empty
    # reply is usually transient). A short prompt of our own gets prose back, which exercises the JSON check,
    # the repair turn, the quarantine and the cache.
    prompts = yaml.safe_load((ROOT / "wafersage_utils" / "corpus" / "data" / "prompts.yaml").read_text())
    prompts["rubric"] = "Rubric for this wafer map, as a JSON object: {spatial}"
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    sets3 = ["03_rubrics.backend=openai", f"03_rubrics.base_url={srv.url}", f"03_rubrics.model={name}",
             "03_rubrics.max_tokens=48", "03_rubrics.max_retries=0", f"03_rubrics.prompts={tmp_path / 'prompts.yaml'}"]
    before = engine.stats["rows"]
    run = _stages(tmp_path, "rubrics", "02-03", sets3)
    m3 = _metrics(run, "03_rubrics")
    assert m3["requests_sent"] > 0 and engine.stats["rows"] - before == m3["requests_sent"]
    # It writes prose where the rubric's JSON was asked for: repaired once, then quarantined with the reason.
    rub = tables.read_corpus(run / "data" / "rubrics.parquet", "rubrics")
    reasons = rub["reason"].str[:60].value_counts().to_dict()
    assert m3["n_repaired"] > 0 and rub["quarantined"].all() and rub["reason"].str.len().gt(0).all(), (m3, reasons)
    # Now and then an empty reply (see above), on the first turn or the repair turn; how many depends on how
    # the concurrent requests happened to be batched.
    empty = int(rub["reason"].str.contains("empty content").sum())
    assert rub["reason"].str.contains("no JSON object|empty content").all() and empty < len(rub) / 4
    # 03 keeps that evidence (table, metrics, reasons figure); 04 is where nothing usable stops the run, naming
    # the file and how much of it was quarantined.
    assert m3["n_rubrics"] == 0 and (run / "figures" / "fig_rubric_quarantine_reasons.png").exists()
    with pytest.raises(pipeline.StageFailed, match=rf"{len(rub)} of {len(rub)} in data/rubrics.parquet"):
        _stages(tmp_path, "rubrics", "04", sets3)
    # A rerun answers every reply from the cache; only the empty ones are asked again, as a failed request
    # would be: each with its retry, and a repair turn if the new reply is prose (at most 3 requests each).
    before = engine.stats["rows"]
    resent = _metrics(_stages(tmp_path, "rubrics", "03", sets3, force=True), "03_rubrics")["requests_sent"]
    assert engine.stats["rows"] - before == resent and (resent > 0) == (empty > 0) and resent <= 3 * empty


@pytest.mark.slow
def test_evaluation_with_a_served_model_and_an_llm_judge(rl_run, served, tmp_path):
    srv, name = served
    run = tmp_path / "runs" / rl_run.name
    shutil.copytree(rl_run, run, symlinks=True, ignore=shutil.ignore_patterns("llm_cache", "judge_cache"))
    extra = f'[{{name: served, backend: openai, model: {name}, base_url: "{srv.url}"}}]'
    sets = ['07_eval.models=["sft"]', f"07_eval.extra_models={extra}", "07_eval.judge_backend=openai",
            f"07_eval.judge_model={name}", f"07_eval.judge_base_url={srv.url}", "07_eval.judge_concurrency=8",
            "07_eval.max_questions=12"]  # a tiny judge writes long replies: a sample of wafers keeps this short
    pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="07", run_name=rl_run.name, overrides=sets,
                          results_dir=run.parent, force=True)
    m7 = _metrics(run, "07_eval")
    held = pd.read_parquet(run / "data" / "eval_answers.parquet")
    # The same model, greedy, through transformers in-process and through the server: the same answers.
    same = (held["served"] == held["sft"]).mean()
    assert same > 0.95, held.loc[held["served"] != held["sft"], ["sft", "served"]].head()
    assert m7["served/empty_answer_share"] == 0
    assert m7["judge"] == f"llm:{name}" and m7["judge_kind"] == "llm"
    # A tiny model is no judge: its prose replies fail the JSON check, are repaired once, and left unscored.
    assert 0 < m7["judge/unscored_share"] <= 1
