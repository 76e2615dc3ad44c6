"""The README's headline table from run folders: which measures each kind of run shows."""
import json

from wafersage_utils.evaluation import report


def _run(tmp_path, name: str, source: str, extra: dict) -> object:
    run = tmp_path / name
    (run / "metrics").mkdir(parents=True)
    m = {"models": ["sft"], "n_test_wafers": 9, "type_eval": "split", "type_eval_maps": 815}
    for who in ("sft", "baseline"):
        m |= {f"{who}/type_accuracy": 0.91, f"{who}/type_macro_f1": 0.81} | {f"{who}/{k}": v for k, v in extra.items()}
    (run / "metrics" / "07_eval.json").write_text(json.dumps(m))
    (run / "metrics" / "01_clean.json").write_text(json.dumps({"source": source}))
    (run / "status.json").write_text(json.dumps({"stages": {"01_clean": {"wall_s": 120.0}}}))
    return run


def test_a_mixedwm38_row_shows_exact_match_and_pattern_f1(tmp_path):
    mixed = _run(tmp_path, "mixedwm38", "mixedwm38", {"type_exact_match": 0.777, "type_pattern_macro_f1": 0.888})
    real = _run(tmp_path, "wm811k", "wm811k", {})
    text = report.headline_markdown([real, mixed])
    row = next(line for line in text.splitlines() if line.startswith("| [mixedwm38]"))
    assert "SFT: 0.777\\*" in row and "| 0.888\\* |" in row and "0.91" not in row and "MixedWM38 (real)" in row
    assert "| 815 |" in row and "PARAMS=params/mixedwm38.yaml" in row
    other = next(line for line in text.splitlines() if line.startswith("| [wm811k]"))
    assert "SFT: 0.910 |" in other and "\\*" not in other
    assert "exact-match accuracy over every test map" in text
    assert "exact-match" not in report.headline_markdown([real])
