"""Rubric-guided VQA synthesis: 8 to 10 question-answer pairs per wafer in five categories.

Categories and the rubric dimension(s) each pair is scored on:
- defect_type (morphology: the pattern name), spatial (spatial), morphology (morphology; the card's
  "morphology and spatial distribution" prompt: both), root_cause (root_cause), consistency (yes/no checks
  with true and false premises, scored on the dimension of the premise).

Only consistency questions may name a pattern; every other question is worded so that it never gives the
answer away (tested). Reference answers are the stage-02 descriptions (spatial, root-cause) and the
cleaned label; yes/no answers are decided by the measured facts.

Difficulty rule (stated once, applied to every pair): each template has a base level (defect type and
true-premise checks easy; spatial, morphology, root cause and the choice question medium; the combined
morphology-and-spatial question and false-premise checks hard), raised one level for a map stage 01
sampled as hard or a map with several patterns, capped at hard.

Yes/no checks are balanced per kind of check over the data set (a shared tally decides which check a wafer
gets, and whether a zone or clock check asks about a place with or without failures), so that the wording
of a question never predicts its answer.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz

from ..maps.conventions import NONE_LABEL, PATTERNS
from ..maps.facts import QUADRANTS, fails_near
from .claims import PATTERN_WORDS
from .consistency import repair
from .describe import PATTERN_NAMES, clock_phrase, with_article
from .rubric import Rubric, split_terms
from .scoring import PAPER, RuleParams, dimension_score, dimension_texts, term_found

CATEGORIES = ("defect_type", "spatial", "morphology", "root_cause", "consistency")
LEVELS = ("easy", "medium", "hard")
# The public WaferSAGE sets know four question types; a defect-type question is morphological there.
PUBLIC_TYPE = {"defect_type": "morphological", "spatial": "spatial", "morphology": "morphological",
               "root_cause": "root_cause", "consistency": "consistency"}
SYSTEM_PROMPT = ("You are an expert in semiconductor wafer map analysis. Look at the wafer map image and answer the "
                 "question. Think step by step and put your reasoning between <REASONING> and </REASONING>, then "
                 "give your final answer between <SOLUTION> and </SOLUTION>.")
# The model card's example prompts: every one of them is asked.
CARD_PROMPTS = {"card_type": "What type of defect pattern is visible on this wafer map?",
                "card_where": "Where are the defects located on the wafer?",
                "card_morph_spatial": "Describe the morphology and spatial distribution of this wafer map defect.",
                "card_causes": "What are the possible root-cause hypotheses for this defect pattern?"}


@dataclass(frozen=True)
class Template:
    tid: str
    category: str
    text: str
    level: str
    dims: tuple[str, ...]


def _t(category, level, dims, items):
    return [Template(tid, category, text, level, dims) for tid, text in items]


TEMPLATES: list[Template] = (
    _t("defect_type", "easy", ("morphology",), [
        ("card_type", CARD_PROMPTS["card_type"]),
        ("type_show", "What defect pattern does this wafer map show?"),
        ("type_classify", "Classify the failure pattern on this wafer."),
        ("type_class", "Which wafer-map defect class best describes this map?"),
        ("type_name", "Name the defect pattern in this wafer bin map."),
        ("type_signature", "What kind of failure signature does this wafer show?")])
    + _t("spatial", "medium", ("spatial",), [
        ("card_where", CARD_PROMPTS["card_where"]),
        ("card_concentrated", "Is the defect concentrated near the center, edge, or a specific quadrant?"),
        ("where_zones", "Which zones of the wafer hold the failing dies?"),
        ("where_clock", "Describe where the failing dies are, using clock positions."),
        ("where_first", "Where on the wafer would you look first for the failing dies?"),
        ("where_clear", "Which areas of the wafer are free of clustered failures, and which are not?")])
    + _t("morphology", "medium", ("morphology",), [
        ("morph_shape", "Describe the shape of the failing region."),
        ("morph_look", "What does the cluster of failing dies look like?"),
        ("morph_density", "How dense are the failures, and what shape do they form?"),
        ("morph_geometry", "Describe the geometry of the defect on this wafer map.")])
    + _t("morphology", "hard", ("morphology", "spatial"), [
        ("card_morph_spatial", CARD_PROMPTS["card_morph_spatial"]),
        ("morph_full", "Give a short analysis of this wafer map: what the failures look like and where they are.")])
    + _t("root_cause", "medium", ("root_cause",), [
        ("card_causes", CARD_PROMPTS["card_causes"]),
        ("cause_equipment", "What process or equipment issue might be associated with this defect pattern?"),
        ("cause_check", "Which process steps or tools would you check first for this wafer?"),
        ("cause_what", "What could have caused the failures on this wafer?")])
)
BY_ID = {t.tid: t for t in TEMPLATES}
CONSISTENCY_TEMPLATES = ("check_zone", "check_scratch", "check_random", "check_ring", "check_clock", "card_choice")


def _rng(key: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"vqa|{seed}|{key}".encode()).hexdigest()[:12], 16))


def difficulty(base: str, hard_map: bool) -> str:
    """The stated rule: the template's level, one higher for hard or mixed maps, capped at hard."""
    return LEVELS[min(LEVELS.index(base) + int(hard_map), 2)]


