"""The recipe: every stage's settings, whose defaults are the default run (`make run`) and nothing else.

One dataclass per notebook, field for field its parameters cell (a test holds them equal; `python -m
wafersage_utils.recipe --sync` rewrites the cells from here). A notebook run with no params reproduces the
reference run; a params file carries only what differs from here (`smoke.yaml`: smaller; `wm811k.yaml`: real
maps; `paper.yaml`: the real model and the paper's settings). Each comment says what a value means and, where
it was chosen on validation, why (the probes are in docs/experiments.md).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

RUN_DIR_LINE = 'run_dir: str = "../results/dev"  # run folder (the runner sets it)'


class StageSettings:
    """What every stage's settings share: built from a notebook's namespace, rendered as its parameters cell,
    and checked against the value rules below when made (a notebook run by hand is checked as the runner checks)."""

    def __post_init__(self):
        stem = next((k for k, v in STAGES.items() if v is type(self)), None)
        if stem is not None:
            problems = stage_problems(stem, self)
            if problems:
                raise ValueError("; ".join(problems))

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]):
        """The settings from a notebook's variables (its parameters cell, after papermill's injection)."""
        missing = [f.name for f in fields(cls) if f.name not in namespace]
        if missing:
            raise NameError(f"{cls.__name__}: the notebook's parameters cell lacks {missing}")
        return cls(**{f.name: namespace[f.name] for f in fields(cls)})

    @classmethod
    def comments(cls) -> dict[str, str]:
        """Each field's trailing comment in this file: its meaning, units and reason."""
        lines = inspect.getsource(cls).splitlines()
        out = {}
        for node in ast.parse(inspect.getsource(cls)).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                line = lines[node.lineno - 1]
                out[node.target.id] = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        return out

    @classmethod
    def parameters_cell(cls) -> str:
        """The notebook's parameters cell: `name: type = literal  # comment`, one per line, run_dir first."""
        notes = cls.comments()
        out = [RUN_DIR_LINE]
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            literal = json.dumps(default) if isinstance(default, (list, dict, str)) else repr(default)
            out.append(f"{f.name}: {f.type} = {literal}  # {notes[f.name]}")
        return "\n".join(out)


@dataclass(frozen=True)
class CleanSettings(StageSettings):
    """01 · Clean: label cleaning and sampling by clustering."""

    seed: int = 0  # master seed: same params and seed give the same data and numbers
    n_threads: int = 2  # torch and BLAS threads
    source: str = "synthetic"  # synthetic | wm811k | mixedwm38
    data_path: str = ""  # real data file; empty: $WAFERSAGE_WM811K / $WAFERSAGE_MIXEDWM38, else ../shared/data
    max_maps: int = 0  # class-stratified cap on maps taken from a real file (0: all)
    keep_unlabelled: bool = False  # WM-811K: keep maps without a failureType (not cleaned, not sampled)
    value3: str = "fail"  # MixedWM38: a stray 3 becomes fail | pass | error
    n_wafers: int = 4500  # synthetic: number of maps, in lots of 10 to 25 (3000 gave SFT test type accuracy 0.826 over three SFT seeds)
    class_mix: str = "balanced"  # synthetic: balanced | natural (WM-811K proportions)
    mixed_fraction: float = 0.05  # synthetic: share of maps with 2 to 4 overlaid patterns (MixedWM38 style)
    label_noise: float = 0.1  # synthetic: share of maps given a realistic wrong label (ground truth for the quarantine)
    background_clumping: float = 0.0  # synthetic: background failures in clumps, log-scale up to this (0: independent dies); 1.5 helped a classical model on real maps but not the VLM: docs/experiments.md
    loc_area_dies: float = 24.0  # synthetic: median area of a Loc blob in dies, the same on every grid, as real WM-811K Loc blobs (0: a share of the wafer, half the real size on small grids): docs/experiments.md
    background_area_exponent: float = 1.0  # synthetic: background fail rate scales as (dies on a 27 x 27 grid / dies)^this, as on real defect-free maps (0: one rate on every grid, 2-3x the real rate on large grids): docs/experiments.md
    edge_fail_extra: float = 0.11  # synthetic: median extra fail chance of the outermost die ring, the background flat inside, as on real maps (0: a smooth r^6 rise towards the edge)
    scratch_width_dies: float = 1.4  # synthetic: median scratch width in dies, as thin as real WM-811K scratches (0: the old 1.7 to 2.4-die band)
    background_by_class: str = "pooled"  # synthetic: class background factors from whole-map fail ratios pooled over grid sizes | measured (at one grid size: more realistic, yet the VLM on real maps did not gain and lost 6 points of accuracy): docs/experiments.md
    lot_affinity: float = 0.5  # synthetic: chance a wafer shows its lot's dominant pattern
    embedding_kind: str = "features"  # features (standardised + PCA) | cnn (learned, like the paper's ViT)
    pca_components: int = 32  # dimensions of the feature embedding
    cnn_epochs: int = 8  # epochs of the learned embedding
    kmeans_k: int = 0  # clusters per label; 0: choose by silhouette
    kmeans_k_max: int = 6  # largest K tried when choosing
    classifier: str = "hgb"  # hgb (gradient boosting) | logreg: out-of-fold probabilities and baseline
    oof_folds: int = 5  # lot-disjoint folds for out-of-fold probabilities
    oof_cnn: bool = True  # average a per-pattern CNN into the out-of-fold probabilities
    cnn_pattern_epochs: int = 10  # epochs of that CNN per fold
    consistency_weight: float = 0.5  # weight of the classifier in the consistency score (rest: clusters)
    cluster_veto: float = 0.55  # a flagged map is kept (not quarantined) when its cluster agreement reaches this
    n_typical: int = 180  # maps sampled per label near their cluster centre (40 gave SFT too few type questions)
    n_hard: int = 90  # maps sampled per label far from their cluster centre
    val_fraction: float = 0.15  # share of lots in validation
    test_fraction: float = 0.15  # share of lots in test
    tsne_max_points: int = 2000  # maps shown in the 2-D embedding
    realism_examples: int = 4  # maps per class in the synthetic-vs-real grid (0: no grid)


