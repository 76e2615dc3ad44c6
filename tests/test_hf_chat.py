"""The `hf` backend with the tiny Qwen3-VL built offline: the saved folder loads with the Auto classes,
chat requests with images generate, answers are cached, and a model that always claims the same place is
caught by the hallucination checks."""
import json

import pytest
import torch

from tests.test_synth import _one
from wafersage_utils.chat import llm
from wafersage_utils.chat.decoding import greedy_dropping_finished
from wafersage_utils.chat.hf_chat import HFChat, model_fingerprint, to_hf_messages
from wafersage_utils.corpus import claims, knowledge, teacher
from wafersage_utils.maps import facts, render
from wafersage_utils.training import tiny_vlm

ANSWER = "Failures cluster at the edge around 3 o'clock."
KB = knowledge.load_knowledge()


@pytest.fixture(scope="module")
def parrot(tmp_path_factory):
    """A tiny Qwen3-VL trained for a few seconds to answer every image prompt with ANSWER."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    root = tmp_path_factory.mktemp("tiny")
    texts = [ANSWER, *teacher.load_prompts().values()] * 10
    path = tiny_vlm.build_tiny_vlm(texts, root / "tiny", tiny_vlm.TinySpec(image_size=64), seed=0)
    processor, model = AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path)
    m, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    png = render.to_image(m, 64).convert("RGB")
    prompts = teacher.load_prompts()
    convs = [[{"role": "system", "content": [{"type": "text", "text": prompts["teacher_system"]}]},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]},
              {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
             for user in teacher.teacher_prompts(prompts, ["Edge-Loc"], True).values()]
    processor.tokenizer.padding_side = "left"
    batch = processor(text=processor.apply_chat_template(convs, tokenize=False), images=[png] * len(convs),
                      return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[(labels == model.config.image_token_id) | (batch["attention_mask"] == 0)] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


def test_tiny_model_is_the_real_architecture(parrot):
    cfg = json.loads((parrot / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl" and cfg["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert sum(cfg["text_config"]["rope_parameters"]["mrope_section"]) == cfg["text_config"]["head_dim"] // 2


def test_openai_messages_become_hf_messages_with_images():
    m, _ = _one("Center", cx=0.0, cy=0.0, radius=0.22, density=1.0)
    png = render.to_image(m, 32)
    import io
    buf = io.BytesIO()
    png.save(buf, format="PNG")
    req = llm.build_request(llm.ChatSettings(model="x"), "sys", "where?", buf.getvalue(),
                            follow_up=[{"role": "assistant", "content": "edge"}])
    conv, images = to_hf_messages(req["messages"])
    assert [c["role"] for c in conv] == ["system", "user", "assistant"]
    assert conv[1]["content"] == [{"type": "image"}, {"type": "text", "text": "where?"}]
    assert len(images) == 1 and images[0].size == (32, 32) and images[0].mode == "RGB"


def test_hf_teacher_generates_caches_and_is_checked(parrot, tmp_path):
    center, _ = _one("Center", cx=0.0, cy=0.0, radius=0.22, density=1.0)
    edge3, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    paths = render.render_cached([center, edge3], 64, tmp_path / "img")
    chat = HFChat(str(parrot), tmp_path / "cache", batch_size=2)
    s = llm.ChatSettings(model=str(parrot), max_tokens=24, temperature=0.0)
    items = [(["Center"], paths[0].read_bytes()), (["Edge-Loc"], paths[1].read_bytes())]
    out = teacher.describe_with_chat(chat, s, items, teacher.load_prompts(), True, progress=False)
    assert chat.n_requests == 8 and all(ANSWER in o["spatial"] for o in out)
    again = teacher.describe_with_chat(chat, s, items, teacher.load_prompts(), True, progress=False)
    assert chat.n_requests == 8 and all(o["cached"] for o in again)
    verdicts = [claims.check_description(o, lab, facts.measure(m), KB)
                for o, (lab, _), m in zip(out, items, [center, edge3])]
    assert any(i["contradicted"] and i["kind"] == "zone" for i in verdicts[0])  # no edge failures on this map
    assert not any(i["contradicted"] and i["kind"] in ("zone", "clock") for i in verdicts[1])


def test_hf_sampling_uses_every_token_unless_truncation_is_asked_for(parrot, tmp_path, monkeypatch):
    # transformers keeps only the 50 likeliest tokens when top_k is unset; GRPO's groups and vLLM sample from
    # all of them, so the hf backend must too. Sampled keys name the truncation; greedy keys stay as they were.
    m, _ = _one("Center", cx=0.0, cy=0.0, radius=0.22, density=1.0)
    png = render.render_cached([m], 64, tmp_path / "img")[0].read_bytes()
    chat = HFChat(str(parrot), tmp_path / "cache", batch_size=4)
    calls = []
    generate = chat.model.generate

    def spy(**kw):
        calls.append({k: kw.get(k) for k in ("do_sample", "temperature", "top_k", "top_p", "min_p", "custom_generate")
                      if k in kw})
        return generate(**kw)
    monkeypatch.setattr(chat.model, "generate", spy)

    def request(**kw):
        return llm.build_request(llm.ChatSettings(model=chat.name, max_tokens=4, **kw), "", "where?", png)
    torch.manual_seed(1)  # no 4-token sample of the parrot comes out empty here (an empty one is not cached)
    reqs = [request(temperature=0.0), request(temperature=1.0), request(temperature=1.0, top_k=5),
            request(temperature=1.0, min_p=0.1), request(temperature=1.0, seed=1)]
    out = chat.complete_many(reqs, progress=False)
    assert all(r.text for r in out), [(r.text, r.error) for r in out]
    assert calls == [{"do_sample": False, "custom_generate": greedy_dropping_finished},  # finished rows leave
                     {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None},
                     {"do_sample": True, "temperature": 1.0, "top_k": 5, "top_p": 1.0, "min_p": None},
                     {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.1}]
    # (the seed-1 draw shares a batch with the other full-distribution one: same settings, so no fifth call)
    keys = {p.stem for p in (tmp_path / "cache").glob("*/*.json")}
    assert len(keys) == 5 and llm.cache_key(dict(reqs[0], model=chat.name)) in keys  # each draw cached apart
    assert llm.cache_key(dict(reqs[1], model=chat.name)) not in keys  # sampled before the fix: top_k 50


def test_fingerprint_follows_weights_and_config_not_the_scorers_metadata(tmp_path):
    # Stage 06 caches the RL model's answers, then writes wafersage.json beside it; stage 07 must find them.
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    first = model_fingerprint(str(folder))
    (folder / "wafersage.json").write_text('{"views": 4}')
    (folder / "README.md").write_text("card")
    assert model_fingerprint(str(folder)) == first
    (folder / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")  # one byte deep inside: a new model
    assert model_fingerprint(str(folder)) != first
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "generation_config.json").write_text('{"max_new_tokens": 8}')
    assert model_fingerprint(str(folder)) != first
    assert model_fingerprint("Qwen/Qwen3-VL-4B-Instruct") == "Qwen/Qwen3-VL-4B-Instruct"


@pytest.mark.slow
def test_stage_02_with_the_hf_backend(parrot, smoke_run, tmp_path):
    import shutil

    from tests.conftest import ROOT
    from wafersage_utils.corpus import tables
    from wafersage_utils.runner import pipeline
    (tmp_path / "hf" / "data").mkdir(parents=True)
    shutil.copy(smoke_run / "data" / "maps.parquet", tmp_path / "hf" / "data" / "maps.parquet")
    sets = ["02_describe.backend=hf", f"02_describe.model={parrot}", "02_describe.max_tokens=24",
            "02_describe.max_maps=12", "02_describe.image_size=64", "02_describe.temperature=0.0"]
    run = pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="02", run_name="hf", overrides=sets,
                                results_dir=tmp_path)
    m = json.loads((run / "metrics" / "02_describe.json").read_text())
    desc = tables.read_corpus(run / "data" / "descriptions.parquet", "descriptions")
    assert m["n_maps"] == len(desc) == 12 and m["requests_sent"] == 4 * len(desc)
    assert (desc["spatial"] == ANSWER).all()
    # Every map gets "edge around 3 o'clock": a hallucination exactly where the facts show no such failures.
    assert 0 < m["hallucination/descriptions_rate"] < 1
    assert desc["reason"].str.contains("zone: |clock: ").sum() == round(m["hallucination/descriptions_rate"] * 12)
    # The parrot never writes JSON: every structured output is reported as such, so every map is quarantined.
    assert desc["reason"].str.startswith("request: structured: no JSON object").all() and desc["quarantined"].all()


def test_trl_trainers_accept_the_vqa_exports(parrot, tmp_path):
    """One SFT step (assistant-only loss) and one GRPO step (GSPO settings) on the exported formats."""
    import pandas as pd
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    from wafersage_utils.corpus import describe, exports, vqa
    from wafersage_utils.corpus.rubric import rules_rubric
    m, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    f = facts.measure(m)
    d = describe.grounded_description("w0", ["Edge-Loc"], f, KB, 0)
    path = render.render_cached([m], 64, tmp_path / "img")[0]
    wafer = {"id": "w0", "lot": "lot0", "split": "train", "labels": ["Edge-Loc"], "image": str(path.relative_to(tmp_path)),
             "role": "typical"}
    qa = pd.DataFrame(vqa.pair_rows(wafer, vqa.wafer_pairs("w0", ["Edge-Loc"], False, f, d, rules_rubric(["Edge-Loc"], f, KB), 8, 0)))
    from transformers import AutoModelForImageTextToText, AutoProcessor
    proc, model = AutoProcessor.from_pretrained(parrot), AutoModelForImageTextToText.from_pretrained(parrot)
    common = dict(bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True, max_steps=1)
    sft = SFTTrainer(model=model, processing_class=proc, train_dataset=exports.to_sft_dataset(qa, tmp_path, "reasoning"),
                     args=SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, max_length=None,
                                    assistant_only_loss=True, **common))
    assert sft.train().training_loss > 0
    seen = {}

    def reward(completions, must_hit, must_avoid, **kw):
        seen["must_hit"] = must_hit
        return [float(len(str(c)) % 7) for c in completions]
    grpo = GRPOTrainer(model=model, processing_class=proc, reward_funcs=reward, train_dataset=exports.to_grpo_dataset(qa, tmp_path),
                       args=GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
                                       max_completion_length=8, importance_sampling_level="sequence", loss_type="grpo",
                                       **common))
    grpo.train()
    assert seen["must_hit"] and all(isinstance(x, list) for x in seen["must_hit"])
