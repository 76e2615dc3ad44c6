"""The scorer (`python -m wafersage_utils.score MODEL DATA`) against a tiny model trained here, on real samples.

The model is trained to call every map an edge-ring, so each number the scorer reports is known exactly from
the labels: accuracy is the edge-ring share, edge-ring recall is 1, every other recall 0.
"""
from __future__ import annotations

import json
import lzma
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from tests.conftest import real_file
from wafersage_utils import score as score_cli
from wafersage_utils.chat.decoding import greedy_dropping_finished
from wafersage_utils.chat.vision_attention import _batched_forward
from wafersage_utils.evaluation import model_info, scorer
from wafersage_utils.maps import render
from wafersage_utils.maps.conventions import VOCAB
from wafersage_utils.training import tiny_vlm

ANSWER = "This wafer map shows an edge-ring defect pattern."


def trained_on(maps: list, answers: list[str], root, steps: int = 60):
    """A tiny Qwen3-VL trained for a few seconds to answer the defect-type question about each map with its
    answer, exported with its wafersage.json (64 px renders)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    info = model_info.info_for_run(64, "plain", "tiny", {"source": "test"}, run="test")
    path = tiny_vlm.build_tiny_vlm([*dict.fromkeys(answers), info.question] * 20, root / "model",
                                   tiny_vlm.TinySpec(image_size=64), seed=0)
    processor, model = AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path)
    images = [render.to_image(m, 64).convert("RGB") for m in maps]
    texts = [processor.apply_chat_template(info.messages() + [{"role": "assistant", "content": [{"type": "text", "text": a}]}],
                                           tokenize=False) for a in answers]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[(labels == model.config.image_token_id) | (batch["attention_mask"] == 0)] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    model_info.write_info(path, info)
    return path


def trained_to_say(answer: str, root):
    """A tiny model that answers `answer` about every map (trained on six random maps)."""
    rng = np.random.default_rng(0)
    return trained_on([rng.integers(0, 3, (30, 30)).astype(np.uint8) for _ in range(6)], [answer] * 6, root)


@pytest.fixture(scope="module")
def typist(tmp_path_factory):
    """Answers ANSWER to every map."""
    return trained_to_say(ANSWER, tmp_path_factory.mktemp("typist"))


def test_answers_stop_where_the_type_statement_ends_and_read_as_whole_answers(tmp_path):
    detail = " The main failing region is a ring along the edge zone, all around the wafer."
    talker = trained_to_say(ANSWER + detail, tmp_path)
    asker = scorer.MapAsker(talker, "merged", model_info.read_info(talker))
    generated, decoders, generate = [], set(), asker.model.generate

    def counting(**kw):
        ids = generate(**kw)
        generated.append(ids.shape[1] - kw["input_ids"].shape[1])
        decoders.add(kw.get("custom_generate"))
        return ids

    asker.model.generate = counting
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 3, (30, 30)).astype(np.uint8) for _ in range(5)]
    full = asker.ask(maps, batch_size=4, progress=False, full_answers=True)
    cut = asker.ask(maps, batch_size=4, progress=False)
    assert full == [ANSWER + detail] * 5, full
    assert cut == [ANSWER] * 5
    n_statement = len(asker.processor.tokenizer(ANSWER)["input_ids"])
    assert all(n > n_statement + 5 for n in generated[:2])  # whole answers
    assert generated[2:] == [n_statement + 1] * 2  # the statement and the token that shows it has ended
    # Every batch drops its finished answers, and the pictures attend in one call per layer.
    assert decoders == {greedy_dropping_finished}
    vision = [m for m in asker.model.modules() if type(m).__name__ == "Qwen3VLVisionAttention"]
    assert vision and all(m.forward.__func__ is _batched_forward for m in vision)


@pytest.fixture(scope="module")
def sample_scores(typist, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    return scorer.score(typist, real_file("wm811k").parent / "LSWMD_sample.pkl", out, n_bootstrap=200, progress=False), out


def test_scorer_on_the_wm811k_sample_writes_consistent_numbers(sample_scores):
    m, out = sample_scores
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "n_maps", "maps_per_second", "unparsed_share", "n_unlabelled_skipped"):
        assert key in on_disk, key
    assert "exact_match" not in on_disk  # a single-label file
    per_map = pd.read_csv(out / "per_map.csv.gz")
    assert list(per_map.columns) == ["id", "true", "predicted", "correct", "answer"]
    assert len(per_map) == on_disk["n_maps"] == 200 and on_disk["n_unlabelled_skipped"] == 0
    assert (per_map["predicted"] == "Edge-Ring").all(), per_map["answer"].value_counts().head()
    assert on_disk["accuracy"] == pytest.approx(per_map["correct"].mean()) == pytest.approx(69 / 200)
    labels = sorted(set(per_map["true"]))
    assert on_disk["macro_f1"] == pytest.approx(f1_score(per_map["true"], per_map["predicted"], labels=labels,
                                                         average="macro", zero_division=0))
    assert on_disk["accuracy_ci_low"] < on_disk["accuracy"] < on_disk["accuracy_ci_high"]
    per_class = pd.read_csv(out / "per_class.csv").set_index("label")
    assert per_class.loc["Edge-Ring", "recall"] == 1.0 and per_class.loc["Center", "recall"] == 0.0
    assert per_class.loc["Edge-Ring", "precision"] == pytest.approx(69 / 200)
    assert per_class["support"].sum() == 200
    assert (out / "confusion.png").stat().st_size > 0


def test_scorer_on_mixed_maps_reports_exact_match_and_pattern_f1(typist, tmp_path):
    with np.load(real_file("mixedwm38")) as z:
        np.savez(tmp_path / "slice.npz", arr_0=z["arr_0"][:300:5], arr_1=z["arr_1"][:300:5])
    hot = np.load(tmp_path / "slice.npz")["arr_1"]
    m = scorer.score(typist, tmp_path / "slice.npz", tmp_path / "out", n_bootstrap=100, progress=False)
    assert m["n_maps"] == 60 and {"exact_match", "pattern_macro_f1"} <= set(m)
    # Every answer is Edge-Ring: exact only on maps whose one pattern is Edge-Ring (column 3).
    only_ring = (hot[:, 3] == 1) & (hot.sum(axis=1) == 1)
    assert m["exact_match"] == pytest.approx(only_ring.mean())
    ring_f1 = f1_score(hot[:, 3], np.ones(len(hot), int))
    present = hot.sum(axis=0) > 0  # patterns nobody has do not count; the others score 0 but Edge-Ring
    assert m["pattern_macro_f1"] == pytest.approx(ring_f1 / present.sum())


def test_a_model_without_its_metadata_is_refused_with_what_is_missing(typist, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(typist, bare)
    (bare / model_info.INFO_FILE).unlink()
    with pytest.raises(model_info.MissingModelInfo, match="image size, palette and question"):
        scorer.score(bare, real_file("wm811k").parent / "LSWMD_sample.pkl")
    assert score_cli.main([str(bare), str(real_file("wm811k").parent / "LSWMD_sample.pkl")]) == 2
    assert "wafersage.json" in capsys.readouterr().err


def test_metadata_round_trips_and_bad_metadata_is_named(tmp_path):
    info = model_info.info_for_run(96, "reasoning", "Qwen/Qwen3-VL-4B-Instruct", {"source": "wm811k", "maps": 10})
    model_info.write_info(tmp_path, info)
    assert model_info.read_info(tmp_path) == info
    assert info.system_prompt and info.messages()[0]["role"] == "system"
    raw = json.loads((tmp_path / model_info.INFO_FILE).read_text())
    for field, value, words in (("palette", {"0": [1, 2]}, "palette"), ("image_size", "big", "image_size"),
                                ("labels", ["Blob"], "Blob"), ("format", "other/9", "format")):
        (tmp_path / model_info.INFO_FILE).write_text(json.dumps({**raw, field: value}))
        with pytest.raises(ValueError, match=words):
            model_info.read_info(tmp_path)


def test_unlabelled_rows_are_skipped_and_counted_and_a_corrupt_file_is_refused(typist, tmp_path):
    raw = pd.read_pickle(real_file("wm811k").parent / "LSWMD_sample.pkl")
    for i in range(7):
        raw.at[raw.index[i], "failureType"] = np.zeros((0, 0))
    raw.to_pickle(tmp_path / "some_unlabelled.pkl")
    maps, skipped = scorer.load_labelled(tmp_path / "some_unlabelled.pkl")
    assert skipped == 7 and len(maps) == 193
    sampled, _ = scorer.load_labelled(tmp_path / "some_unlabelled.pkl", max_maps=50, seed=1)
    assert len(sampled) == 50 and sampled["id"].is_unique and set(sampled["id"]) <= set(maps["id"])
    good = lzma.compress((tmp_path / "some_unlabelled.pkl").read_bytes())
    (tmp_path / "torn.pkl.xz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="torn.pkl.xz"):
        scorer.score(typist, tmp_path / "torn.pkl.xz")


def test_run_folder_and_adapter_folder_score_like_the_merged_model(typist, tmp_path, sample_scores):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText
    run = tmp_path / "run"
    shutil.copytree(typist, run / "models" / "sft" / "merged")
    (run / "manifest.json").write_text(json.dumps({"05_sft": {"sft": "run:models/sft/merged"}}))
    assert scorer.resolve_model(run) == (run / "models" / "sft" / "merged", "merged")
    # A fresh LoRA adapter is the identity (B = 0): the same answers as its base.
    peft = get_peft_model(AutoModelForImageTextToText.from_pretrained(typist),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(tmp_path / "adapter")
    model_info.write_info(tmp_path / "adapter", model_info.read_info(typist))
    m = scorer.score(tmp_path / "adapter", real_file("wm811k").parent / "LSWMD_sample.pkl", n_bootstrap=50,
                     progress=False, max_maps=40)
    assert m["model_kind"] == "adapter" and (m["_per_map"]["predicted"] == "Edge-Ring").all()


def test_model_card_is_generated_from_the_run_metrics(typist, tmp_path):
    run = tmp_path / "run"
    folder = run / "models" / "sft" / "merged"
    shutil.copytree(typist, folder)
    (run / "metrics").mkdir()
    (run / "settings").mkdir()
    (run / "manifest.json").write_text(json.dumps({"02_describe": {"image_size": 80}, "04_vqa": {"answer_style": "plain"}}))
    (run / "metrics" / "01_clean.json").write_text(json.dumps({"source": "wm811k", "split/n_train": 1234}))
    (run / "metrics" / "07_eval.json").write_text(json.dumps({"sft/type_accuracy": 0.9512, "sft/type_macro_f1": 0.8765,
                                                               "baseline/type_accuracy": 0.9432}))
    (run / "settings" / "05_sft.json").write_text(json.dumps({"learning_rate": 0.002, "lora_r": 16}))
    (run / "environment.json").write_text(json.dumps({"git": {"commit": "b" * 40, "dirty": False}}))  # a later 07 rerun
    (run / "status.json").write_text(json.dumps({"stages": {"05_sft": {"git": {"commit": "a" * 40, "dirty": False}}}}))
    info = model_info.document_export(run, folder)
    assert info.image_size == 80 and info.trained_on["source"] == "wm811k"
    assert info.commit == "a" * 40  # the commit the model was trained at
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["library_name"] == "transformers"
    values = {r["name"]: r["value"] for r in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"sft/type_accuracy": 0.9512, "sft/type_macro_f1": 0.8765}  # the baseline is context only
    assert "| `baseline/type_accuracy` | 0.943 |" in card and "WM-811K" in card and "80 x 80 px" in card
    assert "| lora_r | 16 |" in card and "LoRA SFT" in card and "lora" in meta["tags"]
    assert model_info.read_info(folder).image_size == 80
    # every weight trained (lora: false): the card says so, and neither tags nor text claim LoRA
    (run / "settings" / "05_sft.json").write_text(json.dumps({"learning_rate": 0.0005, "lora": False}))
    model_info.document_export(run, folder)
    card = (folder / "README.md").read_text()
    assert "Full-parameter SFT" in card and "LoRA" not in card.split("## ")[0]
    assert "lora" not in yaml.safe_load(card.split("---")[1])["tags"] and "| lora | False |" in card
    # a run of mixed maps: its exact match and pattern macro-F1 enter the model-index too
    (run / "metrics" / "07_eval.json").write_text(json.dumps({"sft/type_accuracy": 0.9, "sft/type_exact_match": 0.85,
                                                               "sft/type_pattern_macro_f1": 0.8}))
    model_info.document_export(run, folder)
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    values = {r["name"]: r["value"] for r in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"sft/type_accuracy": 0.9, "sft/type_exact_match": 0.85, "sft/type_pattern_macro_f1": 0.8}
    # a defect-free bias chosen on validation (stage 05's calibrate_none): the card says where and what applies it
    assert "sequence_bias" not in (folder / "README.md").read_text()
    (run / "metrics" / "05_sft.json").write_text(json.dumps({"sft/none_bias": 1.75}))
    model_info.document_export(run, folder)
    card = (folder / "README.md").read_text()
    assert "adds 1.75 to the logit of \"no\"" in card and "`sequence_bias`" in card


def test_vocabulary_of_the_parser_covers_the_metadata_labels():
    assert model_info.ModelInfo(image_size=64).labels == list(VOCAB)
