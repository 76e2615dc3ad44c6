"""Asking about each map in several views and voting (evaluation/views.py): the vote, the choice on validation,
and the scorer asking a model in the views its wafersage.json names."""
from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.test_scorer import ANSWER, typist  # noqa: F401  (the module fixture: a model that always says ANSWER)
from wafersage_utils import recipe
from wafersage_utils import score as score_cli
from wafersage_utils.evaluation import calibration, model_info, scorer, views
from wafersage_utils.evaluation.answers import parse_labels
from wafersage_utils.maps.conventions import NONE_LABEL, label_key, symmetry

RING, LOC, NONE = ["Edge-Ring"], ["Loc"], [NONE_LABEL]


def test_the_most_named_label_set_wins_and_a_tie_goes_to_the_earliest_view():
    assert views.vote([LOC, RING, RING, LOC]) == 0  # 2-2: the map as it is decides
    assert views.vote([LOC, RING, RING, NONE]) == 1  # 2 of 4 name the ring
    assert views.vote([NONE, LOC, RING, ["Loc", "Scratch"]]) == 0  # all differ: view 0
    assert views.vote([["Scratch", "Loc"], ["Loc", "Scratch"], RING]) == 0  # a label set, in any order
    assert views.vote([[], [], RING]) == 0  # two answers that name nothing outvote one ring
    with pytest.raises(ValueError, match="no views"):
        views.vote([])


def test_voted_reports_the_winner_and_how_many_views_agree():
    per_view = [[RING, LOC, NONE], [RING, RING, LOC], [LOC, RING, NONE], [RING, NONE, LOC]]
    labels, winner, agree = views.voted(per_view, 4)
    assert labels == [RING, RING, NONE]
    assert winner.tolist() == [0, 1, 0] and agree.tolist() == [3, 2, 2]
    labels, winner, agree = views.voted(per_view, 1)  # one view: the map as it is, always
    assert labels == per_view[0] and winner.tolist() == [0, 0, 0] and agree.tolist() == [1, 1, 1]


def test_a_vote_is_settled_once_no_remaining_views_can_change_it():
    assert views.settled([LOC, LOC], 4)  # two more can only tie, and view 0 holds the tie
    assert not views.settled([LOC, RING], 4)
    assert views.settled([LOC, RING, LOC], 4) and not views.settled([LOC, RING, RING], 4)  # ring 2, loc 1 + 1 holds
    assert not views.settled([NONE, NONE, NONE], 8) and views.settled([NONE] * 4, 8)  # 4 new ones would tie, lose
    assert views.settled([RING], 1) and not views.settled([], 4) and views.settled([LOC, RING, NONE, RING], 4)


@pytest.mark.parametrize("total", [4, 8])
def test_settled_is_exact_every_completion_keeps_the_winner_iff_settled(total):
    """Against brute force: a prefix is settled exactly when no way of naming the remaining views (any mix of
    the sets seen and one new set) changes the winning label set; and voting with the settled views left out
    (None) gives the full vote's labels and winner."""
    import itertools
    sets = [LOC, RING, NONE, ["Loc", "Scratch"]]
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300 if total == 8 else 600):
        full = [sets[i] for i in rng.integers(0, 3, total)]  # three sets: ties are common
        for k in range(1, total + 1):
            prefix = full[:k]
            completions = [prefix + list(rest) for rest in itertools.product(sets, repeat=total - k)] \
                if total - k <= 4 else None
            winners = None if completions is None else {label_key(c[views.vote(c)]) for c in completions}
            if winners is not None:
                assert views.settled(prefix, total) == (len(winners) == 1), (prefix, total)
                checked += 1
            if views.settled(prefix, total):
                masked = [[x] for x in prefix] + [[None]] * (total - k)
                labels, winner, _ = views.voted(masked, total)
                assert labels[0] == full[views.vote(full)] and winner[0] == views.vote(full)
                break
    assert checked > 500