@dataclass(frozen=True)
class DescribeSettings(StageSettings):
    """02 · Describe: measured facts and the teacher's four descriptions."""

    seed: int = 0  # master seed: wording of the grounded teacher, sampling
    n_threads: int = 2  # torch and BLAS threads
    backend: str = "grounded"  # grounded (offline, from facts and the knowledge base) | openai (any OpenAI-compatible endpoint) | hf (local VLM)
    image_size: int = 128  # pixels of the square rendered map (tiny model 64 to 224; Qwen3-VL-4B about 448)
    max_maps: int = 0  # cap on the sampled maps described, stratified by label (0: all)
    knowledge_base: str = ""  # root-cause YAML; empty: the packaged corpus/data/root_causes.yaml
    prompts: str = ""  # prompts YAML of the model backends; empty: the packaged corpus/data/prompts.yaml
    give_label: bool = True  # model backends: tell the teacher the cleaned label (full, root-cause, JSON prompts)
    model: str = "Qwen/Qwen3-VL-32B-Instruct"  # openai: model name at the endpoint; hf: local path or hub name
    base_url: str = "http://localhost:8000/v1"  # openai: endpoint (vLLM serve, or a hosted API)
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key
    temperature: float = 0.2  # model backends: sampling temperature (0: greedy)
    max_tokens: int = 768  # model backends: longest answer, tokens
    concurrency: int = 8  # openai: requests in flight
    timeout_s: float = 120.0  # openai: seconds per attempt
    max_retries: int = 4  # openai: retries with backoff on timeouts, 429 and 5xx
    cache_dir: str = ""  # model answers cache (reruns and resumes are free); empty: <run>/data/llm_cache
    hf_batch_size: int = 4  # hf: maps per generation batch
    fact_min_region: int = 4  # dies: smallest clustered group reported as a region
    fact_chance_shuffles: int = 8  # background shuffles a region must beat
    fact_zone_density: float = 0.08  # share of a zone's dies that must be clustered fails to call the zone failing
    n_examples: int = 6  # maps shown beside their descriptions


