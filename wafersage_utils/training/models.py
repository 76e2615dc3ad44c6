"""The model factory: a hub id or a local folder loads with the Auto classes; `tiny` builds the embedded base.

The embedded base is the real Qwen3-VL architecture at toy size (:mod:`.tiny_vlm`) with a tokenizer trained
on the run's own training-split text, then pre-trained in two steps, as real VLMs are (a language model first, then vision-language training):

1. *speaking*: text-only language modelling (vision tower frozen) on the run's training-split text (teacher
   descriptions, questions, answers), so every domain word has a trained embedding, as in an LLM that has read
   about wafer maps. Without it LoRA, which cannot change embeddings, could not make the model say words it
   never produced (it collapsed every type answer onto one mash of pattern names).
2. *seeing*: full-parameter captioning of every training-split map of stage 01 (and, by parameter, freshly
   generated maps; never a validation or test map), rendered as the students see it, with the spatial
   sentences of its measured facts without die counts, plus generic visual questions (which zones hold
   failures, what shape the largest group forms, where it is). Never a defect class or a cause. Done
   second, because language modelling after captioning made the captions degenerate.

So the base sees and speaks but has never been shown which picture goes with which defect class: that is what
SFT has to teach. The built base is cached under a hash of everything that
shaped it and reused across runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..corpus.describe import SHAPE_WORDS, clock_phrase, seeded_rng, spatial_sentences, with_article
from ..maps.facts import measure
from ..maps.render import to_image
from ..maps.synth import derived_config, generate
from ..recipe import SFTSettings
from . import sft, tiny_vlm
from .tiny_vlm import TinySpec

log = logging.getLogger("wafersage.models")

TINY = "tiny"
CAPTION_PROMPTS = ("Describe this wafer map.", "Describe the image.", "What do you see on this wafer map?")


@dataclass(frozen=True)
class PretrainSettings:
    """Full-parameter captioning that turns random weights into a base model."""

    # Defaults are the recipe's (`SFTSettings.pretrain_<name>`), one setting in one place; image_size and
    # render_size come from the run (`pretrain_settings`).
    epochs: float = SFTSettings.pretrain_epochs
    learning_rate: float = SFTSettings.pretrain_learning_rate
    batch_size: int = SFTSettings.pretrain_batch_size
    max_maps: int = SFTSettings.pretrain_max_maps  # 0: every training-split map (and every extra one)
    extra_maps: int = SFTSettings.pretrain_extra_maps  # freshly generated maps captioned besides the run's training split
    questions_per_map: int = SFTSettings.pretrain_questions_per_map  # generic visual questions per map besides its caption
    warmup_ratio: float = 0.05
    image_size: int = SFTSettings.tiny_image_size
    # Pixels each seeing picture is rendered at before the processor resizes it to the model's input: the run's
    # render size (stage 02's image_size), so the base learns to see the very pictures SFT and the scorer show
    # it (rendered at that size, then resized by the processor); 0 renders at image_size itself.
    render_size: int = 0
    text_epochs: float = SFTSettings.pretrain_text_epochs  # text-only language modelling before captioning; 0 skips it
    text_learning_rate: float = SFTSettings.pretrain_text_learning_rate
    text_batch_size: int = 16
    # Micro-batches per optimizer step (batch sizes count the whole step). Above 1 a step's random examples are
    # sorted by length into its micro-batches (transformers' batch_rebalance): less padding, the same step.
    micro_batches: int = SFTSettings.pretrain_micro_batches
    text_micro_batches: int = SFTSettings.pretrain_text_micro_batches
    # A map's caption and questions as the turns of one conversation (one example, its picture encoded once)
    # instead of one example each: :func:`caption_corpus` draws the order of the turns per map.
    pack_questions: bool = SFTSettings.pretrain_pack_questions

    def __post_init__(self):
        for batch, micro in (("batch_size", "micro_batches"), ("text_batch_size", "text_micro_batches")):
            b, m = getattr(self, batch), getattr(self, micro)
            if m < 1 or b % m:
                raise ValueError(f"PretrainSettings: {micro} ({m}) must be at least 1 and divide {batch} ({b}): "
                                 f"a step of {b} examples is split into {m} equal micro-batches")


def pretrain_settings(settings: SFTSettings, render_size: int = 0) -> PretrainSettings:
    """The tiny base's pre-training from stage 05's settings: each `pretrain_<name>` field, the tiny image size,
    and `render_size`, the size the run renders its maps at (stage 02's image_size)."""
    carried = {f.name: getattr(settings, f"pretrain_{f.name}") for f in fields(PretrainSettings)
               if hasattr(settings, f"pretrain_{f.name}")}
    return PretrainSettings(**carried, image_size=settings.tiny_image_size, render_size=render_size)


def tiny_spec(settings: SFTSettings) -> TinySpec:
    """The tiny Qwen3-VL's sizes from stage 05's settings."""
    return TinySpec(vocab_size=settings.tiny_vocab_size, image_size=settings.tiny_image_size,
                    vision_hidden=settings.tiny_vision_hidden, vision_depth=settings.tiny_vision_depth,
                    layers=settings.tiny_text_layers)


def cache_root(explicit: str = "") -> Path:
    """Where built base models live: the argument, $WAFERSAGE_CACHE/models, or ~/.cache/wafersage/models."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("WAFERSAGE_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "wafersage") / "models"


_SIZES = re.compile(r", about \d+ dies long and \d+ wide \(\d+ dies\)| \(\d+% of dies\)")


def caption(f: dict, rng) -> str:
    """The spatial sentences of the facts without die counts and sizes: what can be seen at a glance (shape,
    zone, clock position, density), so that the loss is not spent on numbers no eye reads off a picture."""
    return _SIZES.sub("", " ".join(spatial_sentences(f, rng)))


def pretraining_maps(maps: pd.DataFrame, extra_maps: int, seed: int, generator: dict | None = None) -> pd.DataFrame:
    """The run's training-split maps plus `extra_maps` freshly generated ones (a generator seed no run uses),
    so that the base sees more pictures than the run samples; never a validation or test map.

    `generator`: the SynthConfig fields stage 01 drew the run's maps with (its `data/generator.json`); the extra
    maps take their realism settings from it (background, Loc size, scratch width, grid sizes...), so a run that
    changes the generator pre-trains on the same kind of map. None (a real-data run): the generator's defaults."""
    train = maps.loc[maps["split"] == "train", ["id", "wafer_map"]]
    if extra_maps <= 0:
        return train.reset_index(drop=True)
    extra = generate(derived_config(generator, n_wafers=extra_maps, seed=10_000 + seed, mixed_fraction=0.1,
                                    label_noise=0.0))
    extra = extra.assign(id=[f"pretrain-{i}" for i in range(len(extra))])[["id", "wafer_map"]]
    return pd.concat([train, extra], ignore_index=True)


def visual_questions(f: dict, rng) -> list[tuple[str, str]]:
    """Generic questions about what the picture shows (zones, shape, clock position), answered from the facts
    without any class name: the kind of visual question answering a general VLM is pre-trained on."""
    zones = " and ".join({"center": "the center", "mid-radius": "mid-radius", "edge": "the edge"}[z]
                         for z in f["zones_with_failures"])
    out = [("Which zones of the wafer hold clustered failing dies?",
            f"Clustered failures lie at {zones}." if zones else "No zone holds clustered failures.")]
    if f["near_full"]:
        shape = "Nearly every die fails."
    elif f["ring_zones"]:
        shape = f"A closed ring around the {f['ring_zones'][0]} zone."
    elif f["regions"]:
        reg = f["regions"][0]
        shape = f"{with_article(str(rng.choice(SHAPE_WORDS[reg['shape']]))).capitalize()} in the {reg['zone']} zone."
        out.append(("Where is the largest group of failing dies?", f"In the {reg['zone']} zone {clock_phrase(reg)}."))
    else:
        shape = "No group stands out; " + ("many failures are scattered." if f["scattered"] else "the failures are sparse.")
    out.append(("What shape does the largest group of failing dies form?", shape))
    return out


def caption_corpus(maps: pd.DataFrame, size: int, seed: int, max_maps: int = 0, extra_maps: int = 0,
                   questions_per_map: int = 2, generator: dict | None = None, shuffle_turns: bool = False):
    """(images, texts, prompts) for pre-training: each training-split map (and generated extra) captioned with
    the spatial facts, and asked up to `questions_per_map` generic visual questions; never a class or a cause.
    A map's examples are consecutive and share one image object. `shuffle_turns` (packed conversations) draws
    their order per map, so that no kind of answer always follows the others (and can copy from them)."""
    pool = pretraining_maps(maps, extra_maps, seed, generator)
    if max_maps and len(pool) > max_maps:
        pool = pool.sample(n=max_maps, random_state=seed).reset_index(drop=True)
    images, captions, prompts = [], [], []
    for map_id, m in zip(pool["id"], pool["wafer_map"]):
        rng = seeded_rng(f"caption|{map_id}", seed)
        image, f = to_image(m, size).convert("RGB"), measure(m)
        asks = [(CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))], caption(f, rng))]
        vq = visual_questions(f, rng)
        asks += [vq[i] for i in sorted(rng.permutation(len(vq))[:questions_per_map])]
        if shuffle_turns:
            asks = [asks[i] for i in rng.permutation(len(asks))]
        for prompt, text in asks:
            images.append(image)
            prompts.append(prompt)
            captions.append(text)
    return images, captions, prompts


