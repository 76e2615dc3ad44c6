"""The README works as written on a fresh clone: its links resolve, its make targets exist, and its serving
examples (curl and the Python client) answer from the committed reference model, with no training."""
from __future__ import annotations

import json
import re
import shlex
import urllib.request
from pathlib import Path

import pytest

from wafersage_utils.serving import cli, schema

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RUN = ROOT / "results" / "default"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 220
    assert "make run" in README and "make test" in README


def test_readme_links_resolve():
    links = [t for t in re.findall(r"\]\(([^)#\s]+)\)", README) if not t.startswith(("http://", "https://"))]
    assert links and [t for t in links if not (ROOT / t).exists()] == []


def test_readme_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert named and named <= targets, named - targets


@pytest.fixture(scope="module")
def served():
    """The committed reference model, served as `make serve` does (image root: the run folder)."""
    path, name = cli.resolve_model(str(RUN), "sft")
    cfg = schema.ServeConfig(model_path=path, served_model_name=name, port=0, image_root=str(RUN), n_threads=2)
    with cli.BackgroundServer(cfg) as server:
        yield server.url


def test_readme_curl_example_answers(served):
    curl = next(b for b in _blocks("bash") if b.lstrip().startswith("curl"))
    args = shlex.split(curl.replace("\\\n", " "))
    url = args[args.index("curl") + 2] if args[1] == "-s" else args[1]
    assert url.startswith("http://127.0.0.1:8000/v1/")
    body = args[args.index("--data") + 1]
    req = urllib.request.Request(served + url.removeprefix("http://127.0.0.1:8000/v1"), data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    assert reply["model"] == json.loads(body)["model"] and reply["choices"][0]["message"]["content"].strip()


def test_readme_python_client_example_answers(served, capsys):
    code = next(b for b in _blocks("python") if "OpenAI(" in b)
    exec(code.replace("http://127.0.0.1:8000/v1", served), {})  # noqa: S102 - the README's own example
    assert capsys.readouterr().out.strip()
