"""The tiny model's seeing step, LoRA SFT and greedy answers: the old path against the pipeline's, side by side.

    python tests/benchmarks/bench_tiny_model.py [--run RUN] [--samples 1024] [--answers 384] [--out DIR]
                                                [--paths train,answers]

RUN is a run folder with stages 01 to 05 done (its maps, SFT pairs, base and SFT model); without it the smoke
params run stages 01 to 05 into a temporary folder first (about 3 minutes). Each row trains or answers with the
same model on the same examples twice in this process, the old path first:

- seeing step (full-parameter captioning of the tiny base): old = TRL's collator (chat template and image
  processor on every batch) and its fused LM head over every position, random batches of 8 (the recipe until
  2026-11-30); new = `models.seeing_config` at the recipe's settings (`params/default.yaml` over the notebook's
  defaults), with the loss on the answer's positions only (`sft.answer_token_loss`) and, where the recipe packs
  them (`pretrain_pack_questions`), a map's caption and questions as one conversation with the picture encoded
  once. Both paths are counted in answers (labelled turns) per second, and FLOPs per answer;
- LoRA SFT on the run's pairs: old = TRL's collator, batches of 2 accumulated 4 times; new = `sft.TrainConfig`
  at the recipe's settings with LoRA (examples encoded once, padded per batch; 8 pairs per step in one batch);
  where the recipe trains every weight (`05_sft.lora: false`), a row for that too, against the same old path;
- greedy answers to validation questions (every question of whole maps, sampled as stages 06 and 07 sample
  them; until 2026-12-08 a random sample of questions, about two per map): old = batches of 16 in request
  order, plain `generate`; new = `HFChat` as the stages use it (batches of `eval_batch_size`, grouped by length,
  each answer leaving its batch when it ends: `chat.decoding`, the vision tower's attention one call per layer:
  `chat.vision_attention`, each distinct picture of a batch processed and encoded once);
- defect-type answers as the scorer asks them (sim-to-real on 30,501 real maps, stage 07's type check,
  `wafersage-score`) on validation maps: old = whole answers; new = each stopped after the sentence that
  states the type (the labels must be the same: `same_labels_share`);
- the vote over four turned views (`views: 4` in a model's `wafersage.json`) on the same maps: old = every view
  asked about every map; new = each further view asked only while the map's vote is open (`views.settled`;
  the same labels: `same_labels_share`). Its FLOPs per sample: a type answer's times the views it asks per map.

Per row: samples per second over the training steps after the first three (and, for the new path, with the
one-time encoding counted in), FLOPs per sample counted by torch's FlopCounterMode on single examples (matrix
products and attention; no padding, so both paths are charged the same useful arithmetic), the achieved
GFLOP/s, and that as a share of the machine's fp32 matrix-multiply peak measured here at the model's shapes and
at a large shape. Targets (issue 25): seeing >= 190 and SFT >= 92 samples/s, answers 4x the old path.
Run it alone: two cores, and any other process distorts the timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from wafersage_utils.maps import table
from wafersage_utils.recipe import STAGES
from wafersage_utils.runner import pipeline
from wafersage_utils.training import models, sft

ROOT = Path(__file__).resolve().parents[2]
WARMUP_STEPS = 3


def recipe(stem: str) -> dict:
    """A stage's settings in the default run: the recipe's defaults."""
    return asdict(STAGES[stem]())


def matmul_peak(n_threads: int) -> dict:
    """fp32 GFLOP/s of torch.mm at a large square shape and at the tiny model's token-by-weight shapes."""
    torch.set_num_threads(n_threads)
    shapes = {"large 2048^3": (2048, 2048, 2048), "mlp 2048x128x384": (2048, 128, 384),
              "lm_head 2048x128x4096": (2048, 128, 4096), "vision 2048x64x192": (2048, 64, 192)}
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            torch.mm(a, b)
            reps += 1
        out[name] = round(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9, 1)
    return out


