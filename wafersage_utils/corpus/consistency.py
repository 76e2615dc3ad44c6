"""Do the reference answers agree with their labels and with the measured maps? (issue 28)

The grounded teacher writes each reference from the map's measured facts and its label, and the teacher's own
hallucination check compares it with those same facts, so it cannot fail. This check reads every sentence of a
reference against the label *and* the measurements and names what a yield engineer would object to:

- `no_region_for_local_label`: a localized label (Center, Donut, Edge-Loc, Loc, Scratch) whose reference says
  there is no distinct failing region;
- `edge_ring_only_arcs`: an Edge-Ring reference that describes arcs but never a ring;
- `line_with_equal_ends`: a region "from 9 to 9 o'clock";
- `clear_zone_with_failures`: a zone called clear while a reader sees it full of failing dies: its failing-die
  density is at least 15% and well above the wafer's (or the wafer's failures are scattered everywhere);
- `center_label_main_region_elsewhere`: a Center map whose main failing region lies outside the center zone;
- `donut_as_compact_blob`: a Donut described by a compact blob as its main region;
- `label_not_named`: a defect-type or morphology reference that never names its own pattern.

`reference_problems` gives the problems of one reference; `problem_counts` counts them over a corpus.
`repair` fixes a reference at its source, stage 04, sentence by sentence: a line "from 9 to 9 o'clock" is said
"around 9 o'clock", and a sentence that contradicts the label or the map (no distinct region on a localized
map, a clear zone full of failing dies, a Donut's or a Center's main region that the label contradicts) is left
out, and an Edge-Ring told in arcs says that the arcs are parts of an edge ring; what still has a problem, or is left with nothing, is quarantined with the reason.
"""
from __future__ import annotations

import re
from collections import Counter

import pandas as pd

from ..maps.conventions import NONE_LABEL
from .describe import PATTERN_NAMES

LOCAL = ("Center", "Donut", "Edge-Loc", "Loc", "Scratch")
PROBLEMS = ("no_region_for_local_label", "edge_ring_only_arcs", "line_with_equal_ends", "clear_zone_with_failures",
            "center_label_main_region_elsewhere", "donut_as_compact_blob", "label_not_named")
#: A zone is not "clear" when its failing-die density is this many times the wafer's fail ratio and at least
#: CLEAR_MIN_DENSITY in absolute terms (a reader sees a zone full of red dies, clustered or not).
CLEAR_FACTOR, CLEAR_MIN_DENSITY = 1.5, 0.15

_NO_REGION = re.compile(r"\b(no distinct failing region|failing dies do not group)\b", re.I)
_EQUAL_ENDS = re.compile(r"\bfrom (1[0-2]|[1-9]) to \1 o'clock", re.I)
_CLEAR = re.compile(r"\bthe ((?:center|mid-radius|edge)(?:(?:,| and) (?:center|mid-radius|edge))*) zones? (?:is|are) "
                    r"clear\b", re.I)
_MAIN = re.compile(r"\bthe main failing region is (?:an? )?([\w -]+?) in the (center|mid-radius|edge) zone", re.I)