def type_sentence(labels: list[str]) -> str:
    if labels == [NONE_LABEL]:
        return "This wafer map shows no systematic defect pattern."
    return f"This wafer map shows {with_article(' and '.join(PATTERN_NAMES[x] for x in labels))} defect pattern."


def _first(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _observations(f: dict) -> str:
    """The facts behind an answer, for the reasoning style: every structure that decides the pattern (near-full,
    rings, regions with shape, zone and clock, scattered failures), so the solution follows from them."""
    if f["near_full"]:
        return f"About {f['fail_ratio']:.0%} of the dies fail, everywhere on the wafer."
    zones = " and ".join(f["zones_with_failures"]) or "no zone in particular"
    parts = [f"About {f['fail_ratio']:.0%} of the dies fail. Clustered failures lie at {zones}."]
    parts += [f"A closed ring runs around the {z} zone." for z in f["ring_zones"]]
    regions = "; ".join(f"{r['shape']} of {r['dies']} dies in the {r['zone']} zone {clock_phrase(r)}"
                        for r in f["regions"]) or "none"
    parts.append(f"Distinct failing regions: {regions}.")
    if f["scattered"]:
        parts.append("Many failures are scattered without structure.")
    return " ".join(parts)


def _quadrant(hour: int) -> str:
    """The quadrant a clock hour points into (12 to 3 upper-right, 3 to 6 lower-right, ...)."""
    return {0: "upper-right", 1: "lower-right", 2: "lower-left", 3: "upper-left"}[(hour % 12) // 3]


def _consistency(kind: str, labels: list[str], f: dict, rng, want: bool | None = None) -> dict | None:
    """One yes/no (or choice) check: question, answer, premise truth, its dimension and terms. Where the map
    allows both answers (zone, clock), `want` picks the premise's truth; None when the check cannot be asked."""
    regions = f["regions"]
    main = type_sentence(labels)
    if kind == "check_zone":
        options = [z for z in ("center", "mid-radius", "edge") if want is None or (z in f["zones_with_failures"]) == want]
        if not options:
            return None
        zone = str(rng.choice(options))
        yes = zone in f["zones_with_failures"]
        q = f"Are there clustered failures at the {zone} of this wafer?"
        a = f"Yes. Clustered failures lie at the {zone}." if yes else f"No. The {zone} is clear of clustered failures."
        return {"q": q, "a": a, "premise": yes, "dim": "spatial", "term": zone}
    if kind == "check_scratch":
        lines = [r for r in regions if r["shape"] == "line"]
        if bool(lines) != ("Scratch" in labels):
            return None  # facts and label disagree: no clear answer
        # The same wording for true and false premises, so that the question does not give the answer away.
        quad = _quadrant(lines[0]["from_clock"]) if lines else str(rng.choice(QUADRANTS))
        q = f"Is there a scratch running across the {quad} part of this wafer?"
        if lines:
            return {"q": q, "a": f"Yes. A scratch runs from {lines[0]['from_clock']} to {lines[0]['to_clock']} o'clock.",
                    "premise": True, "dim": "morphology", "term": "scratch"}
        return {"q": q, "a": f"No. There is no scratch on this wafer. {main}", "premise": False, "dim": "morphology",
                "term": "scratch"}
    if kind == "check_random":
        yes = f["scattered"] and not regions and not f["ring_zones"]
        if yes != ("Random" in labels):
            return None  # facts and label disagree: no clear answer
        a = ("Yes. The failures are randomly scattered over the wafer without structure." if yes else
             f"No. The failures do not look random: {main[0].lower()}{main[1:]}")
        return {"q": "Are the failing dies randomly scattered over the wafer?", "a": a, "premise": yes,
                "dim": "morphology", "term": "random"}
    if kind == "check_ring":
        yes = bool(f["ring_zones"]) or any(r["shape"] == "ring" for r in regions)
        if yes != bool({"Edge-Ring", "Donut"} & set(labels)):
            return None  # facts and label disagree: no clear answer
        a = ("Yes. The failing dies form a ring around the wafer." if yes else
             f"No. The failing dies do not form a ring. {main}")
        return {"q": "Do the failing dies form a ring around the wafer?", "a": a, "premise": yes,
                "dim": "morphology", "term": "ring"}
    if kind == "check_clock":
        located = [r for r in regions if r.get("clock")]
        if not located:
            return None
        r = located[0]
        free = [h for h in range(1, 13) if not fails_near(h, f)]
        if want is None:
            want = bool(rng.random() < 0.5) or not free
        if not want and not free:
            return None
        hour = int(r["clock"]) if want else int(rng.choice(free))
        q = f"Are the failures concentrated around {hour} o'clock?"
        a = (f"Yes. The main failing region lies around {hour} o'clock." if want else
             f"No. The main failing region lies around {r['clock']} o'clock, not at {hour} o'clock.")
        return {"q": q, "a": a, "premise": want, "dim": "spatial", "term": f"{hour} o'clock"}
    if kind == "card_choice":
        words = {"line": "scratch-like", "ring": "ring-like", "blob": "clustered", "arc": "clustered"}
        shapes = [words[r["shape"]] for r in regions] + (["ring-like"] if f["ring_zones"] else [])
        if f["scattered"] and not shapes:
            shapes = ["random"]
        if not shapes:
            return None
        pick = list(dict.fromkeys(shapes))
        return {"q": "Does the wafer show a scratch-like, ring-like, clustered, or random pattern?",
                "a": f"It shows a {' and '.join(pick)} pattern. {main}", "premise": True, "dim": "morphology",
                "term": pick[0], "avoid": [w for w, names in (("scratch-like", {"Scratch"}), ("ring-like", {"Edge-Ring", "Donut"}),
                                                          ("random", {"Random"}))
                                           if w not in pick and not names & set(labels)]}
    raise ValueError(f"unknown consistency check {kind!r}")


def _answer(t: Template, labels: list[str], desc: dict) -> str:
    """The reference answer of a non-consistency template, from the description and the label."""
    spatial = desc["spatial"] or "No distinct failing region stands out from the background."
    if t.category == "defect_type":
        return f"{type_sentence(labels)} {_first(spatial)}"
    if t.category == "spatial":
        return spatial
    if t.category == "morphology":
        return f"{type_sentence(labels)} {spatial}"
    return desc["root_cause"]


def reference_answer(template_id: str, labels: list[str], desc: dict, facts: dict | None = None) -> str | None:
    """The answer this corpus writes for a non-consistency template, given a label and the map's grounded
    description (None for a consistency check, whose question itself depends on the map): what the scripted
    baseline of stage 07 answers with another label. With the map's `facts`, repaired as stage 04 repairs it
    (`consistency.repair`)."""
    t = BY_ID.get(template_id)
    if t is None:
        return None
    answer = _answer(t, labels, desc)
    return answer if facts is None else repair(answer, labels, facts, t.category)[0]


def _terms(rubric: Rubric, t: Template) -> dict[str, dict[str, list[str]]]:
    """The rubric terms a pair is scored on: a defect-type question only on the pattern names."""
    terms = rubric.terms()
    if t.category == "defect_type":
        patterns = {PATTERN_NAMES[p] for p in PATTERNS} | {"center pattern"}
        m = rubric.morphology_rubric
        return {"morphology": {"must_hit": split_terms(m.pattern_type),
                               "must_avoid": [x for x in split_terms(m.morphology_avoid) if x in patterns]}}
    return {d: terms[d] for d in t.dims}


def _pick_check(checks: list[str], labels: list[str], f: dict, rng, tally: dict) -> tuple[str, dict] | None:
    """The consistency check to ask next: among those the map allows, the (kind, answer) that answer is rarest
    for so far (tally[kind] = [no, yes] counts over the wafers seen), so that no question's wording predicts
    its answer. Removes the chosen kind from `checks`."""
    options = []
    for kind in checks:
        for want in ((False, True) if kind in ("check_zone", "check_clock") else (None,)):
            made = _consistency(kind, labels, f, rng, want)
            if made is not None:
                no, yes = tally.get(kind, [0, 0])
                score = 0 if kind == "card_choice" else (yes - no) if made["premise"] else (no - yes)
                if score <= 0:  # never let one answer run ahead for this kind of check
                    options.append((score, kind, made))
    if not options:
        return None
    best = min(o[0] for o in options)
    _, kind, made = options[[i for i, o in enumerate(options) if o[0] == best][int(rng.integers(
        sum(o[0] == best for o in options)))]]
    checks.remove(kind)
    tally.setdefault(kind, [0, 0])[int(made["premise"])] += 1
    return kind, made


def wafer_pairs(wafer_id: str, labels: list[str], hard_map: bool, f: dict, desc: dict, rubric: Rubric,
                n_pairs: int, seed: int, tally: dict | None = None) -> list[dict]:
    """n_pairs question-answer pairs for one wafer: one per category first (at least two consistency checks),
    the rest drawn at random; each with its terms and difficulty. Pass one `tally` dict for all wafers to
    balance yes and no answers per kind of check over the data set."""
    rng = _rng(wafer_id, seed)
    tally = {} if tally is None else tally
    hard = hard_map or len(labels) > 1
    by_cat = {c: [t for t in TEMPLATES if t.category == c] for c in CATEGORIES[:4]}
    plan = ["defect_type", "spatial", "morphology", "root_cause", "consistency", "consistency"]
    plan += list(rng.choice(list(CATEGORIES), size=max(0, n_pairs - len(plan))))
    checks = list(CONSISTENCY_TEMPLATES)
    rng.shuffle(checks)
    out, used = [], set()
    for cat in plan[:n_pairs]:
        picked = _pick_check(checks, labels, f, rng, tally) if cat == "consistency" else None
        if cat == "consistency" and picked is None:  # no check keeps the answers balanced: ask something else
            cat = str(rng.choice(CATEGORIES[:4]))
        if picked is not None:
            kind, made = picked
            base = "hard" if not made["premise"] else ("medium" if kind == "card_choice" else "easy")
            yes_no = [] if kind == "card_choice" else (["yes"] if made["premise"] else ["no"])
            hit = yes_no + ([made["term"]] if made["premise"] else [])
            avoid = made.get("avoid", []) + ([] if made["premise"] else [made["term"]])
            out.append({"template": kind, "category": cat, "question": made["q"], "answer": made["a"],
                        "dims": [made["dim"]], "terms": {made["dim"]: {"must_hit": hit, "must_avoid": avoid}},
                        "premise": bool(made["premise"]), "difficulty": difficulty(base, hard)})
            continue
        free = [t for t in by_cat[cat] if t.tid not in used] or by_cat[cat]
        t = free[int(rng.integers(len(free)))]
        used.add(t.tid)
        out.append({"template": t.tid, "category": cat, "question": t.text, "answer": _answer(t, labels, desc),
                    "dims": list(t.dims), "terms": _terms(rubric, t), "premise": None,
                    "difficulty": difficulty(t.level, hard)})
    for k, p in enumerate(out):
        # the source fix: a sentence that contradicts the label or the map is said right or left out
        before = p["answer"]
        p["answer"], fixed, left = repair(p["answer"], labels, f, p["category"])
        if fixed and p["premise"] is None:
            p["terms"] = _without_repaired_terms(p["terms"], before, p["answer"])
        p["reference_repaired"], p["reference_problem"] = ",".join(fixed), ",".join(left)
        p["reasoning_answer"] = f"<REASONING>{_observations(f)}</REASONING>\n<SOLUTION>{p['answer']}</SOLUTION>"
        p["qa_index"] = k
    return out


def _without_repaired_terms(terms: dict, before: str, after: str) -> dict:
    """A repaired pair's terms without the must-hit terms only the sentences the repair changed or left out
    stated (found in the answer before the repair, not after): the rubric took them from the same facts that
    contradict the label (a Center map's main region placed elsewhere and its clock positions, a donut read
    as a compact blob), so a correct answer need not say them."""
    threshold = RuleParams().threshold
    out = {}
    for dim, t in terms.items():
        gone = [x for x in t["must_hit"] if term_found(x, before, threshold) and not term_found(x, after, threshold)]
        out[dim] = {"must_hit": [x for x in t["must_hit"] if x not in gone], "must_avoid": list(t["must_avoid"])}
    return out


def self_check(pair: dict, min_score: float, params: RuleParams = PAPER) -> str:
    """Why a reference answer fails its own rubric ('' when it passes): every tested dimension must score at
    least min_score and no must-avoid term may appear. The gate scores with the paper's combination (listed
    terms, H saturating at two thirds), as every reference run's corpus was built; stage 07 counts the
    references that contradict their label or map (`corpus/consistency.py`)."""
    texts = dimension_texts(pair["answer"], pair["terms"], params.threshold)
    for dim, terms in pair["terms"].items():
        s = dimension_score(texts[dim], terms["must_hit"], terms["must_avoid"], params)
        if s["violations"]:
            return f"answer contains a must-avoid term ({dim}: {s['violations'][0]})"
        if s["D"] < min_score:
            return f"answer scores {s['D']:.2f} < {min_score} on its own {dim} rubric"
    return ""


def near_duplicates(questions: list[str], threshold: float = 90.0) -> list[bool]:
    """For one wafer's questions: True for each that repeats an earlier one exactly or nearly (rapidfuzz)."""
    seen, out = [], []
    for q in questions:
        norm = " ".join(q.lower().split())
        dup = any(fuzz.ratio(norm, s) >= threshold for s in seen)
        out.append(dup)
        if not dup:
            seen.append(norm)
    return out


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts (answer diversity; 1.0: no n-gram repeats)."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [t.lower().split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


_LEAK = re.compile(r"\b(rings?|ring-like|scratch-like|arcs?)\b")


def names_a_pattern(question: str) -> bool:
    """Does the question name a defect pattern (or the shape that gives one away)?"""
    q = question.lower()
    return bool(_LEAK.search(q)) or any(rx.search(q) for rx in PATTERN_WORDS.values())


def pair_rows(wafer: dict, pairs: list[dict]) -> list[dict]:
    """Table rows of one wafer's pairs (wafer: id, lot, split, labels, image, role)."""
    rows = []
    for p in pairs:
        rows.append({
            "id": f"{wafer['id']}-q{p['qa_index']}", "wafer_id": wafer["id"], "lot": str(wafer["lot"]),
            "split": wafer["split"], "labels": list(wafer["labels"]), "image": wafer["image"], "role": wafer["role"],
            "category": p["category"], "template": p["template"], "difficulty": p["difficulty"],
            "question": p["question"], "answer": p["answer"], "reasoning_answer": p["reasoning_answer"],
            "dims": p["dims"], "terms": json.dumps(p["terms"], sort_keys=True),
            "must_hit": list(dict.fromkeys(t for v in p["terms"].values() for t in v["must_hit"])),
            "must_avoid": list(dict.fromkeys(t for v in p["terms"].values() for t in v["must_avoid"])),
            "premise": p["premise"], "qa_index": p["qa_index"],
            "reference_repaired": p.get("reference_repaired", ""), "reference_problem": p.get("reference_problem", "")})
    return rows


def drop_reasons(qa, min_score: float, duplicate_threshold: float):
    """Why each pair of the table is dropped ('' to keep): a near-duplicate of an earlier question of its wafer,
    a reference that still contradicts its label or map after its repair (column `reference_problem`), or a
    reference answer that fails its own rubric (:func:`self_check`)."""
    import pandas as pd
    dup = pd.Series(False, index=qa.index)
    for _, g in qa.groupby("wafer_id", sort=False):
        dup[g.index] = near_duplicates(list(g["question"]), duplicate_threshold)
    problems = qa["reference_problem"] if "reference_problem" in qa else pd.Series("", index=qa.index)
    return pd.Series(["near-duplicate question" if d else
                      f"reference contradicts its label or map ({p})" if p else
                      self_check({"answer": a, "terms": json.loads(t)}, min_score)
                      for d, p, a, t in zip(dup, problems, qa["answer"], qa["terms"])], index=qa.index)
