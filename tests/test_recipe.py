"""Defaults are the recipe: each notebook's parameters cell is its settings class, field for field, and params
files carry only what differs from it."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from wafersage_utils import recipe
from wafersage_utils.runner.params import notebook_parameters
from wafersage_utils.runner.pipeline import discover_notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = discover_notebooks(ROOT / "notebooks")


def test_every_notebook_has_settings():
    assert set(NOTEBOOKS) == set(recipe.STAGES)


@pytest.mark.parametrize("stem", sorted(recipe.STAGES))
def test_notebook_defaults_are_the_recipe(stem):
    declared = notebook_parameters(NOTEBOOKS[stem])
    cls = recipe.STAGES[stem]
    expected = {f.name: (f.default_factory() if callable(f.default_factory) else f.default) for f in fields(cls)}
    got = {k: p.default for k, p in declared.items() if k != "run_dir"}
    diff = {k: (got.get(k, "<missing>"), expected.get(k, "<missing>")) for k in set(got) | set(expected)
            if got.get(k, "<missing>") != expected.get(k, "<missing>")}
    assert diff == {}, f"notebook {stem} (value, recipe) differ: run `python -m wafersage_utils.recipe --sync`"
    assert {k: p.type for k, p in declared.items() if k != "run_dir"} == {f.name: f.type for f in fields(cls)}


@pytest.mark.parametrize("stem", sorted(recipe.STAGES))
def test_parameters_cell_is_rendered_from_the_recipe(stem):
    nb = json.loads(NOTEBOOKS[stem].read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "".join(cell["source"]) == recipe.STAGES[stem].parameters_cell()


def test_sync_rewrites_a_drifted_cell(tmp_path):
    nb = json.loads(NOTEBOOKS["04_vqa"].read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    cell["source"] = "".join(cell["source"]).replace("pairs_per_wafer: int = 9", "pairs_per_wafer: int = 3")
    path = tmp_path / "04_vqa.ipynb"
    path.write_text(json.dumps(nb))
    assert notebook_parameters(path)["pairs_per_wafer"].default == 3
    assert recipe.sync_notebook(path) and notebook_parameters(path)["pairs_per_wafer"].default == 9
    assert not recipe.sync_notebook(path)  # in step now: nothing to write


def test_from_namespace_names_a_missing_parameter():
    ns = {f.name: getattr(recipe.VQASettings(), f.name) for f in fields(recipe.VQASettings)} | {"pairs_per_wafer": 5}
    assert recipe.VQASettings.from_namespace(ns).pairs_per_wafer == 5
    with pytest.raises(ValueError, match=r"04_vqa.min_reference_score = 2: expected a value in \[0, 1\]"):
        recipe.VQASettings.from_namespace(ns | {"min_reference_score": 2})  # a notebook run by hand is checked too
    del ns["min_reference_score"]
    with pytest.raises(NameError, match="min_reference_score"):
        recipe.VQASettings.from_namespace(ns)


def _redundant(path: Path) -> dict[str, object]:
    params = yaml.safe_load(path.read_text()) or {}
    out = {}
    for section, values in params.items():
        for key, value in (values or {}).items():
            stages = recipe.STAGES.values() if section == "common" else [recipe.STAGES[section]]
            defaults = [getattr(cls(), key) for cls in stages if key in {f.name for f in fields(cls)}]
            if defaults and all(d == value for d in defaults):
                out[f"{section}.{key}"] = value
    return out


@pytest.mark.parametrize("name", ["default", "smoke", "wm811k"])
def test_params_files_carry_only_differences(name):
    """paper.yaml is exempt on purpose: it pins the paper's values, which must not move when the recipe does."""
    assert _redundant(ROOT / "params" / f"{name}.yaml") == {}


def test_default_params_change_nothing():
    params = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    assert all(not v for v in params.values())
