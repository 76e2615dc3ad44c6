"""Training examples turned into the processor's tensors once, and the collator that only pads them.

TRL's vision collator runs the chat template and the image processor on every batch of every epoch; for the
tiny model that is a third of a training step. :func:`encode` does the same work once per example (token ids,
and labels that are -100 outside the assistant turn, exactly as TRL's collator masks them) and once per
distinct image (pixel values and grid), and :class:`PaddedCollator` pads and concatenates them into the batch
TRL's collator would have built. The equality is tested on a sample of examples.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import torch

# Keys of a training batch, as TRL's DataCollatorForVisionLanguageModeling returns them for Qwen3-VL.
_TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids")


def _image_bytes(dataset) -> list[bytes]:
    """The encoded bytes of each example's single image, read without decoding."""
    from datasets import Image, List
    raw = dataset.cast_column("images", List(Image(decode=False)))["images"]
    if any(len(ims) != 1 for ims in raw):
        raise ValueError("encode: every example needs exactly one image (the wafer map)")
    return [ims[0]["bytes"] for ims in raw]


def distinct_images(dataset) -> tuple[int, object]:
    """How many distinct images the examples hold, and the first one (decoded), without decoding the rest."""
    pngs = _image_bytes(dataset)
    return len({hashlib.sha1(b).digest() for b in pngs}), (_decode(pngs[0]) if pngs else None)


def _decode(png: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(png))


@dataclass
class ImageBank:
    """Pixel values of distinct images, each (patches, channels x temporal x patch x patch), and their grids."""

    pixel_values: list = field(default_factory=list)
    grids: list = field(default_factory=list)


def encode(dataset, processor, chat_template: str | None = None, batch_size: int = 256):
    """The examples (`images` + `messages`) as token ids and labels with an index into an image bank.

    Returns (examples, bank): `examples` is a datasets.Dataset with `input_ids`, `labels`, `mm_token_type_ids`,
    `image` (row of the bank) and `length` (tokens, for length-grouped sampling).
    """
    from datasets import Dataset
    from trl.data_utils import prepare_multimodal_messages
    pngs = _image_bytes(dataset)
    index: dict[bytes, int] = {}
    image_of = [index.setdefault(hashlib.sha1(b).digest(), len(index)) for b in pngs]
    bank = ImageBank(pixel_values=[None] * len(index), grids=[None] * len(index))
    columns: dict[str, list] = {k: [] for k in (*_TOKEN_KEYS, "image", "length")}
    messages = dataset["messages"][:]  # a list: indexing the lazy column row by row costs 0.2 ms an example
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        images = [[_decode(pngs[i])] for i in range(start, stop)]
        convs = [prepare_multimodal_messages(messages[i], images=ims) for i, ims in zip(range(start, stop), images)]
        out = processor.apply_chat_template(  # lists, not tensors: transformers' mask alignment is slow on tensors
            convs, chat_template=chat_template, tokenize=True, return_dict=True, return_tensors=None,
            return_assistant_tokens_mask=True, processor_kwargs={"padding": False, "add_special_tokens": False})
        grids = torch.as_tensor(out["image_grid_thw"])
        pixel_chunks = torch.split(torch.as_tensor(out["pixel_values"]), grids.prod(-1).tolist())
        for row, i in enumerate(range(start, stop)):
            ids = out["input_ids"][row]
            columns["input_ids"].append(ids)
            columns["labels"].append([t if m else -100 for t, m in zip(ids, out["assistant_masks"][row])])
            columns["mm_token_type_ids"].append(out["mm_token_type_ids"][row])
            columns["image"].append(image_of[i])
            columns["length"].append(len(ids))
            if bank.pixel_values[image_of[i]] is None:
                bank.pixel_values[image_of[i]] = pixel_chunks[row].clone()
                bank.grids[image_of[i]] = grids[row].clone()
    return Dataset.from_dict(columns), bank


@dataclass
class PaddedCollator:
    """Right-pads encoded examples and gathers their images from the bank: TRL's vision batch, no processor."""

    bank: ImageBank
    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": self.pad_token_id, "labels": -100, "mm_token_type_ids": 0}
        batch = {k: torch.full((len(rows), width), v, dtype=torch.long) for k, v in fill.items()}
        batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            for k in _TOKEN_KEYS:
                batch[k][i, :n] = torch.as_tensor(r[k])
            batch["attention_mask"][i, :n] = 1
        images = [r["image"] for r in rows]
        batch["pixel_values"] = torch.cat([self.bank.pixel_values[j] for j in images])
        batch["image_grid_thw"] = torch.stack([self.bank.grids[j] for j in images])
        return batch
