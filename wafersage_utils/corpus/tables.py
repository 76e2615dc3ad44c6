"""The described corpus: the tables stages 02 and 03 write and every later stage reads.

data/facts.parquet         id, facts (JSON) and flat columns for plots and filters
data/descriptions.parquet  id, backend, full, spatial, root_cause, structured (JSON), quarantined, reason
data/rubrics.parquet       id, backend, rubric (JSON), <dimension>_must_hit / _must_avoid lists,
                           quarantined, reason
data/vqa.parquet           one row per question-answer pair (stage 04, see :mod:`.vqa`)
data/images/<size>/*.png   rendered maps, named by content hash (column `image` holds the relative path)

Tables are parquet (load them with pandas, or `datasets.load_dataset("parquet", data_files=...)`), written
atomically. Reading checks the columns and names the file and what is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..maps.facts import FactRules, measure
from ..maps.splits import stratified_cap
from ..runner.runs import atomic_target
from .claims import check_description
from .scoring import DIMENSIONS

REQUIRED = {
    "facts": ("id", "facts"),
    "descriptions": ("id", "backend", "full", "spatial", "root_cause", "structured", "quarantined", "reason"),
    "rubrics": ("id", "backend", "rubric", "quarantined", "reason"),
    "vqa": ("id", "wafer_id", "lot", "split", "labels", "image", "category", "difficulty", "question", "answer",
            "reasoning_answer", "dims", "terms", "must_hit", "must_avoid", "qa_index"),
}


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Write a table atomically: a failed write leaves any earlier file intact."""
    with atomic_target(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_corpus(path: Path, kind: str) -> pd.DataFrame:
    """Read one of the corpus tables, checking its columns (kind: facts, descriptions, rubrics or vqa)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes the {kind} table first")
    df = pd.read_parquet(path)
    missing = [c for c in REQUIRED[kind] if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: {kind} table lacks column(s) {missing}; expected {list(REQUIRED[kind])}")
    return df


def select_maps(maps: pd.DataFrame, max_maps: int, seed: int) -> pd.DataFrame:
    """The maps stage 01 sampled (role typical or hard, never quarantined), capped per label if asked."""
    chosen = maps[(maps["role"] != "") & ~maps["quarantined"].astype(bool)].reset_index(drop=True)
    return chosen.iloc[stratified_cap(chosen["key"], max_maps, seed)].reset_index(drop=True)


def measure_all(maps, rules: FactRules, progress: bool = True) -> list[dict]:
    """Facts of every map."""
    return [measure(m, rules) for m in tqdm(list(maps), desc="facts", disable=not progress, mininterval=2.0)]


def main_shape(f: dict) -> str:
    """The map's dominant structure: ring when a zone is ringed, else the largest region's shape, else
    scattered or none."""
    if f["near_full"]:
        return "near-full"
    if f["ring_zones"]:
        return "ring"
    return f["regions"][0]["shape"] if f["regions"] else ("scattered" if f["scattered"] else "none")


def facts_table(ids, facts: list[dict]) -> pd.DataFrame:
    """Facts as a table: the JSON of each map plus flat columns for plots and filters."""
    return pd.DataFrame({
        "id": list(ids), "facts": [json.dumps(f, sort_keys=True) for f in facts],
        "fail_ratio": [f["fail_ratio"] for f in facts],
        "zones": [f["zones_with_failures"] for f in facts], "clock_sectors": [f["clock_sectors"] for f in facts],
        "n_regions": [len(f["regions"]) for f in facts],
        "main_shape": [main_shape(f) for f in facts],
        "near_full": [f["near_full"] for f in facts], "scattered": [f["scattered"] for f in facts],
        "point_symmetry": [f["point_symmetry"] for f in facts]})


def check_all(descs: list[dict], labels: list[list[str]], facts: list[dict], kb: dict,
              zone_density: float) -> tuple[list[list[dict]], np.ndarray, list[str]]:
    """Hallucination checks of every description; quarantine flags and reasons (request errors included)."""
    checks, flags, reasons = [], [], []
    for d, lab, f in zip(descs, labels, facts):
        items = check_description(d, lab, f, kb, zone_density)
        why = [f"{i['kind']}: {i['reason']}" for i in items if i["contradicted"]]
        if d.get("error"):
            why.insert(0, f"request: {d['error']}")
        elif not (d.get("full") and d.get("spatial")):
            why.insert(0, "request: empty description")
        checks.append(items)
        flags.append(bool(why))
        reasons.append(" | ".join(why))
    return checks, np.array(flags, dtype=bool), reasons


def reason_kind(reason: str) -> str:
    """The first reason's kind (request, zone, clock, pattern, root_cause), for counting."""
    return reason.split(":", 1)[0] if reason else ""


def descriptions_table(ids, backend: str, descs: list[dict], flags, reasons) -> pd.DataFrame:
    return pd.DataFrame({
        "id": list(ids), "backend": backend,
        **{k: [d.get(k, "") for d in descs] for k in ("full", "spatial", "root_cause")},
        "structured": [json.dumps(d.get("structured") or {}, sort_keys=True) for d in descs],
        "quarantined": list(flags), "reason": list(reasons),
        "cached": [bool(d.get("cached", False)) for d in descs], "seconds": [float(d.get("seconds", 0.0)) for d in descs]})


def rubric_row(map_id: str, backend: str, rubric, reason: str = "") -> dict:
    """One rubrics-table row: the rubric JSON and the term lists per dimension (empty when quarantined)."""
    row = {"id": map_id, "backend": backend, "rubric": rubric.model_dump_json() if rubric is not None else "",
           "quarantined": rubric is None or bool(reason), "reason": reason}
    terms = rubric.terms() if rubric is not None else {}
    for d in DIMENSIONS:
        row[f"{d}_must_hit"] = terms.get(d, {}).get("must_hit", [])
        row[f"{d}_must_avoid"] = terms.get(d, {}).get("must_avoid", [])
    return row


def rubric_terms(row) -> dict[str, dict[str, list[str]]]:
    """The scorer's rubric (dimension -> must_hit / must_avoid) from a rubrics-table row."""
    return {d: {"must_hit": list(row[f"{d}_must_hit"]), "must_avoid": list(row[f"{d}_must_avoid"])} for d in DIMENSIONS}
