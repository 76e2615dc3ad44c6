"""Reinforcement learning with GSPO (TRL's GRPOTrainer with sequence-level importance ratios) from the SFT adapter.

GSPO differs from GRPO only off-policy: with one optimizer step per generation batch the sequence ratio is
exactly 1 and the update is GRPO's. `RLConfig.check_off_policy` therefore refuses a configuration that never
reuses a generation (steps_per_generation must exceed gradient_accumulation_steps, or num_iterations exceed 1).

The prompt order is the curriculum (`curriculum`): a review stream (pairs SFT trained on) interleaved with a
learning stream (pairs it never saw), each easy to hard, at a chosen ratio; `order="shuffled"` is the ablation.
TRL's own shuffling is turned off so that the order is the one given.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..chat.vision_attention import batch_vision_attention
from ..corpus.scoring import RuleParams
from ..recipe import RLSettings
from .rewards import RubricReward, format_reward, label_reward
from .sft import export_merged, lora_config, precision_args

LEVELS = ("easy", "medium", "hard")


@dataclass
class RLConfig:
    """GSPO settings; field names follow TRL's GRPOConfig where they exist."""

    model: str  # the base the SFT adapter was trained on (or, with no adapter, the fully fine-tuned SFT model)
    adapter: str  # the SFT adapter folder: RL continues training these LoRA weights; "": a new LoRA on `model`
    output_dir: str
    lora_r: int = 16  # rank of the new LoRA (only when there is no SFT adapter to continue)
    lora_alpha: int = 16
    lora_vision: bool = True  # the new LoRA adapts the vision tower too, as SFT's does
    num_generations: int = 8  # group size (paper: 32)
    learning_rate: float = 5e-5  # paper: 5e-5
    beta: float = 0.0  # KL coefficient; 0 needs no reference model
    epsilon: float = 3e-4  # lower clip of the sequence ratio (GSPO paper's range)
    epsilon_high: float = 4e-4  # upper clip
    temperature: float = 1.0
    max_completion_length: int = 96
    per_device_train_batch_size: int = 8  # completions per micro-batch
    gradient_accumulation_steps: int = 1
    steps_per_generation: int = 4  # optimizer steps per generation batch: >1 makes it off-policy
    num_iterations: int = 1  # passes over each generation batch
    max_steps: int = 100
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    reward_weights: dict = field(default_factory=lambda: {"rubric": 1.0, "format": 0.2})
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 3407
    n_threads: int = 2
    logging_steps: int = 1
    save_steps: int = 0
    extra: dict = field(default_factory=dict)  # further GRPOConfig fields, passed as they are

    def key(self) -> str:
        skip = {"output_dir", "logging_steps", "save_steps", "n_threads"}
        return hashlib.sha256(json.dumps({k: v for k, v in asdict(self).items() if k not in skip},
                                         sort_keys=True, default=str).encode()).hexdigest()[:16]

    def check_off_policy(self) -> None:
        """GSPO's sequence ratios only matter off-policy: refuse a configuration that is on-policy."""
        if not (self.steps_per_generation > self.gradient_accumulation_steps or self.num_iterations > 1):
            raise ValueError(
                f"on-policy configuration (steps_per_generation {self.steps_per_generation} <= "
                f"gradient_accumulation_steps {self.gradient_accumulation_steps} and num_iterations "
                f"{self.num_iterations}): every importance ratio is 1 and GSPO silently equals GRPO; raise "
                f"steps_per_generation above gradient_accumulation_steps or num_iterations above 1")
        if (self.per_device_train_batch_size * self.steps_per_generation) % self.num_generations:
            raise ValueError(f"per_device_train_batch_size x steps_per_generation "
                             f"({self.per_device_train_batch_size} x {self.steps_per_generation}) must be a multiple "
                             f"of num_generations ({self.num_generations})")


def reward_weights(settings: RLSettings) -> dict[str, float]:
    """The rewards stage 06 trains on, with their weights (a zero weight leaves a reward out)."""
    weights = {"rubric": settings.w_rubric, "format": settings.w_format, "label": settings.w_label}
    return {k: v for k, v in weights.items() if v > 0}


