"""The run folder: what a stage writes and where, the environment record, and the status file.

results/<run>/
    params.yaml           resolved params of the last invocation
    environment.json      git commit and dirty flag, package versions, device, threads
    status.json           per stage: state, wall time, fingerprint
    NN_stage.ipynb        executed notebooks
    metrics/NN_stage.json one metrics file per stage
    figures/fig_*.png     figures
    tables/*.csv          small tables
    data/                 heavy artefacts (git-ignored)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the repository: wafersage_utils/runner/runs.py
TRACKED_PACKAGES = ("wafersage_utils", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "cleanlab", "torch",
                    "torchvision", "transformers", "peft", "trl", "datasets", "accelerate", "papermill",
                    "matplotlib", "seaborn")


def project_path(path: str | Path) -> str:
    """`path` as a record that travels with the repository: relative to the project root when it lies in the
    project or beside it (../shared/data), else as given. A run committed from another clone then names the
    same files, not the folders of the machine that made it."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(PROJECT_ROOT.parent):
        return os.path.relpath(resolved, PROJECT_ROOT)
    return str(path)


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_target(path: Path):
    """A temporary path beside `path` to write to; it replaces `path` only when the block succeeds, so a crash
    or an error never leaves half a file and never touches what was there before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); the result is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see :func:`atomic_target`)."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def git_state(root: Path = PROJECT_ROOT) -> dict:
    """Commit and dirty flag of the working tree ('unknown' outside git). Run folders under results/ do not count:
    a rerun rewrites the committed reference run's files, which says nothing about the code that ran."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": "unknown", "dirty": None}
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results").stdout.strip() != ""
    return {"commit": head.stdout.strip(), "dirty": dirty}


