"""The run folder's bookkeeping: the manifest between stages, the saved settings, figures by stage, the report."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from wafersage_utils import recipe  # noqa: E402
from wafersage_utils.runner import run_report, runs  # noqa: E402
from wafersage_utils.runner.runs import MANIFEST, Stage  # noqa: E402


def test_manifest_carries_facts_and_run_relative_paths(tmp_path):
    run = tmp_path / "run"
    (run / "models" / "sft" / "merged").mkdir(parents=True)
    Stage(run, "04_vqa").publish(answer_style="plain")
    Stage(run, "05_sft").publish(base="/cache/tiny-abc", sft=run / "models" / "sft" / "merged")
    raw = json.loads((run / MANIFEST).read_text())
    assert raw["05_sft"]["sft"] == "run:models/sft/merged" and raw["05_sft"]["base"] == "/cache/tiny-abc"
    moved = tmp_path / "moved"
    run.rename(moved)  # a run folder can be moved: its own paths follow it
    later = Stage(moved, "07_eval")
    assert later.fact("05_sft", "sft") == str(moved / "models" / "sft" / "merged")
    assert later.fact("04_vqa", "answer_style") == "plain" and later.fact("06_rl", "rl", "") == ""
    with pytest.raises(LookupError, match="stage 06_rl has not published 'rl'.*--only 06"):
        later.fact("06_rl", "rl")


def test_republishing_replaces_the_stage_section_only(tmp_path):
    Stage(tmp_path, "02_describe").publish(image_size=128)
    Stage(tmp_path, "04_vqa").publish(answer_style="plain", extra=1)
    Stage(tmp_path, "04_vqa").publish(answer_style="reasoning")
    assert json.loads((tmp_path / MANIFEST).read_text()) == {"02_describe": {"image_size": 128},
                                                              "04_vqa": {"answer_style": "reasoning"}}


def test_a_corrupt_manifest_is_named(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        Stage(tmp_path, "05_sft").fact("04_vqa", "answer_style")


def test_settings_are_built_from_the_notebook_namespace_and_saved_whole(tmp_path):
    namespace = {k: v for k, v in vars(recipe.VQASettings()).items()} | {"pairs_per_wafer": 7, "unrelated": 1}
    settings = Stage(tmp_path, "04_vqa").settings(recipe.VQASettings, namespace)
    saved = json.loads((tmp_path / "settings" / "04_vqa.json").read_text())
    assert settings.pairs_per_wafer == 7 and saved["pairs_per_wafer"] == 7 and "unrelated" not in saved
    assert set(saved) == set(vars(recipe.VQASettings()))


def test_report_shows_figures_under_their_stage_and_every_metric(tmp_path):
    (tmp_path / "metrics").mkdir()
    for stem, slug in (("01_clean", "class_counts"), ("07_eval", "eval_scores")):
        fig = plt.figure()
        Stage(tmp_path, stem).save_figure(fig, slug)
        plt.close(fig)
    (tmp_path / "metrics" / "01_clean.json").write_text(json.dumps({"n_maps": 10, "acc": 0.5, "acc_ci_low": 0.4,
                                                                     "acc_ci_high": 0.6}))
    Stage(tmp_path, "07_eval").write_section("| model | score |\n|---|---|\n| sft | 0.9 |")
    (tmp_path / "status.json").write_text(json.dumps({"command": "python -m x params/y.yaml", "stages": {
        "01_clean": {"state": "done", "wall_s": 12.0, "git": {"commit": "0123456789abcdef", "dirty": True}},
        "07_eval": {"state": "failed", "wall_s": 3.0}}}))
    text = run_report.write_run_report(tmp_path).read_text()
    assert text.index("## 01_clean") < text.index("![class_counts]") < text.index("## 07_eval") \
        < text.index("| sft | 0.9 |") < text.index("![eval_scores]")
    assert "| `acc` | 0.5 [0.4, 0.6] |" in text and "acc_ci_low" not in text
    assert "| 07_eval | failed | 3 s | ? |" in text and "`python -m x params/y.yaml`" in text
    assert "| 01_clean | done | 12 s | `0123456` (dirty) |" in text  # each stage's own commit


def test_report_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert run_report.main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_the_reference_run_report_is_current():
    """The committed REPORT.md is what the generator makes from the committed run folder."""
    run = Path(__file__).resolve().parents[1] / "results" / "default"
    assert (run / "REPORT.md").read_text() == run_report.report_markdown(run)


def test_a_report_that_cannot_be_made_is_logged_not_raised(tmp_path, caplog):
    from wafersage_utils.runner import pipeline
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "01_clean.json").write_text("{torn")
    (tmp_path / "status.json").write_text(json.dumps({"stages": {"01_clean": {"state": "failed", "wall_s": 1.0}}}))
    with caplog.at_level("WARNING", logger="wafersage.pipeline"):
        assert pipeline.report_or_warn(tmp_path) is None
    assert "REPORT.md not written: JSONDecodeError" in caplog.text and not (tmp_path / "REPORT.md").exists()


def test_atomic_writes_leave_ordinary_permissions(tmp_path):
    import os
    import stat
    from wafersage_utils.runner.runs import atomic_write_text
    atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode), oct(mode)  # as open() makes it, not 0600


def test_recorded_paths_travel_with_the_repository(tmp_path):
    """A file in the project or beside it (../shared/data) is recorded relative to the project root, whatever
    folder the clone lives in; one elsewhere keeps the path it was given."""
    root = runs.PROJECT_ROOT
    assert runs.project_path(root / "results" / "default" / "models") == "results/default/models"
    assert runs.project_path(root.parent / "shared" / "data" / "x.pkl") == "../shared/data/x.pkl"
    outside = Path("/") / "nonexistent-root-for-test" / "maps.pkl"
    if not outside.resolve().is_relative_to(root.parent):
        assert runs.project_path(outside) == str(outside)
