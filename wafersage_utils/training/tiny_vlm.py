"""A tiny model of the real Qwen3-VL architecture, built offline: tokenizer, processor and random weights.

The embedded default pipeline cannot download `Qwen/Qwen3-VL-4B-Instruct`, so it builds the same
architecture at toy size (about 1.7 M parameters): a byte-level BPE tokenizer trained on the pipeline's own
text with every Qwen special token, the real Qwen3-VL chat template (TRL's copy, byte for byte, so TRL
recognises it), a Qwen2-VL image processor at patch 8 / merge 2 with explicit pixel bounds (so small wafer
images are not upscaled to 256 px), and `Qwen3VLForConditionalGeneration` with random weights. The folder
it saves loads with `AutoProcessor` / `AutoModelForImageTextToText` exactly like the real model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Qwen2's pre-tokenizer split: contractions, words, single digits, punctuation runs, new lines, spaces.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>")


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model (defaults: the configuration known to train on 2 CPU cores)."""

    vocab_size: int = 4096
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 384
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    patch: int = 8
    image_size: int = 128  # pixels of the square input images: fixes the processor's pixel bounds


def build_tokenizer(texts, vocab_size: int = 4096):
    """Byte-level BPE in the Qwen style, trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_vl_chat_template
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    fast.chat_template = qwen3_vl_chat_template
    return fast


def build_processor(tokenizer, spec: TinySpec = TinySpec()):
    """Qwen3-VL processor at patch 8, merge 2; images keep their size up to `spec.image_size` squared."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor
    pixels = spec.image_size * spec.image_size
    size = {"shortest_edge": min(pixels, (2 * spec.patch) ** 2 * 4), "longest_edge": pixels}
    image = Qwen2VLImageProcessor(patch_size=spec.patch, merge_size=2, temporal_patch_size=2, size=size)
    video = Qwen3VLVideoProcessor(patch_size=spec.patch, merge_size=2, temporal_patch_size=2, size=size)
    return Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                            chat_template=tokenizer.chat_template)


def build_model(tokenizer, spec: TinySpec = TinySpec(), seed: int = 0):
    """Qwen3VLForConditionalGeneration at tiny size with random weights and the tokenizer's special ids."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    ids = tokenizer.convert_tokens_to_ids
    third = spec.head_dim // 2 // 3
    mrope = [spec.head_dim // 2 - 2 * third, third, third]  # must sum to head_dim / 2
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                         num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
                         intermediate_size=spec.intermediate, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope,
                                          "mrope_interleaved": True},
                         pad_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>")),
        vision_config=dict(hidden_size=spec.vision_hidden, depth=spec.vision_depth, num_heads=spec.vision_heads,
                           intermediate_size=2 * spec.vision_hidden, patch_size=spec.patch, spatial_merge_size=2,
                           temporal_patch_size=2, out_hidden_size=spec.hidden, num_position_embeddings=256,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    return model


def build_tiny_vlm(texts, out_dir: Path, spec: TinySpec = TinySpec(), seed: int = 0) -> Path:
    """Tokenizer, processor and random-weight model saved to out_dir (loadable with the Auto classes)."""
    out_dir = Path(out_dir)
    tok = build_tokenizer(texts, spec.vocab_size)
    processor = build_processor(tok, spec)
    model = build_model(tok, spec, seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
