"""The VQA table in the formats others use: TRL SFT and GRPO datasets, and the public WaferSAGE schemas.

Our table (`data/vqa.parquet`, one row per pair) is the single source; every export is built from it.

- TRL SFT: `images` (list of PIL images) and `messages` (user turn with the image and the question,
  assistant turn with the answer, plain or in <REASONING>/<SOLUTION> tags).
- TRL GRPO: conversational `prompt` (the paper's system prompt, then the image slot and the question),
  `images`, and the columns the rubric reward reads (`must_hit`, `must_avoid`, `rubric`, `dimension`,
  `reference_answer`).
- Public WaferSAGE parquet: the VQA set (`id, image, query, answer, wafer_label, question_type, difficulty,
  original_record_id, qa_index`) and the rubric set (`id, record_id, label, prompt, image, answer, rubric,
  dimension, question, reference_answer, must_hit, must_avoid, difficulty`). Column names follow the
  public data set cards; where the cards are silent on types we chose: images as the Hugging Face image
  struct (PNG bytes and a file name), label lists as lists of strings, `rubric` as JSON text, `prompt` as
  a list of {role, content} messages. :func:`load_public` reads both schemas back (also with JSON-text
  lists), so the public data can be trained on with this pipeline.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from ..runner.runs import atomic_target
from .vqa import PUBLIC_TYPE, SYSTEM_PROMPT

VQA_COLUMNS = ("id", "image", "query", "answer", "wafer_label", "question_type", "difficulty", "original_record_id",
               "qa_index")
RUBRIC_COLUMNS = ("id", "record_id", "label", "prompt", "image", "answer", "rubric", "dimension", "question",
                  "reference_answer", "must_hit", "must_avoid", "difficulty")
_CATEGORY = {"spatial": "spatial", "morphological": "morphology", "root_cause": "root_cause",
             "consistency": "consistency"}


def image_bytes(rows: pd.DataFrame, run_dir: Path) -> list[bytes]:
    """PNG bytes of each row: from `image_bytes` (loaded public data) or the file `image` names in the run."""
    if "image_bytes" in rows.columns:
        return list(rows["image_bytes"])
    cache: dict[str, bytes] = {}
    return [cache.setdefault(p, (Path(run_dir) / p).read_bytes()) for p in rows["image"]]


def _pil(png: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(png)).convert("RGB")


def answer_column(style: str) -> str:
    if style not in ("plain", "reasoning"):
        raise ValueError(f"answer style {style!r}: expected plain or reasoning")
    return "answer" if style == "plain" else "reasoning_answer"


def to_sft_dataset(rows: pd.DataFrame, run_dir: Path, style: str = "plain"):
    """TRL SFT dataset: images + messages (one image, the question, the answer)."""
    from datasets import Dataset
    col = answer_column(style)
    pngs = image_bytes(rows, run_dir)
    return Dataset.from_dict({
        "images": [[_pil(b)] for b in pngs],
        "messages": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                      {"role": "assistant", "content": [{"type": "text", "text": a}]}]
                     for q, a in zip(rows["question"], rows[col])]})


def to_grpo_dataset(rows: pd.DataFrame, run_dir: Path, system_prompt: bool = True):
    """TRL GRPO dataset: conversational prompt (with the paper's system prompt, or without it for a model
    trained on plain answers) and the image slot, images, and the rubric columns the reward function
    receives as keyword arguments."""
    from datasets import Dataset
    pngs = image_bytes(rows, run_dir)
    system = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}] if system_prompt else []
    return Dataset.from_dict({
        "prompt": [system + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
                   for q in rows["question"]],
        "images": [[_pil(b)] for b in pngs],
        "must_hit": [list(x) for x in rows["must_hit"]], "must_avoid": [list(x) for x in rows["must_avoid"]],
        "rubric": list(rows["terms"]), "dimension": [",".join(d) for d in rows["dims"]],
        "reference_answer": list(rows["answer"]), "category": list(rows["category"]),
        "difficulty": list(rows["difficulty"]), "wafer_id": list(rows["wafer_id"]),
        "labels": [[str(x) for x in lab] for lab in rows["labels"]]})


def _image_struct(png: bytes, name: str) -> dict:
    return {"bytes": png, "path": name}


def to_public_vqa(rows: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    pngs = image_bytes(rows, run_dir)
    return pd.DataFrame({
        "id": rows["id"], "image": [_image_struct(b, f"{w}.png") for b, w in zip(pngs, rows["wafer_id"])],
        "query": rows["question"], "answer": rows["answer"], "wafer_label": [list(x) for x in rows["labels"]],
        "question_type": [PUBLIC_TYPE[c] for c in rows["category"]], "difficulty": rows["difficulty"],
        "original_record_id": rows["wafer_id"], "qa_index": rows["qa_index"].astype(int)})


def to_public_rubric(rows: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    pngs = image_bytes(rows, run_dir)
    return pd.DataFrame({
        "id": rows["id"], "record_id": rows["wafer_id"], "label": ["+".join(x) for x in rows["labels"]],
        "prompt": [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"<image>{q}"}]
                   for q in rows["question"]],
        "image": [_image_struct(b, f"{w}.png") for b, w in zip(pngs, rows["wafer_id"])],
        "answer": rows["reasoning_answer"], "rubric": rows["terms"], "dimension": [",".join(d) for d in rows["dims"]],
        "question": rows["question"], "reference_answer": rows["answer"],
        "must_hit": [list(x) for x in rows["must_hit"]], "must_avoid": [list(x) for x in rows["must_avoid"]],
        "difficulty": rows["difficulty"]})


def write_public(df: pd.DataFrame, path: Path) -> Path:
    """Parquet with the Hugging Face image feature recorded, so `datasets` decodes `image` as images."""
    from datasets import Dataset, Image
    ds = Dataset.from_pandas(df, preserve_index=False).cast_column("image", Image())
    with atomic_target(path) as tmp:
        ds.to_parquet(str(tmp))
    return Path(path)


def _as_list(v) -> list:
    if isinstance(v, str):
        v = v.strip()
        return json.loads(v) if v.startswith("[") else [x.strip() for x in v.split("+") if x.strip()]
    return [] if v is None else list(v)


def load_public(path: Path) -> pd.DataFrame:
    """A public WaferSAGE parquet (VQA or rubric schema) as rows this pipeline trains on: id, wafer_id,
    labels, question, answer, reasoning_answer, category, difficulty, qa_index, image_bytes, and for the
    rubric schema must_hit, must_avoid, terms, dims."""
    path = Path(path)
    df = pd.read_parquet(path)
    cols = set(df.columns)
    kind = "vqa" if set(VQA_COLUMNS) <= cols else "rubric" if set(RUBRIC_COLUMNS) <= cols else None
    if kind is None:
        raise ValueError(f"{path}: neither the public VQA schema {list(VQA_COLUMNS)} nor the rubric schema "
                         f"{list(RUBRIC_COLUMNS)}; missing {sorted(set(VQA_COLUMNS) - cols)} / {sorted(set(RUBRIC_COLUMNS) - cols)}")

    def png(v, i):
        if isinstance(v, dict) and v.get("bytes"):
            return v["bytes"]
        if isinstance(v, dict) and v.get("path") and (path.parent / v["path"]).exists():
            return (path.parent / v["path"]).read_bytes()
        raise ValueError(f"{path}, row {i}: image has neither bytes nor a readable path")
    out = pd.DataFrame({"id": df["id"], "image_bytes": [png(v, i) for i, v in enumerate(df["image"])],
                        "difficulty": df["difficulty"]})
    if kind == "vqa":
        out["wafer_id"], out["labels"] = df["original_record_id"], [_as_list(x) for x in df["wafer_label"]]
        out["question"], out["answer"], out["reasoning_answer"] = df["query"], df["answer"], df["answer"]
        out["category"] = [_CATEGORY.get(t, t) for t in df["question_type"]]
        out["qa_index"] = df["qa_index"].astype(int)
    else:
        out["wafer_id"], out["labels"] = df["record_id"], [_as_list(x) for x in df["label"]]
        out["question"], out["answer"], out["reasoning_answer"] = df["question"], df["reference_answer"], df["answer"]
        out["must_hit"] = [_as_list(x) for x in df["must_hit"]]
        out["must_avoid"] = [_as_list(x) for x in df["must_avoid"]]
        out["terms"], out["dims"] = df["rubric"], [str(d).split(",") for d in df["dimension"]]
    return out