@dataclass(frozen=True)
class RubricsSettings(StageSettings):
    """03 · Rubrics: what a good answer must hit and must avoid."""

    seed: int = 0  # master seed: pairing of mismatched descriptions in the separation check
    n_threads: int = 2  # torch and BLAS threads
    backend: str = "rules"  # rules (offline, from the facts and the structured JSON) | openai (an LLM writes the JSON; avoid lists grounded) | hf
    knowledge_base: str = ""  # root-cause YAML; empty: the packaged corpus/data/root_causes.yaml
    prompts: str = ""  # prompts YAML of the model backends; empty: the packaged corpus/data/prompts.yaml
    model: str = "Qwen/Qwen3-32B"  # openai: model name at the endpoint; hf: local path or hub name
    base_url: str = "http://localhost:8000/v1"  # openai: endpoint
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key
    temperature: float = 0.0  # model backends: sampling temperature
    max_tokens: int = 1024  # model backends: longest answer, tokens
    concurrency: int = 8  # openai: requests in flight
    timeout_s: float = 120.0  # openai: seconds per attempt
    max_retries: int = 4  # openai: retries with backoff on timeouts, 429 and 5xx
    cache_dir: str = ""  # model answers cache; empty: <run>/data/llm_cache
    hf_batch_size: int = 4  # hf: requests per generation batch
    fuzzy_threshold: float = 0.8  # rule-score fuzzy match threshold for the separation check (paper fit: 0.713)


@dataclass(frozen=True)
class VQASettings(StageSettings):
    """04 · VQA: rubric-guided question-answer pairs."""

    seed: int = 0  # master seed: which templates and checks each wafer gets
    n_threads: int = 2  # torch and BLAS threads
    pairs_per_wafer: int = 9  # question-answer pairs per wafer (8 to 10 in the paper)
    min_reference_score: float = 0.9  # a reference answer must score at least this on its own rubric dimension(s)
    duplicate_threshold: float = 90.0  # rapidfuzz ratio at which two questions of one wafer count as duplicates
    sft_answer_style: str = "plain"  # plain | reasoning (<REASONING>/<SOLUTION> tags) in the SFT export
    paraphrase_backend: str = "none"  # none | openai: rewrite a share of the questions for more variety
    paraphrase_share: float = 0.5  # share of questions sent for paraphrase
    prompts: str = ""  # prompts YAML (paraphrase prompt); empty: the packaged corpus/data/prompts.yaml
    model: str = "Qwen/Qwen3-32B"  # openai: model name at the endpoint
    base_url: str = "http://localhost:8000/v1"  # openai: endpoint
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key
    temperature: float = 0.7  # openai: sampling temperature of paraphrases
    concurrency: int = 8  # openai: requests in flight
    timeout_s: float = 60.0  # openai: seconds per attempt
    max_retries: int = 4  # openai: retries with backoff on timeouts, 429 and 5xx
    cache_dir: str = ""  # model answers cache; empty: <run>/data/llm_cache
    n_examples: int = 6  # pairs shown with their images


