"""The grounded teacher: the paper's four outputs per map, written from measured facts only.

Spatial statements come from :mod:`..maps.facts` (zones, clock positions, regions and their shapes), the defect
type from the map's (cleaned) label, root causes from the knowledge base, always as hypotheses. Wording
varies per map (seeded), so that phrasing is not a shortcut for the student model; content never goes
beyond the facts.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..maps.conventions import NONE_LABEL
from .knowledge import PatternKnowledge

PATTERN_NAMES = {"Center": "center", "Donut": "donut", "Edge-Loc": "edge-local", "Edge-Ring": "edge-ring",
                 "Loc": "localized", "Near-full": "near-full", "Scratch": "scratch", "Random": "random",
                 NONE_LABEL: "no systematic"}
# Wording varies, but the canonical shape word (blob, ring, arc, line) is always there: rubrics test for it.
SHAPE_WORDS = {"blob": ("compact blob", "blob", "dense blob"), "ring": ("ring", "closed ring", "continuous ring"),
               "arc": ("arc", "curved arc", "partial arc"), "line": ("thin line", "straight line", "line")}


def seeded_rng(key: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()[:12], 16))


def with_article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def clock_phrase(region: dict) -> str:
    """Clock terms of a region: 'from 2 to 8 o'clock' for lines and arcs, 'around 3 o'clock' otherwise."""
    if region["shape"] == "ring":
        return "running all the way around"
    if "from_clock" in region:
        return f"from {region['from_clock']} to {region['to_clock']} o'clock"
    if region.get("clock"):
        return f"around {region['clock']} o'clock"
    return "at the wafer center" if region["zone"] == "center" else "centred on the wafer"


def density_word(f: dict) -> str:
    c = max(f["zone_clustered_density"].values())
    return "dense" if c >= 0.4 else "moderate" if c >= 0.15 else "sparse"


def _zones_phrase(zones: list[str]) -> str:
    names = {"center": "the center", "mid-radius": "mid-radius", "edge": "the edge"}
    return " and ".join(names[z] for z in zones) if zones else "no particular zone"


def spatial_sentences(f: dict, rng: np.random.Generator) -> list[str]:
    """Where the failures are and what they look like, from the facts only (no causes)."""
    out = []
    if f["near_full"]:
        return [f"Nearly every die fails ({f['fail_ratio']:.0%} of dies), at the center, mid-radius and the edge alike."]
    if f["ring_zones"]:
        z = f["ring_zones"][0]
        out.append(rng.choice([f"Failures form a continuous ring around the whole {z} zone, at every clock position.",
                               f"A continuous ring of failing dies runs all the way around the {z} zone."]))
    for i, reg in enumerate(f["regions"]):
        shape = rng.choice(SHAPE_WORDS[reg["shape"]])
        lead = "The main failing region is" if i == 0 else rng.choice(["Another region is", "A further region is"])
        out.append(f"{lead} {with_article(shape)} in the {reg['zone']} zone {clock_phrase(reg)}, about "
                   f"{reg['length_dies']:.0f} dies long and {reg['width_dies']:.0f} wide ({reg['dies']} dies).")
    if not f["regions"] and not f["ring_zones"]:
        out.append(rng.choice(["No distinct failing region stands out from the background.",
                               "There is no distinct failing region: the failing dies do not group."]))
    if f["scattered"]:
        out.append(f"Many failures ({f['fail_ratio']:.0%} of dies) are scattered over the wafer without structure.")
    if f["zones_with_failures"]:
        out.append(f"Clustered failures are {density_word(f)} and lie at {_zones_phrase(f['zones_with_failures'])}.")
    clear = [z for z in ("center", "mid-radius", "edge") if z not in f["zones_with_failures"]]
    if clear and (f["regions"] or f["ring_zones"]):
        out.append(f"The {' and '.join(clear)} {'zone is' if len(clear) == 1 else 'zones are'} clear of clustered failures.")
    return out


def cause_sentences(labels: list[str], kb: dict[str, PatternKnowledge], rng: np.random.Generator) -> list[str]:
    """Root-cause hypotheses from the knowledge base, worded as hypotheses."""
    out = []
    for lab in labels:
        k = kb[lab]
        if not k.candidate_causes:
            out.append("No systematic process cause is indicated; the failures look like normal background yield loss.")
            continue
        causes = list(rng.permutation(k.candidate_causes))[:3]
        verb = rng.choice(["could point to", "may indicate", "is consistent with"])
        out.append(f"The {PATTERN_NAMES[lab]} pattern {verb} {', '.join(causes[:-1])}"
                   f"{' or ' if len(causes) > 1 else ''}{causes[-1]}.")
        out.append(f"Worth checking: {', '.join(k.equipment_categories[:3])} ({', '.join(k.process_steps[:2])}).")
    return out


def grounded_description(map_id: str, labels: list[str], f: dict, kb: dict[str, PatternKnowledge], seed: int) -> dict:
    """The four outputs for one map: full analysis, spatial-only, root-cause-only, structured JSON."""
    rng = seeded_rng(map_id, seed)
    type_name = " and ".join(PATTERN_NAMES[lab] for lab in labels)
    opener = ("This wafer map shows no systematic defect pattern." if labels == [NONE_LABEL]
              else rng.choice([f"This wafer map shows {with_article(type_name)} defect pattern.",
                               f"The defect pattern on this wafer is {type_name}."]))
    spatial = spatial_sentences(f, rng)
    causes = cause_sentences(labels, kb, rng)
    structured = {
        "defect_types": labels, "zones": f["zones_with_failures"], "clock_positions": f["clock_sectors"],
        "ring_zones": f["ring_zones"], "quadrant_share": f["quadrant_share"], "density": density_word(f),
        "fail_ratio": f["fail_ratio"],
        "regions": [{k: r[k] for k in ("shape", "zone", "clock", "from_clock", "to_clock", "length_dies",
                                       "width_dies", "dies") if k in r} for r in f["regions"]],
        "equipment": sorted({e for lab in labels for e in kb[lab].equipment_categories}),
        "process_steps": sorted({p for lab in labels for p in kb[lab].process_steps}),
        "root_cause_hypotheses": [c for lab in labels for c in kb[lab].candidate_causes],
    }
    return {"full": " ".join([opener] + spatial + causes), "spatial": " ".join(spatial),
            "root_cause": " ".join(causes), "structured": structured}
