"""GSPO configuration, curriculum order, and one real GSPO step on the tiny SFT model."""
import json

import numpy as np
import pandas as pd
import pytest

from wafersage_utils.training import rl


def cfg(**kw):
    return rl.RLConfig(model="m", adapter="a", output_dir="o", **kw)


def test_on_policy_configuration_is_refused():
    with pytest.raises(ValueError, match="GSPO silently equals GRPO"):
        cfg(steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1).check_off_policy()
    with pytest.raises(ValueError, match="GSPO silently equals GRPO"):
        cfg(steps_per_generation=4, gradient_accumulation_steps=4).check_off_policy()
    cfg(steps_per_generation=4, gradient_accumulation_steps=1).check_off_policy()  # reuses each generation
    cfg(steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=2).check_off_policy()


def test_group_size_must_divide_the_generation_batch():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        cfg(num_generations=3, per_device_train_batch_size=4, steps_per_generation=2).check_off_policy()


def _stream(prefix, n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)],
                         "difficulty": rng.choice(["easy", "medium", "hard"], n)})


def test_curriculum_interleaves_streams_easy_to_hard():
    review, learning = _stream("r", 40, 0), _stream("l", 40, 1)
    out = rl.curriculum(review, learning, n=30, review_ratio=0.4, order="easy_to_hard", seed=0)
    assert len(out) == 30 and (out["stream"] == "review").sum() == 12
    for _, part in out.groupby("stream"):
        levels = part["difficulty"].map(rl.LEVELS.index).tolist()
        assert levels == sorted(levels)  # each stream easy to hard
    share = (out["stream"] == "review").cumsum() / np.arange(1, 31)
    assert np.all(np.abs(share[4:] - 0.4) <= 0.2)  # every prefix close to the ratio
    again = rl.curriculum(review, learning, n=30, review_ratio=0.4, order="easy_to_hard", seed=0)
    assert out["id"].tolist() == again["id"].tolist()  # deterministic


def test_curriculum_shuffled_ablation_draws_the_same_rows():
    review, learning = _stream("r", 40, 0), _stream("l", 40, 1)
    a = rl.curriculum(review, learning, n=30, review_ratio=0.5, order="easy_to_hard", seed=3)
    b = rl.curriculum(review, learning, n=30, review_ratio=0.5, order="shuffled", seed=3)
    assert sorted(a["id"]) == sorted(b["id"]) and a["id"].tolist() != b["id"].tolist()


def test_curriculum_rejects_bad_input():
    review = _stream("r", 5, 0)
    with pytest.raises(ValueError, match="review_ratio"):
        rl.curriculum(review, review, n=4, review_ratio=1.5)
    with pytest.raises(ValueError, match="order 'random'"):
        rl.curriculum(review, review, n=4, order="random")
    with pytest.raises(ValueError, match="difficulty 'trivial'"):
        rl.curriculum(review.assign(difficulty="trivial"), review, n=4)


