"""Model backends of stages 02 and 03: a teacher VLM's four outputs per map, and LLM-written rubrics.

Both work with any client that answers OpenAI-format chat requests with :class:`..chat.llm.ChatResult`s: the
remote :class:`..chat.llm.ChatClient` (`openai` backend) or the local :class:`..chat.hf_chat.HFChat` (`hf` backend).
Prompts live in a YAML file (`corpus/data/prompts.yaml` by default) so a user can edit them without code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..chat.hf_chat import HFChat
from ..chat.llm import ChatClient, ChatSettings, build_request
from ..maps.conventions import NONE_LABEL
from .claims import check_description
from .rubric import Rubric, split_terms
from .vqa import names_a_pattern

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "data" / "prompts.yaml"
OUTPUTS = ("full", "spatial", "root_cause", "structured")
PROMPT_KEYS = ("conventions", "label_hint", "teacher_system", *OUTPUTS, "rubric_system", "rubric", "repair",
               "paraphrase")


def chat_client(backend: str, settings: ChatSettings, cache_dir: Path, hf_batch_size: int = 4):
    """The client of a model backend: `openai` (remote endpoint) or `hf` (local transformers model named by
    settings.model); both cache answers under cache_dir."""
    if backend == "openai":
        return ChatClient(settings, cache_dir)
    if backend == "hf":
        return HFChat(settings.model, cache_dir, hf_batch_size)
    raise ValueError(f"backend {backend!r}: expected openai or hf")


def load_prompts(path: str | Path = "") -> dict[str, str]:
    """The prompts file (packaged default when path is empty), checked for every key the stages use."""
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.exists():
        raise FileNotFoundError(f"prompts file {path} not found (parameter `prompts`)")
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in PROMPT_KEYS if not isinstance(data.get(k), str)]
    if missing:
        raise ValueError(f"{path}: missing or non-text prompt(s) {missing}; expected keys {list(PROMPT_KEYS)}")
    return {k: " ".join(data[k].split()) for k in PROMPT_KEYS}


def _label_text(labels: list[str]) -> str:
    return "no defect pattern (none)" if labels == [NONE_LABEL] else " + ".join(labels)


def teacher_prompts(prompts: dict, labels: list[str], give_label: bool) -> dict[str, str]:
    """The user prompt of each of the four outputs for one map."""
    hint = prompts["label_hint"].format(labels=_label_text(labels)) if give_label else ""
    return {k: prompts[k].format(conventions=prompts["conventions"], label_hint=hint).strip() for k in OUTPUTS}


def parse_json_object(text: str) -> dict:
    """The JSON object in a model answer (code fences and text around it tolerated); ValueError if none."""
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip(), flags=re.S)
    start = t.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in the answer: {text[:120]!r}")
    try:
        obj, _ = json.JSONDecoder().raw_decode(t[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos}): {t[start:start + 120]!r}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def describe_with_chat(client, settings: ChatSettings, items: list[tuple[list[str], bytes]], prompts: dict,
                       give_label: bool, progress: bool = True) -> list[dict]:
    """The four outputs per map (labels, PNG bytes) from a chat client; `error` says what failed, if anything."""
    reqs = []
    for labels, png in items:
        user = teacher_prompts(prompts, labels, give_label)
        reqs += [build_request(settings, prompts["teacher_system"], user[k], png) for k in OUTPUTS]
    res = client.complete_many(reqs, desc="teacher", progress=progress)
    out = []
    for i in range(len(items)):
        got = dict(zip(OUTPUTS, res[4 * i: 4 * i + 4]))
        errors = [f"{k}: {r.error}" for k, r in got.items() if r.error]
        d = {k: (got[k].text or "") for k in ("full", "spatial", "root_cause")}
        d["structured"] = {}
        if got["structured"].text:
            try:
                d["structured"] = parse_json_object(got["structured"].text)
            except ValueError as exc:
                errors.append(f"structured: {exc}")
        d["error"] = "; ".join(errors)
        d["cached"] = all(r.cached for r in got.values())
        d["seconds"] = sum(r.seconds for r in got.values())
        out.append(d)
    return out


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'root'}: {e['msg']}" for e in exc.errors())[:800]
    return str(exc)[:800]


def validate_rubric(text: str) -> Rubric:
    """A model's rubric answer as a validated :class:`.rubric.Rubric` (ValueError with the reason)."""
    try:
        return Rubric.model_validate(parse_json_object(text))
    except (ValueError, ValidationError) as exc:
        raise ValueError(_validation_message(exc)) from exc