@dataclass(frozen=True)
class SFTSettings(StageSettings):
    """05 · SFT: the base model, then LoRA supervised fine-tuning of Qwen3-VL."""

    seed: int = 0  # seed of the tiny base, the RL holdout, LoRA initialisation and data order (the paper trained with 3407)
    sft_seed: int | None = None  # seed of LoRA initialisation and data order alone (the base stays cached); None: seed
    n_threads: int = 2  # torch and BLAS threads
    model_name_or_path: str = "tiny"  # tiny (the embedded Qwen3-VL, built offline, cached by content hash) | a hub id such as Qwen/Qwen3-VL-4B-Instruct | a folder
    model_cache_dir: str = ""  # where built tiny bases are kept; empty: $WAFERSAGE_CACHE/models or ~/.cache/wafersage/models
    tiny_vocab_size: int = 4096  # tiny: BPE vocabulary trained on the run's training-split text
    tiny_image_size: int = 64  # tiny: pixels of its square input (its processor resizes larger images); 64 px is 16 image tokens, 4x cheaper than 128
    tiny_vision_hidden: int = 64  # tiny: width of the vision tower
    tiny_vision_depth: int = 2  # tiny: blocks of the vision tower
    tiny_text_layers: int = 2  # tiny: decoder layers of the language model (width 128)
    pretrain_epochs: float = 1.0  # tiny, seeing: passes of full-parameter captioning and visual questions over the maps
    pretrain_learning_rate: float = 0.0005  # tiny: captioning learning rate (cosine schedule)
    pretrain_batch_size: int = 8  # tiny: captioning batch
    pretrain_max_maps: int = 0  # tiny: cap on captioned maps; 0 means every training-split map of stage 01
    pretrain_extra_maps: int = 24000  # tiny, seeing: generated maps captioned besides the training split (never val/test); 12000 lost 2.8 points of SFT val accuracy
    pretrain_questions_per_map: int = 2  # tiny: generic visual questions per map besides its caption (zones, shape, place)
    pretrain_text_epochs: float = 1.0  # tiny, speaking: passes of text-only language modelling on the training-split text; 0 skips it
    pretrain_text_learning_rate: float = 0.0005  # tiny: learning rate of the text-only step
    pretrain_micro_batches: int = 1  # tiny: micro-batches per captioning step; above 1 a step's examples are sorted by length into them (less padding, the same step)
    pretrain_text_micro_batches: int = 4  # tiny: the same for the text-only step
    pretrain_pack_questions: bool = True  # tiny, seeing: a map's caption and visual questions as the turns of one conversation (in an order drawn per map), the picture encoded once, instead of one example each: seeing step 2.9x faster, val type accuracy within 0.005 (docs/experiments.md, 2026-12-05 evening)
    rl_holdout_share: float = 0.1  # share of training wafers kept out of SFT: their pairs are the RL learning stream of stage 06
    type_stream: bool = False  # also one defect-type question per other labelled training map (training/type_questions.py): a real data set's classes need more maps than stage 01 samples
    type_stream_none_ratio: float = 0.0  # type stream: defect-free questions capped at this multiple of the defect ones; 0: no cap
    type_stream_class_floor: int = 0  # type stream: a rarer class's maps asked again, in other wordings, until it has this many questions (at most 8 per map); 0: never
    type_stream_generated: int = 0  # type stream: also this many freshly generated labelled maps (stage 01's generator settings, a seed no run uses, no label noise), asked the type question; never val/test
    type_stream_augment: str = "none"  # type stream: maps shown turned or mirrored (a defect type does not depend on orientation) | repeats (a map asked again for the floor, in another symmetry each time) | all (every question; training/type_questions.py); on WM-811K neither moved validation beyond a seed's spread
    calibrate_none: bool = True  # choose, on every labelled validation map, a bias on the word that calls a map defect-free and save it in the model's generation config (evaluation/calibration.py): a training mix (the generator's 11% defect-free, a type stream's cap) under-states real defect-free maps. Default: val 0.788 / 0.822 -> 0.790 / 0.823, real maps 0.637 -> 0.647 macro-F1 (two SFT seeds: +0.010, +0.009); WM-811K (its type stream's cap): val 0.920 / 0.801 -> 0.927 / 0.802
    type_views: list = field(default_factory=lambda: [1, 4])  # views each map is asked in, the answers voted (evaluation/views.py): 1 as it is, 4 quarter turns, 8 with mirrors; several: chosen on every labelled validation map (after the defect-free bias) and saved with the model. Not 8 here: a settled 8-view vote still asks every map at least 4 views, 4 views ask 2.35 a map on sim-to-real's 30,501 real maps (48 s a pass)
    lora: bool = True  # LoRA adapters (the paper); false trains every weight of the base (tiny model: it is small enough)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (scale alpha / r)
    lora_dropout: float = 0.0  # LoRA dropout
    lora_vision: bool = True  # also adapt the vision tower (attn.qkv, attn.proj, mlp.linear_fc1/2), as the paper did
    learning_rate: float = 0.002  # peak learning rate of the LoRA weights (paper 2e-4: the tiny model learned nothing at it in one epoch)
    lr_scheduler_type: str = "linear"  # transformers scheduler name
    warmup_ratio: float = 0.0  # share of steps warming up
    num_train_epochs: float = 4.0  # passes over the training pairs (paper: 1; validation type accuracy 3 -> 0.837, 4 -> 0.849, 5 -> 0.839)
    max_steps: int = -1  # stop after this many optimizer steps; -1 means the epochs decide
    per_device_train_batch_size: int = 8  # pairs per device per micro-batch (the paper's 8 per step, 2 x 4, in one batch: 2.3x faster on CPU)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    train_sampling_strategy: str = "random"  # random | batch_rebalance (each step's pairs sorted by length into its micro-batches: less padding, the same step)
    weight_decay: float = 0.001  # AdamW weight decay
    optim: str = "adamw_8bit"  # adamw_8bit (bitsandbytes on a GPU, else AdamW, logged) or any transformers optimizer name
    max_length: int = 2048  # longest example in tokens, image tokens included; longer ones are dropped, never cut
    gradient_checkpointing: bool = False  # trade compute for memory (GPU runs of the 4B model)
    mixed_precision: str = "auto"  # auto (bf16 on a GPU, fp32 on CPU) | no | bf16 | fp16
    logging_steps: int = 10  # optimizer steps between loss records
    save_steps: int = 200  # optimizer steps between checkpoints (an interrupted run resumes from the last); 0 means none
    eval_steps: int = 0  # optimizer steps between validation losses; 0 means none
    num_processes: int = 1  # above 1 the same training runs under accelerate launch (one process per GPU)
    accelerate_config: str = ""  # accelerate config file for DeepSpeed or FSDP, e.g. params/accelerate/deepspeed_zero2.yaml
    eval_batch_size: int = 128  # batch of greedy generation for the accuracy checks
    eval_max_tokens: int = 64  # new tokens per answer in the accuracy checks
    n_card_wafers: int = 3  # test wafers asked the model card's example prompts


