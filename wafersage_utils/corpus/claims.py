"""Hallucination checks: the claims a model's description makes, held against the map's measured facts.

Four kinds of claim are read from the text (negation-aware: "the edge is clear" claims nothing about the
edge) and from the structured JSON:

- zone: the description puts failures in a zone (center, mid-radius, edge) where the facts measure
  almost no clustered failures;
- clock: it names a clock position with no clustered failure within one hour of it;
- pattern: it names a pattern that is neither the map's label nor plausible from the facts;
- root_cause: it proposes a cause the knowledge base lists as contradicting the map's pattern.

Zone and clock claims are read from the spatial description, the structured JSON and those sentences of
the full analysis that neither state the defect type nor discuss causes (cause sentences like
"center-to-edge deposition gradient" name places that are not claims about this map).
"""
from __future__ import annotations

import re
from collections import Counter

from ..maps.conventions import NONE_LABEL
from ..maps.facts import failing_hours, fails_near
from .knowledge import PatternKnowledge
from .rubric import PLAUSIBLE, Rubric, contradicting_causes
from .scoring import HOUR, PATTERN_WORDS, ZONE_WORDS, affirmed, clock_hours, term_found  # claim words: scoring.py

KINDS = ("zone", "clock", "pattern", "root_cause")
CAUSAL = re.compile(r"\b(caus\w*|due to|points? to|indicat\w*|consistent with|suggest\w*|hypothes\w*|likely|"
                     r"check\w*|root|could|may|might|equipment|process)\b")
# Sentences that state the defect type ("The defect pattern on this wafer is center and scratch."): their
# pattern names are checked as patterns, not as places.
_TYPE = re.compile(r"\bpatterns? (on this wafer )?(is|are)\b|\bshows? (an? |no )?[\w\- ]*\bpatterns?\b")
ZONE_TOLERANCE = 0.5  # a zone claim stands if the zone's clustered density reaches this share of the zone rule


def location_text(desc: dict) -> str:
    """The text whose zone and clock words are claims about the map: spatial, plus non-causal full sentences,
    with pattern names masked."""
    full = [s for s in re.split(r"(?<=[.!?])\s+", desc.get("full") or "")
            if not CAUSAL.search(s.lower()) and not _TYPE.search(s.lower())]
    text = " ".join([desc.get("spatial") or ""] + full)
    for rx in PATTERN_WORDS.values():  # "edge-ring" names a pattern (checked as such), not a place
        text = rx.sub("pattern", text.lower())
    return text


def _structured_list(structured: dict, key: str) -> list:
    v = (structured or {}).get(key) or []
    return v if isinstance(v, list) else [v]


def extract_claims(desc: dict) -> dict[str, list]:
    """Zones, clock hours, patterns and the texts to search for causes, claimed by one description."""
    loc = location_text(desc)
    st = desc.get("structured") or {}
    zones = [z for z, rx in ZONE_WORDS.items() if affirmed(rx, loc)]
    for item in _structured_list(st, "zones"):
        zones += [z for z, rx in ZONE_WORDS.items() if rx.search(str(item).lower())]
    hours = clock_hours(loc)
    for item in _structured_list(st, "clock_positions"):
        m = re.search(HOUR, str(item))
        if m:
            hours.append(int(m.group(1)))
    text = " ".join([desc.get("full") or "", desc.get("spatial") or ""])
    patterns = [p for p, rx in PATTERN_WORDS.items() if affirmed(rx, text)]
    for item in _structured_list(st, "defect_types"):
        try:
            patterns += Rubric.model_validate({"defect_types": [item], "spatial_rubric": {}, "morphology_rubric": {},
                                               "root_cause_rubric": {}}).defect_types
        except ValueError:
            patterns.append(f"unknown:{item}")
    return {"zone": sorted(set(zones)), "clock": sorted(set(hours)), "pattern": sorted(set(patterns) - {NONE_LABEL}),
            "cause_text": " ".join([desc.get("full") or "", desc.get("root_cause") or ""])}


def check_description(desc: dict, labels: list[str], facts: dict, kb: dict[str, PatternKnowledge],
                      zone_density: float = 0.08, threshold: float = 0.8) -> list[dict]:
    """Every claim of a description with its verdict: {kind, claim, contradicted, reason}."""
    c = extract_claims(desc)
    out = []
    dens = facts["zone_clustered_density"]
    for z in c["zone"]:
        bad = z not in facts["zones_with_failures"] and dens[z] < ZONE_TOLERANCE * zone_density
        out.append({"kind": "zone", "claim": z, "contradicted": bad,
                    "reason": f"failures claimed at the {z}; clustered density there is {dens[z]:.3f}" if bad else ""})
    for h in c["clock"]:
        bad = not fails_near(h, facts)
        out.append({"kind": "clock", "claim": h, "contradicted": bad, "reason": f"{h} o'clock claimed; clustered "
                    f"failures only at {sorted(failing_hours(facts)) or 'no sector'}" if bad else ""})
    for p in c["pattern"]:
        bad = p not in labels and (p.startswith("unknown:") or not PLAUSIBLE[p](facts))
        out.append({"kind": "pattern", "claim": p, "contradicted": bad,
                    "reason": f"{p} claimed; label {'+'.join(labels)} and the facts do not support it" if bad else ""})
    for cause in contradicting_causes(labels, kb, threshold):
        if term_found(cause, c["cause_text"], threshold):
            out.append({"kind": "root_cause", "claim": cause, "contradicted": True,
                        "reason": f"cause '{cause}' contradicts {'+'.join(labels)}"})
    return out


def summarise(checks: list[list[dict]]) -> dict:
    """Per kind: claims checked, contradicted, rate; and the share of descriptions with any contradiction."""
    claims, bad = Counter(), Counter()
    for items in checks:
        for it in items:
            claims[it["kind"]] += 1
            bad[it["kind"]] += it["contradicted"]
    out = {f"hallucination/{k}/claims": claims[k] for k in KINDS if k != "root_cause"}
    out |= {f"hallucination/{k}/contradicted": bad[k] for k in KINDS}
    out |= {f"hallucination/{k}/rate": bad[k] / claims[k] for k in KINDS if claims[k] and k != "root_cause"}
    n = max(len(checks), 1)
    out["hallucination/root_cause/per_description"] = bad["root_cause"] / n
    out["hallucination/descriptions_rate"] = sum(any(i["contradicted"] for i in items) for items in checks) / n
    return out