def test_view_maps_are_the_symmetries_of_the_die_grid():
    m = np.arange(12, dtype=np.uint8).reshape(3, 4)
    shown = [views.view_maps([m], k)[0] for k in range(8)]
    assert shown[0] is m and shown[1].shape == (4, 3)
    assert all(np.array_equal(s, symmetry(m, k)) for k, s in enumerate(shown))
    assert len({s.tobytes() + bytes(s.shape) for s in shown}) == 8


def test_sweep_scores_each_view_and_each_vote_and_choose_prefers_fewer_views_on_a_tie():
    true = [RING, LOC, NONE, RING]
    per_view = [[RING, RING, NONE, LOC], [RING, LOC, NONE, RING], [LOC, LOC, NONE, RING], [RING, NONE, NONE, RING]]
    table = views.sweep(true, per_view, (1, 4))
    assert list(table["what"]) == ["view 0 alone", "view 1 alone", "view 2 alone", "view 3 alone", "vote over 4 views"]
    vote4 = table.iloc[-1]
    assert vote4["accuracy"] == 1.0  # every map: 2 or more of 4 views are right and view 0 breaks the 2-2 ties
    assert table.iloc[0]["accuracy"] == 0.5
    assert views.choose(table, (1, 4)) == 4
    even = pd.DataFrame({"what": ["view 0 alone", "vote over 4 views"], "views": [1, 4], "view": [0, -1],
                         "accuracy": [0.9, 0.9], "macro_f1": [0.8, 0.8], "mean": [0.85, 0.85]})
    assert views.choose(even, (1, 4)) == 1


@pytest.mark.parametrize("bad", [0, 2, 3, True, "4", 4.0, None])
def test_a_view_count_outside_1_4_8_is_refused_with_its_name(bad):
    with pytest.raises(ValueError, match="type_views.*expected one of \\[1, 4, 8\\]"):
        views.check_views(bad, "type_views")


def test_recipe_checks_type_views():
    assert recipe.rule_for("05_sft", "type_views")([1, 4, 8]) is None
    for bad in ([], [3], ["4"], 4, [True]):
        assert "expected a non-empty list" in recipe.rule_for("05_sft", "type_views")(bad)


def test_views_round_trip_in_the_metadata_and_a_bad_count_is_named(tmp_path):
    info = model_info.info_for_run(64, "plain", "tiny", {"source": "test"}, views=4)
    model_info.write_info(tmp_path, info)
    assert model_info.read_info(tmp_path).views == 4
    raw = json.loads((tmp_path / model_info.INFO_FILE).read_text())
    (tmp_path / model_info.INFO_FILE).write_text(json.dumps({**raw, "views": 5}))
    with pytest.raises(ValueError, match="wafersage.json: field 'views': 5; expected one of"):
        model_info.read_info(tmp_path)
    del raw["views"]  # a folder exported before views existed is asked in one view
    (tmp_path / model_info.INFO_FILE).write_text(json.dumps(raw))
    assert model_info.read_info(tmp_path).views == 1


def test_the_card_says_how_many_views_the_scorer_asks():
    one = model_info.model_card(model_info.info_for_run(64, "plain", "tiny", {}), {}, {})
    four = model_info.model_card(model_info.info_for_run(64, "plain", "tiny", {}, views=4), {}, {})
    assert "views" not in one and "`views: 4`" in four and "4 views" in four


class _Asker:
    """Stands in for MapAsker: fixed answers per view (score_maps reads only ask_views and info)."""

    def __init__(self, per_view: list[list[str]]):
        self.per_view = per_view
        self.info = SimpleNamespace(answer_style="plain", views=len(per_view))

    def ask_views(self, maps, batch_size=128, progress=True, desc="score", full_answers=False, settle=False):
        assert len(maps) == len(self.per_view[0])
        if not settle:
            return self.per_view
        n, out = len(self.per_view), [list(v) for v in self.per_view]  # MapAsker's settling, on fixed answers
        for i in range(len(maps)):
            for k in range(1, n):
                if views.settled([parse_labels(out[v][i]) for v in range(k)], n):
                    for v in range(k, n):
                        out[v][i] = None
                    break
        return out