@dataclass(frozen=True)
class RLSettings(StageSettings):
    """06 · RL: GSPO with rubric rewards and a review / learning curriculum."""

    seed: int = 0  # seed of the curriculum draw, the sampled audit answers and the GSPO run (the paper: 3407)
    n_threads: int = 2  # torch and BLAS threads
    num_generations: int = 8  # group size: completions per prompt (paper: 32)
    lora_r: int = 16  # rank of a new LoRA on the SFT model when stage 05 trained every weight (a LoRA SFT's adapter is continued as it is)
    lora_alpha: int = 16  # its scaling numerator (scale alpha / r)
    learning_rate: float = 0.0002  # peak learning rate of the LoRA weights (paper: 5e-5; on val 5e-4 lost 0.017 rule score)
    beta: float = 0.04  # KL coefficient against the SFT model (without it answers grew and degenerated); 0 loads no reference model
    epsilon: float = 0.0003  # lower clip of the sequence importance ratio (GSPO paper: 3e-4)
    epsilon_high: float = 0.0004  # upper clip of the sequence importance ratio (GSPO paper: 4e-4)
    temperature: float = 1.0  # sampling temperature of the groups (at 0.7 a fifth of the groups had zero reward variance)
    top_k: int = 0  # sample the groups from the k likeliest tokens only; 0 keeps every token
    min_p: float = 0.0  # drop tokens less likely than this share of the likeliest one; 0 keeps every token
    max_completion_length: int = 64  # new tokens per completion
    per_device_train_batch_size: int = 8  # completions per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    steps_per_generation: int = 4  # optimizer steps per generation batch; above gradient_accumulation_steps makes GSPO off-policy
    num_iterations: int = 1  # passes over each generation batch
    max_steps: int = 200  # optimizer steps; the curriculum holds the prompts these steps consume
    review_ratio: float = 0.5  # share of review-stream prompts (pairs SFT saw) in the curriculum
    curriculum_order: str = "easy_to_hard"  # easy_to_hard (interleaved streams) | shuffled (the ablation)
    w_rubric: float = 1.0  # weight of the rubric rule-score reward
    w_format: float = 0.0  # weight of the format reward (<REASONING>/<SOLUTION> tags): 0.2 for a reasoning-style SFT model
    w_label: float = 1.0  # weight of the label reward on the type statement (val type accuracy 0.835 without, 0.839 with); 0 leaves it out
    audit_rows: int = 64  # training prompts scored in the reward audit
    saturation_limit: float = 0.9  # refuse to train when this share of SFT samples already scores the maximum
    mixed_precision: str = "auto"  # auto (bf16 on a GPU, fp32 on CPU) | no | bf16 | fp16
    eval_batch_size: int = 128  # batch of greedy generation in the comparison
    eval_max_tokens: int = 64  # new tokens per answer in the comparison
    n_bootstrap: int = 2000  # bootstrap resamples of wafers for the intervals
    sampled_rows: int = 256  # validation questions on which both models are also scored as the groups sample
    samples_per_row: int = 4  # sampled answers per question and model


