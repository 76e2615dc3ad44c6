"""Params files and notebook parameters: read, override, and check every key before anything runs.

A params file has a `common` section and one section per notebook stem (`01_clean`, ...). A notebook
declares its parameters in the one cell tagged `parameters`, one annotated literal per line:
`n_wafers: int = 2000  # meaning, units`. Papermill only warns on an unknown key; here it is an error.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

#: Keys the runner sets itself; every notebook declares them.
RUNNER_KEYS = ("run_dir",)


class ParamsError(ValueError):
    """A params file, an override or a notebook's parameters cell is wrong."""


@dataclass(frozen=True)
class NotebookParam:
    name: str
    type: str  # the annotation as written, e.g. "int", "list[str]", "str | None"
    default: object
    help: str


def notebook_parameters(path: Path) -> dict[str, NotebookParam]:
    """Parameters declared in the notebook's cell tagged `parameters` (exactly one such cell)."""
    nb = json.loads(Path(path).read_text())
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    src = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    lines = src.splitlines()
    out: dict[str, NotebookParam] = {}
    for node in ast.parse(src).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ParamsError(f"{path}: parameters cell line {node.lineno}: expected `name: type = literal  # help`")
        try:
            default = ast.literal_eval(node.value)
        except ValueError as exc:
            raise ParamsError(f"{path}: parameter {node.target.id!r} must have a literal default") from exc
        line = lines[node.lineno - 1]
        help_text = line.split("#", 1)[1].strip() if "#" in line else ""
        out[node.target.id] = NotebookParam(node.target.id, ast.unparse(node.annotation), default, help_text)
    return out


def type_matches(value, annotation: str) -> bool:
    """Does a YAML value fit a parameter annotation (int, float, str, bool, list[...], dict, X | None)?"""
    ann = annotation.replace(" ", "")
    if "|" in ann:
        return any(type_matches(value, part) for part in ann.split("|"))
    if ann == "None":
        return value is None
    if ann == "bool":
        return isinstance(value, bool)
    if ann == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if ann == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann == "str":
        return isinstance(value, str)
    if ann == "dict" or ann.startswith("dict["):
        return isinstance(value, dict)
    if ann == "list":
        return isinstance(value, list)
    if ann.startswith("list[") and ann.endswith("]"):
        return isinstance(value, list) and all(type_matches(v, ann[5:-1]) for v in value)
    raise ParamsError(f"unsupported parameter annotation {annotation!r}")


def load_params(path: Path) -> dict[str, dict]:
    """Read a params file into {section: {key: value}}; `common` is always present."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: params file not found") from exc
    except IsADirectoryError as exc:
        raise ParamsError(f"{path}: is a folder; expected a YAML params file") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not a text file (byte {exc.start} is not UTF-8); expected a YAML params file") from exc
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ParamsError(f"{path}: expected a mapping of sections (common, 01_clean, ...) to mappings of keys")
    out = {str(k): dict(v or {}) for k, v in data.items()}
    out.setdefault("common", {})
    return out


def apply_overrides(params: dict[str, dict], overrides: list[str]) -> dict[str, dict]:
    """Apply `--set key=value` (common) or `--set 01_clean.key=value`; values are parsed as YAML."""
    out = {k: dict(v) for k, v in params.items()}
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key=value or section.key=value")
        key, raw = item.split("=", 1)
        section, _, name = key.strip().rpartition(".")
        if not name.isidentifier():
            raise ParamsError(f"--set {item!r}: {name!r} is not a parameter name; expected key=value or "
                              "section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem", None) or type(exc).__name__
            raise ParamsError(f"--set {item!r}: the value is not valid YAML ({mark}); quote text, e.g. "
                              f"{name}='\"...\"'") from exc
        out.setdefault(section or "common", {})[name] = value
    return out


def check_params(params: dict[str, dict], notebooks: dict[str, dict[str, NotebookParam]], source: str) -> None:
    """Refuse unknown sections, unknown keys and wrong types, naming the key, the file and the notebook."""
    for section, values in params.items():
        if section != "common" and section not in notebooks:
            raise ParamsError(f"{source}: section {section!r} names no notebook; notebooks are {sorted(notebooks)}")
        for key, value in values.items():
            if key in RUNNER_KEYS:
                raise ParamsError(f"{source}: key {key!r} in section {section!r} is set by the runner, not by params")
            targets = notebooks if section == "common" else {section: notebooks[section]}
            declared = {stem: p[key] for stem, p in targets.items() if key in p}
            if not declared:
                where = "any notebook" if section == "common" else f"notebook {section}.ipynb"
                raise ParamsError(f"{source}: unknown key {key!r} in section {section!r}: not a parameter of {where}")
            for stem, p in declared.items():
                if not type_matches(value, p.type):
                    raise ParamsError(f"{source}: key {key!r} in section {section!r} has {type(value).__name__} "
                                      f"value {value!r}; notebook {stem}.ipynb expects {p.type}")


def stage_parameters(params: dict[str, dict], stem: str, declared: dict[str, NotebookParam]) -> dict:
    """The values injected into one notebook: its declared common keys, then its own section."""
    out = {k: v for k, v in params.get("common", {}).items() if k in declared}
    out.update(params.get(stem, {}))
    return out