def flops_per_sample(model_dir: str, dataset, lora_cfg: sft.TrainConfig | None, n: int = 12) -> float:
    """Mean FLOPs of one training step (forward and backward) on single examples, as FlopCounterMode counts."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl.chat_template_utils import get_training_chat_template

    from wafersage_utils.training.batches import PaddedCollator, encode
    processor = AutoProcessor.from_pretrained(model_dir)
    enc, bank = encode(dataset.select(range(min(n, len(dataset)))), processor, get_training_chat_template(processor))
    collate = PaddedCollator(bank, processor.tokenizer.pad_token_id)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).train()
    if lora_cfg is not None:
        model = get_peft_model(model, LoraConfig(r=lora_cfg.lora_r, lora_alpha=lora_cfg.lora_alpha,
                                                 target_modules=sft.lora_targets(lora_cfg.lora_vision),
                                                 task_type="CAUSAL_LM"))
    total = 0
    for i in range(len(enc)):
        with FlopCounterMode(display=False) as counter:
            model(**collate([enc[i]])).loss.backward()
        total += counter.get_total_flops()
    return total / len(enc)


def old_path(cfg: sft.TrainConfig, output_dir: Path, batch: int, accumulation: int) -> sft.TrainConfig:
    """The training path before 2026-11-30: TRL's collator on every batch, random batches, plain AdamW, TRL's
    fused LM head over every position (the loss on the answer's positions only came on 2026-12-04) and the vision
    tower's attention called once per picture (one call per layer since 2026-12-07)."""
    return replace(cfg, output_dir=str(output_dir), per_device_train_batch_size=batch,
                   gradient_accumulation_steps=accumulation, train_sampling_strategy="random", encode_max_gb=0.0,
                   optim="adamw_torch", answer_loss=False, batched_vision=False)


def train_rate(cfg: sft.TrainConfig, dataset) -> dict:
    """Samples per second of a training run over the steps after the warm-up, and its wall time in all."""
    timer = sft.StepTimer()
    t0 = time.perf_counter()
    result = sft.train(cfg, dataset, callbacks=[timer.callback])
    wall = time.perf_counter() - t0
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    warm = timer.times[WARMUP_STEPS:]
    return {"samples_per_second": round(per_step * len(warm) / sum(warm), 1), "steps": result["steps"],
            "wall_s": round(wall, 1), "samples_per_second_with_setup": round(per_step * result["steps"] / wall, 1)}


def answer_rate(model_dir: str, rows, run_dir: Path, batch_size: int, new: bool, max_tokens: int) -> dict:
    """Greedy answers per second with an empty cache: the old path (request order, plain `generate`) or the new
    (grouped by length, each answer leaving its batch when it ends, the pictures' attention batched, each
    distinct picture of a batch processed and encoded once)."""
    from wafersage_utils.chat.hf_chat import HFChat
    from wafersage_utils.evaluation import inference
    with tempfile.TemporaryDirectory() as cache:
        chat = HFChat(model_dir, Path(cache), batch_size=batch_size, length_grouped=new, drop_finished=new,
                      batched_vision=new, shared_pictures=new)
        t0 = time.perf_counter()
        answers = inference.answer_rows(chat, rows, run_dir, max_tokens, progress=False)
        dt = time.perf_counter() - t0
    return {"samples_per_second": round(len(rows) / dt, 1), "wall_s": round(dt, 1), "answers": answers}


def answer_flops(model_dir: str, rows, run_dir: Path, max_tokens: int, n: int = 8) -> float:
    """Mean FLOPs of generating one greedy answer alone (prefill and every decoding step)."""
    from torch.utils.flop_counter import FlopCounterMode

    from wafersage_utils.chat.hf_chat import HFChat
    from wafersage_utils.evaluation import inference
    with tempfile.TemporaryDirectory() as cache:
        chat = HFChat(model_dir, Path(cache), batch_size=1)
        reqs = inference.requests_for(rows.head(n), run_dir, chat.name, max_tokens)
        with FlopCounterMode(display=False) as counter:
            for r in reqs:
                chat._generate([r])
    return counter.get_total_flops() / len(reqs)


def type_answer_rate(model_dir: str, wafer_maps: list, batch_size: int, full: bool) -> dict:
    """Defect-type answers per second as the scorer asks them (sim-to-real, 07's type check, wafersage-score):
    whole answers with plain `generate` (the old path) or stopped after the type statement, each answer leaving
    its batch when it ends (the new)."""
    from wafersage_utils.evaluation import model_info, scorer
    info = replace(model_info.read_info(Path(model_dir)), views=1)  # one view: the vote has its own row
    asker = scorer.MapAsker(Path(model_dir), "merged", info, drop_finished=not full, batched_vision=not full)
    asker.ask(wafer_maps[:8], 8, progress=False, full_answers=full)  # load and warm up
    t0 = time.perf_counter()
    answers = asker.ask(wafer_maps, batch_size, progress=False, full_answers=full)
    dt = time.perf_counter() - t0
    return {"samples_per_second": round(len(wafer_maps) / dt, 1), "wall_s": round(dt, 1), "answers": answers}


def vote_rate(model_dir: str, wafer_maps: list, batch_size: int, settle: bool, n_views: int = 4) -> dict:
    """Maps per second of the vote over `n_views` turned views as the scorer asks it: every view about every map
    with plain `generate` (the old path) or each further view only while a map's vote is open (`settle`, the new,
    with each answer leaving its batch when it ends)."""
    from wafersage_utils.evaluation import model_info, scorer, views
    from wafersage_utils.evaluation.answers import parse_labels
    info = replace(model_info.read_info(Path(model_dir)), views=n_views)
    asker = scorer.MapAsker(Path(model_dir), "merged", info, drop_finished=settle, batched_vision=settle)
    asker.ask_views(wafer_maps[:8], 8, progress=False)  # load and warm up
    t0 = time.perf_counter()
    per_view = asker.ask_views(wafer_maps, batch_size, progress=False, settle=settle)
    dt = time.perf_counter() - t0
    labels = views.voted([[None if a is None else parse_labels(a) for a in v] for v in per_view], n_views)[0]
    asked = sum(a is not None for v in per_view for a in v) / len(wafer_maps)
    return {"samples_per_second": round(len(wafer_maps) / dt, 1), "wall_s": round(dt, 1), "labels": labels,
            "views_asked_per_map": round(asked, 2)}


def type_answer_flops(model_dir: str, wafer_maps: list, full: bool, n: int = 8) -> float:
    """Mean FLOPs of one defect-type answer alone, asked as the scorer asks it."""
    from torch.utils.flop_counter import FlopCounterMode

    from wafersage_utils.evaluation import model_info, scorer
    asker = scorer.MapAsker(Path(model_dir), "merged", replace(model_info.read_info(Path(model_dir)), views=1))
    with FlopCounterMode(display=False) as counter:
        for m in wafer_maps[:n]:
            asker.ask([m], 1, progress=False, full_answers=full)
    return counter.get_total_flops() / n


def row(name: str, old: dict, new: dict, flops: float, peak: float) -> dict:
    achieved = flops * new["samples_per_second"] / 1e9
    return {"path": name, "old_per_s": old["samples_per_second"], "new_per_s": new["samples_per_second"],
            "ratio": round(new["samples_per_second"] / old["samples_per_second"], 2),
            "new_per_s_with_setup": new.get("samples_per_second_with_setup"),
            "mflops_per_sample": round(flops / 1e6, 1),
            "achieved_gflops": round(achieved, 1), "share_of_peak": round(achieved / peak, 3)}


def smoke_run(parent: Path) -> Path:
    print("no --run given: running stages 01-05 with params/smoke.yaml first", flush=True)
    return pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="01-05", results_dir=parent)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="run folder with stages 01-05 done (default: a fresh smoke run)")
    ap.add_argument("--samples", type=int, default=1024, help="training examples per path and step kind")
    ap.add_argument("--answers", type=int, default=384, help="validation questions answered per path (at most)")
    ap.add_argument("--out", type=Path, help="folder for bench_tiny_model.json")
    ap.add_argument("--paths", default="train,answers",
                    help="rows to measure, comma-separated: train (seeing step, SFT), answers (greedy, type, vote)")
    args = ap.parse_args(argv)
    paths = set(args.paths.split(","))
    if not paths or paths - {"train", "answers"}:
        ap.error(f"--paths: expected train and/or answers, got {args.paths!r}")
    from datasets import load_from_disk
    tmp = Path(tempfile.mkdtemp(prefix="bench_tiny_"))
    run = args.run.resolve() if args.run else smoke_run(tmp)
    p05, p07 = recipe("05_sft"), recipe("07_eval")
    threads = int(p05["n_threads"])
    torch.set_num_threads(threads)
    merged = str(run / "models" / "sft" / "merged")
    maps = table.read_table(run / "data" / "maps.parquet")
    peak = matmul_peak(threads)
    top = max(peak.values())
    print(json.dumps({"matmul_gflops": peak, "threads": threads}), flush=True)
    rows = []

    if "train" in paths:  # the seeing step and SFT
        # Seeing step: the base's captioning, on the run's training maps (a map gives a caption and two questions).
        base = json.loads((run / "models" / "base.json").read_text())["path"]
        factory = json.loads((Path(base) / "factory.json").read_text())
        size = factory["pretrain"].get("render_size") or factory["spec"]["image_size"]  # as the base saw its maps
        # The old path trains one example per question; the recipe (`pretrain_pack_questions`) may pack a map's
        # questions into one conversation, so both paths are counted in answers (labelled turns) per second.
        pack = bool(p05["pretrain_pack_questions"])
        images, captions, prompts = models.caption_corpus(maps, size, 0, max_maps=-(-args.samples // 3))
        seeing_ds = models.caption_dataset(images, captions, prompts)
        new_ds = seeing_ds
        if pack:
            new_ds = models.caption_dataset(*models.caption_corpus(maps, size, 0, max_maps=-(-args.samples // 3),
                                                                   shuffle_turns=True), pack=True)
        per_example = len(seeing_ds) / len(new_ds)  # answers per training example of the new path
        settings = models.PretrainSettings(epochs=1.0, learning_rate=p05["pretrain_learning_rate"],
                                           batch_size=p05["pretrain_batch_size"],
                                           micro_batches=p05["pretrain_micro_batches"],
                                           pack_questions=pack)
        new_cfg = models.seeing_config(base, str(tmp / "seeing_new"), settings, 0, threads, len(new_ds))
        old_cfg = old_path(new_cfg, tmp / "seeing_old", batch=8, accumulation=1)
        old, new = train_rate(old_cfg, seeing_ds), train_rate(new_cfg, new_ds)
        new = new | {k: round(new[k] * per_example, 1) for k in ("samples_per_second", "samples_per_second_with_setup")}
        rows.append(row("seeing step", old, new, flops_per_sample(base, new_ds, None) / per_example, top)
                    | {"packed": pack, "answers_per_example": round(per_example, 2)})
        print(json.dumps(rows[-1] | {"old": old, "new": new}), flush=True)

        # LoRA SFT on the run's pairs (a seeded sample of them).
        pairs = load_from_disk(str(run / "data" / "exports" / "trl_sft" / "train"))
        pairs = pairs.shuffle(seed=0).select(range(min(args.samples, len(pairs))))
        fields = sft.TrainConfig.__dataclass_fields__
        recipe_cfg = sft.TrainConfig(**{k: v for k, v in p05.items() if k in fields}
                                     | {"model": base, "output_dir": str(tmp / "sft_new"), "save_steps": 0,
                                        "max_steps": -1, "num_train_epochs": 1.0, "seed": 0})
        lora_cfg = replace(recipe_cfg, lora=True, learning_rate=2e-3)  # the LoRA path at the rates it was chosen with
        old_cfg = old_path(lora_cfg, tmp / "sft_old", batch=2, accumulation=4)
        old, new = train_rate(old_cfg, pairs), train_rate(lora_cfg, pairs)
        rows.append(row("LoRA SFT", old, new, flops_per_sample(base, pairs, lora_cfg), top))
        print(json.dumps(rows[-1] | {"old": old, "new": new}), flush=True)
        if not recipe_cfg.lora:  # the recipe trains every weight: against the same old LoRA path
            full = train_rate(replace(recipe_cfg, output_dir=str(tmp / "sft_full")), pairs)
            rows.append(row("SFT, every weight", old, full, flops_per_sample(base, pairs, None), top))
            print(json.dumps(rows[-1] | {"old": old, "new": full}), flush=True)

    if "answers" in paths:  # greedy answers, type answers, the vote
        # Greedy answers to validation questions with the SFT model, sampled as stages 06 and 07 sample them:
        # every question of whole maps (about nine per map), as many maps as fit in --answers questions.
        import pandas as pd

        from wafersage_utils.evaluation.classification import sample_wafers
        vqa = pd.read_parquet(run / "data" / "vqa.parquet")
        asked = sample_wafers(vqa[vqa["split"] == "val"], args.answers, 0)
        max_tokens = int(p07["eval_max_tokens"])
        old = answer_rate(merged, asked, run, 16, False, max_tokens)
        new = answer_rate(merged, asked, run, int(p07["eval_batch_size"]), True, max_tokens)
        same = sum(a == b for a, b in zip(old.pop("answers"), new.pop("answers"))) / len(asked)
        rows.append(row("greedy answers", old, new, answer_flops(merged, asked, run, max_tokens), top)
                    | {"same_answer_share": round(same, 3)})
        print(json.dumps(rows[-1] | {"old": old, "new": new}), flush=True)

        # Defect-type answers as the scorer asks them, on the run's validation maps: whole answers, then stopped
        # after the type statement (same labels: the parser reads only that sentence).
        from wafersage_utils.evaluation.answers import parse_labels
        val_maps = maps[maps["split"] == "val"].sample(n=min(args.answers, int((maps["split"] == "val").sum())),
                                                       random_state=0)
        wafer_maps = list(val_maps["wafer_map"])
        old = type_answer_rate(merged, wafer_maps, int(p07["eval_batch_size"]), full=True)
        new = type_answer_rate(merged, wafer_maps, int(p07["eval_batch_size"]), full=False)
        same = sum(parse_labels(a) == parse_labels(b) for a, b in zip(old.pop("answers"), new.pop("answers")))
        rows.append(row("type answers", old, new, type_answer_flops(merged, wafer_maps, full=False), top)
                    | {"same_labels_share": round(same / len(wafer_maps), 3)})
        print(json.dumps(rows[-1] | {"old": old, "new": new}), flush=True)

        # The vote over four turned views (a model whose wafersage.json says `views: 4`): every view asked about
        # every map, then each further view only while the map's vote is open (the same labels by construction).
        old = vote_rate(merged, wafer_maps, int(p07["eval_batch_size"]), settle=False)
        new = vote_rate(merged, wafer_maps, int(p07["eval_batch_size"]), settle=True)
        same = sum(a == b for a, b in zip(old.pop("labels"), new.pop("labels")))
        flops = new["views_asked_per_map"] * type_answer_flops(merged, wafer_maps, full=False)  # the work it does
        rows.append(row("4-view vote", old, new, flops, top)
                    | {"same_labels_share": round(same / len(wafer_maps), 3),
                       "views_asked_per_map": new["views_asked_per_map"]})
        print(json.dumps(rows[-1] | {"old": old, "new": new}), flush=True)

    print(f"\n{'path':16} {'old/s':>8} {'new/s':>8} {'ratio':>6} {'MFLOP/sample':>13} {'GFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        print(f"{r['path']:16} {r['old_per_s']:8.1f} {r['new_per_s']:8.1f} {r['ratio']:6.2f} "
              f"{r['mflops_per_sample']:13.1f} {r['achieved_gflops']:8.1f} {r['share_of_peak']:8.1%}")
    print(f"matmul peak {top} GFLOP/s ({threads} threads); run: {run}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_tiny_model.json").write_text(json.dumps({"matmul_gflops": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