@dataclass(frozen=True)
class EvalSettings(StageSettings):
    """07 · Evaluate: rubric scores, a judge, their alignment, paired comparisons and error analysis."""

    seed: int = 0  # seed of the bootstrap, the optimiser and the example draws
    n_threads: int = 2  # torch and BLAS threads
    models: list = field(default_factory=lambda: ["base", "sft", "rl"])  # the run's own models that answer (those whose folder exists)
    extra_models: list = field(default_factory=lambda: [])  # more rows: each {name, backend (hf | vllm | openai | auto), model, base_url}
    answer_backend: str = "auto"  # engine for the run's models: auto (vllm on a GPU with vllm, else hf) | hf | vllm
    eval_batch_size: int = 128  # questions per generation batch (hf)
    eval_max_tokens: int = 64  # new tokens per answer
    max_questions: int = 0  # cap on questions per split (a seeded sample of wafers); 0 means all
    rule_combine: str = "product"  # rule score: D is H x A (product) or the paper's w_hit H + w_avoid A (paper)
    rule_hit_scale: float = 1.0  # rule score: H is min(1, hit_scale x share of must-hit terms found); the paper: 1.5
    rule_avoid_penalty: float = 0.5  # rule score: A is max(0, 1 - avoid_penalty x violations); the paper: 0.25
    rule_implied_avoid: bool = True  # rule score: claims the must-hit terms rule out (another clock position, zone or shape) are violations
    rule_w_hit: float = 0.6  # rule score, paper combination: weight of H in D
    rule_w_avoid: float = 0.4  # rule score, paper combination: weight of A in D
    rule_threshold: float = 0.8  # rule score: fuzzy match threshold (rapidfuzz ratio / 100)
    rule_weights: dict = field(default_factory=lambda: {"spatial": 0.4, "morphology": 0.35, "root_cause": 0.25})  # rule score: dimension weights of S
    judge_backend: str = "claims"  # claims (offline: the answer's claims checked against the map's facts and label, not an LLM) | embedding (all-MiniLM-L6-v2 similarity to the reference) | openai (an LLM judge)
    judge_model: str = ""  # openai judge: the served model name
    judge_base_url: str = "http://localhost:8000/v1"  # openai judge: endpoint
    judge_api_key_env: str = "OPENAI_API_KEY"  # openai judge: environment variable holding the key
    judge_concurrency: int = 4  # openai judge: requests in flight
    judge_sees_image: bool = False  # openai judge: send it the wafer map and the question, without the reference or rubric (a VLM grades against the map)
    align_trials: int = 200  # optuna TPE trials fitting the rule constants to the judge on validation
    n_bootstrap: int = 2000  # bootstrap resamples of wafers for every interval
    n_gallery: int = 3  # examples per error category in the gallery
    type_eval: str = "vqa"  # defect type as a classification over: vqa (the defect-type questions of the sampled test wafers) | split (every labelled test map of stage 01, asked as the scorer asks: real data sets)
    real_check: str = "wm811k"  # sim-to-real: a real source (wm811k | mixedwm38) or file the SFT model and the baseline are also scored on, every labelled map (skipped for a run on that source, or where the file is absent); empty: none
    real_check_max_maps: int = 0  # sim-to-real: a seeded sample of that many real maps; 0 means all
    perturb_max_questions: int = 1500  # perturbation check: a seeded sample of whole test wafers with about this many scored questions; 0 means all


STAGES: dict[str, type[StageSettings]] = {
    "01_clean": CleanSettings, "02_describe": DescribeSettings, "03_rubrics": RubricsSettings, "04_vqa": VQASettings,
    "05_sft": SFTSettings, "06_rl": RLSettings, "07_eval": EvalSettings,
}


# Allowed values, checked before any stage runs (`check_stage`): the type comes from the annotation (the
# runner checks it against the notebook); these say which values of that type make sense. A rule is keyed by
# "stem.name" or, shared by every stage that has the field, by "name"; every number and every choice field has
# one (a test holds it so).

def _ge(lo):
    return lambda v: None if v >= lo else f"expected >= {lo}"


def _gt(lo):
    return lambda v: None if v > lo else f"expected > {lo}"


def _within(lo, hi, lo_open=False, hi_open=False):
    text = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def rule(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"expected a value in {text}"
    return rule


def _one_of(*choices):
    return lambda v: None if v in choices else f"expected one of {list(choices)}"


def _steps(v):
    return None if v == -1 or v >= 1 else "expected -1 (the epochs decide) or >= 1"


def _optional_seed(v):
    return None if v is None or v >= 0 else "expected None (use seed) or >= 0"


def _views(v):  # the counts of maps.conventions.VIEW_COUNTS, spelt out: the recipe imports nothing of the package
    ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x in (1, 4, 8) for x in v)
    return None if ok else "expected a non-empty list of view counts, each 1, 4 or 8"