def caption_dataset(images, captions, prompts, pack: bool = False):
    """The captions in TRL's VLM conversation layout (the same layout SFT uses).

    A map's picture is shared by its caption and its questions (the same PIL object, three examples): it is
    encoded to the dataset's image bytes once, as `datasets` itself would encode it, instead of once per
    example (27,000 encodes instead of 82,000 in the default's seeing step).

    `pack`: the consecutive examples of one picture become the turns of one conversation, the picture in its
    first user turn only; every answer is still a labelled assistant turn (the chat template's generation
    marks), so the loss covers the same answers with a third of the picture encodings and forward passes."""
    from datasets import Dataset, Image, List
    from datasets.features.image import encode_pil_image
    encoded: dict[int, dict] = {}
    cells, conversations = [], []
    for im, p, c in zip(images, prompts, captions):
        turn = [{"role": "user", "content": [{"type": "text", "text": p}]},
                {"role": "assistant", "content": [{"type": "text", "text": c}]}]
        if pack and conversations and id(im) == last:
            conversations[-1] += turn
            continue
        if id(im) not in encoded:
            encoded[id(im)] = encode_pil_image(im)
        last = id(im)
        turn[0]["content"].insert(0, {"type": "image"})
        cells.append([encoded[id(im)]])
        conversations.append(turn)
    return Dataset.from_dict({"images": cells, "messages": conversations}).cast_column("images", List(Image()))


