"""Shared fixtures: small generated data sets and the public samples beside the project (skipped if absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wafersage_utils.maps import loaders, synth
from wafersage_utils.runner import pipeline

ROOT = Path(__file__).resolve().parent.parent
# No hub is reachable: the Auto classes must never try. Built tiny bases go to a per-session folder, not ~/.cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest_plugins = ["tests.chat_server"]  # the `server` fixture: a scripted OpenAI-compatible endpoint

# Fuzz tests (hypothesis): in CI the same examples every run (a red build is then the code's, not the draw's);
# locally new draws each run, so new kinds of bad input keep being tried. Failures found are replayed first.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
_hypothesis_settings.register_profile("dev", print_blob=True)
_hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")


RUN_FIXTURES = {"smoke_run", "sft_run", "rl_run", "eval_run"}  # each executes notebooks of the smoke chain


def pytest_collection_modifyitems(config, items):
    """A test that needs a notebook run of the smoke chain is `slow`: `make test-fast` leaves those out."""
    for item in items:
        if RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def real_file(source: str) -> Path:
    """The public sample for a source, or skip with the reason."""
    path = Path(os.environ.get(loaders.DATA_ENV[source], "") or loaders.DEFAULT_FILES[source])
    if not path.exists():
        pytest.skip(f"{path} not present: the public {source} sample lives in ../shared/data "
                    f"(or set ${loaders.DATA_ENV[source]})")
    return path


@pytest.fixture(scope="session")
def small_synth():
    """600 generated maps with 10% injected label noise, shared across tests (read-only)."""
    return synth.generate(synth.SynthConfig(n_wafers=600, seed=7, mixed_fraction=0.0, label_noise=0.1))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Tiny bases built during the tests live in a session folder ($WAFERSAGE_CACHE, inherited by notebooks)."""
    path = tmp_path_factory.mktemp("wafersage_cache")
    old = os.environ.get("WAFERSAGE_CACHE")
    os.environ["WAFERSAGE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("WAFERSAGE_CACHE", None)
    else:
        os.environ["WAFERSAGE_CACHE"] = old


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Stages 01 to 04 run once with params/smoke.yaml (read-only for the tests that use it)."""
    return pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="01-04", results_dir=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def sft_run(smoke_run):
    """Stage 05 run once on the smoke run (adds models/ and metrics/05_sft.json; read-only for the tests)."""
    return pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="05", results_dir=smoke_run.parent)


@pytest.fixture(scope="session")
def rl_run(sft_run):
    """Stage 06 run once on the smoke run's SFT model (adds models/rl/ and metrics/06_rl.json)."""
    return pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="06", results_dir=sft_run.parent)


@pytest.fixture(scope="session")
def eval_run(rl_run):
    """Stage 07 run once on the smoke run: the last link of the chain 01 to 07 (adds metrics/07_eval.json)."""
    return pipeline.run_pipeline(ROOT / "params" / "smoke.yaml", only="07", results_dir=rl_run.parent)
