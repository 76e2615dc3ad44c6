"""Supervised fine-tuning with TRL: LoRA SFT of Qwen3-VL (and the tiny base's full-parameter captioning).

One entry point, :func:`run_config`, reads a JSON training config and is what both the notebook (in
process) and `accelerate launch -m wafersage_utils.training.sft CONFIG` (several processes, mixed precision,
DeepSpeed or FSDP) execute. TRL's `SFTTrainer` is the loop; this module only builds its inputs:

- loss on the assistant turn only (`assistant_only_loss`, which needs the real Qwen3-VL chat template);
- no truncation: examples longer than `max_length` tokens (image tokens included) are dropped and counted
  before training, so a cut never falls inside an image or an answer;
- a first-steps check that every trainable parameter receives a gradient (frozen towers, gradient
  checkpointing without input gradients and wrong LoRA targets all show up as missing gradients);
- checkpoints every `save_steps`, and an interrupted run with the same config resumes from the last one;
- 8-bit AdamW where bitsandbytes and a GPU are present, else plain AdamW (logged);
- the adapter and a merged model with its processor exported for `pipeline("image-text-to-text")`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..chat.vision_attention import batch_vision_attention
from ..recipe import SFTSettings
from .batches import PaddedCollator, distinct_images, encode

log = logging.getLogger("wafersage.sft")


# Linear layers LoRA adapts: the language model's attention and MLP, and optionally the vision tower's
# (Qwen3-VL names them attn.qkv, attn.proj, mlp.linear_fc1/2; the patch merger is left alone).
LANGUAGE_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VISION_TARGETS = r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])"


def lora_targets(vision: bool) -> str:
    """Regex over module names for PEFT's `target_modules` (a full match), language only or also vision."""
    return f"({LANGUAGE_TARGETS}|{VISION_TARGETS})" if vision else LANGUAGE_TARGETS


def lora_config(r: int, alpha: float, dropout: float = 0.0, vision: bool = True):
    """PEFT LoRA on the language model's attention and MLP and, with `vision`, the vision tower's (SFT and RL)."""
    from peft import LoraConfig
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(vision),
                      task_type="CAUSAL_LM")


