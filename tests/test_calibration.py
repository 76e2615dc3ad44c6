"""The defect-free operating point (evaluation/calibration.py): the curve from one unbiased pass must be what
the biased model, loaded again from its folder, actually answers."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.test_scorer import trained_on
from wafersage_utils.corpus.vqa import type_sentence
from wafersage_utils.evaluation import calibration, model_info, scorer
from wafersage_utils.evaluation.answers import parse_labels
from wafersage_utils.maps.conventions import NONE_LABEL

NONE = type_sentence([NONE_LABEL])
RING = type_sentence(["Edge-Ring"])


def _map(rng, dense: bool) -> np.ndarray:
    return np.where(rng.random((30, 30)) < (0.7 if dense else 0.1), 2, 1).astype(np.uint8)


@pytest.fixture(scope="module")
def judge_of_density(tmp_path_factory):
    """A tiny Qwen3-VL trained briefly to call dense maps an edge-ring and sparse ones defect-free: its
    decision margins spread over a range, some maps near the threshold."""
    rng = np.random.default_rng(0)
    dense = [bool(i % 2) for i in range(8)]
    return trained_on([_map(rng, d) for d in dense], [RING if d else NONE for d in dense],
                      tmp_path_factory.mktemp("calibration"), steps=40)


def test_decision_tokens_are_the_shared_prefix_and_the_defect_free_word(judge_of_density):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(judge_of_density)
    prefix, no = calibration.decision_tokens(tok)
    assert tok.decode(prefix) == "This wafer map shows"
    assert tok.decode([no]).strip() == "no"


def test_the_curve_from_one_pass_is_what_the_biased_model_answers(judge_of_density, tmp_path):
    rng = np.random.default_rng(5)
    maps = [_map(rng, bool(rng.integers(2))) for _ in range(24)]
    asker = scorer.MapAsker(judge_of_density, "merged", model_info.read_info(judge_of_density))
    unbiased = [parse_labels(a) for a in asker.ask(maps, batch_size=7, progress=False)]
    margins = calibration.decision_margins(asker, maps, batch_size=7, progress=False)
    assert not np.isnan(margins).any()
    assert ((margins > 0) == np.array([u == [NONE_LABEL] for u in unbiased])).all()
    below = np.sort(-margins[margins < 0])
    assert len(below) >= 3, f"the test model calls too few maps a pattern: margins {margins}"
    tok = asker.processor.tokenizer
    # biases between the margins, so that each flips a known number of answers
    for bias in [0.0, (below[0] + below[1]) / 2, (below[len(below) // 2] + below[len(below) // 2 - 1]) / 2,
                 below[-1] + 1.0]:
        calibration.set_none_bias(judge_of_density, tok, bias)
        assert calibration.none_bias(judge_of_density) == pytest.approx(bias)
        again = scorer.MapAsker(judge_of_density, "merged", model_info.read_info(judge_of_density))
        got = [parse_labels(a) for a in again.ask(maps, batch_size=7, progress=False)]
        assert got == calibration.biased_labels(unbiased, margins, bias), bias
    assert all(g == [NONE_LABEL] for g in got)  # the largest bias turns every answer
    calibration.set_none_bias(judge_of_density, tok, 0.0)
    assert "sequence_bias" not in json.loads((judge_of_density / "generation_config.json").read_text()) or \
        json.loads((judge_of_density / "generation_config.json").read_text())["sequence_bias"] is None


def test_calibrate_chooses_on_the_maps_and_saves_the_bias(judge_of_density):
    rng = np.random.default_rng(9)
    dense = [bool(rng.integers(2)) for _ in range(30)]
    maps = pd.DataFrame({"wafer_map": [_map(rng, d) for d in dense],
                         "labels": [[NONE_LABEL] if not d else ["Edge-Ring"] for d in dense]})
    got = calibration.calibrate(judge_of_density, maps, batch_size=16, progress=False)
    table = got["table"]
    assert got["bias"] == calibration.choose(table)
    assert calibration.none_bias(judge_of_density) == pytest.approx(got["bias"])
    assert table.loc[table["bias"] == 0, "changed"].item() == 0
    assert (np.diff(table["none_recall"]) >= 0).all()  # more bias never calls fewer maps defect-free
    calibration.set_none_bias(judge_of_density, None, 0.0)


def test_sweep_scores_each_bias_and_choose_keeps_the_smallest_best():
    true = [["none"], ["none"], ["Center"], ["Scratch"]]
    pred = [["none"], ["Scratch"], ["Center"], ["Scratch"]]
    margins = np.array([2.0, -0.6, -3.0, -1.5])
    table = calibration.sweep(true, pred, margins, biases=(0.0, 0.5, 1.0, 2.0, 4.0))
    assert list(table["accuracy"]) == [0.75, 0.75, 1.0, 0.75, 0.5]
    assert list(table["changed"]) == [0, 0, 1, 2, 3]
    assert calibration.choose(table) == 1.0
    assert calibration.biased_labels(pred, margins, 1.0) == [["none"], ["none"], ["Center"], ["Scratch"]]
    assert calibration.biased_labels(pred, np.array([2.0, np.nan, -3.0, -1.5]), 9.0)[1] == ["Scratch"]  # no prefix: kept
    with pytest.raises(ValueError, match="only biases >= 0"):
        calibration.biased_labels(pred, margins, -1.0)
    with pytest.raises(ValueError, match="4 truths, 3 predictions"):
        calibration.sweep(true, pred[:3], margins)