def rl_config(settings: RLSettings, model: str, adapter: str, output_dir: str) -> RLConfig:
    """Stage 06's GSPO run from its settings (the recipe): every shared field carried over, none re-typed."""
    shared = ({f.name for f in fields(RLConfig)} & {f.name for f in fields(settings)}) - {"reward_weights"}
    return RLConfig(model=model, adapter=adapter, output_dir=output_dir, reward_weights=reward_weights(settings),
                    **{k: getattr(settings, k) for k in shared},
                    extra={k: v for k, v in {"top_k": settings.top_k, "min_p": settings.min_p}.items() if v})


def holdout_wafers(wafer_ids, share: float, seed: int) -> list[str]:
    """The training wafers kept out of SFT so that RL has a learning stream of wafers the model never trained
    on: round(share x wafers) of the distinct ids, drawn with `seed`, sorted."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"rl_holdout_share {share}: expected a share in [0, 1)")
    ids = sorted(set(map(str, wafer_ids)))
    n = round(len(ids) * share)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=n, replace=False).tolist()) if n else []


def hold_out_of_sft(train_ds, train_rows: pd.DataFrame, share: float, seed: int, out_dir: Path):
    """Keep :func:`holdout_wafers` of the training wafers out of the SFT dataset, for RL's learning stream.

    `train_ds` is stage 04's SFT export of the training split and `train_rows` the matching rows of
    vqa.parquet (same order: checked on the questions). Writes `out_dir/rl_holdout.json` (the wafer ids,
    read by stage 06) and, when wafers are held out, the remaining pairs to `out_dir/train_pairs`.
    Returns (dataset to train on, held-out ids, path of that dataset or None when nothing was held out).
    """
    questions = [m[0]["content"][-1]["text"] for m in train_ds["messages"]]
    if questions != train_rows["question"].tolist():
        raise ValueError(f"the SFT export ({len(questions)} pairs) is out of step with vqa.parquet's training rows "
                         f"({len(train_rows)}): rerun stage 04")
    wafers = train_rows["wafer_id"].astype(str).tolist()
    held = holdout_wafers(wafers, share, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rl_holdout.json").write_text(json.dumps(held))
    if not held:
        return train_ds, held, None
    keep = set(wafers) - set(held)
    kept = train_ds.select([i for i, w in enumerate(wafers) if w in keep])
    path = out_dir / "train_pairs"
    kept.save_to_disk(str(path))
    return kept, held, path


def _easy_to_hard(rows: pd.DataFrame) -> pd.DataFrame:
    bad = sorted(set(rows["difficulty"]) - set(LEVELS))
    if bad:
        raise ValueError(f"difficulty {bad[0]!r}: expected one of {LEVELS}")
    return rows.assign(_lvl=rows["difficulty"].map(LEVELS.index)).sort_values("_lvl", kind="stable").drop(columns="_lvl")


def curriculum(review: pd.DataFrame, learning: pd.DataFrame, n: int, review_ratio: float = 0.5,
               order: str = "easy_to_hard", seed: int = 0) -> pd.DataFrame:
    """`n` RL prompts in curriculum order: round(n x review_ratio) drawn (seeded) from the review stream and the
    rest from the learning stream. `easy_to_hard`: each stream's draw sorted easy to hard, interleaved so that
    every prefix holds about `review_ratio` review rows; `shuffled`: the same draw in random order (the
    ablation). A `stream` column says where each row came from. A stream too short gives what it has."""
    if not 0.0 <= review_ratio <= 1.0:
        raise ValueError(f"review_ratio {review_ratio}: expected a share between 0 and 1")
    if order not in ("easy_to_hard", "shuffled"):
        raise ValueError(f"curriculum order {order!r}: expected easy_to_hard or shuffled")
    n_review = min(len(review), round(n * review_ratio))
    n_learning = min(len(learning), n - n_review)
    a = review.sample(n=n_review, random_state=seed).assign(stream="review")
    b = learning.sample(n=n_learning, random_state=seed + 1).assign(stream="learning")
    if order == "shuffled":
        return pd.concat([a, b]).sample(frac=1.0, random_state=seed + 2).reset_index(drop=True)
    a, b = _easy_to_hard(a), _easy_to_hard(b)
    share = n_review / max(n_review + n_learning, 1)
    picks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and i < share * (i + j + 1)):
            picks.append(a.iloc[i])
            i += 1
        else:
            picks.append(b.iloc[j])
            j += 1
    return pd.DataFrame(picks).reset_index(drop=True)


def reward_functions(names, rule_params=None) -> list:
    """The TRL reward functions for `names` (rubric, format, label), in that order."""
    known = {"rubric": lambda: RubricReward(rule_params or RuleParams()), "format": lambda: format_reward,
             "label": lambda: label_reward}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"reward {bad[0]!r}: expected one of {sorted(known)}")
    return [known[n]() for n in names]


def _prepare_output(cfg: RLConfig) -> None:
    out = Path(cfg.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "rl_config.json").write_text(json.dumps({"key": cfg.key(), "config": asdict(cfg)}, indent=1, default=str))


def build_trainer(cfg: RLConfig, dataset, rule_params=None, callbacks=()):
    """TRL GRPOTrainer in GSPO mode, continuing the SFT adapter's LoRA weights, or training a new LoRA on a
    fully fine-tuned SFT model (no adapter)."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    cfg.check_off_policy()
    prec = precision_args(cfg.mixed_precision)
    processor = AutoProcessor.from_pretrained(cfg.model)
    processor.tokenizer.padding_side = "left"
    base = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=torch.bfloat16 if prec["bf16"] else torch.float32)
    batch_vision_attention(base)  # one attention call per layer for same-size pictures (the same numbers)
    if cfg.adapter:
        model = PeftModel.from_pretrained(base, cfg.adapter, is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(cfg.lora_r, cfg.lora_alpha, vision=cfg.lora_vision))
    names = list(cfg.reward_weights)
    args = GRPOConfig(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, beta=cfg.beta, epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high, importance_sampling_level="sequence", loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, num_generations=cfg.num_generations, temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, steps_per_generation=cfg.steps_per_generation,
        num_iterations=cfg.num_iterations, max_steps=cfg.max_steps, shuffle_dataset=False,
        reward_weights=[float(cfg.reward_weights[n]) for n in names], seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, **prec, **cfg.extra)
    return GRPOTrainer(model=model, reward_funcs=reward_functions(names, rule_params), args=args,
                       train_dataset=dataset, processing_class=processor, callbacks=list(callbacks))


