"""The type stream: which training maps get a defect-type question, how often, and in which words."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wafersage_utils.training import type_questions


def _maps(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": f"{k}-{i}", "key": k, "labels": [k], "split": "train", "quarantined": False}
            for k, n in counts.items() for i in range(n)]
    rows += [{"id": "val-0", "key": "Loc", "labels": ["Loc"], "split": "val", "quarantined": False},
             {"id": "bad-0", "key": "Loc", "labels": ["Loc"], "split": "train", "quarantined": True},
             {"id": "unl-0", "key": "", "labels": [], "split": "train", "quarantined": False}]
    return pd.DataFrame(rows)


def test_stream_keeps_only_labelled_unquarantined_training_maps_outside_the_excluded():
    maps = _maps({"none": 50, "Loc": 20})
    out = type_questions.stream_maps(maps, exclude_wafers={"Loc-0", "none-3"})
    assert len(out) == 68 and not {"Loc-0", "none-3", "val-0", "bad-0", "unl-0"} & set(out["id"])
    assert set(out["question"]) <= set(type_questions.TYPE_QUESTIONS)


def test_none_cap_and_class_floor_with_other_wordings():
    maps = _maps({"none": 300, "Loc": 40, "Scratch": 5})
    out = type_questions.stream_maps(maps, set(), none_ratio=2.0, class_floor=30, max_repeat=4, seed=1)
    counts = out["key"].value_counts()
    assert counts["none"] == 2 * (40 + 5) and counts["Loc"] == 40  # Loc is above the floor: once each
    assert counts["Scratch"] == 20  # 5 maps, at most 4 questions each (the floor of 30 is not reached)
    per_map = out[out["key"] == "Scratch"].groupby("id")["question"]
    assert (per_map.nunique() == 4).all()  # a repeated map is asked in another wording each time
    again = type_questions.stream_maps(maps, set(), none_ratio=2.0, class_floor=30, max_repeat=4, seed=1)
    assert out.equals(again)  # seeded


def test_stream_rejects_negative_knobs():
    with pytest.raises(ValueError, match="none_ratio"):
        type_questions.stream_maps(_maps({"Loc": 3}), set(), none_ratio=-1.0)


def test_stream_rows_answer_with_the_type_sentence(tmp_path):
    maps = _maps({"Loc": 2}).iloc[:2].assign(wafer_map=[np.ones((10, 10), np.uint8)] * 2)
    picked = type_questions.stream_maps(maps, set())
    rows = type_questions.stream_rows(picked, 32, tmp_path)
    assert list(rows["answer"]) == ["This wafer map shows a localized defect pattern."] * 2
    assert all((tmp_path / p).exists() for p in rows["image"]) and rows["image"].str.startswith("data/images/32/").all()


def test_symmetry_is_the_eight_symmetries_of_the_square():
    m = np.arange(12).reshape(3, 4)
    shown = [type_questions.symmetry(m, k) for k in range(8)]
    assert np.array_equal(shown[0], m) and shown[1].shape == (4, 3)
    assert len({x.tobytes() + bytes(x.shape) for x in shown}) == 8  # all distinct
    assert np.array_equal(shown[2], m[::-1, ::-1]) and np.array_equal(shown[4], m[:, ::-1])
    with pytest.raises(ValueError, match="0 to 7"):
        type_questions.symmetry(m, 8)


@pytest.mark.parametrize("augment", ["repeats", "all"])
def test_augment_shows_each_repeat_of_a_map_in_another_symmetry(augment):
    maps = _maps({"none": 300, "Loc": 40, "Scratch": 5})
    plain = type_questions.stream_maps(maps, set(), none_ratio=2.0, class_floor=30, max_repeat=6, seed=1)
    out = type_questions.stream_maps(maps, set(), none_ratio=2.0, class_floor=30, max_repeat=6, seed=1,
                                     augment=augment)
    assert out.drop(columns="symmetry").equals(plain.drop(columns="symmetry"))  # the same questions
    assert (plain["symmetry"] == 0).all() and out["symmetry"].between(0, 7).all()
    scratch = out[out["key"] == "Scratch"].groupby("id")["symmetry"]
    assert (scratch.nunique() == 6).all()  # every repeat in another symmetry
    once = out[out["key"] != "Scratch"]["symmetry"]
    if augment == "repeats":  # the first question about a map shows it as it is
        assert (scratch.min() == 0).all() and (once == 0).all()
    else:
        assert once.nunique() == 8
    with pytest.raises(ValueError, match="augment"):
        type_questions.stream_maps(maps, set(), augment="rotate")


def test_stream_rows_render_the_turned_map(tmp_path):
    m = np.ones((10, 10), np.uint8)
    m[0, :] = 2  # a failing top row
    maps = _maps({"Loc": 1}).iloc[:1].assign(wafer_map=[m])
    picked = type_questions.stream_maps(maps, set()).assign(symmetry=[1])
    turned = type_questions.stream_rows(picked, 32, tmp_path)
    same = type_questions.stream_rows(picked.assign(symmetry=[0]), 32, tmp_path)
    from wafersage_utils.maps.render import image_key
    assert turned["image"][0].endswith(image_key(np.rot90(m), 32) + ".png") and turned["image"][0] != same["image"][0]


def test_generated_maps_follow_the_run_generator_with_true_labels_in_training():
    generator = {"n_wafers": 4500, "seed": 0, "label_noise": 0.1, "loc_area_dies": 0.0, "scratch_width_dies": 0.0}
    out = type_questions.generated_maps(60, seed=3, generator=generator)
    assert len(out) == 60 and out["id"].is_unique and out["id"].str.startswith(type_questions.GENERATED + "3-").all()
    assert (out["split"] == "train").all() and not out["quarantined"].any()
    assert all(list(a) == list(b) for a, b in zip(out["labels"], out["labels_true"]))  # no label noise
    assert (out["key"] == out["labels"].map(type_questions.label_key)).all()
    # the run's realism settings carried, its own n_wafers/seed/noise replaced: the same as drawing them directly
    from wafersage_utils.maps.synth import SynthConfig, generate
    direct = generate(SynthConfig(n_wafers=60, seed=20_003, label_noise=0.0, loc_area_dies=0.0, scratch_width_dies=0.0))
    assert all(np.array_equal(a, b) for a, b in zip(out["wafer_map"], direct["wafer_map"]))
    assert len(type_questions.generated_maps(0, seed=3)) == 0
    with pytest.raises(ValueError, match="not SynthConfig fields"):
        type_questions.generated_maps(5, seed=0, generator={"n_wafer": 5})


def test_generated_maps_join_the_stream_beside_the_run_maps():
    maps = _maps({"none": 10, "Loc": 10})
    assert type_questions.with_generated(maps, 0, seed=0) is maps
    pool = type_questions.with_generated(maps, 30, seed=0)
    assert list(pool.columns) == list(maps.columns) and pool.index.is_unique
    assert pool.iloc[:len(maps)].equals(maps)  # the run's own maps first, unchanged
    out = type_questions.stream_maps(pool, set(), seed=0)
    assert len(out) == 20 + 30 and type_questions.n_generated(out) == 30
    assert type_questions.n_generated(type_questions.stream_maps(maps, set(), seed=0)) == 0