def environment_record() -> dict:
    """What ran: git state, Python, package versions, device and thread counts."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {"git": git_state(), "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "device": device, "cuda": torch.cuda.is_available(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "numerics": numerics_record()}


def numerics_record() -> dict:
    """Which floating-point kernels this machine runs, and a fingerprint of the numbers they give.

    The same params and seed give the same numbers on machines with the same fingerprint; across fingerprints
    (AVX2 against AVX-512 kernels, another BLAS build, another CPU count) float sums are ordered differently
    and a run's numbers move a little. The fingerprint hashes the kernel choices, the numeric packages'
    versions, the CPU count and the bits of a few small computations of the kinds the pipeline does
    (convolution forward and backward, matrix products, attention, an SVD), made on one thread.
    """
    import torch
    from threadpoolctl import threadpool_info
    blas = sorted({f"{i.get('internal_api')} {i.get('architecture') or ''}".strip()
                   for i in threadpool_info() if i.get("user_api") == "blas"})
    record = {"torch_cpu": torch.backends.cpu.get_cpu_capability(), "blas": blas, "cpu_count": os.cpu_count(),
              "versions": [metadata.version(n) for n in ("torch", "numpy", "scipy", "scikit-learn")]}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the probe's bits must not depend on what this process set its threads to
    try:
        _probe(digest)
    finally:
        torch.set_num_threads(threads)
    return record | {"fingerprint": digest.hexdigest()[:12]}


def _probe(digest) -> None:
    import torch
    from threadpoolctl import threadpool_limits
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 24, 24, generator=g, requires_grad=True)
    w = torch.randn(8, 2, 3, 3, generator=g, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w, padding=1)
    y.square().sum().backward()
    a, b = torch.randn(37, 129, generator=g), torch.randn(129, 61, generator=g)
    q = torch.randn(1, 2, 19, 16, generator=g)
    att = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    m = np.random.default_rng(0).standard_normal((53, 47))
    with threadpool_limits(1):
        for arr in (y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), (a @ b).numpy(), att.numpy(),
                    torch.softmax(a, -1).numpy(), m @ m.T, m.astype(np.float32) @ m.T.astype(np.float32),
                    np.linalg.svd(m, compute_uv=False)):
            digest.update(np.ascontiguousarray(arr).tobytes())


_REQUIRED = object()


@dataclass
class Stage:
    """A stage's handle on its run folder, opened at the top of each notebook."""

    run_dir: Path
    stem: str

    def path(self, *parts: str) -> Path:
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def data(self) -> Path:
        d = self.run_dir / "data"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_figure(self, fig, slug: str) -> Path:
        """Save a matplotlib figure as figures/fig_<slug>.png, and note which stage drew it (the run report
        shows each figure under its stage)."""
        out = self.path("figures", f"fig_{slug}.png")
        fig.savefig(out, dpi=110, bbox_inches="tight")
        index_path = self.run_dir / "figures" / FIGURE_INDEX
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        index[slug] = self.stem
        write_json(index_path, index)
        return out

    def write_section(self, markdown: str) -> Path:
        """This stage's prose and tables for the run's REPORT.md (report/<stem>.md, replaced on each run)."""
        out = self.path(SECTIONS, f"{self.stem}.md")
        atomic_write_text(out, markdown.strip() + "\n")
        return out

    def save_table(self, df, name: str) -> Path:
        out = self.path("tables", f"{name}.csv")
        atomic_write_text(out, df.to_csv(index=False))
        return out

    def write_metrics(self, metrics: dict) -> Path:
        out = self.path("metrics", f"{self.stem}.json")
        write_json(out, metrics)
        return out

    def settings(self, cls, namespace: dict):
        """The stage's settings (a :mod:`wafersage_utils.recipe` class) from the notebook's parameters, saved whole,
        defaults included, as settings/<stem>.json: what ran, not only what the params file changed."""
        settings = cls.from_namespace(namespace)
        write_json(self.path("settings", f"{self.stem}.json"), asdict(settings))
        return settings

    def publish(self, **facts) -> dict:
        """Tell later stages what this stage made (answer style, image size, model folders): the run manifest,
        `manifest.json`, one section per stage, replaced whole each time the stage runs. Paths inside the run
        folder are stored relative to it, so that a run folder can be moved."""
        manifest = read_manifest(self.run_dir)
        manifest[self.stem] = {k: _portable(v, self.run_dir) for k, v in facts.items()}
        write_json(self.run_dir / MANIFEST, manifest)
        return manifest[self.stem]

    def fact(self, stem: str, name: str, default=_REQUIRED):
        """A fact an earlier stage published (a path comes back absolute); a missing one names the stage to run."""
        section = read_manifest(self.run_dir).get(stem, {})
        if name not in section:
            if default is not _REQUIRED:
                return default
            raise LookupError(f"{self.run_dir / MANIFEST}: stage {stem} has not published {name!r}; run stage {stem} "
                              f"first (python -m wafersage_utils.runner.pipeline <params> --only {stem[:2]})")
        value = section[name]
        return str(self.run_dir / value[len(RUN_PREFIX):]) if isinstance(value, str) and value.startswith(RUN_PREFIX) \
            else value


MANIFEST = "manifest.json"
FIGURE_INDEX = "index.json"  # {figure slug: the stage that drew it}, in figures/
SECTIONS = "report"  # report/<stem>.md: what each stage adds to REPORT.md
RUN_PREFIX = "run:"  # a manifest path relative to the run folder


def read_manifest(run_dir: Path) -> dict:
    """The run's manifest (empty before any stage published)."""
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it and rerun the stages that publish to it") from exc


def _portable(value, run_dir: Path):
    if isinstance(value, Path):
        p = value.resolve()
        return RUN_PREFIX + str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p)
    return value


def open_stage(run_dir: str, stem: str, seed: int, n_threads: int) -> Stage:
    """Create the run folder, seed every generator and fix the thread count; returns the stage handle."""
    import torch
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if n_threads > 0:
        torch.set_num_threads(n_threads)
        from threadpoolctl import threadpool_limits
        threadpool_limits(n_threads)
    root = Path(run_dir).resolve()
    for sub in ("metrics", "figures", "tables", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return Stage(root, stem)