def train(cfg: RLConfig, dataset, export_dir: Path | None = None, rule_params=None, callbacks=()) -> dict:
    """Run GSPO; save the adapter (and the merged model to `export_dir`). Returns the reward trajectory,
    zero-variance shares, clip fractions and speed; also written to <output_dir>/train_result.json."""
    import torch

    torch.set_num_threads(max(1, cfg.n_threads))
    _prepare_output(cfg)
    trainer = build_trainer(cfg, dataset, rule_params, callbacks)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "reward" in h]
    out = Path(cfg.output_dir)
    trainer.save_model(str(out / "adapter"))
    if export_dir is not None:
        export_merged(cfg.model, out / "adapter", Path(export_dir))
    result = {"steps": trainer.state.global_step, "seconds": seconds, "n_prompts": len(dataset),
              "reward_first": history[0]["reward"] if history else None,
              "reward_last": history[-1]["reward"] if history else None,
              "log_history": trainer.state.log_history}
    (out / "train_result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def zero_variance_share(history: list[dict], skip_share: float = 0.1) -> float:
    """Mean share of groups whose rewards are all equal, after the first `skip_share` of the logged steps."""
    v = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    v = v[int(len(v) * skip_share):] or v
    return float(np.mean(v)) if v else float("nan")


def prompts_needed(cfg: RLConfig) -> int:
    """Prompts that `max_steps` optimizer steps consume: each step takes per_device_train_batch_size x
    gradient_accumulation_steps completions, num_generations per prompt, each generation batch reused
    num_iterations times."""
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps / (cfg.num_generations * cfg.num_iterations)
    return int(np.ceil(cfg.max_steps * per_step))


def mean_over(history: list[dict], key: str, start: float = 0.0, end: float = 1.0) -> float:
    """Mean of a logged value over the share [start, end) of the logged steps (e.g. 0.9 to 1.0: the last tenth)."""
    v = [float(h[key]) for h in history if key in h]
    part = v[int(len(v) * start): max(int(len(v) * end), int(len(v) * start) + 1)]
    return float(np.nanmean(part)) if part else float("nan")