def test_score_maps_scores_the_vote_and_records_each_maps_agreement():
    ring, loc, none = ("This wafer map shows an edge-ring defect pattern.", "This wafer map shows a local (Loc) "
                       "defect pattern.", "This wafer map shows no defect pattern.")
    maps = pd.DataFrame({"id": ["a", "b", "c"], "wafer_map": [np.ones((4, 4), np.uint8)] * 3,
                         "labels": [RING, LOC, NONE]})
    per_view = [[loc, loc, none], [ring, loc, ring], [ring, ring, none], [ring, none, ring]]
    metrics, _, per_map = scorer.score_maps(_Asker(per_view), maps, progress=False, n_bootstrap=10)
    assert metrics["views"] == 4
    assert per_map["predicted"].tolist() == ["Edge-Ring", "Loc", "none"]  # map c: 2-2, view 0 decides
    assert metrics["accuracy"] == 1.0
    assert per_map["views_agreeing"].tolist() == [3, 2, 2] and per_map["answer_view"].tolist() == [1, 0, 0]
    assert per_map["views_asked"].tolist() == [4, 2, 3]  # b: views 0 and 1 agree; c: none 2, ring 1, one left
    assert metrics["views_asked_per_map"] == pytest.approx(3.0)
    assert per_map["answer"].tolist() == [ring, loc, none]  # the earliest agreeing view's words
    one, _, plain = scorer.score_maps(_Asker(per_view[:1]), maps, progress=False, n_bootstrap=10)
    assert one["views"] == 1 and one["accuracy"] == pytest.approx(2 / 3) and "views_agreeing" not in plain


def test_the_scorer_asks_the_model_in_its_views_each_turned(typist, tmp_path):  # noqa: F811
    folder = tmp_path / "model"
    import shutil
    shutil.copytree(typist, folder)
    model_info.write_info(folder, replace(model_info.read_info(folder), views=4))
    asker = scorer.MapAsker(*scorer.resolve_model(folder), model_info.read_info(folder))
    shapes, image = [], asker.image
    asker.image = lambda m: (shapes.append(m.shape), image(m))[1]
    rng = np.random.default_rng(3)
    maps = [rng.integers(0, 3, (30, 40)).astype(np.uint8) for _ in range(3)]
    per_view = asker.ask_views(maps, batch_size=2, progress=False)
    assert len(per_view) == 4 and all(a == ANSWER for v in per_view for a in v)
    assert shapes == [(30, 40)] * 3 + [(40, 30)] * 3 + [(30, 40)] * 3 + [(40, 30)] * 3  # turned before rendering
    data = pd.DataFrame({"id": ["a", "b", "c"], "wafer_map": maps, "labels": [RING, LOC, RING]})
    shapes.clear()
    metrics, _, per_map = scorer.score_maps(asker, data, progress=False, n_bootstrap=10)
    assert shapes == [(30, 40)] * 3 + [(40, 30)] * 3  # views 0 and 1 agree on every map: the vote is settled
    assert metrics["views"] == 4 and per_map["views_agreeing"].tolist() == [2, 2, 2]
    assert per_map["views_asked"].tolist() == [2, 2, 2] and metrics["views_asked_per_map"] == 2.0
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    settled = asker.ask_views(maps, batch_size=2, progress=False, settle=True)
    assert settled[:2] == per_view[:2] and settled[2:] == [[None] * 3] * 2