@dataclass
class TrainConfig:
    """Everything a training run needs; field names follow TRL/transformers where they exist."""

    model: str
    output_dir: str
    train_dataset: str = ""  # a `save_to_disk` folder (the accelerate path); in process a Dataset is passed
    eval_dataset: str = ""
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_vision: bool = False
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 4
    weight_decay: float = 0.001
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    optim: str = "adamw_8bit"  # 8-bit AdamW where possible; see resolve_optim
    max_length: int | None = 2048
    seed: int = 3407
    n_threads: int = 2
    logging_steps: int = 10
    save_steps: int = 100  # 0: no intermediate checkpoints
    save_total_limit: int = 2
    eval_steps: int = 0  # 0: no evaluation during training
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that supports it, fp32 on CPU
    max_eval_examples: int = 200
    resume: bool = True
    grad_check_steps: int = 2
    encode_max_gb: float = 4.0  # encode examples and images once when the image bank fits in this; 0: TRL's collator
    # random | batch_rebalance (each optimizer step's random examples, sorted by length into its
    # gradient_accumulation_steps micro-batches: less padding, the same step) | group_by_length
    train_sampling_strategy: str = "random"
    # On a device without Triton, the loss on the labelled positions only (answer_token_loss); False: TRL's fused
    # LM head everywhere (the path before 2026-12-04, kept for the benchmark)
    answer_loss: bool = True
    # The vision tower's attention in one call per layer for same-size pictures (chat.vision_attention: the same
    # gradients, bit for bit); False: the library's call per picture (the path before 2026-12-07, for the benchmark)
    batched_vision: bool = True
    extra: dict = field(default_factory=dict)  # further SFTConfig fields, passed as they are

    def key(self) -> str:
        """Hash of the settings that shape the weights (not the bookkeeping ones)."""
        skip = {"output_dir", "logging_steps", "save_steps", "save_total_limit", "resume", "n_threads",
                "eval_steps", "max_eval_examples", "grad_check_steps", "encode_max_gb", "batched_vision"}
        return hashlib.sha256(json.dumps({k: v for k, v in asdict(self).items() if k not in skip},
                                         sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_config(settings: SFTSettings, model: str, output_dir: str, train_dataset: str = "",
                 eval_dataset: str = "") -> TrainConfig:
    """Stage 05's LoRA run from its settings (the recipe): every training field carried over, none re-typed."""
    shared = {f.name for f in fields(TrainConfig)} & {f.name for f in fields(settings)}
    return TrainConfig(model=model, output_dir=output_dir, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       **{k: getattr(settings, k) for k in shared - {"seed"}},
                       seed=settings.seed if settings.sft_seed is None else settings.sft_seed)


def resolve_optim(name: str) -> str:
    """TRL's optimizer name: 8-bit AdamW needs bitsandbytes and CUDA; elsewhere fall back to AdamW, logged."""
    import torch
    if name in ("adamw_8bit", "adamw_bnb_8bit"):
        if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
            return "adamw_bnb_8bit"
        log.warning("8-bit AdamW needs bitsandbytes and a GPU (%s); using adamw_torch_fused instead",
                    "no GPU" if not torch.cuda.is_available() else "bitsandbytes not installed")
        return "adamw_torch_fused"
    return name


def precision_args(mode: str) -> dict:
    import torch
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if mode not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision {mode!r}: expected auto, no, bf16 or fp16")
    return {"bf16": mode == "bf16", "fp16": mode == "fp16"}


class GradientCheck:
    """Raise if, on the first optimizer steps, a trainable parameter gets no gradient, or never a nonzero
    one. (LoRA's B matrices start at zero, so A gets an exactly zero gradient on step 1: nonzero is
    required by the last checked step.)"""

    def __init__(self, steps: int = 2):
        from transformers import TrainerCallback
        self.steps, self.nonzero, self.report = steps, set(), {}
        check = self

        class _Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
                check.observe(model, state.global_step + 1)
        self.callback = _Callback()

    def observe(self, model, step: int) -> None:
        if step > self.steps or model is None:
            return
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n, p in params if p.grad is None]
        if missing:
            raise RuntimeError(f"step {step}: {len(missing)} of {len(params)} trainable parameters got no gradient, "
                               f"e.g. {missing[:3]} (frozen input? gradient checkpointing without input gradients?)")
        self.nonzero |= {n for n, p in params if bool(p.grad.detach().abs().sum() > 0)}
        if step == self.steps:
            zero = [n for n, _ in params if n not in self.nonzero]
            self.report = {"trainable_tensors": len(params), "zero_gradient_tensors": len(zero)}
            if zero:
                raise RuntimeError(f"after {step} steps {len(zero)} of {len(params)} trainable parameters have only "
                                   f"had zero gradients, e.g. {zero[:3]}")


class StepTimer:
    """Wall time of every optimizer step (CUDA synchronised), for benchmarks: `callbacks=[timer.callback]`.

    A step's time runs from the end of the step before (or the start of training) to its own end, so it covers
    everything the step costs: fetching and collating its batches (which the Trainer does before
    `on_step_begin`), forward and backward, the optimizer and the callbacks."""

    def __init__(self):
        from transformers import TrainerCallback
        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                timer.sync()
                timer._last = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.sync()
                now = time.perf_counter()
                timer.times.append(now - timer._last)
                timer._last = now
        self.times: list[float] = []
        self.callback = _Callback()

    @staticmethod
    def sync():
        """Wait for queued CUDA work, so a wall-clock reading covers it (no-op on CPU)."""
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def example_lengths(dataset, processor, batch: int = 64) -> list[int]:
    """Tokens per example with the image tokens expanded, as the trainer will see them."""
    out = []
    for s in range(0, len(dataset), batch):
        part = dataset[s: s + batch]
        texts = processor.apply_chat_template(part["messages"], tokenize=False)
        images = [im for ims in part["images"] for im in ims]
        enc = processor(text=texts, images=images or None, padding=False)
        out += [len(ids) for ids in enc["input_ids"]]
    return out


def drop_too_long(dataset, processor, max_length: int | None):
    """The examples that fit in max_length, and how many did not."""
    if not max_length:
        return dataset, 0
    lengths = example_lengths(dataset, processor)
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    if len(keep) < len(lengths):
        log.warning("%d of %d examples exceed max_length %d tokens (longest %d) and are left out",
                    len(lengths) - len(keep), len(lengths), max_length, max(lengths))
    return dataset.select(keep), len(lengths) - len(keep)


def bank_gigabytes(dataset, processor) -> float:
    """Memory the encoded images of `dataset` would take (float32 pixel values of every distinct image)."""
    n, first = distinct_images(dataset)
    if not n:
        return 0.0
    pixels = processor.image_processor(images=[first], return_tensors="pt")["pixel_values"]
    return n * pixels.numel() * pixels.element_size() / 2**30


def encoded_inputs(cfg: TrainConfig, train_ds, eval_ds, processor):
    """(train, eval, collator, dropped): examples encoded once with a padding collator when their images fit in
    `encode_max_gb`, else the raw examples for TRL's on-the-fly collator (None). Examples over max_length tokens
    are dropped either way."""
    from trl.chat_template_utils import get_training_chat_template

    vision = "images" in train_ds.column_names
    if not vision or not cfg.encode_max_gb or bank_gigabytes(train_ds, processor) > cfg.encode_max_gb:
        if vision and cfg.encode_max_gb:
            log.info("images exceed encode_max_gb %.1f: TRL's collator processes them on the fly", cfg.encode_max_gb)
        train_ds, dropped = drop_too_long(train_ds, processor, cfg.max_length)
        return train_ds, eval_ds, None, dropped
    template = get_training_chat_template(processor)
    t0 = time.perf_counter()
    train_enc, bank = encode(train_ds, processor, template)
    n_train = len(train_enc)
    if cfg.max_length:
        train_enc = train_enc.filter(lambda n: n <= cfg.max_length, input_columns="length")
        if len(train_enc) < n_train:
            log.warning("%d of %d examples exceed max_length %d tokens and are left out", n_train - len(train_enc),
                        n_train, cfg.max_length)
    if eval_ds is not None:
        eval_enc, eval_bank = encode(eval_ds, processor, template)
        offset = len(bank.pixel_values)
        bank.pixel_values += eval_bank.pixel_values
        bank.grids += eval_bank.grids
        eval_ds = eval_enc.map(lambda j: {"image": j + offset}, input_columns="image")
    log.info("encoded %d examples and %d images in %.1f s", n_train, len(bank.pixel_values), time.perf_counter() - t0)
    return train_enc, eval_ds, PaddedCollator(bank, processor.tokenizer.pad_token_id), n_train - len(train_enc)


def _prepare_output(cfg: TrainConfig) -> str | None:
    """Checkpoint to resume from (same config, unfinished run), else a clean output folder."""
    from transformers.trainer_utils import get_last_checkpoint
    out = Path(cfg.output_dir)
    stamp = out / "train_config.json"
    same = stamp.exists() and json.loads(stamp.read_text()).get("key") == cfg.key()
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if cfg.resume and same and last and not (out / "train_result.json").exists():
        log.info("resuming from %s", last)
        return last
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stamp.write_text(json.dumps({"key": cfg.key(), "config": asdict(cfg)}, indent=1, default=str))
    return None


def answer_loss_applies(trainer, model, inputs) -> bool:
    """Whether :func:`answer_token_loss` computes this batch's loss instead of TRL's fused LM head: a single
    process on a device without Triton (TRL then scores every position), the plain next-token loss, and a model
    whose head is a plain projection of its backbone's last hidden state."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = getattr(core.config, "text_config", core.config)
    device = next(core.parameters()).device
    return (device.type not in ("cuda", "xpu") and trainer.accelerator.num_processes == 1
            and "labels" in inputs and "attention_mask" in inputs and hasattr(core, "model")
            and not trainer.aux_loss_enabled and trainer.compute_loss_func is None and trainer.label_smoother is None
            and trainer.args.loss_type == "nll" and getattr(text, "final_logit_softcapping", None) is None
            and getattr(text, "logit_scale", None) in (None, 1.0))


def answer_token_loss(trainer, model, inputs, num_items_in_batch=None):
    """The loss TRL's SFTTrainer computes (summed negative log-likelihood of the labelled next tokens over
    `num_items_in_batch`), with the vocabulary projection applied to the labelled positions only.

    On a device without Triton TRL's fused LM head projects every position (prompt, image and padding tokens
    too) and recomputes the projection in the backward; for the tiny model that was a quarter of a training
    step, although only the answer's tokens carry a label. The same loss, the same metrics TRL logs (entropy and
    token accuracy over the labelled positions, tokens seen); the sums run in another order, so weights agree
    to float rounding, not bit for bit."""
    import torch
    import torch.nn.functional as F
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    hidden = core.model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    logits = core.get_output_embeddings()(hidden[:, :-1][mask]).float()
    wanted = targets[mask]
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = F.cross_entropy(logits, wanted, reduction="sum") / torch.as_tensor(count, device=logits.device).clamp(min=1)
    with torch.no_grad():
        log_p = logits.log_softmax(-1)
        n = int(mask.sum())
        mode = "train" if trainer.model.training else "eval"
        trainer._metrics[mode]["entropy"].append(float(-(log_p.exp() * log_p).sum()) / n if n else 0.0)
        trainer._metrics[mode]["mean_token_accuracy"].append(float((logits.argmax(-1) == wanted).sum()) / n if n else 0.0)
        if mode == "train":
            trainer._total_train_tokens += int(inputs["attention_mask"].sum())
        trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    return loss


@functools.cache
def trainer_class():
    """TRL's SFTTrainer, with the batch_rebalance sampler seeded by the run's data seed (transformers leaves it at
    42, so the SFT seed would not move the data order), and on CPUs the loss of :func:`answer_token_loss`."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler
    from trl import SFTTrainer

    class SeededSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, BatchRebalanceSampler):
                sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return sampler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not getattr(self, "answer_loss", True) or not answer_loss_applies(self, model, inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return answer_token_loss(self, model, inputs, num_items_in_batch)
    return SeededSFTTrainer


def build_trainer(cfg: TrainConfig, train_ds, eval_ds=None, callbacks=(), processor=None, collator=None):
    """TRL SFTTrainer for the config: LoRA (PEFT) or full-parameter, CPU-safe defaults. With a `collator`, the
    datasets are already encoded (:func:`encoded_inputs`) and TRL only runs the loop."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig

    prec = precision_args(cfg.mixed_precision)
    processor = processor or AutoProcessor.from_pretrained(cfg.model)
    dtype = torch.bfloat16 if prec["bf16"] else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype)
    if cfg.batched_vision:
        batch_vision_attention(model)
    args = SFTConfig(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size * 2,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, optim=resolve_optim(cfg.optim),
        seed=cfg.seed, data_seed=cfg.seed, max_length=None, assistant_only_loss=collator is None,  # else in the labels
        gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if (cfg.eval_steps and eval_ds is not None) else "no", eval_steps=cfg.eval_steps or None,
        report_to="none", dataloader_num_workers=0, remove_unused_columns=False,
        train_sampling_strategy=cfg.train_sampling_strategy,
        dataset_kwargs={"skip_prepare_dataset": True} if collator is not None else None, **prec, **cfg.extra)
    peft = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_vision) if cfg.lora else None
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              data_collator=collator, processing_class=processor, peft_config=peft,
                              callbacks=list(callbacks))
    trainer.answer_loss = cfg.answer_loss
    return trainer


def export_merged(base: str, adapter_dir: Path, out_dir: Path) -> Path:
    """Base + adapter merged into plain weights, saved with the processor: loads like any Qwen3-VL folder."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(base)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoProcessor.from_pretrained(base).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def train(cfg: TrainConfig, train_ds, eval_ds=None, export_dir: Path | None = None, callbacks=()) -> dict:
    """Train (or resume), then save the adapter (LoRA) or the model (full) and, for LoRA, the merged model.
    Returns losses, speed and counts; also written to <output_dir>/train_result.json."""
    import torch
    torch.set_num_threads(max(1, cfg.n_threads))
    resume_from = _prepare_output(cfg)
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(cfg.model)
    if eval_ds is not None and cfg.max_eval_examples and len(eval_ds) > cfg.max_eval_examples:
        eval_ds = eval_ds.shuffle(seed=cfg.seed).select(range(cfg.max_eval_examples))
    train_ds, eval_ds, collator, dropped = encoded_inputs(cfg, train_ds, eval_ds if cfg.eval_steps else None,
                                                          processor)
    check = GradientCheck(cfg.grad_check_steps)
    trainer = build_trainer(cfg, train_ds, eval_ds, [check.callback, *callbacks], processor, collator)
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h]
    result = {"loss_first": history[0]["loss"] if history else None, "loss_last": history[-1]["loss"] if history else None,
              "train_loss": out.training_loss, "steps": trainer.state.global_step, "seconds": seconds,
              "samples_per_second": out.metrics.get("train_samples_per_second"), "n_examples": len(train_ds),
              "dropped_too_long": dropped, "resumed_from": resume_from, "optim": trainer.args.optim,
              "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
              "total_parameters": sum(p.numel() for p in trainer.model.parameters()), "gradient_check": check.report,
              "log_history": trainer.state.log_history}
    if trainer.accelerator.is_main_process:
        out_dir = Path(cfg.output_dir)
        if cfg.lora:
            trainer.save_model(str(out_dir / "adapter"))
            if export_dir is not None:
                export_merged(cfg.model, out_dir / "adapter", Path(export_dir))
        elif export_dir is not None:
            trainer.save_model(str(export_dir))
            trainer.processing_class.save_pretrained(str(export_dir))
            (Path(export_dir) / "training_args.bin").unlink(missing_ok=True)  # a pickle: train_config.json says it all
        (out_dir / "train_result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def run_config(path: Path) -> dict:
    """Train from a JSON config file (what `accelerate launch -m wafersage_utils.training.sft` runs)."""
    from datasets import load_from_disk
    raw = json.loads(Path(path).read_text())
    export_dir = raw.pop("export_dir", None)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown training config key(s) {unknown}")
    cfg = TrainConfig(**raw)
    train_ds = load_from_disk(cfg.train_dataset)
    eval_ds = load_from_disk(cfg.eval_dataset) if cfg.eval_dataset else None
    return train(cfg, train_ds, eval_ds, Path(export_dir) if export_dir else None)


def write_config(cfg: TrainConfig, path: Path, export_dir: Path | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(cfg), "export_dir": str(export_dir) if export_dir else None}, indent=1))
    return path


def launch_command(config_path: Path, num_processes: int, mixed_precision: str = "auto",
                   accelerate_config: str = "") -> list[str]:
    """`accelerate launch` command line for the same training in several processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    if mixed_precision != "auto":
        cmd += ["--mixed_precision", mixed_precision]
    if num_processes > 1:
        cmd += ["--multi_gpu"] if not accelerate_config else []
    return cmd + ["-m", "wafersage_utils.training.sft", str(config_path)]


def launch(config_path: Path, num_processes: int, mixed_precision: str = "auto", accelerate_config: str = "") -> dict:
    """Run the training through `accelerate launch`; returns the result the main process wrote."""
    cmd = launch_command(config_path, num_processes, mixed_precision, accelerate_config)
    log.info("launching: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    out = json.loads(Path(config_path).read_text())["output_dir"]
    return json.loads((Path(out) / "train_result.json").read_text())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    run_config(Path(sys.argv[1]))
