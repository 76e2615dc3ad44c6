"""Run the numbered notebooks in order with papermill into results/<run>/.

    python -m wafersage_utils.runner.pipeline params/default.yaml [--only 01-03] [--run-name NAME]
                                       [--set key=value ...] [--force]

Every params key is checked against the notebooks' parameters before anything runs. A stage whose
notebook, package code, parameters and upstream stages are unchanged since its last successful run is
skipped (unless --force), so `--only 05-07` resumes a run.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

from ..recipe import STAGES, check_stage
from .imports import PACKAGE_ROOT, WHOLE_PACKAGE, closure, import_graph, imports_of, package_modules
from .params import ParamsError, apply_overrides, check_params, load_params, notebook_parameters, stage_parameters
from .run_report import write_run_report
from .runs import PROJECT_ROOT, atomic_write_text, environment_record, git_state, write_json

log = logging.getLogger("wafersage.pipeline")
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the cell."""


def discover_notebooks(folder: Path = NOTEBOOK_DIR) -> dict[str, Path]:
    """Numbered notebooks `NN_name.ipynb`, by stem, in run order."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    return {p.stem: p for p in found}


def select_stages(stems: list[str], only: str | None) -> list[str]:
    """Stems picked by --only: '03', '01-03', '05-07' or a comma list of those."""
    if not only:
        return stems
    picked_set: set[str] = set()
    for part in only.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not dash)) or len(lo) > 2 or len(hi) > 2:
            raise ParamsError(f"--only {only!r}: expected stage numbers (00-99) like 03, 01-03 or 01,05-07")
        a, b = int(lo), int(hi or lo)
        if a > b:
            raise ParamsError(f"--only {only!r}: range {part.strip()!r} runs backwards")
        picked_set.update(s for s in stems if a <= int(s[:2]) <= b)  # bounded by the stems, never a huge range
    picked = [s for s in stems if s in picked_set]
    if not picked:
        raise ParamsError(f"--only {only!r} selects no notebook; notebooks are {stems}")
    return picked


def code_hash(nb_path: Path, root: Path | None = None) -> str:
    """Hash of the package source a notebook depends on: the modules its cells import, the modules those
    import (transitively, with their packages' __init__), and every data file of the package (knowledge base,
    prompts). A change to a module the stage never reaches leaves its fingerprint, and its cached results, alone."""
    root = root or PACKAGE_ROOT
    graph = import_graph(root)
    modules = package_modules(root)
    cells = [c["source"] for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
    start: set[str] = {""}
    for src in ("".join(c) if isinstance(c, list) else c for c in cells):
        try:
            start |= imports_of(ast.parse(src), modules)
        except SyntaxError:  # magics and shell lines: fall back on the whole package
            start.add(WHOLE_PACKAGE)
    files = [modules[m] for m in sorted(closure(start, graph))]
    files += sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc"))
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(nb_path: Path, values: dict, upstream: list[str], code: str) -> str:
    h = hashlib.sha256()
    h.update(nb_path.read_bytes())
    h.update(code.encode())
    h.update(json.dumps(values, sort_keys=True, default=str).encode())
    h.update("|".join(upstream).encode())
    return h.hexdigest()[:16]


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def run_folder(results_dir: Path, name: str) -> Path:
    """results_dir/name, where name must be one plain folder name: no separators, no '..', nothing that lands
    the run (and the executed notebooks it writes) outside results_dir."""
    if not RUN_NAME.fullmatch(name) or name.endswith("."):
        raise ParamsError(f"--run-name {name!r}: expected one folder name of letters, digits, '.', '_' or '-' "
                          "(no '/', no '..'), starting with a letter or digit")
    parent = results_dir.resolve()
    run_dir = (parent / name).resolve()
    if run_dir.parent != parent:  # a symlinked run folder pointing elsewhere
        raise ParamsError(f"--run-name {name!r}: {parent / name} resolves to {run_dir}, outside {parent}")
    return run_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load_status(run_dir: Path) -> dict:
    """The run's status; a stage left "running" by a process that no longer exists becomes "interrupted"
    (it reruns), and one whose process is alive refuses the second run (two runs in one folder would
    overwrite each other's files)."""
    path = run_dir / "status.json"
    if not path.exists():
        return {"stages": {}}
    try:
        status = json.loads(path.read_text())
        stages = status["stages"]
        if not isinstance(stages, dict):
            raise TypeError("stages is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise ParamsError(f"{path}: unreadable run status ({exc}); move it aside to start the run afresh") from exc
    for stem, rec in stages.items():
        if not isinstance(rec, dict) or rec.get("state") != "running":
            continue
        pid, host = rec.get("pid"), rec.get("host")
        if isinstance(pid, int) and host == socket.gethostname() and pid != os.getpid() and _alive(pid):
            raise ParamsError(f"{run_dir}: stage {stem} is running in process {pid}; wait for it or stop it "
                              "before starting another run in this folder")
        rec["state"] = "interrupted"
        log.warning("%s: left running by a run that ended without finishing it; marked interrupted, it reruns", stem)
    return status


def _failure_message(stem: str, out_nb: Path, exc: Exception) -> str:
    cell = getattr(exc, "exec_count", None)
    index = getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {index}" if index is not None else "a cell"
    if cell is not None:
        where += f" (execution count {cell})"
    return f"stage {stem} failed in {where} of notebooks/{stem}.ipynb: {ename}: {evalue}\n  executed notebook: {out_nb}"


def report_or_warn(run_dir: Path) -> Path | None:
    """Write the run's REPORT.md; a report that cannot be made is logged, never allowed to hide the run's own
    outcome (a finished run, or the stage failure being raised)."""
    try:
        path = write_run_report(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: REPORT.md not written: %s: %s", run_dir, type(exc).__name__, exc)
        return None
    log.info("report: %s", path)
    return path


class Interrupted(Exception):
    """The run received SIGTERM or SIGHUP (a scheduler's stop, a closed terminal)."""


def check_values(params: dict[str, dict], declared: dict[str, dict], source: str) -> None:
    """Every stage's values against the recipe's rules (ranges, choices), all stages at once, before any runs:
    a bad value is refused in a second, not after minutes of earlier stages."""
    problems = []
    for stem in declared:
        if stem not in STAGES:
            continue
        values = stage_parameters(params, stem, declared[stem])
        try:
            check_stage(stem, values, source)
        except (ValueError, TypeError) as exc:
            problems.append(str(exc).removeprefix(f"{source}: "))
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems))


def kernel_imports_this_checkout() -> None:
    """Make the notebooks' kernels import `wafersage_utils` from this repository. A kernel runs in the run
    folder, where Python finds the package through the virtual environment's editable install: in a second
    checkout sharing that environment (a clean clone made for a reference run) the kernels would run the
    first checkout's code while the run records the clone's commit."""
    root = str(PROJECT_ROOT)
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if entries[:1] != [root]:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[e for e in entries if e != root]])