def test_map_asker_asks_a_further_view_only_about_the_maps_whose_vote_is_open(typist, monkeypatch):  # noqa: F811
    """MapAsker's own settling (not a stand-in's): each view is asked about exactly the maps still open, and the
    vote over what was asked is the full vote."""
    say = {"ring": "This wafer map shows an edge-ring defect pattern.", "loc": "This wafer map shows a local (Loc) "
           "defect pattern.", "none": "This wafer map shows no defect pattern.",
           "scratch": "This wafer map shows a scratch defect pattern."}
    script = [["ring", "loc", "loc", "none"], ["ring", "ring", "none", "none"], ["ring", "loc", "ring", "loc"],
              ["ring", "ring", "scratch", "ring"]]  # script[view][map]
    asker = scorer.MapAsker(*scorer.resolve_model(typist), replace(model_info.read_info(typist), views=4))
    calls = []

    def scripted(images, full_answers):
        view = len(calls)
        calls.append(sorted(int(m.flat[0]) for m in images))
        return [say[script[view][int(m.flat[0])]] for m in images]

    monkeypatch.setattr(asker, "_generate", scripted)
    maps = [np.full((2, 3), i, np.uint8) for i in range(4)]
    per_view = asker.ask_views(maps, batch_size=64, progress=False, settle=True)
    # map 0: ring, ring -> settled; map 1: loc, ring, loc -> settled (ring can only tie, loc was first); map 2:
    # loc, none, ring, scratch -> asked all four; map 3: none, none -> settled
    assert calls == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2], [2]]
    assert [sum(v[i] is not None for v in per_view) for i in range(4)] == [2, 3, 4, 2]
    full = [[parse_labels(say[a]) for a in view] for view in script]
    asked = [[None if a is None else parse_labels(a) for a in v] for v in per_view]
    assert views.voted(asked, 4)[0] == views.voted(full, 4)[0] and (views.voted(asked, 4)[1] == views.voted(full, 4)[1]).all()


def test_ask_returns_the_winning_views_answer_and_one_view_as_it_is(typist, monkeypatch):  # noqa: F811
    ring, loc, none = ("This wafer map shows an edge-ring defect pattern.", "This wafer map shows a local (Loc) "
                       "defect pattern.", "This wafer map shows no defect pattern.")
    asker = scorer.MapAsker(*scorer.resolve_model(typist), model_info.read_info(typist))
    per_view = [[loc, none], [ring, loc], [ring, loc], [none, none]]
    monkeypatch.setattr(asker, "ask_views", lambda *a, **k: per_view)
    assert asker.ask([None, None], progress=False) == [ring, none]  # map 1: loc 2, none 2, view 0 (none) decides
    monkeypatch.setattr(asker, "ask_views", lambda *a, **k: per_view[:1])
    assert asker.ask([None, None], progress=False) == [loc, none]


def test_table_metrics_flatten_every_row_of_the_sweep():
    table = views.sweep([RING, LOC], [[RING, RING], [RING, LOC], [LOC, LOC], [RING, LOC]], (1, 4))
    got = views.table_metrics(table, "sft/views_val")
    assert len(got) == 2 * len(table)
    assert got["sft/views_val/view_0_alone/accuracy"] == 0.5
    assert got["sft/views_val/vote_over_4_views/accuracy"] == 1.0


def test_choose_views_saves_a_single_candidate_without_asking_and_a_choice_with_its_table(typist, tmp_path):  # noqa: F811
    import shutil
    folder = tmp_path / "model"
    shutil.copytree(typist, folder)
    rng = np.random.default_rng(4)
    maps = pd.DataFrame({"wafer_map": [rng.integers(0, 3, (30, 30)).astype(np.uint8) for _ in range(4)],
                         "labels": [RING, RING, LOC, RING]})
    got = calibration.choose_views(folder, maps, [4])
    assert got["views"] == 4 and got["table"] is None and model_info.read_info(folder).views == 4
    got = calibration.choose_views(folder, maps, [1, 4], batch_size=3, progress=False)
    assert got["table"]["what"].tolist()[-1] == "vote over 4 views" and len(got["per_view"]) == 4
    assert got["views"] == 1  # every view says the same: no gain, so the cheaper count
    assert model_info.read_info(folder).views == 1
    assert got["table"]["accuracy"].tolist() == [0.75] * 5


def test_the_score_command_overrides_the_models_views(typist, tmp_path, capsys):  # noqa: F811
    from tests.conftest import real_file
    out, sample = tmp_path / "scores", real_file("wm811k").parent / "LSWMD_sample.pkl"
    assert score_cli.main([str(typist), str(sample), "--out", str(out), "--max-maps", "6", "--views", "4", "--quiet",
                           "--bootstrap", "10"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["views"] == 4 and metrics["model_info"]["views"] == 4
    assert model_info.read_info(typist).views == 1  # the override is the command's, not written to the model
    with pytest.raises(SystemExit):
        score_cli.main([str(typist), str(sample), "--views", "3", "--quiet"])
    assert "invalid choice: 3" in capsys.readouterr().err