def _nonempty(v):
    return None if str(v).strip() else "expected a non-empty value"


SHARE, SHARE_OPEN = _within(0, 1), _within(0, 1, hi_open=True)
RULES: dict[str, Any] = {
    # shared by several stages
    "seed": _ge(0), "n_threads": _ge(1), "max_maps": _ge(0), "temperature": _ge(0), "max_tokens": _ge(1),
    "concurrency": _ge(1), "timeout_s": _gt(0), "max_retries": _ge(0), "hf_batch_size": _ge(1), "n_examples": _ge(0),
    "eval_batch_size": _ge(1), "eval_max_tokens": _ge(1), "n_bootstrap": _ge(1), "learning_rate": _gt(0),
    "per_device_train_batch_size": _ge(1), "gradient_accumulation_steps": _ge(1),
    "mixed_precision": _one_of("auto", "no", "bf16", "fp16"),
    # 01
    "source": _one_of("synthetic", "wm811k", "mixedwm38"), "value3": _one_of("fail", "pass", "error"),
    "n_wafers": _ge(1), "class_mix": _one_of("balanced", "natural"), "mixed_fraction": SHARE,
    "label_noise": SHARE_OPEN, "background_clumping": _ge(0), "loc_area_dies": _ge(0), "lot_affinity": SHARE,
    "background_area_exponent": _ge(0), "edge_fail_extra": SHARE, "scratch_width_dies": _ge(0),
    "background_by_class": _one_of("measured", "pooled"),
    "embedding_kind": _one_of("features", "cnn"), "pca_components": _ge(1), "cnn_epochs": _ge(1), "kmeans_k": _ge(0),
    "kmeans_k_max": _ge(2), "classifier": _one_of("hgb", "logreg"), "oof_folds": _ge(2), "cnn_pattern_epochs": _ge(1),
    "consistency_weight": SHARE, "cluster_veto": SHARE, "n_typical": _ge(0), "n_hard": _ge(0),
    "val_fraction": _within(0, 0.5, True, True), "test_fraction": _within(0, 0.5, True, True),
    "tsne_max_points": _ge(0), "realism_examples": _ge(0),
    # 02, 03
    "02_describe.backend": _one_of("grounded", "openai", "hf"), "03_rubrics.backend": _one_of("rules", "openai", "hf"),
    "image_size": _ge(16), "fact_min_region": _ge(1), "fact_chance_shuffles": _ge(0), "fact_zone_density": SHARE,
    "fuzzy_threshold": SHARE,
    # 04
    "pairs_per_wafer": _ge(1), "min_reference_score": SHARE, "duplicate_threshold": _within(0, 100),
    "sft_answer_style": _one_of("plain", "reasoning"), "paraphrase_backend": _one_of("none", "openai"),
    "paraphrase_share": SHARE,
    # 05
    "sft_seed": _optional_seed, "model_name_or_path": _nonempty, "tiny_vocab_size": _ge(512), "tiny_image_size": _ge(16),
    "tiny_vision_hidden": lambda v: None if v >= 8 and v % 4 == 0 else "expected a multiple of 4, at least 8",
    "tiny_vision_depth": _ge(1), "tiny_text_layers": _ge(1),
    "pretrain_epochs": _ge(0), "pretrain_learning_rate": _gt(0), "pretrain_batch_size": _ge(1),
    "pretrain_max_maps": _ge(0), "pretrain_extra_maps": _ge(0), "pretrain_questions_per_map": _ge(0),
    "pretrain_text_epochs": _ge(0), "pretrain_text_learning_rate": _gt(0), "pretrain_micro_batches": _ge(1),
    "pretrain_text_micro_batches": _ge(1), "rl_holdout_share": SHARE_OPEN, "type_stream_none_ratio": _ge(0),
    "type_stream_class_floor": _ge(0), "type_stream_generated": _ge(0), "type_stream_augment": _one_of("none", "repeats", "all"), "type_views": _views, "lora_r": _ge(1), "lora_alpha": _gt(0), "lora_dropout": SHARE_OPEN,
    "lr_scheduler_type": _nonempty, "warmup_ratio": SHARE, "num_train_epochs": _gt(0), "05_sft.max_steps": _steps,
    "train_sampling_strategy": _one_of("random", "batch_rebalance"), "weight_decay": _ge(0), "optim": _nonempty,
    "max_length": _ge(16), "logging_steps": _ge(1), "save_steps": _ge(0), "eval_steps": _ge(0),
    "num_processes": _ge(1), "n_card_wafers": _ge(0),
    # 06
    "num_generations": _ge(2), "beta": _ge(0), "epsilon": _ge(0), "epsilon_high": _ge(0),
    "06_rl.temperature": _gt(0), "top_k": _ge(0), "min_p": SHARE, "max_completion_length": _ge(1),
    "steps_per_generation": _ge(1), "num_iterations": _ge(1), "06_rl.max_steps": _ge(1), "review_ratio": SHARE,
    "curriculum_order": _one_of("easy_to_hard", "shuffled"), "w_rubric": _ge(0), "w_format": _ge(0),
    "w_label": _ge(0), "audit_rows": _ge(0), "saturation_limit": _within(0, 1, lo_open=True), "sampled_rows": _ge(0),
    "samples_per_row": _ge(1),
    # 07
    "answer_backend": _one_of("auto", "hf", "vllm"), "max_questions": _ge(0), "rule_hit_scale": _gt(0),
    "rule_combine": _one_of("product", "paper"),
    "rule_avoid_penalty": _ge(0), "rule_w_hit": _ge(0), "rule_w_avoid": _ge(0), "rule_threshold": SHARE,
    "judge_backend": _one_of("claims", "embedding", "openai"), "judge_concurrency": _ge(1), "align_trials": _ge(0),
    "n_gallery": _ge(0), "type_eval": _one_of("vqa", "split"), "real_check_max_maps": _ge(0),
    "perturb_max_questions": _ge(0),
}

