"""Stage 05's package code: the model factory (tiny base built, cached, reloaded offline), LoRA SFT through TRL
(only adapter weights change, every one gets a gradient), resume from a checkpoint, the merged export under the
model card's own snippet, the accelerate launcher, and type-answer parsing."""
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from wafersage_utils.evaluation import answers
from wafersage_utils.maps import render, synth
from wafersage_utils.training import models, sft, tiny_vlm

SPEC = tiny_vlm.TinySpec(image_size=32, vocab_size=1024)
PRE = models.PretrainSettings(epochs=1.0, batch_size=8, image_size=32, extra_maps=0)
QUESTIONS = ["What type of defect pattern is visible on this wafer map?", "Where are the defects located on the wafer?"]


@pytest.fixture(scope="module")
def maps():
    df = synth.generate(synth.SynthConfig(n_wafers=40, seed=3, mixed_fraction=0.0, label_noise=0.0))
    return df.assign(split=["train"] * 32 + ["test"] * 8)


@pytest.fixture(scope="module")
def base(maps, tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    path, record = models.build_tiny_base(texts=QUESTIONS * 5, maps=maps, spec=SPEC, settings=PRE, seed=0,
                                          cache_dir=str(cache))
    return path, record, cache


@pytest.fixture(scope="module")
def vqa_ds(maps):
    """A small SFT set in the stage-04 layout: each training map asked for its label."""
    train = maps[maps["split"] == "train"]
    images = [render.to_image(m, 32).convert("RGB") for m in train["wafer_map"]]
    texts = [f"This wafer map shows a {'+'.join(lab).lower()} defect pattern." for lab in train["labels"]]
    return models.caption_dataset(images, texts, [QUESTIONS[0]] * len(images))


def _cfg(base_path, out, **kw):
    settings = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2,
                    optim="adamw_torch", save_steps=0, logging_steps=1, seed=0) | kw
    return sft.TrainConfig(model=str(base_path), output_dir=str(out), **settings)


def test_factory_builds_caches_and_reloads_offline(base, maps, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, record, cache = base
    assert path.parent == cache and record["n_maps"] == 32 and record["key"] in path.name
    assert record["result"]["loss_last"] < record["result"]["loss_first"]
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    assert model.config.model_type == "qwen3_vl" and processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") \
        == model.config.image_token_id
    # Captions say where and what shape, never a class name ("nearly every die fails" reads as near-full).
    _, captions, _ = models.caption_corpus(maps, 32, 0)
    assert all(answers.parse_labels(c) in ([], ["Near-full"]) for c in captions)
    assert not any(w in c.lower() for c in captions for w in ("pattern", "near-full", "edge-", "donut", "scratch"))
    assert not any(re.search(r"\d+ dies|% of dies", c) for c in captions)  # no counts: what is seen at a glance
    # A second request with the same inputs is a cache hit (no training), a different seed is another key.
    stamp = (path / "factory.json").stat().st_mtime_ns
    again, rec2 = models.build_tiny_base(texts=QUESTIONS * 5, maps=maps, spec=SPEC, settings=PRE, seed=0,
                                         cache_dir=str(cache))
    assert again == path and rec2 == record and (path / "factory.json").stat().st_mtime_ns == stamp
    images, caps, _ = models.caption_corpus(maps, 32, 0)
    assert models.base_key(["a"], images, caps, SPEC, PRE, 0) != models.base_key(["a"], images, caps, SPEC, PRE, 1)


def test_packed_seeing_conversations_label_the_same_answers(base, maps):
    """One conversation per map (its picture in the first turn only) labels exactly the answers the unpacked
    examples label, each map's turns in an order drawn per map, and the picture is encoded once per map."""
    from transformers import AutoProcessor
    from wafersage_utils.training import batches
    processor = AutoProcessor.from_pretrained(base[0])
    images, caps, prompts = models.caption_corpus(maps.head(12), 32, 0, shuffle_turns=True)
    flat = models.caption_dataset(images, caps, prompts)
    packed = models.caption_dataset(images, caps, prompts, pack=True)
    assert len(flat) == len(images) and len(packed) == len({id(im) for im in images}) == 12
    for conv in packed["messages"]:
        assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2) and len(conv) >= 4
        assert [c["type"] for c in conv[0]["content"]] == ["image", "text"]
        assert all(c["type"] == "text" for m in conv[1:] for c in m["content"])
    from trl.chat_template_utils import get_training_chat_template
    template = get_training_chat_template(processor)  # the one stage 05 trains with (sft.encoded_inputs)
    enc_flat, _ = batches.encode(flat, processor, template)
    enc_packed, bank = batches.encode(packed, processor, template)
    assert len(bank.pixel_values) == 12

    def answers_of(enc):  # the labelled spans, decoded
        spans = []
        for labels in enc["labels"]:
            run = []
            for t in labels + [-100]:
                if t == -100 and run:
                    spans.append(processor.tokenizer.decode(run).strip())
                    run = []
                elif t != -100:
                    run.append(t)
        return spans
    assert sorted(answers_of(enc_packed)) == sorted(answers_of(enc_flat)) and len(answers_of(enc_flat)) == len(caps)
    # The turn order is drawn per map: not every map asks its caption first.
    firsts = {conv[0]["content"][1]["text"] in models.CAPTION_PROMPTS for conv in packed["messages"]}
    assert firsts == {True, False}
    # Unshuffled, the corpus is the one the unpacked recipe always drew (the caption first).
    plain, _, plain_prompts = models.caption_corpus(maps.head(12), 32, 0)
    assert plain_prompts[0] in models.CAPTION_PROMPTS and sorted(plain_prompts) == sorted(prompts)


