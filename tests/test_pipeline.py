"""The runner: params checked against notebooks before anything runs, skips, resumes, failures named."""
import json
from pathlib import Path

import nbformat
import pytest
import yaml

from wafersage_utils.runner import pipeline
from wafersage_utils.runner.params import ParamsError, apply_overrides, check_params, notebook_parameters, type_matches

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, params_src: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body)])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nbformat.write(nb, path)
    return path


WRITE_METRICS = (
    "from wafersage_utils.runner.runs import open_stage\n"
    "stage = open_stage(run_dir, STEM, seed, 1)\n"
    "stage.write_metrics({'value': value * 2, 'seed': seed})\n")


@pytest.fixture
def toy(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for stem in ("01_first", "02_second"):
        _notebook(nbs / f"{stem}.ipynb",
                  'run_dir: str = "."  # run folder\nseed: int = 0  # seed\nvalue: float = 1.5  # a number\n',
                  WRITE_METRICS.replace("STEM", repr(stem)))
    params = tmp_path / "toy.yaml"
    params.write_text(yaml.safe_dump({"common": {"seed": 3}, "01_first": {"value": 2}, "02_second": {"value": 5.0}}))
    return nbs, params, tmp_path / "results"


def test_notebook_parameters_are_read_with_types_and_help(toy):
    nbs, _, _ = toy
    p = notebook_parameters(nbs / "01_first.ipynb")
    assert p["value"].type == "float" and p["value"].default == 1.5 and p["value"].help == "a number"


@pytest.mark.parametrize("value, ann, ok", [
    (1, "int", True), (True, "int", False), (1, "float", True), ("x", "float", False), (None, "str | None", True),
    (["a"], "list[str]", True), ([1], "list[str]", False), (False, "bool", True), ({"a": 1}, "dict", True)])
def test_type_matching(value, ann, ok):
    assert type_matches(value, ann) is ok


def test_unknown_key_names_key_file_and_notebook(toy):
    nbs, params, res = toy
    with pytest.raises(ParamsError, match=r"toy.yaml: unknown key 'valeu' in section '01_first': not a parameter of notebook 01_first.ipynb"):
        pipeline.run_pipeline(params, overrides=["01_first.valeu=3"], results_dir=res, notebooks_dir=nbs)
    assert not res.exists()  # nothing ran, nothing written


def test_wrong_type_and_unknown_section_are_refused(toy):
    nbs, params, res = toy
    with pytest.raises(ParamsError, match=r"key 'value' in section '02_second' has str value 'high'; notebook 02_second.ipynb expects float"):
        pipeline.run_pipeline(params, overrides=["02_second.value=high"], results_dir=res, notebooks_dir=nbs)
    with pytest.raises(ParamsError, match=r"section '09_nope' names no notebook"):
        pipeline.run_pipeline(params, overrides=["09_nope.value=1"], results_dir=res, notebooks_dir=nbs)
    with pytest.raises(ParamsError, match=r"unknown key 'sede' in section 'common': not a parameter of any notebook"):
        pipeline.run_pipeline(params, overrides=["sede=1"], results_dir=res, notebooks_dir=nbs)


def test_run_writes_the_run_folder_and_skips_unchanged_stages(toy):
    nbs, params, res = toy
    run = pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    assert json.loads((run / "metrics" / "01_first.json").read_text()) == {"value": 4, "seed": 3}
    assert json.loads((run / "metrics" / "02_second.json").read_text())["value"] == 10.0
    status = json.loads((run / "status.json").read_text())["stages"]
    assert all(s["state"] == "done" and s["wall_s"] > 0 for s in status.values())
    assert all("commit" in s["git"] for s in status.values())  # each stage records the commit it ran at
    env = json.loads((run / "environment.json").read_text())
    assert {"git", "packages", "device", "torch_threads", "numerics"} <= set(env) and "commit" in env["git"]
    assert len(env["numerics"]["fingerprint"]) == 12 and env["numerics"]["torch_cpu"]
    assert yaml.safe_load((run / "params.yaml").read_text())["01_first"]["value"] == 2
    # Unchanged: both skipped. A changed value in stage 02 reruns 02 only.
    pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    assert json.loads((run / "status.json").read_text())["stages"] == status
    pipeline.run_pipeline(params, only="02", overrides=["02_second.value=1"], results_dir=res, notebooks_dir=nbs)
    after = json.loads((run / "status.json").read_text())["stages"]
    assert after["01_first"] == status["01_first"] and after["02_second"]["fingerprint"] != status["02_second"]["fingerprint"]
    assert json.loads((run / "metrics" / "02_second.json").read_text())["value"] == 2


def test_upstream_change_reruns_downstream(toy):
    nbs, params, res = toy
    run = pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    before = json.loads((run / "status.json").read_text())["stages"]
    pipeline.run_pipeline(params, overrides=["01_first.value=7"], results_dir=res, notebooks_dir=nbs)
    after = json.loads((run / "status.json").read_text())["stages"]
    assert after["02_second"]["fingerprint"] != before["02_second"]["fingerprint"]


def test_failing_stage_names_notebook_and_cell(toy):
    nbs, params, res = toy
    _notebook(nbs / "02_second.ipynb", 'run_dir: str = "."  # run folder\nvalue: float = 1.0  # v\n',
              "raise RuntimeError('boom in stage two')")
    with pytest.raises(pipeline.StageFailed, match=r"stage 02_second failed in cell \d+ .*02_second.ipynb: RuntimeError: boom in stage two"):
        pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    status = json.loads((res / "toy" / "status.json").read_text())["stages"]
    assert status["01_first"]["state"] == "done" and status["02_second"]["state"] == "failed"


def test_cli_exit_codes(toy, capsys):
    nbs, params, res = toy
    assert pipeline.main([str(params), "--set", "01_first.value=x", "--results-dir", str(res)]) == 2
    assert "error:" in capsys.readouterr().err


def test_only_ranges():
    stems = ["01_a", "02_b", "03_c", "05_e", "07_g"]
    assert pipeline.select_stages(stems, "01-03") == ["01_a", "02_b", "03_c"]
    assert pipeline.select_stages(stems, "05-07") == ["05_e", "07_g"]
    assert pipeline.select_stages(stems, "01,07") == ["01_a", "07_g"]
    with pytest.raises(ParamsError):
        pipeline.select_stages(stems, "09")


def test_overrides_parse_yaml_values():
    out = apply_overrides({"common": {}}, ["seed=4", "01_clean.source=wm811k", "01_clean.rate=0.5"])
    assert out["common"]["seed"] == 4 and out["01_clean"] == {"source": "wm811k", "rate": 0.5}


def test_every_shipped_params_file_checks_against_the_notebooks():
    declared = {stem: notebook_parameters(p) for stem, p in pipeline.discover_notebooks().items()}
    files = sorted((ROOT / "params").glob("*.yaml"))
    assert {f.stem for f in files} >= {"smoke", "default", "paper", "wm811k"}
    for f in files:
        from wafersage_utils.runner.params import load_params
        check_params(load_params(f), declared, str(f))


def test_code_hash_follows_only_the_modules_a_notebook_imports(tmp_path):
    pkg = tmp_path / "wafersage_utils"
    pkg.mkdir()
    files = {"__init__.py": "", "a.py": "from .b import f\n", "b.py": "def f():\n    from . import c\n",
             "c.py": "X = 1\n", "d.py": "Y = 2\n", "kb.yaml": "k: 1\n"}
    for name, text in files.items():
        (pkg / name).write_text(text)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("from wafersage_utils import d"),
                nbformat.v4.new_code_cell("import os\nfrom wafersage_utils import a")]
    nb_path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, nb_path)
    h = pipeline.code_hash(nb_path, pkg)
    (pkg / "d.py").write_text("Y = 3\n")  # not imported (the markdown cell is not code): same hash
    assert pipeline.code_hash(nb_path, pkg) == h
    (pkg / "c.py").write_text("X = 2\n")  # imported through a -> b -> (function-level) c
    h2 = pipeline.code_hash(nb_path, pkg)
    assert h2 != h
    (pkg / "kb.yaml").write_text("k: 2\n")  # data files always count
    assert pipeline.code_hash(nb_path, pkg) != h2
    nb.cells.append(nbformat.v4.new_code_cell("import wafersage_utils"))  # the whole package
    nbformat.write(nb, nb_path)
    h3 = pipeline.code_hash(nb_path, pkg)
    (pkg / "d.py").write_text("Y = 4\n")
    assert pipeline.code_hash(nb_path, pkg) != h3


def test_git_state_ignores_run_folders_but_not_code(tmp_path):
    """A rerun rewrites the committed reference run under results/: the tree that made it is still clean."""
    import subprocess

    from wafersage_utils.runner.runs import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "results" / "default").mkdir(parents=True)
    (tmp_path / "results" / "default" / "metrics.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "default" / "metrics.json").unlink()
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