def rubrics_with_chat(client, settings: ChatSettings, items: list[tuple[list[str], dict]], prompts: dict,
                      progress: bool = True) -> list[dict]:
    """An LLM rubric per (labels, description): validated, one repair turn with the validation error,
    and {rubric: None, error} for those that still fail (the stage quarantines them)."""
    schema = json.dumps(Rubric.model_json_schema(), separators=(",", ":"))
    users = [prompts["rubric"].format(labels=_label_text(labels), description=d.get("full", ""),
                                      spatial=d.get("spatial", ""), schema=schema) for labels, d in items]
    first_reqs = [build_request(settings, prompts["rubric_system"], u) for u in users]
    first = client.complete_many(first_reqs, desc="rubrics", progress=progress)
    out, repairs = [], {}
    for i, r in enumerate(first):
        rec = {"rubric": None, "error": r.error or "", "repaired": False, "raw": r.text or ""}
        if r.text:
            try:
                rec["rubric"], rec["error"] = validate_rubric(r.text), ""
            except ValueError as exc:
                rec["error"] = f"invalid rubric: {exc}"
                turns = [{"role": "assistant", "content": r.text},
                         {"role": "user", "content": prompts["repair"].format(error=exc)}]
                repairs[i] = build_request(settings, prompts["rubric_system"], users[i], follow_up=turns)
        out.append(rec)
    if repairs:
        second = client.complete_many(list(repairs.values()), desc="rubric repairs", progress=progress)
        for i, r in zip(repairs, second):
            out[i]["repaired"] = True
            if r.text:
                out[i]["raw"] = r.text
                try:
                    out[i]["rubric"], out[i]["error"] = validate_rubric(r.text), ""
                except ValueError as exc:
                    out[i]["error"] += f"; after repair: {exc}"
            else:
                out[i]["error"] += f"; repair request failed: {r.error}"
    return out


def _supported(term: str, labels: list[str], facts: dict, kb: dict) -> bool:
    """Does the term claim something the facts support (a zone, clock position or pattern this map has)?"""
    items = check_description({"spatial": term, "full": term}, labels, facts, kb)
    return any(not i["contradicted"] for i in items)


def ground_rubric(rubric: Rubric, grounded: Rubric, labels: list[str], facts: dict, kb: dict) -> Rubric:
    """An LLM rubric with grounded avoid lists: terms the facts support are dropped from them, and what the
    facts rule out (from the rules rubric) is added; candidate causes of the labels are never avoided."""
    candidates = {c.lower() for lab in labels for c in kb[lab].candidate_causes}

    def merge(llm_terms: list[str], rules_terms: list[str]) -> list[str]:
        keep = [t for t in llm_terms if t.lower() not in candidates and not _supported(t, labels, facts, kb)]
        return keep + [t for t in rules_terms if t not in keep]
    r = rubric.model_copy(deep=True)
    hits = {d: {t.lower() for t in v["must_hit"]} for d, v in r.terms().items()}
    s, m, c = r.spatial_rubric, r.morphology_rubric, r.root_cause_rubric
    # A term the rubric asks for is never also forbidden in the same dimension (the hit is kept: it comes
    # from a description that passed the hallucination checks).
    s.spatial_avoid = [t for t in merge(split_terms(s.spatial_avoid), grounded.spatial_rubric.spatial_avoid)
                       if t.lower() not in hits["spatial"]]
    m.morphology_avoid = [t for t in merge(split_terms(m.morphology_avoid), grounded.morphology_rubric.morphology_avoid)
                          if t.lower() not in hits["morphology"]]
    c.root_cause_avoid = [t for t in merge(split_terms(c.root_cause_avoid), grounded.root_cause_rubric.root_cause_avoid)
                          if t.lower() not in hits["root_cause"]]
    return r


def paraphrase_questions(client, settings: ChatSettings, questions: list[str], may_name_pattern: list[bool],
                         prompts: dict, progress: bool = True) -> tuple[list[str], list[str]]:
    """Model paraphrases of questions; a paraphrase is kept only if it is one line ending in '?' or '.', at most twice
    the original's length, and (unless allowed) names no pattern. Returns the questions and why each
    paraphrase was rejected ('' when kept)."""
    reqs = [build_request(settings, "", prompts["paraphrase"].format(question=q)) for q in questions]
    res = client.complete_many(reqs, desc="paraphrase", progress=progress)
    out, why = [], []
    for q, allowed, r in zip(questions, may_name_pattern, res):
        p = (r.text or "").strip().strip('"')
        reason = (f"request: {r.error}" if r.error else "not one question" if "\n" in p or not p.endswith(("?", "."))
                  else "too long" if len(p) > 2 * len(q) + 20 else
                  "names a pattern" if not allowed and names_a_pattern(p) else "")
        out.append(q if reason else p)
        why.append(reason)
    return out, why