def test_pretraining_maps_never_include_validation_or_test_maps(maps):
    pool = models.pretraining_maps(maps, extra_maps=5, seed=0)
    assert len(pool) == 32 + 5 and pool["id"].is_unique
    assert not set(pool["id"]) & set(maps.loc[maps["split"] != "train", "id"])
    again = models.pretraining_maps(maps, extra_maps=5, seed=0)
    assert all((a == b).all() for a, b in zip(pool["wafer_map"], again["wafer_map"]))  # deterministic


def test_resolve_base_names(tmp_path):
    assert models.resolve_base("Qwen/Qwen3-VL-4B-Instruct") == ("Qwen/Qwen3-VL-4B-Instruct", {"source": "hub"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        models.resolve_base(str(tmp_path / "empty"))


def test_one_sft_run_changes_only_adapter_weights_and_all_get_gradients(base, vqa_ds, tmp_path):
    cfg = _cfg(base[0], tmp_path / "o", lora_vision=True)
    check = sft.GradientCheck(2)
    trainer = sft.build_trainer(cfg, vqa_ds, callbacks=[check.callback])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert any(".visual." in n for n in lora) and any(".language_model." in n for n in lora)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in lora)
    assert all(not torch.equal(before[n], after[n]) for n in lora)
    assert check.report == {"trainable_tensors": len(lora), "zero_gradient_tensors": 0}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == set(lora)


def test_gradient_check_names_parameters_without_gradients():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0](torch.ones(1, 2)).sum().backward()  # the second layer is not in the graph
    with pytest.raises(RuntimeError, match="got no gradient.*1.weight"):
        sft.GradientCheck(2).observe(model, 1)
    frozen_out = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(frozen_out.weight)
    frozen_out.weight.grad = torch.zeros_like(frozen_out.weight)
    frozen_out.bias.grad = torch.ones_like(frozen_out.bias)
    check = sft.GradientCheck(1)
    with pytest.raises(RuntimeError, match="only had zero gradients.*weight"):
        check.observe(frozen_out, 1)