def run_stage(nb_path: Path, out_nb: Path, values: dict, progress: bool) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    kernel_imports_this_checkout()
    try:
        pm.execute_notebook(str(nb_path), str(out_nb), parameters=values, kernel_name="python3",
                            progress_bar=progress, cwd=str(out_nb.parent), log_output=False)
    except PapermillExecutionError as exc:
        raise StageFailed(_failure_message(nb_path.stem, out_nb, exc)) from exc


def run_pipeline(params_path: Path, only: str | None = None, run_name: str | None = None,
                 overrides: list[str] | None = None, force: bool = False, results_dir: Path | None = None,
                 notebooks_dir: Path = NOTEBOOK_DIR, progress: bool = False) -> Path:
    """Check params, then execute the selected notebooks; returns the run folder."""
    notebooks = discover_notebooks(notebooks_dir)
    if not notebooks:
        raise ParamsError(f"{notebooks_dir}: no numbered notebooks found")
    declared = {stem: notebook_parameters(p) for stem, p in notebooks.items()}
    params = apply_overrides(load_params(params_path), overrides or [])
    check_params(params, declared, str(params_path))
    check_values(params, declared, str(params_path))
    stems = select_stages(list(notebooks), only)
    run_dir = run_folder(results_dir or PROJECT_ROOT / "results", run_name or Path(params_path).stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    status = _load_status(run_dir)
    atomic_write_text(run_dir / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    environment = environment_record()
    write_json(run_dir / "environment.json", environment)
    status["command"] = " ".join(["python -m wafersage_utils.runner.pipeline", str(params_path)]
                                 + [f"--set {o}" for o in overrides or []] + ([f"--only {only}"] if only else []))
    for stem in stems:
        values = stage_parameters(params, stem, declared[stem]) | {"run_dir": str(run_dir)}
        upstream = [status["stages"].get(s, {}).get("fingerprint", "") for s in notebooks if s < stem]
        fp = fingerprint(notebooks[stem], values, upstream, code_hash(notebooks[stem]))
        prev = status["stages"].get(stem, {})
        out_nb = run_dir / f"{stem}.ipynb"
        if not force and prev.get("state") == "done" and prev.get("fingerprint") == fp and out_nb.exists() \
                and (run_dir / "metrics" / f"{stem}.json").exists():
            log.info("%s: unchanged since its last run, skipped (use --force to rerun)", stem)
            continue
        log.info("%s: running", stem)
        # Each stage records the commit it ran at, read as it starts (the tree can move during a long run; a
        # partial rerun rewrites environment.json, not older stages' record).
        status["stages"][stem] = {"state": "running", "fingerprint": fp, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  "git": git_state(), "pid": os.getpid(), "host": socket.gethostname()}
        write_json(run_dir / "status.json", status)
        t0 = time.perf_counter()
        try:
            run_stage(notebooks[stem], out_nb, values, progress)
        except StageFailed as exc:
            status["stages"][stem].update(state="failed", wall_s=round(time.perf_counter() - t0, 2), error=str(exc))
            write_json(run_dir / "status.json", status)
            report_or_warn(run_dir)
            raise
        except (KeyboardInterrupt, SystemExit, Interrupted) as exc:
            # Ctrl-C or a termination signal: the stage is marked so, and reruns on the next invocation.
            status["stages"][stem].update(state="interrupted", wall_s=round(time.perf_counter() - t0, 2),
                                          error=f"interrupted ({type(exc).__name__}: {exc})")
            write_json(run_dir / "status.json", status)
            raise
        status["stages"][stem].update(state="done", wall_s=round(time.perf_counter() - t0, 2))
        write_json(run_dir / "status.json", status)
        log.info("%s: done in %.1f s", stem, status["stages"][stem]["wall_s"])
    report_or_warn(run_dir)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wafersage_utils.runner.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", type=Path, help="params file, e.g. params/default.yaml")
    ap.add_argument("--only", help="stages to run: 03, 01-03, 01,05-07")
    ap.add_argument("--run-name", help="run folder name under results/ (default: the params file's stem)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params value: key=value (common) or 01_clean.key=value; repeatable")
    ap.add_argument("--force", action="store_true", help="rerun stages even when unchanged")
    ap.add_argument("--results-dir", type=Path, help="parent of run folders (default: results/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def _stop(signum, frame):
        raise Interrupted(signal.Signals(signum).name)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        run_dir = run_pipeline(args.params, args.only, args.run_name, args.set, args.force, args.results_dir,
                               progress=sys.stderr.isatty())
    except (ParamsError, StageFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"interrupted ({type(exc).__name__} {exc}): the stage that was running is marked interrupted in "
              "status.json and reruns on the next invocation", file=sys.stderr)
        return 130
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