def test_one_gspo_step_changes_the_adapter(sft_run, tmp_path):
    """A real GSPO run (2 optimizer steps on one generation batch) on the smoke SFT model moves the LoRA weights,
    and the log carries the instruments: rewards, zero-variance share and clip fractions."""
    from safetensors.torch import load_file

    from wafersage_utils.corpus import exports
    base = json.loads((sft_run / "models" / "base.json").read_text())["path"]
    adapter = sft_run / "models" / "sft" / "train" / "adapter"
    vqa = pd.read_parquet(sft_run / "data" / "vqa.parquet")
    rows = vqa[(vqa["split"] == "train") & (vqa["category"] == "spatial")].head(4)
    ds = exports.to_grpo_dataset(rows, sft_run, system_prompt=False)  # the smoke SFT answers plain
    assert "system" not in {m["role"] for m in ds[0]["prompt"]}
    c = rl.RLConfig(model=base, adapter=str(adapter), output_dir=str(tmp_path / "rl"), num_generations=4,
                    per_device_train_batch_size=4, steps_per_generation=2, max_steps=2, max_completion_length=32,
                    learning_rate=1e-2, seed=0, reward_weights={"rubric": 1.0, "format": 0.2, "label": 1.0})
    assert ds[0]["labels"] == [str(x) for x in rows["labels"].iloc[0]]  # the label reward's column
    result = rl.train(c, ds)
    before = load_file(str(adapter / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "rl" / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    changed = [k for k in before if not np.allclose(before[k].numpy(), after[k].numpy())]
    assert changed, "GSPO left every adapter tensor unchanged"
    logged = {k for h in result["log_history"] for k in h}
    assert {"reward", "frac_reward_zero_std", "rewards/rubric/mean", "rewards/format/mean", "rewards/label/mean"} <= logged
    assert any(k.startswith("clip_ratio") for k in logged)
    assert result["steps"] == 2
    first = next(h for h in result["log_history"] if "reward" in h)
    assert first["reward_std"] > 0 and first["frac_reward_zero_std"] < 1  # the groups' rewards differ


def test_gspo_on_a_fully_fine_tuned_model_trains_a_new_lora(sft_run, tmp_path):
    """With no SFT adapter (stage 05's lora: false), RL puts a new LoRA of its own rank, on language and vision,
    on the SFT model, and the merged export differs from the SFT model it started from."""
    from safetensors.torch import load_file

    from wafersage_utils.corpus import exports
    merged = sft_run / "models" / "sft" / "merged"
    vqa = pd.read_parquet(sft_run / "data" / "vqa.parquet")
    rows = vqa[(vqa["split"] == "train") & (vqa["category"] == "spatial")].head(4)
    ds = exports.to_grpo_dataset(rows, sft_run, system_prompt=False)
    c = rl.RLConfig(model=str(merged), adapter="", output_dir=str(tmp_path / "rl"), lora_r=4, lora_alpha=8,
                    num_generations=4, per_device_train_batch_size=4, steps_per_generation=2, max_steps=2,
                    max_completion_length=32, learning_rate=1e-2, seed=0,
                    reward_weights={"rubric": 1.0, "format": 0.2})
    rl.train(c, ds, export_dir=tmp_path / "rl_merged")
    config = json.loads((tmp_path / "rl" / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    adapter = load_file(str(tmp_path / "rl" / "adapter" / "adapter_model.safetensors"))
    assert any(".visual." in k for k in adapter) and any(".language_model." in k for k in adapter)
    before, after = load_file(str(merged / "model.safetensors")), load_file(str(tmp_path / "rl_merged" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)


def test_prompts_needed_counts_generation_reuse():
    assert rl.prompts_needed(cfg(max_steps=100, per_device_train_batch_size=8, num_generations=8)) == 100
    assert rl.prompts_needed(cfg(max_steps=100, per_device_train_batch_size=8, num_generations=4,
                                 gradient_accumulation_steps=2, steps_per_generation=4)) == 400
    assert rl.prompts_needed(cfg(max_steps=10, per_device_train_batch_size=4, num_generations=8, num_iterations=2)) == 3


def test_holdout_wafers_is_a_seeded_share_of_distinct_wafers():
    ids = [f"w{i}" for i in range(50) for _ in range(9)]  # nine pairs per wafer
    a = rl.holdout_wafers(ids, 0.2, seed=1)
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(ids) and a == sorted(a)
    assert a == rl.holdout_wafers(list(reversed(ids)), 0.2, seed=1)  # the draw does not depend on row order
    assert a != rl.holdout_wafers(ids, 0.2, seed=2)
    assert rl.holdout_wafers(ids, 0.0, seed=1) == []
    with pytest.raises(ValueError, match="rl_holdout_share"):
        rl.holdout_wafers(ids, 1.0, seed=1)


def test_hold_out_of_sft_removes_every_pair_of_the_held_wafers(tmp_path):
    from datasets import Dataset
    wafers = [f"w{i}" for i in range(20) for _ in range(3)]
    questions = [f"q{j}" for j in range(len(wafers))]
    ds = Dataset.from_dict({"messages": [[{"role": "user", "content": [{"type": "text", "text": q}]},
                                          {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
                                         for q in questions]})
    rows = pd.DataFrame({"wafer_id": wafers, "question": questions})
    kept, held, path = rl.hold_out_of_sft(ds, rows, 0.25, seed=3, out_dir=tmp_path)
    assert len(held) == 5 and json.loads((tmp_path / "rl_holdout.json").read_text()) == held
    kept_q = [m[0]["content"][0]["text"] for m in kept["messages"]]
    assert kept_q == [q for q, w in zip(questions, wafers) if w not in held] and len(kept_q) == 45
    assert path == tmp_path / "train_pairs" and path.exists()
    same, none, no_path = rl.hold_out_of_sft(ds, rows, 0.0, seed=3, out_dir=tmp_path / "none")
    assert none == [] and no_path is None and len(same) == len(ds)
    with pytest.raises(ValueError, match="rerun stage 04"):
        rl.hold_out_of_sft(ds, rows.iloc[::-1], 0.25, seed=3, out_dir=tmp_path)


def test_mean_over_takes_the_asked_share_of_logged_steps():
    history = [{"reward": float(i)} for i in range(10)] + [{"loss": 1.0}]
    assert rl.mean_over(history, "reward", 0.0, 0.1) == 0.0
    assert rl.mean_over(history, "reward", 0.9, 1.0) == 9.0
    assert rl.mean_over(history, "reward") == 4.5
    assert np.isnan(rl.mean_over(history, "kl"))