def reference_problems(answer: str, labels, facts: dict, category: str = "") -> list[tuple[str, str]]:
    """(problem, evidence) for each way a reference contradicts its label or the measured map ([] when none)."""
    text = answer or ""
    labels = [x for x in labels if x != NONE_LABEL]
    out: list[tuple[str, str]] = []
    local = [x for x in labels if x in LOCAL]
    if local and _NO_REGION.search(text):
        out.append(("no_region_for_local_label", f"{'+'.join(local)} map, reference: '{_NO_REGION.search(text).group(0)}'"))
    if "Edge-Ring" in labels and re.search(r"\barcs?\b", text, re.I) and not re.search(r"(?<![\w-])rings?\b", text, re.I):
        out.append(("edge_ring_only_arcs", "an Edge-Ring reference describes arcs and no ring"))
    m = _EQUAL_ENDS.search(text)
    if m:
        out.append(("line_with_equal_ends", m.group(0)))
    density = facts.get("zone_fail_density") or {}
    background = float(facts.get("fail_ratio") or 0.0)
    for m in _CLEAR.finditer(text):
        for zone in re.split(r",\s*|\s+and\s+", m.group(1).lower()):
            d = float(density.get(zone, 0.0))
            if d >= CLEAR_MIN_DENSITY and (d >= CLEAR_FACTOR * background or facts.get("scattered")):
                out.append(("clear_zone_with_failures", f"'{zone} is clear' but {d:.0%} of its dies fail "
                                                        f"(wafer: {background:.0%})"))
    main = _MAIN.search(text)
    if "Center" in labels and len(labels) == 1 and main and main.group(2).lower() != "center":
        out.append(("center_label_main_region_elsewhere", f"main failing region in the {main.group(2)} zone"))
    if "Donut" in labels and main and "blob" in main.group(1).lower():
        out.append(("donut_as_compact_blob", f"main failing region: {main.group(1)}"))
    if category in ("defect_type", "morphology") and labels:
        named = [x for x in labels if re.search(rf"(?<![\w-]){re.escape(PATTERN_NAMES[x])}(?![\w-])", text, re.I)]
        if len(named) < len(labels):
            out.append(("label_not_named", f"{'+'.join(labels)} not all named"))
    return out


def problem_counts(rows: pd.DataFrame, facts: dict[str, dict]) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts of each problem over rows (`answer`, `labels`, `wafer_id`, `category`), and one row per problem
    found (wafer, question, problem, evidence)."""
    counts: Counter = Counter({p: 0 for p in PROBLEMS})
    found, flagged = [], 0
    for r in rows.itertuples():
        problems = reference_problems(r.answer, list(r.labels), facts[r.wafer_id], r.category)
        flagged += bool(problems)
        for problem, evidence in problems:
            counts[problem] += 1
            found.append({"wafer_id": r.wafer_id, "category": r.category, "labels": "+".join(r.labels),
                          "problem": problem, "evidence": evidence, "answer": r.answer})
    table = pd.DataFrame(found, columns=["wafer_id", "category", "labels", "problem", "evidence", "answer"])
    counts["references"] = len(rows)
    counts["references_with_a_problem"] = flagged
    return dict(counts), table


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
#: What an Edge-Ring reference told in arcs says of them: the arcs are measured, the ring is the label's.
EDGE_RING_ARCS = "These arcs are parts of an edge ring."
_ARC = re.compile(r"\barcs?\b", re.IGNORECASE)


def _clear_zone_wrong(sentence: str, facts: dict) -> bool:
    return any(p == "clear_zone_with_failures" for p, _ in reference_problems(sentence, [], facts))


def repair(answer: str, labels, facts: dict, category: str = "") -> tuple[str, list[str], list[str]]:
    """(repaired answer, problems fixed, problems left) for one reference (see the module docstring). The
    first sentence of a defect-type or morphology answer (the type statement) is never dropped."""
    found = reference_problems(answer, labels, facts, category)
    if not found:
        return answer, [], []
    kinds = {p for p, _ in found}
    text = _EQUAL_ENDS.sub(lambda m: f"around {m.group(1)} o'clock", answer) if "line_with_equal_ends" in kinds else answer
    keep_first = category in ("defect_type", "morphology")
    out = []
    for k, sentence in enumerate(_SENTENCE.split(text)):
        drop = (("no_region_for_local_label" in kinds and _NO_REGION.search(sentence))
                or ("clear_zone_with_failures" in kinds and _CLEAR.search(sentence) and _clear_zone_wrong(sentence, facts))
                or (kinds & {"center_label_main_region_elsewhere", "donut_as_compact_blob"} and _MAIN.search(sentence)))
        if not drop or (keep_first and k == 0):
            out.append(sentence)
            if "edge_ring_only_arcs" in kinds and _ARC.search(sentence) and EDGE_RING_ARCS not in out:
                out.append(EDGE_RING_ARCS)  # the measured arcs stay (their clock positions are right), framed
    repaired = " ".join(out).strip()
    left = [p for p, _ in reference_problems(repaired, labels, facts, category)] if repaired else ["nothing_left"]
    fixed = sorted(kinds - set(left))
    return repaired, fixed, left