#: Rules between fields of one stage: (names, rule over the settings, what is expected).
CROSS_RULES: dict[str, list] = {
    "01_clean": [(("kmeans_k", "kmeans_k_max"), lambda s: s.kmeans_k <= s.kmeans_k_max, "kmeans_k <= kmeans_k_max")],
    "06_rl": [(("epsilon", "epsilon_high"), lambda s: s.epsilon_high >= s.epsilon, "epsilon_high >= epsilon")],
}


def rule_for(stem: str, name: str):
    """The value rule of one field (None: the type is all there is to check, as for paths and names)."""
    return RULES.get(f"{stem}.{name}", RULES.get(name))


def stage_problems(stem: str, settings: StageSettings) -> list[str]:
    """Every value of a stage's settings that breaks its rule, each naming the section, key and value."""
    problems = []
    for f in fields(settings):
        rule, value = rule_for(stem, f.name), getattr(settings, f.name)
        if rule is None or isinstance(value, bool) and f.type != "bool":
            continue
        try:
            why = rule(value)
        except TypeError:
            why = f"expected {f.type}"
        if why:
            problems.append(f"{stem}.{f.name} = {value!r}: {why}")
    for names, ok, expected in CROSS_RULES.get(stem, []):
        try:
            good = ok(settings)
        except TypeError:
            good = False
        if not good:
            problems.append(f"{stem}: " + ", ".join(f"{n} = {getattr(settings, n)!r}" for n in names)
                            + f": expected {expected}")
    return problems


def check_stage(stem: str, values: Mapping[str, Any], source: str = "params") -> StageSettings:
    """The stage's settings from its defaults and `values`, every value checked; ValueError lists every
    problem, each naming the section, the key, the value and what was expected."""
    cls = STAGES[stem]
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in values.items() if k in known})
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def sync_notebook(path: Path) -> bool:
    """Rewrite a notebook's parameters cell from its settings; True when it changed."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    text = STAGES[path.stem].parameters_cell()
    if "".join(cell["source"]) == text:
        return False
    cell["source"] = text.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wafersage_utils.recipe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sync", action="store_true", help="rewrite the notebooks' parameters cells from the recipe")
    ap.add_argument("--notebooks", type=Path, default=Path(__file__).resolve().parents[1] / "notebooks")
    args = ap.parse_args(argv)
    for stem, cls in STAGES.items():
        path = args.notebooks / f"{stem}.ipynb"
        if args.sync:
            print(f"{path}: {'rewritten' if sync_notebook(path) else 'unchanged'}")
        else:
            print(f"# {stem}\n{cls.parameters_cell()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