def _code_hash() -> str:
    root = Path(__file__).resolve().parent.parent  # the code that shapes a base: its architecture, training, captions
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in (
        "training/tiny_vlm.py", "training/models.py", "training/sft.py", "corpus/describe.py", "maps/facts.py"))).hexdigest()


def base_key(texts: list[str], images, captions, spec, settings: PretrainSettings, seed: int) -> str:
    """Hash of everything that shapes the tiny base: texts, pictures, captions, sizes, settings, seed, code
    and library versions."""
    import torch
    import transformers
    import trl
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode() + b"\0")
    for im, c in zip(images, captions):
        h.update(np.asarray(im).tobytes())
        h.update(c.encode())
    h.update(json.dumps([asdict(spec), asdict(settings), seed, _code_hash(), torch.__version__,
                         transformers.__version__, trl.__version__]).encode())
    return h.hexdigest()[:16]


def train_text(model_dir: Path, texts: list[str], out_dir: Path, settings: PretrainSettings, seed: int) -> dict:
    """Text-only language modelling of the language model (vision frozen); saves model and processor."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    for name, p in model.named_parameters():
        p.requires_grad_(".visual." not in name)
    eos = processor.tokenizer.eos_token
    args = SFTConfig(output_dir=str(out_dir.parent / "text_train"), learning_rate=settings.text_learning_rate,
                     num_train_epochs=settings.text_epochs,
                     per_device_train_batch_size=settings.text_batch_size // settings.text_micro_batches,
                     gradient_accumulation_steps=settings.text_micro_batches,
                     warmup_steps=settings.warmup_ratio, lr_scheduler_type="cosine", seed=seed, data_seed=seed,
                     max_length=512, use_cpu=not _cuda(), gradient_checkpointing=False, **sft.precision_args("auto"),
                     train_sampling_strategy=_sampling(settings.text_micro_batches),
                     optim=sft.resolve_optim("adamw_torch_fused"),
                     logging_steps=_log_every(len(texts), settings.text_batch_size, settings.text_epochs),
                     save_strategy="no", report_to="none", dataloader_num_workers=0)
    trainer = sft.trainer_class()(model=model, args=args, processing_class=processor.tokenizer,
                         train_dataset=Dataset.from_dict({"text": [t + eos for t in texts]}))
    out = trainer.train()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {"loss_first": history[0]["loss"] if history else None, "loss_last": history[-1]["loss"] if history else None,
            "samples_per_second": out.metrics.get("train_samples_per_second"), "n_texts": len(texts),
            "seconds": out.metrics.get("train_runtime"), "log_history": trainer.state.log_history}


def _log_every(n: int, batch: int, epochs: float) -> int:
    """Logging interval giving about 50 loss records (at least the first and the last few)."""
    steps = max(1, int(-(-n // batch) * epochs))
    return max(1, min(10, steps // 50))


def seeing_config(model: str, output_dir: str, settings: PretrainSettings, seed: int, n_threads: int,
                  n_examples: int):
    """The training config of the seeing step: full-parameter captioning, no checkpoints."""
    return sft.TrainConfig(model=model, output_dir=output_dir, lora=False, learning_rate=settings.learning_rate,
                           num_train_epochs=settings.epochs,
                           per_device_train_batch_size=settings.batch_size // settings.micro_batches,
                           gradient_accumulation_steps=settings.micro_batches, warmup_ratio=settings.warmup_ratio,
                           lr_scheduler_type="cosine", weight_decay=0.0, seed=seed, n_threads=n_threads,
                           save_steps=0, train_sampling_strategy=_sampling(settings.micro_batches),
                           logging_steps=_log_every(n_examples, settings.batch_size, settings.epochs))


def _sampling(micro_batches: int) -> str:
    """A step split into micro-batches sorts its random examples by length into them; else plain random batches."""
    return "batch_rebalance" if micro_batches > 1 else "random"


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def build_tiny_base(texts: list[str], maps: pd.DataFrame, spec, settings: PretrainSettings, seed: int,
                    n_threads: int = 2, cache_dir: str = "", generator: dict | None = None) -> tuple[Path, dict]:
    """The pre-trained tiny base model folder (built, or found in the cache) and its factory record.
    `texts`: the run's training-split text (tokenizer and text-only language modelling); `generator`: the run's
    stage 01 generator settings, for the extra seeing maps (:func:`pretraining_maps`)."""
    images, captions, prompts = caption_corpus(maps, settings.render_size or settings.image_size, seed,
                                               settings.max_maps, settings.extra_maps, settings.questions_per_map,
                                               generator, shuffle_turns=settings.pack_questions)
    if not images:
        raise ValueError("the tiny base needs training-split maps to caption; stage 01 assigned none to 'train'")
    lm_texts = list(texts)
    texts = lm_texts + captions + sorted(set(prompts))
    key = base_key(texts, images, captions, spec, settings, seed)
    out = cache_root(cache_dir) / f"tiny-{key}"
    if (out / "factory.json").exists():
        log.info("tiny base %s found in the cache: %s", key, out)
        return out, json.loads((out / "factory.json").read_text())
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building tiny base %s: tokenizer, random weights, captioning on %d maps", key, len(images))
    tiny_vlm.build_tiny_vlm(texts, tmp / "init", spec, seed)
    start, text_result = tmp / "init", None
    if settings.text_epochs > 0 and lm_texts:  # language first, as real VLMs start from a trained LLM
        text_result = train_text(tmp / "init", lm_texts, tmp / "speaking", settings, seed)
        start = tmp / "speaking"
    seeing = caption_dataset(images, captions, prompts, pack=settings.pack_questions)
    cfg = seeing_config(str(start), str(tmp / "train"), settings, seed, n_threads, len(seeing))
    result = sft.train(cfg, seeing, export_dir=tmp / "model")
    record = {"key": key, "spec": asdict(spec), "pretrain": asdict(settings), "seed": seed,
              "n_maps": len({id(im) for im in images}), "n_answers": len(images),  # a map's image is shared
              "n_examples": len(seeing),  # packed: one conversation per map
              "n_tokenizer_texts": len(texts), "result": result, "text_result": text_result,
              "example_caption": captions[0]}
    (tmp / "model" / "factory.json").write_text(json.dumps(record, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another run built the same key meanwhile: identical by construction
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp / "model", out)
        shutil.rmtree(tmp, ignore_errors=True)
    return out, json.loads((out / "factory.json").read_text())


def resolve_base(name_or_path: str, **tiny_kwargs) -> tuple[str, dict]:
    """A loadable model reference and its record: `tiny` builds (or reuses) the embedded base; a local
    folder must hold a config.json; anything else is taken as a hub id for the Auto classes."""
    if name_or_path == TINY:
        path, record = build_tiny_base(**tiny_kwargs)
        return str(path), record
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ValueError(f"model_name_or_path {name_or_path!r}: folder has no config.json; expected a model saved "
                             "with save_pretrained")
        return str(p.resolve()), {"source": "folder"}
    return name_or_path, {"source": "hub"}

