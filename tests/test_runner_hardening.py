"""The runner under hostile or careless use (issue 29): run names stay inside results/, params and overrides
are checked completely before any stage, and an interrupted stage is marked and reruns."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.test_pipeline import ROOT, toy  # noqa: F401  (fixture)
from wafersage_utils import recipe
from wafersage_utils.runner import pipeline
from wafersage_utils.runner.params import ParamsError, load_params


@pytest.mark.parametrize("name", ["../notebooks", "..", ".", "a/b", "/tmp/x", "x/../../y", "-rf", "a\nb", "run."])
def test_run_names_are_single_folder_names(toy, name):  # noqa: F811
    nbs, params, res = toy
    before = {p.name: p.read_bytes() for p in nbs.iterdir()}
    with pytest.raises(ParamsError, match="--run-name"):
        pipeline.run_pipeline(params, run_name=name, results_dir=res, notebooks_dir=nbs)
    assert {p.name: p.read_bytes() for p in nbs.iterdir()} == before  # the executed copy never lands on a source
    assert not res.exists() or not any(res.iterdir())


def test_a_symlinked_run_folder_pointing_elsewhere_is_refused(toy, tmp_path):  # noqa: F811
    nbs, params, res = toy
    res.mkdir()
    (res / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ParamsError, match="outside"):
        pipeline.run_pipeline(params, run_name="escape", results_dir=res, notebooks_dir=nbs)


def test_the_default_run_name_is_the_params_stem(toy):  # noqa: F811
    nbs, params, res = toy
    assert pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs) == (res / "toy").resolve()


@pytest.mark.parametrize("item, message", [
    ("01_first.value=[1,", "not valid YAML"), ("value={a: [", "not valid YAML"), ("01_first.=3", "not a parameter name"),
    ("=3", "not a parameter name"), ("01_first.va lue=3", "not a parameter name")])
def test_malformed_overrides_are_clear_errors(toy, item, message):  # noqa: F811
    nbs, params, res = toy
    with pytest.raises(ParamsError, match=message):
        pipeline.run_pipeline(params, overrides=[item], results_dir=res, notebooks_dir=nbs)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"), (b"common: [1, 2", "not valid YAML"),
    (b"- a\n- b\n", "expected a mapping")])
def test_params_files_that_are_not_params_are_clear_errors(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ParamsError, match=rf"bad.yaml: .*{message}"):
        load_params(bad)
    with pytest.raises(ParamsError, match="is a folder"):
        load_params(tmp_path)


def test_cli_reports_bad_params_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00binary")
    out = subprocess.run([sys.executable, "-m", "wafersage_utils.runner.pipeline", str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "bad.yaml: not a text file" in out.stderr


@pytest.mark.parametrize("only", ["1-10000000000", "0-99999999999999", "7-1", "1-", "x", "01--03", "-3"])
def test_only_is_bounded_and_checked(only):
    with pytest.raises(ParamsError, match="--only"):
        pipeline.select_stages(["01_a", "02_b", "07_g"], only)


def test_only_accepts_single_digits():
    assert pipeline.select_stages(["01_a", "02_b", "07_g"], "1-2") == ["01_a", "02_b"]


@pytest.mark.parametrize("override, message", [
    ("01_clean.val_fraction=-1", r"01_clean.val_fraction = -1: expected a value in \(0, 0.5\)"),
    ("01_clean.source=wm812k", r"01_clean.source = 'wm812k': expected one of"),
    ("05_sft.lora_r=0", r"05_sft.lora_r = 0: expected >= 1"),
    ("06_rl.epsilon_high=0.0001", r"epsilon_high >= epsilon"),
    ("n_threads=0", r"01_clean.n_threads = 0: expected >= 1.*07_eval.n_threads = 0"),
])
def test_bad_values_are_refused_before_any_stage_runs(tmp_path, monkeypatch, override, message):
    def never(*a, **k):
        raise AssertionError("a stage ran before the params were checked")
    monkeypatch.setattr(pipeline, "run_stage", never)
    with pytest.raises(ParamsError, match=message):
        pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", overrides=[override], results_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # not even the run folder


def test_every_number_and_choice_of_the_recipe_has_a_rule():
    from dataclasses import fields
    for stem, cls in recipe.STAGES.items():
        recipe.check_stage(stem, {})  # the defaults pass their own rules
        for f in fields(cls):
            choice = f.type == "str" and " | " in cls.comments()[f.name].split(":")[0]
            if f.type in ("int", "float", "int | None") or choice:
                assert recipe.rule_for(stem, f.name) is not None, f"{stem}.{f.name} has no rule in recipe.RULES"


def test_an_interrupted_stage_is_marked_and_reruns(toy, monkeypatch):  # noqa: F811
    nbs, params, res = toy
    real = pipeline.run_stage

    def stop_in_second(nb_path, out_nb, values, progress):
        if nb_path.stem == "02_second":
            raise KeyboardInterrupt
        real(nb_path, out_nb, values, progress)
    monkeypatch.setattr(pipeline, "run_stage", stop_in_second)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    stages = json.loads((res / "toy" / "status.json").read_text())["stages"]
    assert stages["01_first"]["state"] == "done" and stages["02_second"]["state"] == "interrupted"
    monkeypatch.setattr(pipeline, "run_stage", real)
    pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    stages = json.loads((res / "toy" / "status.json").read_text())["stages"]
    assert stages["02_second"]["state"] == "done"


def test_a_stage_left_running_by_a_killed_run_is_marked_interrupted(toy):  # noqa: F811
    nbs, params, res = toy
    run = pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    status = json.loads((run / "status.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status["stages"]["02_second"].update(state="running", pid=dead.pid, host=os.uname().nodename)
    (run / "status.json").write_text(json.dumps(status))
    pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    assert json.loads((run / "status.json").read_text())["stages"]["02_second"]["state"] == "done"


def test_a_second_run_in_a_folder_in_use_is_refused(toy):  # noqa: F811
    nbs, params, res = toy
    run = pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    status = json.loads((run / "status.json").read_text())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket
        status["stages"]["02_second"].update(state="running", pid=live.pid, host=socket.gethostname())
        (run / "status.json").write_text(json.dumps(status))
        with pytest.raises(ParamsError, match=rf"stage 02_second is running in process {live.pid}"):
            pipeline.run_pipeline(params, results_dir=res, notebooks_dir=nbs)
    finally:
        live.kill()
        live.wait()


def test_sigterm_marks_the_running_stage_interrupted(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    from tests.test_pipeline import _notebook
    _notebook(nbs / "01_slow.ipynb", 'run_dir: str = "."  # run folder\n',
              "import pathlib, time\npathlib.Path(run_dir, 'started').write_text('1')\ntime.sleep(60)")
    params = tmp_path / "slow.yaml"
    params.write_text(yaml.safe_dump({"common": {}}))
    script = ("import sys; from pathlib import Path; from wafersage_utils.runner import pipeline as p; "
              f"p.NOTEBOOK_DIR = Path({str(nbs)!r}); "
              "p.run_pipeline.__defaults__ = p.run_pipeline.__defaults__[:-2] + (p.NOTEBOOK_DIR, False); "
              f"sys.exit(p.main([{str(params)!r}, '--results-dir', {str(tmp_path / 'res')!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "res" / "slow" / "started"
    import time
    for _ in range(600):
        if started.exists():
            break
        time.sleep(0.1)
    assert started.exists(), proc.stderr.read() if proc.poll() is not None else "the stage never started"
    proc.terminate()
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err[-2000:]
    stages = json.loads((tmp_path / "res" / "slow" / "status.json").read_text())["stages"]
    assert stages["01_slow"]["state"] == "interrupted" and "SIGTERM" in stages["01_slow"]["error"]


def test_kernels_import_the_package_of_the_checkout_that_runs(monkeypatch):
    """A clone sharing the virtual environment must run its own code, not the editable install's checkout."""
    from wafersage_utils.runner import pipeline
    from wafersage_utils.runner.runs import PROJECT_ROOT
    root = str(PROJECT_ROOT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", root, "/other"]))
    pipeline.kernel_imports_this_checkout()
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere", "/other"]
    pipeline.kernel_imports_this_checkout()  # idempotent
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere", "/other"]
    monkeypatch.delenv("PYTHONPATH")
    pipeline.kernel_imports_this_checkout()
    assert os.environ["PYTHONPATH"] == root