def test_interrupted_training_resumes_to_the_same_weights(base, vqa_ds, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    cfg = _cfg(base[0], tmp_path / "run", max_steps=4, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        sft.train(cfg, vqa_ds, callbacks=[Interrupt()])
    assert (tmp_path / "run" / "checkpoint-2").is_dir() and not (tmp_path / "run" / "train_result.json").exists()
    resumed = sft.train(cfg, vqa_ds)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    straight = sft.train(replace(cfg, output_dir=str(tmp_path / "straight")), vqa_ds)
    assert straight["resumed_from"] is None
    a = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # Other settings: the old checkpoints are not resumed.
    (tmp_path / "run" / "train_result.json").unlink()
    assert sft._prepare_output(replace(cfg, learning_rate=5e-3)) is None
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_examples_longer_than_max_length_are_dropped_not_cut(base, vqa_ds):
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(base[0])
    lengths = sft.example_lengths(vqa_ds, processor)
    assert min(lengths) > 4  # at least the image tokens (32 px: 2 x 2 after merging) and the text
    cut = sorted(lengths)[len(lengths) // 2]
    kept, dropped = sft.drop_too_long(vqa_ds, processor, cut)
    assert dropped == sum(n > cut for n in lengths) > 0 and len(kept) == len(vqa_ds) - dropped


def test_seeing_pictures_reach_the_model_as_sft_and_the_scorer_show_them(base, maps):
    """The base learns to see the pictures it is later asked about: a seeing picture rendered at the run's render
    size (`render_size`) gives the processor's very pixels for the scorer's picture of the same map (rendered at
    that size, resized by the processor). Rendered at the model's input size instead (the recipe until
    2026-12-04), nearest-neighbour scaling drops or doubles dies, and the pixels differ."""
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(base[0])
    render_size = 128
    pre = models.pretrain_settings(replace(models.SFTSettings(), tiny_image_size=SPEC.image_size), render_size)
    assert (pre.image_size, pre.render_size) == (SPEC.image_size, render_size)
    first = maps.loc[maps["split"] == "train", "wafer_map"].iloc[0]  # caption_corpus starts with it
    shown = Image.fromarray(render.render_array(first, render_size))  # what scorer.MapAsker.image gives

    def pixels(im):
        return processor.image_processor(images=[im], return_tensors="pt")["pixel_values"]
    seen = models.caption_corpus(maps, pre.render_size, 0)[0][0]
    assert seen.size == (render_size, render_size) and torch.equal(pixels(seen), pixels(shown))
    at_input = models.caption_corpus(maps, pre.image_size, 0)[0][0]
    assert not torch.equal(pixels(at_input), pixels(shown))


def test_caption_dataset_encodes_each_picture_once_as_datasets_would(maps, monkeypatch):
    """A map's picture serves its caption and its questions: the dataset holds, for every example, the very bytes
    `datasets` writes for a PIL image, each distinct picture encoded once."""
    from datasets import Dataset, Image, List
    from datasets.features import image as ds_image
    images, captions, prompts = models.caption_corpus(maps, 32, 0)
    plain = Dataset.from_dict({"images": [[im] for im in images], "messages": [[]] * len(images)})
    calls = []
    own = ds_image.image_to_bytes
    monkeypatch.setattr(ds_image, "image_to_bytes", lambda im: calls.append(1) or own(im))
    ds = models.caption_dataset(images, captions, prompts)
    assert len(calls) == len({id(im) for im in images}) == 32 < len(images)
    assert ds.features["images"] == List(Image())
    raw = List(Image(decode=False))
    assert ds.cast_column("images", raw)["images"] == plain.cast_column("images", raw)["images"]
    assert ds[0]["images"][0].size == images[0].size and ds[0]["messages"][1]["content"][0]["text"] == captions[0]


def test_encoded_examples_batch_exactly_as_trls_collator(base, maps):
    """Examples encoded once and padded by our collator give the very batch TRL's collator builds on the fly:
    same token ids, attention mask, labels (-100 outside the assistant turn), pixel values and grids."""
    from transformers import AutoProcessor
    from trl.chat_template_utils import get_training_chat_template
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from wafersage_utils.training.batches import PaddedCollator, encode
    processor = AutoProcessor.from_pretrained(base[0])
    template = get_training_chat_template(processor)
    images, captions, prompts = models.caption_corpus(maps, 32, 0)  # a map's image serves three examples
    ds = models.caption_dataset(images, captions, prompts)
    enc, bank = encode(ds, processor, template, batch_size=16)
    assert len(enc) == len(ds) and len(bank.pixel_values) == len({id(im) for im in images}) == 32
    assert enc["length"] == [len(ids) for ids in enc["input_ids"]]
    theirs = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True,
                                                   chat_template=template)
    ours = PaddedCollator(bank, processor.tokenizer.pad_token_id)
    for picked in ([0, 1, 2], [5, 40, 17, 88, 3], list(range(0, len(ds), 7))):
        a, b = theirs([ds[i] for i in picked]), ours([enc[i] for i in picked])
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
        assert (b["labels"] != -100).sum() > 0


def test_encoded_training_reaches_the_weights_of_trls_collator(base, vqa_ds, tmp_path):
    """The same run with examples encoded once and with TRL's on-the-fly collator: the same adapter."""
    from safetensors.torch import load_file
    encoded = sft.train(_cfg(base[0], tmp_path / "encoded", max_steps=3), vqa_ds)
    on_the_fly = sft.train(_cfg(base[0], tmp_path / "fly", max_steps=3, encode_max_gb=0.0), vqa_ds)
    assert encoded["loss_first"] == pytest.approx(on_the_fly["loss_first"], rel=1e-5)
    a = load_file(tmp_path / "encoded" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fly" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_answer_token_loss_trains_as_trls_fused_head(base, vqa_ds, tmp_path, monkeypatch):
    """On a CPU the loss on the labelled positions only (`answer_token_loss`) is TRL's loss: the same first
    losses and, after a few steps, the same adapter up to float rounding; TRL's metrics are still logged. A CPU
    run takes that path on every step, and `answer_loss=False` never does."""
    from safetensors.torch import load_file
    calls = []
    own = sft.answer_token_loss
    monkeypatch.setattr(sft, "answer_token_loss", lambda *a, **kw: calls.append(1) or own(*a, **kw))
    ours = sft.train(_cfg(base[0], tmp_path / "answer", max_steps=4, logging_steps=1), vqa_ds)
    assert len(calls) == 4  # one batch a step (batch 2, no accumulation)
    trls = sft.train(_cfg(base[0], tmp_path / "fused", max_steps=4, logging_steps=1, answer_loss=False), vqa_ds)
    assert len(calls) == 4
    for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
        a = [h[key] for h in ours["log_history"] if key in h and "train_runtime" not in h]
        b = [h[key] for h in trls["log_history"] if key in h and "train_runtime" not in h]
        assert len(a) == len(b) == 4 and a == pytest.approx(b, rel=1e-4, abs=1e-6), key
    a = load_file(tmp_path / "answer" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fused" / "adapter" / "adapter_model.safetensors")
    # Adam divides by the root of tiny second moments, so float rounding shows on the few weights whose gradient is
    # itself rounding noise: their step is up to lr (1e-2) whichever sign the noise takes, on any host. So the whole
    # adapter is compared, not its worst weight. The same training differs by rounding: a relative norm of 1.7e-4,
    # and 3 of 77,824 weights beyond 5e-4 (the worst 1.2e-3) on a 2-core AVX-512 host where a per-weight bound
    # failed. Other gradients do not pass: the fused run at a learning rate 10% higher gives 0.057 and 80% of them.
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    ref = torch.cat([b[k].flatten() for k in a])
    assert diff.norm() <= 2e-3 * ref.norm(), float(diff.norm() / ref.norm())
    assert (diff.abs() > 5e-4).float().mean() <= 1e-3, int((diff.abs() > 5e-4).sum())


def test_batch_rebalance_pads_less_and_keeps_each_step_random(base, maps):
    """batch_rebalance: each optimizer step draws random examples (as `random` does) and sorts them by length into
    its micro-batches, so padding falls while a step's content stays unrelated to length (group_by_length would
    fill a step with examples of one length: for wafer answers, often of one class). Seeded by the data seed."""
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(base[0])
    images, captions, prompts = models.caption_corpus(maps, 32, 0)
    ds = models.caption_dataset(images, captions, prompts)

    def steps(strategy: str, seed: int = 0) -> list[list[dict]]:
        cfg = _cfg(base[0], "unused", per_device_train_batch_size=4, gradient_accumulation_steps=4, seed=seed,
                   train_sampling_strategy=strategy)
        train, _, collator, _ = sft.encoded_inputs(cfg, ds, None, processor)
        batches = list(sft.build_trainer(cfg, train, processor=processor, collator=collator).get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == len(ds)  # every example once
        return [batches[i: i + 4] for i in range(0, len(batches), 4)]

    def padding(st) -> int:
        return sum(int((b["attention_mask"] == 0).sum()) for step in st for b in step)

    def spread(st) -> float:  # mean length range inside a step
        lengths = [[int(n) for b in step for n in b["attention_mask"].sum(1)] for step in st]
        return sum(max(x) - min(x) for x in lengths) / len(lengths)

    plain, rebalanced = steps("random"), steps("batch_rebalance")
    assert padding(rebalanced) < 0.5 * padding(plain)
    assert spread(rebalanced) > 0.7 * spread(plain)
    for step in rebalanced:  # a step's micro-batches hold contiguous stretches of its length-sorted examples
        spans = sorted((int(b["attention_mask"].sum(1).min()), int(b["attention_mask"].sum(1).max())) for b in step)
        assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:]))
    first = [int(x) for b in rebalanced[0] for x in b["input_ids"].sum(1)]
    other = [int(x) for b in steps("batch_rebalance", seed=1)[0] for x in b["input_ids"].sum(1)]
    assert first != other  # the data seed moves the order


def test_encoded_path_drops_examples_over_max_length(base, vqa_ds):
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(base[0])
    lengths = sft.example_lengths(vqa_ds, processor)
    cut = sorted(lengths)[len(lengths) // 2]
    train, _, collator, dropped = sft.encoded_inputs(_cfg(base[0], "unused", max_length=cut), vqa_ds, None, processor)
    assert collator is not None and dropped == sum(n > cut for n in lengths) > 0
    assert max(train["length"]) <= cut and len(train) == len(vqa_ds) - dropped
    # Too little memory allowed for the images: TRL's collator processes them on the fly instead.
    raw, _, none, dropped_raw = sft.encoded_inputs(_cfg(base[0], "unused", max_length=cut, encode_max_gb=1e-9),
                                                   vqa_ds, None, processor)
    assert none is None and dropped_raw == dropped and "images" in raw.column_names


def test_merged_export_works_with_the_model_cards_pipeline_snippet(base, vqa_ds, maps, tmp_path):
    from transformers import pipeline
    result = sft.train(_cfg(base[0], tmp_path / "train"), vqa_ds, export_dir=tmp_path / "merged")
    assert (tmp_path / "train" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "train" / "train_result.json").read_text())["steps"] == result["steps"] == 2
    png = render.save_png(render.to_image(maps["wafer_map"].iloc[-1], 32), tmp_path / "wafer.png")
    # The card's snippet, with the exported folder in place of the hub id.
    pipe = pipeline("image-text-to-text", model=str(tmp_path / "merged"))
    messages = [{"role": "user", "content": [{"type": "image", "url": str(png)},
                                             {"type": "text", "text": QUESTIONS[0]}]}]
    output = pipe(text=messages, max_new_tokens=16)
    reply = output[0]["generated_text"][-1]
    # Two training steps teach no words: the point is the wiring (folder, processor, image url, chat template).
    assert reply["role"] == "assistant" and isinstance(reply["content"], str) and len(reply["content"]) > 0
    # The merged weights are base + adapter: no LoRA modules left, and they differ from the base.
    from safetensors.torch import load_file
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert not any("lora" in k for k in merged)
    base_w = load_file(base[0] / "model.safetensors")
    assert any(not torch.equal(merged[k], base_w[k]) for k in merged if "q_proj" in k)


def test_full_parameter_export_trains_every_weight_and_leaves_no_pickle(base, vqa_ds, tmp_path):
    """lora: false (the real-data runs): every weight moves, the exported folder loads as it is, with the
    processor, and carries no training_args.bin (a pickle) beside the weights."""
    from safetensors.torch import load_file
    sft.train(_cfg(base[0], tmp_path / "train", lora=False, learning_rate=1e-3), vqa_ds, export_dir=tmp_path / "full")
    assert not (tmp_path / "train" / "adapter").exists() and not (tmp_path / "full" / "training_args.bin").exists()
    assert (tmp_path / "full" / "tokenizer.json").exists() and (tmp_path / "full" / "chat_template.jinja").exists()
    full, base_w = load_file(tmp_path / "full" / "model.safetensors"), load_file(base[0] / "model.safetensors")
    assert full.keys() == base_w.keys()
    assert any(not torch.equal(full[k], base_w[k]) for k in full if ".visual." in k)
    assert any(not torch.equal(full[k], base_w[k]) for k in full if "mlp" in k and ".visual." not in k)


def test_optimizer_falls_back_without_a_gpu(caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert sft.resolve_optim("adamw_8bit") == "adamw_torch_fused" and "8-bit AdamW" in caplog.text
    assert sft.resolve_optim("adafactor") == "adafactor"


def test_accelerate_launch_command():
    cmd = sft.launch_command("cfg.json", 4, "bf16", "params/accelerate/deepspeed_zero2.yaml")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--config_file") + 1] == "params/accelerate/deepspeed_zero2.yaml"
    assert cmd[-3:] == ["-m", "wafersage_utils.training.sft", "cfg.json"] and "--multi_gpu" not in cmd
    assert "--multi_gpu" in sft.launch_command("cfg.json", 2)


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_training(base, vqa_ds, tmp_path):
    vqa_ds.save_to_disk(str(tmp_path / "ds"))
    cfg = replace(_cfg(base[0], tmp_path / "out"), train_dataset=str(tmp_path / "ds"))
    path = sft.write_config(cfg, tmp_path / "train_config.json", tmp_path / "merged")
    result = sft.launch(path, 1)
    assert result["steps"] == 2 and (tmp_path / "merged" / "config.json").exists()


@pytest.mark.parametrize("text, labels", [
    ("This wafer map shows an edge-ring defect pattern. Failures form a ring.", ["Edge-Ring"]),
    ("The defect pattern on this wafer is center and scratch.", ["Center", "Scratch"]),
    ("This wafer map shows no systematic defect pattern.", ["none"]),
    ("It is a Donut.", ["Donut"]),
    ("<REASONING>A ring at the edge.</REASONING>\n<SOLUTION>This wafer map shows a localized defect pattern."
     "</SOLUTION>", ["Loc"]),
    ("No scratch here; the failures form an edge-local cluster.", ["Edge-Loc"]),
    ("The main failing region is a dense blob in the center zone.", []),
    ("", []),
])
def test_type_answers_parse_into_labels(text, labels):
    assert answers.parse_labels(text) == labels


def test_type_accuracy_splits_single_and_mixed():
    acc = answers.type_accuracy(["It is a Donut.", "This wafer map shows a center defect pattern.",
                                 "This wafer map shows a center and scratch defect pattern.", "A blob."],
                                [["Donut"], ["Scratch"], ["Center", "Scratch"], ["Loc"]])
    assert acc["single"] == pytest.approx(1 / 3) and acc["mixed"] == 1.0 and acc["unparsed_share"] == 0.25


def test_type_accuracy_by_model_and_split():
    import pandas as pd
    rows = pd.DataFrame({"split": ["val", "val", "test"], "labels": [["Donut"], ["Loc"], ["Scratch"]],
                         "a": ["It is a Donut.", "It is a Donut.", "A scratch."], "b": ["", "It is a Loc.", ""]})
    table = answers.type_accuracy_by(rows, ["a", "b"], ("val", "test"))
    assert table.loc[("a", "val"), "single"] == 0.5 and table.loc[("a", "test"), "single"] == 1.0
    assert table.loc[("b", "val"), "single"] == 0.5 and table.loc[("b", "test"), "unparsed_share"] == 1.0


def test_pretrain_micro_batches_must_divide_the_step():
    with pytest.raises(ValueError, match="text_micro_batches .3. must be at least 1 and divide text_batch_size .16."):
        models.PretrainSettings(text_micro_batches=3)
    with pytest.raises(ValueError, match="micro_batches .0."):
        models.PretrainSettings(micro_batches=0)
    assert models.PretrainSettings(batch_size=16, micro_batches=4).micro_batches == 4


def test_step_timer_counts_batch_loading_in_each_step(base, vqa_ds, tmp_path):
    """The Trainer fetches and collates a step's batches before on_step_begin; the timer must include that time,
    or a benchmark would not see what encoding once saves. A collator that sleeps shows up in every step."""
    import time as _time

    from transformers import AutoProcessor

    class SlowCollator:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, rows):
            _time.sleep(0.2)
            return self.inner(rows)

    cfg = _cfg(base[0], tmp_path / "timed", max_steps=3)
    processor = AutoProcessor.from_pretrained(cfg.model)
    train, _, collator, _ = sft.encoded_inputs(cfg, vqa_ds, None, processor)
    timer = sft.StepTimer()
    trainer = sft.build_trainer(cfg, train, None, [timer.callback], processor, SlowCollator(collator))
    trainer.train()
    assert len(timer.times) == 3 and all(t >= 0.2 for t in timer.times), timer.times


def test_extra_seeing_maps_are_drawn_with_the_runs_generator_settings(maps, tmp_path):
    """Stage 01 records its generator settings; the base's extra maps take them (its own size, seed, mix and
    label noise aside): the recipe's defaults give the very maps the defaults gave, another setting other maps."""
    cfg = synth.SynthConfig(n_wafers=4500, seed=7, mixed_fraction=0.05, label_noise=0.1)  # the recipe's shape
    synth.write_config(cfg, tmp_path / "generator.json")
    recorded = synth.read_config(tmp_path / "generator.json")
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a["wafer_map"], b["wafer_map"]))
    plain = models.pretraining_maps(maps, extra_maps=6, seed=0)
    assert same(models.pretraining_maps(maps, extra_maps=6, seed=0, generator=recorded), plain)
    old = models.pretraining_maps(maps, extra_maps=6, seed=0, generator=recorded | {"scratch_width_dies": 0.0,
                                                                                   "background_area_exponent": 0.0})
    assert len(old) == len(plain) and not same(old, plain)
    with pytest.raises(ValueError, match="not SynthConfig fields"):
        models.pretraining_maps(maps, extra_maps=2, seed=0, generator={"bogus": 1})
    synth.write_config(None, tmp_path / "generator.json")  # a real-data run leaves no stale record
    assert synth.read_config(tmp_path / "generator.json") is None
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: expected an object"):
        synth.read_config(tmp_path / "bad.json")


def test_tiny_spec_takes_every_size_from_the_stage_settings():
    from wafersage_utils.recipe import SFTSettings
    spec = models.tiny_spec(SFTSettings(tiny_vision_hidden=128, tiny_vision_depth=3, tiny_text_layers=4))
    assert (spec.vision_hidden, spec.vision_depth, spec.layers) == (128, 3, 4)
    tok = tiny_vlm.build_tokenizer(["a wafer map with a scratch"] * 4, vocab_size=300)
    cfg = tiny_vlm.build_model(tok, spec).config
    assert (cfg.vision_config.depth, cfg.text_config.num_hidden_layers) == (3, 4)
