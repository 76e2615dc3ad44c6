"""The type stream: defect-type questions about every labelled training map, not only the sampled ones.

Descriptions, rubrics and VQA pairs (stages 02 to 04) are made for the maps stage 01 sampled, a few hundred
per label: enough to teach the answers' language, too few to teach a real data set's classes (WM-811K has
21,000 training maps). The type stream adds one defect-type question per other labelled, unquarantined
training map, asked in one of the VQA set's defect-type wordings and answered with the same type sentence
the VQA answers open with. Wafers of the RL holdout stay out, as their VQA pairs do.

Real data is imbalanced (WM-811K: 59% defect-free, 73 Near-full maps in 30,000). Two knobs, chosen on
validation: `none_ratio` caps the defect-free questions at that multiple of the defect questions (0: no
cap), and `class_floor` asks again, in another wording, about the maps of a rarer class until the class has
that many questions (at most `max_repeat` questions per map).

A third, `augment`, shows the map turned or mirrored: a wafer's defect type does not change under the eight
symmetries of the square (four quarter turns, each mirrored or not), while a repeated question about the same
picture teaches little beyond its wording. "repeats": a map's first question shows it as it is and each repeat
another symmetry (every one at most once); "all": every question's map in a symmetry drawn per map, repeats
again each in another one; "none": as it is. Only the type stream is augmented: descriptions name clock
positions and sides, which a turn would make wrong.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..corpus.vqa import TEMPLATES, type_sentence
from ..maps.conventions import NONE_LABEL, label_key, symmetry
from ..maps.render import render_cached
from ..maps.synth import derived_config, generate

TYPE_QUESTIONS = [t.text for t in TEMPLATES if t.category == "defect_type"]
AUGMENT = ("none", "repeats", "all")
GENERATED = "typegen-"  # id prefix of the stream's generated maps


def stream_maps(maps: pd.DataFrame, exclude_wafers, none_ratio: float = 0.0, class_floor: int = 0,
                max_repeat: int = 8, seed: int = 0, augment: str = "none") -> pd.DataFrame:
    """The training maps the stream asks about (a map repeated for the class floor appears once per
    question), with the question for each and the symmetry its map is shown in: columns of `maps` plus
    `question` and `symmetry` (0: as it is; see `symmetry`)."""
    if none_ratio < 0 or class_floor < 0 or max_repeat < 1:
        raise ValueError(f"type stream: none_ratio {none_ratio} and class_floor {class_floor} must be >= 0, "
                         f"max_repeat {max_repeat} >= 1")
    if augment not in AUGMENT:
        raise ValueError(f"type stream: augment {augment!r}, expected one of {', '.join(AUGMENT)}")
    keep = (maps["split"] == "train") & (maps["key"] != "") & ~maps["quarantined"].astype(bool) \
        & ~maps["id"].isin(set(exclude_wafers))
    pool = maps[keep]
    rng = np.random.default_rng(seed)
    if none_ratio > 0:
        none = pool.index[pool["key"] == NONE_LABEL]
        cap = int(round(none_ratio * (len(pool) - len(none))))
        if len(none) > cap:
            drop = rng.choice(none, len(none) - cap, replace=False)
            pool = pool.drop(index=drop)
    parts = []
    for _, group in pool.groupby("key", sort=True):
        repeats = min(max_repeat, int(np.ceil(class_floor / len(group)))) if class_floor > len(group) else 1
        parts += [group] * repeats
    out = pd.concat(parts).sort_index(kind="stable") if parts else pool.iloc[:0]
    # Each repeat of a map gets another wording: a per-map rotation through the templates from a random start.
    start = rng.integers(0, len(TYPE_QUESTIONS), len(maps))
    position = maps.index.get_indexer(out.index)
    nth = out.groupby(level=0).cumcount().to_numpy()
    out = out.assign(question=[TYPE_QUESTIONS[(start[p] + k) % len(TYPE_QUESTIONS)] for p, k in zip(position, nth)])
    # Drawn after the wordings, so that "none" leaves the stream exactly as it was before augmentation existed.
    if augment == "repeats":  # first question as it is; repeat k (1..7) the (offset + k)-th of the other seven
        offset = rng.integers(0, 7, len(maps))
        sym = np.where(nth == 0, 0, (offset[position] + nth - 1) % 7 + 1)
    elif augment == "all":
        offset = rng.integers(0, 8, len(maps))
        sym = (offset[position] + nth) % 8
    else:
        sym = np.zeros(len(out), dtype=int)
    return out.assign(symmetry=np.asarray(sym, dtype=int)).reset_index(drop=True)


def generated_maps(n: int, seed: int, generator: dict | None = None) -> pd.DataFrame:
    """`n` freshly generated maps for the stream, in the columns :func:`stream_maps` reads: the generator settings
    of the run's stage 01 (`generator`; None: the defaults), a generator seed no run uses (20,000 + `seed`; the
    tiny base's extra seeing maps use 10,000 + `seed`), true labels (no label noise), all in the training split."""
    if n <= 0:
        return pd.DataFrame(columns=["id", "wafer_map", "labels", "key", "split", "quarantined"])
    out = generate(derived_config(generator, n_wafers=n, seed=20_000 + seed, label_noise=0.0))
    return out.assign(id=[f"{GENERATED}{seed}-{i:06d}" for i in range(len(out))], key=out["labels"].map(label_key),
                      split="train", quarantined=False)


def with_generated(maps: pd.DataFrame, n: int, seed: int, generator: dict | None = None) -> pd.DataFrame:
    """The run's maps and, below them, `n` generated ones (:func:`generated_maps`) in the run's columns: the pool
    :func:`stream_maps` picks from. `maps` itself when `n` is 0."""
    if n <= 0:
        return maps
    generated = generated_maps(n, seed, generator)
    return pd.concat([maps, generated[maps.columns.intersection(generated.columns)]], ignore_index=True)


def n_generated(picked: pd.DataFrame) -> int:
    """Questions of the stream about generated maps."""
    return int(picked["id"].str.startswith(GENERATED).sum())


def stream_rows(picked: pd.DataFrame, image_size: int, run_dir: Path) -> pd.DataFrame:
    """VQA-like rows (wafer_id, labels, split, question, answer, image) for the picked maps, their images
    rendered into the run's image cache (shared with stage 02)."""
    run_dir = Path(run_dir)
    shown = [symmetry(np.asarray(m), int(k)) if k else m for m, k in zip(picked["wafer_map"], picked["symmetry"])]
    paths = render_cached(shown, image_size, run_dir / "data" / "images")
    return pd.DataFrame({"wafer_id": picked["id"].to_numpy(), "labels": [list(x) for x in picked["labels"]],
                         "split": "train", "category": "defect_type", "question": picked["question"].to_numpy(),
                         "answer": [type_sentence(list(x)) for x in picked["labels"]],
                         "image": [str(p.relative_to(run_dir)) for p in paths]})


def class_counts(rows: pd.DataFrame) -> pd.Series:
    return rows["labels"].map("+".join).value_counts()
