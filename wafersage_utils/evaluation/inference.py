"""Answers of a model to VQA rows: requests in the chat format every backend takes, cached answers.

Stage 05 uses it for the base-vs-SFT type accuracy, the model-card prompts and the shape reading (does the
model see a map's structure at all); stage 07 for the whole test split. The request is the student's
training format: the image and the question in one user turn, no system prompt (plain answers) or the
paper's system prompt (reasoning answers), greedy decoding.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd

from ..chat.llm import ChatSettings, build_request
from ..corpus.exports import image_bytes
from ..corpus.vqa import CARD_PROMPTS, SYSTEM_PROMPT


def requests_for(rows: pd.DataFrame, run_dir: Path, model: str, max_tokens: int, style: str = "plain",
                 temperature: float = 0.0, top_k: int = 0, min_p: float = 0.0, seed: int = 0) -> list[dict]:
    """One chat request per row (image + question); `seed` is part of each request (and of its cache key)."""
    settings = ChatSettings(model=model, max_tokens=max_tokens, temperature=temperature, top_k=top_k, min_p=min_p,
                            seed=seed)
    system = SYSTEM_PROMPT if style == "reasoning" else ""
    return [build_request(settings, system, q, png) for q, png in zip(rows["question"], image_bytes(rows, run_dir))]


def answer_rows(chat, rows: pd.DataFrame, run_dir: Path, max_tokens: int = 96, style: str = "plain",
                desc: str = "answers", progress: bool = True, temperature: float = 0.0, top_k: int = 0,
                min_p: float = 0.0, seed: int = 0) -> list[str]:
    """The model's answer to each row ('' where generation failed); greedy, or sampled at `temperature` from
    every token, or from the `top_k` likeliest / those above `min_p` of the likeliest (seed the generator
    first, e.g. transformers.set_seed, for repeatable samples). Several samples of one question need a
    `seed` each: the same request is answered once, then from the cache."""
    requests = requests_for(rows, run_dir, chat.name, max_tokens, style, temperature, top_k, min_p, seed)
    results = chat.complete_many(requests, desc=desc, progress=progress)
    return [r.text or "" for r in results]


def card_rows(vqa: pd.DataFrame, split: str, n_wafers: int, seed: int) -> pd.DataFrame:
    """The model card's four example prompts asked about `n_wafers` wafers of a split (one per label first)."""
    wafers = vqa[vqa["split"] == split].drop_duplicates("wafer_id")
    wafers = wafers.sample(frac=1.0, random_state=seed)
    first = wafers.groupby(wafers["labels"].map(lambda x: "+".join(x))).head(1)
    picked = pd.concat([first, wafers.drop(first.index)]).head(n_wafers)
    return pd.DataFrame([{**w, "template": t, "question": q} for _, w in picked.iterrows()
                         for t, q in CARD_PROMPTS.items()]).reset_index(drop=True)



def save_card_images(card: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Copy the card's maps to <run>/examples/card_<i>.png (the README's serving examples name them; the run
    folder's data/ is not kept in git) with an index of which wafer and labels each one is."""
    out = Path(run_dir) / "examples"
    out.mkdir(parents=True, exist_ok=True)
    wafers = card.drop_duplicates("wafer_id").reset_index(drop=True)
    index = pd.DataFrame({"file": [f"card_{i}.png" for i in range(len(wafers))], "wafer_id": wafers["wafer_id"],
                          "labels": wafers["labels"].map("+".join)})
    for name, image in zip(index["file"], wafers["image"]):
        shutil.copyfile(Path(run_dir) / image, out / name)
    index.to_csv(out / "index.csv", index=False)
    return index

# The base's pre-training asks this of every map with a structure (models.visual_questions), answered from
# the measured facts with one of the shape words of describe.SHAPE_WORDS.
SHAPE_QUESTION = "What shape does the largest group of failing dies form?"
SHAPES = ("near-full", "ring", "arc", "line", "blob", "none")
# A shape word on its own, never inside a class name: "Edge-Ring" names the class, not a ring it saw.
_SHAPE_WORD = re.compile(r"(?<![\w-])(ring|arc|line|blob)s?\b")


def read_shape(answer: str) -> str:
    """The structure an answer to SHAPE_QUESTION names (one of SHAPES: the first shape word, 'near-full' for
    'nearly every die', 'none' for 'no group stands out'), or '' when it names none."""
    low = (answer or "").lower()
    if "nearly every die" in low or "near-full" in low:
        return "near-full"
    word = _SHAPE_WORD.search(low)
    if word:
        return word.group(1)
    return "none" if "no group" in low or "no distinct" in low else ""


def shape_reading(chat, wafers: pd.DataFrame, measured: pd.Series, run_dir: Path, max_tokens: int = 32,
                  desc: str = "shape", progress: bool = True) -> pd.DataFrame:
    """Whether a model sees a map's structure: each wafer (rows with wafer_id, labels and image) asked
    SHAPE_QUESTION, greedy, its answer read back (`read`) beside the shape the facts measured (`measured`,
    corpus.main_shape by wafer id; 'scattered' counts as 'none', as the pre-training answer says)."""
    missing = sorted(set(wafers["wafer_id"]) - set(measured.index))
    if missing:
        raise ValueError(f"shape_reading: no measured shape for wafers {missing[:5]} (facts of stage 02 expected)")
    rows = wafers.assign(question=SHAPE_QUESTION).reset_index(drop=True)
    said = answer_rows(chat, rows, run_dir, max_tokens, desc=desc, progress=progress)
    truth = measured.reindex(rows["wafer_id"]).replace({"scattered": "none"}).to_numpy()
    return pd.DataFrame({"wafer_id": rows["wafer_id"], "label": rows["labels"].map("+".join), "measured": truth,
                         "read": [read_shape(a) for a in said], "answer": said})


def shape_agreement(reading: pd.DataFrame) -> pd.DataFrame:
    """Per label: wafers, the share whose read shape is the measured one, the share whose answer names no
    shape, and the commonest reading."""
    marked = reading.assign(hit=reading["read"] == reading["measured"], unread=reading["read"] == "")
    return marked.groupby("label").agg(
        n=("hit", "size"), agreement=("hit", "mean"), unread=("unread", "mean"),
        commonest=("read", lambda r: r.replace("", "(unread)").value_counts().index[0]))
