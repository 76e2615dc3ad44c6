"""Where a model calls a map defect-free: its operating point, chosen on validation and saved with the model.

Why. A real data set is imbalanced (WM-811K: 59% defect-free), and the type stream deliberately trains on another
mix: defect-free questions capped at `type_stream_none_ratio` times the defect ones, rare classes asked again
up to `type_stream_class_floor` (training/type_questions.py). That mix is what teaches the rare classes, but it
also teaches a prior: the model says "no pattern" less often than the data warrants, and defect-free maps are
called a pattern (3.5% of them in results/wm811k before this, against the classical baseline's 0.8%). Moving the
decision threshold to the deployment prior is the textbook correction for a training prior that differs from
the data's (logit adjustment); the amount is chosen on validation maps.

How. A plain answer decides between "defect-free" and "a pattern" at one token: the word after "This wafer map
shows" ("no" or an article). A bias `b` added to the logit of "no" there moves that decision and nothing else.
It is `generate`'s `sequence_bias` (the prefix tokens followed by "no"), written into the exported model's
`generation_config.json`, so every user of the folder (the scorer, the model card's `pipeline(...)`, `make
serve`, stages 06 and 07) decides at the same point with no code of ours.

Choosing `b`. One greedy pass over the validation maps gives each map's answer at b = 0 and its margin at the
decision token (the logit of "no" less the largest other logit). For b >= 0 a map's greedy answer becomes
defect-free exactly when margin + b > 0, and stays what it was otherwise (the tokens before the decision are
not biased, and a map already answered defect-free stays so), so the whole curve over b follows from that one
pass; the notebook asks the biased model again to check it. Only b >= 0 is searched: a negative bias would
change answers into patterns whose wording the pass did not see.

The views a model is asked in (:mod:`.views`) are the second choice made here on validation, after the bias:
:func:`choose_views` asks every map in each view at the chosen bias and keeps the vote that scores best.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..corpus.vqa import type_sentence
from ..maps.conventions import NONE_LABEL, VOCAB
from . import views
from .answers import parse_labels
from .classification import exact_matches
from .model_info import read_info, write_info
from .scorer import MapAsker

#: Biases searched (logits): 0 (no change) to 6 in steps of 0.25.
BIAS_GRID = tuple(np.round(np.arange(0.0, 6.0001, 0.25), 2))


def decision_tokens(tokenizer) -> tuple[list[int], int]:
    """(prefix ids, id of the defect-free word): the tokens every plain type sentence opens with, and the token
    that follows them in the defect-free sentence only."""
    none_ids = tokenizer.encode(type_sentence([NONE_LABEL]), add_special_tokens=False)
    k = len(none_ids)
    for label in VOCAB:
        if label == NONE_LABEL:
            continue
        ids = tokenizer.encode(type_sentence([label]), add_special_tokens=False)
        k = min(k, next((i for i, (a, b) in enumerate(zip(none_ids, ids)) if a != b), min(len(ids), len(none_ids))))
    if k == 0 or k >= len(none_ids):
        raise ValueError(f"the type sentences share no prefix that precedes a distinct defect-free word (tokens "
                         f"{none_ids}): this tokenizer cannot carry a defect-free bias")
    return none_ids[:k], none_ids[k]


def decision_margins(asker, maps: list[np.ndarray], batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """Per map: logit of the defect-free word less the largest other logit, at the token after the sentence
    prefix, under greedy decoding without any bias (NaN where the answer does not open with the prefix)."""
    import torch
    prefix, no = decision_tokens(asker.processor.tokenizer)
    k = len(prefix)
    want = torch.tensor(prefix)
    config = asker.model.generation_config
    saved, config.sequence_bias = config.sequence_bias, None
    out = []
    bar = tqdm(total=len(maps), desc="decision margins", unit="map", disable=not progress, mininterval=2.0)
    try:
        for s in range(0, len(maps), max(1, batch_size)):
            chunk = maps[s: s + batch_size]
            inputs = asker.processor(text=[asker.prompt] * len(chunk), images=[asker.image(m) for m in chunk],
                                     padding=True, return_tensors="pt").to(asker.device)
            n_prompt = inputs["input_ids"].shape[1]
            with torch.inference_mode():
                g = asker.model.generate(**inputs, max_new_tokens=k + 1, do_sample=False,
                                         output_logits=True, return_dict_in_generate=True)
            new = g.sequences[:, n_prompt:].cpu()
            margin = np.full(len(chunk), np.nan)
            if new.shape[1] > k and len(g.logits) > k:
                logits = g.logits[k].float().cpu().clone()
                no_logit = logits[:, no].clone()
                logits[:, no] = -torch.inf
                opened = (new[:, :k] == want).all(dim=1).numpy()
                margin = np.where(opened, (no_logit - logits.max(dim=1).values).numpy(), np.nan)
            out.append(margin)
            bar.update(len(chunk))
    finally:
        config.sequence_bias = saved
        bar.close()
    return np.concatenate(out) if out else np.zeros(0)


def biased_labels(pred: list[list[str]], margins: np.ndarray, bias: float) -> list[list[str]]:
    """The labels greedy decoding gives with `bias` (>= 0) on the defect-free word, from the unbiased pass."""
    if bias < 0:
        raise ValueError(f"bias {bias}: only biases >= 0 follow from the unbiased pass")
    flip = np.nan_to_num(np.asarray(margins, float), nan=-np.inf) + bias > 0
    return [[NONE_LABEL] if f else list(p) for p, f in zip(pred, flip)]


def _macro_f1(true: list[list[str]], pred: list[list[str]]) -> float:
    """One-vs-rest F1 averaged over the labels in the truth (the scorer's macro_f1)."""
    present = sorted({lab for t in true for lab in t})
    f1 = []
    for lab in present:
        t = np.array([lab in x for x in true])
        p = np.array([lab in x for x in pred])
        tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
        f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
    return float(np.mean(f1)) if f1 else float("nan")


def sweep(true: list[list[str]], pred: list[list[str]], margins: np.ndarray, biases=BIAS_GRID) -> pd.DataFrame:
    """Per bias: accuracy, macro-F1, their mean (the objective), recall of defect-free maps and of the
    maps with a pattern, and how many answers the bias turned defect-free."""
    if len(true) != len(pred) or len(pred) != len(margins):
        raise ValueError(f"sweep: {len(true)} truths, {len(pred)} predictions and {len(margins)} margins")
    none_true = np.array([t == [NONE_LABEL] for t in true])
    rows = []
    for b in biases:
        got = biased_labels(pred, margins, float(b))
        right = exact_matches(true, got)
        none_pred = np.array([p == [NONE_LABEL] for p in got])
        acc, f1 = float(right.mean()) if len(right) else float("nan"), _macro_f1(true, got)
        rows.append({"bias": float(b), "accuracy": acc, "macro_f1": f1, "objective": (acc + f1) / 2,
                     "none_recall": float(none_pred[none_true].mean()) if none_true.any() else float("nan"),
                     "pattern_recall": float(right[~none_true].mean()) if (~none_true).any() else float("nan"),
                     "changed": int(sum(g != p for g, p in zip(got, pred)))})
    return pd.DataFrame(rows)


def choose(table: pd.DataFrame) -> float:
    """The bias with the best objective (mean of accuracy and macro-F1); the smallest such bias on a tie."""
    best = table["objective"].max()
    return float(table.loc[np.isclose(table["objective"], best, rtol=0, atol=1e-12), "bias"].min())


def set_none_bias(folder: str | Path, tokenizer, bias: float) -> Path:
    """Write (or, at 0, remove) the defect-free bias in `folder`'s generation_config.json."""
    from transformers import GenerationConfig
    folder = Path(folder)
    config = GenerationConfig.from_pretrained(str(folder))
    if bias:
        prefix, no = decision_tokens(tokenizer)
        config.sequence_bias = [[[int(i) for i in prefix + [no]], float(bias)]]
    else:
        config.sequence_bias = None
    config.save_pretrained(str(folder))
    return folder / "generation_config.json"


def none_bias(folder: str | Path) -> float:
    """The defect-free bias saved in `folder`'s generation_config.json (0 where none is)."""
    path = Path(folder) / "generation_config.json"
    if not path.exists():
        return 0.0
    entries = json.loads(path.read_text()).get("sequence_bias") or []
    return float(entries[0][1]) if entries else 0.0


def calibrate(folder: str | Path, maps: pd.DataFrame, batch_size: int = 128, biases=BIAS_GRID,
              progress: bool = True) -> dict:
    """Choose the defect-free bias of the merged model in `folder` on labelled `maps` (columns wafer_map,
    labels) and save it there. Returns the bias, the sweep table, each map's margin and its labels at the
    chosen bias (to check against the biased model's own answers)."""
    folder = Path(folder)
    asker = MapAsker(folder, "merged", replace(read_info(folder), views=1))  # margins are the map's own view's
    asker.model.generation_config.sequence_bias = None  # the curve starts from the unbiased model
    wafer_maps = list(maps["wafer_map"])
    pred = [parse_labels(a) for a in asker.ask(wafer_maps, batch_size, progress, desc="unbiased")]
    margins = decision_margins(asker, wafer_maps, batch_size, progress)
    true = [list(x) for x in maps["labels"]]
    table = sweep(true, pred, margins, biases)
    chosen = choose(table)
    set_none_bias(folder, asker.processor.tokenizer, chosen)
    return {"bias": chosen, "table": table, "margins": margins, "unbiased": pred,
            "predicted": biased_labels(pred, margins, chosen)}


def figure(table: pd.DataFrame, chosen: float, title: str = ""):
    """Accuracy, macro-F1 and the two recalls against the bias, the chosen one marked."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for col, style in (("accuracy", "-"), ("macro_f1", "-"), ("none_recall", "--"), ("pattern_recall", "--")):
        ax.plot(table["bias"], table[col], style, label=col.replace("_", " "))
    ax.axvline(chosen, color="grey", lw=1)
    ax.set_xlabel("bias on the defect-free word (logits)")
    ax.set_ylabel("validation")
    ax.set_title(title or f"defect-free operating point (chosen bias {chosen:g})", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def choose_views(folder: str | Path, maps: pd.DataFrame, candidates, batch_size: int = 128,
                 progress: bool = True) -> dict:
    """Choose how many views the merged model in `folder` is asked in, on labelled `maps` (columns wafer_map,
    labels), and save the choice in its `wafersage.json`. One greedy pass per view up to the largest candidate;
    with one candidate, no pass is made and that count is saved. Returns the count, the sweep table (None
    without a choice) and the labels each view gave."""
    folder = Path(folder)
    candidates = sorted({views.check_views(c, "type_views") for c in candidates})
    info = read_info(folder)
    if len(candidates) == 1:
        write_info(folder, replace(info, views=candidates[0]))
        return {"views": candidates[0], "table": None, "per_view": None}
    asker = MapAsker(folder, "merged", replace(info, views=1))
    wafer_maps = list(maps["wafer_map"])
    per_view = [[parse_labels(a) for a in asker.ask(views.view_maps(wafer_maps, k), batch_size, progress, desc=f"view {k}")]
                for k in range(max(candidates))]
    true = [list(x) for x in maps["labels"]]
    table = views.sweep(true, per_view, candidates)
    chosen = views.choose(table, candidates)
    write_info(folder, replace(info, views=chosen))
    return {"views": chosen, "table": table, "per_view": per_view}
