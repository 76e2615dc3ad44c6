"""Loaders for the public data sets, each returning the common table of :mod:`.table`.

WM-811K ships as a pickled pandas DataFrame. Unpickling runs code, so :class:`RestrictedUnpickler`
admits only the globals that a DataFrame of numpy arrays needs and aliases the module paths of the
2015 pickle (pandas 0.x) to their current homes; anything else is refused with the file and the name.
"""
from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..runner.runs import PROJECT_ROOT
from .conventions import NONE_LABEL, PATTERNS, VOCAB
from .table import check_map, validate_maps

log = logging.getLogger(__name__)

WM811K_COLUMNS = ("waferMap", "lotName", "waferIndex", "failureType")

#: Old module paths (pandas 0.x, numpy 1.x) -> current ones.
_MODULE_ALIASES = {
    "pandas.indexes.base": "pandas.core.indexes.base",
    "pandas.indexes.range": "pandas.core.indexes.range",
    "pandas.indexes.numeric": "pandas.core.indexes.base",
    "pandas.core.index": "pandas.core.indexes.base",
    "pandas.core.internals": "pandas.core.internals.managers",
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
    "pandas.core.arrays.string_arrow": "pandas.core.arrays.string_arrow",
}
_NAME_ALIASES = {("pandas.core.indexes.base", n): "Index" for n in ("Int64Index", "UInt64Index", "Float64Index")}

#: (module, name) pairs a pickled DataFrame of arrays and strings may reference.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "slice"), ("builtins", "bytearray"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("pandas", "DataFrame"), ("pandas.core.frame", "DataFrame"), ("pandas.core.series", "Series"),
    ("pandas.core.internals.managers", "BlockManager"), ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas.core.internals.blocks", "new_block"), ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"), ("pandas", "Index"), ("pandas", "RangeIndex"),
    ("pandas", "StringDtype"), ("pandas.core.arrays.string_", "StringDtype"), ("pandas.core.arrays.string_", "StringArray"),
    ("pandas.core.arrays.string_arrow", "ArrowStringArray"), ("pandas.arrays", "ArrowStringArray"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    ("pyarrow.lib", "_restore_array"), ("pyarrow.lib", "type_for_alias"), ("pyarrow.lib", "py_buffer"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside :data:`ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (after aliasing old module paths)."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        mod = _MODULE_ALIASES.get(module, module)
        name = _NAME_ALIASES.get((mod, name), name)
        if (mod, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle global {module}.{name}; only a pandas DataFrame of "
                "arrays is accepted (a pickle runs code when loaded, so anything else is rejected)")
        return super().find_class(mod, name)


def _open_maybe_compressed(path: Path) -> io.BufferedIOBase:
    head = path.open("rb").read(6)
    if head.startswith(b"\xfd7zXZ"):
        return lzma.open(path, "rb")
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if head.startswith(b"BZh"):
        return bz2.open(path, "rb")
    return path.open("rb")


def safe_read_pickle(path: str | Path):
    """Load a (possibly xz/gzip/bz2-compressed) pickle through :class:`RestrictedUnpickler`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with _open_maybe_compressed(path) as fh:
            return RestrictedUnpickler(fh, source=str(path)).load()
    except UnsafePickleError:
        raise
    except (EOFError, lzma.LZMAError, OSError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc


def _nested_name(value) -> str | None:
    """'Center' from WM-811K's nested [['Center']]; None for an empty (unlabelled) entry."""
    arr = np.asarray(value, dtype=object).ravel()
    return str(arr[0]).strip() if arr.size else None


def load_wm811k(path: str | Path, keep_unlabelled: bool = False, max_maps: int | None = None) -> pd.DataFrame:
    """WM-811K `LSWMD.pkl` (original 2015 pickle, modern re-saves, compressed or not) as the common table."""
    path = Path(path)
    raw = safe_read_pickle(path)
    if not isinstance(raw, pd.DataFrame):
        raise ValueError(f"{path}: expected a pickled pandas DataFrame, got {type(raw).__name__}")
    missing = [c for c in WM811K_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing WM-811K column(s) {missing}; expected {list(WM811K_COLUMNS)}")
    rows = []
    for pos, (idx, rec) in enumerate(raw.iterrows()):
        where = f"{path}, row {pos} (index {idx})"
        name = _nested_name(rec["failureType"])
        if name is None and not keep_unlabelled:
            continue
        if name is not None and name not in VOCAB:
            raise ValueError(f"{where}: unknown failureType {name!r}; expected one of {list(VOCAB)}")
        m = check_map(np.asarray(rec["waferMap"]), where).astype(np.uint8)
        wi = rec["waferIndex"]
        rows.append({
            "id": f"wm811k-{idx}", "source": "wm811k", "lot": str(rec["lotName"] or ""),
            "wafer_index": int(wi) if pd.notna(wi) else -1, "wafer_map": m,
            "height": m.shape[0], "width": m.shape[1], "labels": [name] if name else [],
            "original_split": _nested_name(rec["trianTestLabel"]) if "trianTestLabel" in raw.columns else None,
        })
        if max_maps and len(rows) >= max_maps:
            break
    log.info("loaded %d WM-811K maps from %s", len(rows), path)
    return validate_maps(pd.DataFrame(rows), str(path))


def load_mixedwm38(path: str | Path, value3: str = "fail", max_maps: int | None = None) -> pd.DataFrame:
    """MixedWM38 `.npz` (`arr_0` maps, `arr_1` 8-way multi-hot) as the common table.

    value3: what a stray 3 (the authors' "noise") becomes: 'fail', 'pass' or 'error'.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            maps, hot = z["arr_0"], z["arr_1"]
    except KeyError as exc:
        missing = "arr_0" if "arr_0" in str(exc) else "arr_1"
        raise ValueError(f"{path}: missing array '{missing}'; expected 'arr_0' (maps) and 'arr_1' (labels)") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: truncated or unreadable .npz ({exc})") from exc
    if maps.ndim != 3 or hot.shape != (len(maps), len(PATTERNS)):
        raise ValueError(f"{path}: expected arr_0 (N, H, W) and arr_1 (N, 8); got {maps.shape} and {hot.shape}")
    if value3 not in ("fail", "pass", "error"):
        raise ValueError(f"value3: expected 'fail', 'pass' or 'error', got {value3!r}")
    n = min(len(maps), max_maps or len(maps))
    rows = []
    for i in range(n):
        m = maps[i].astype(np.uint8)
        if (m == 3).any():
            if value3 == "error":
                raise ValueError(f"{path}, row {i}: wafer_map holds value 3 (noise); set value3 to 'fail' or 'pass'")
            m = np.where(m == 3, 2 if value3 == "fail" else 1, m).astype(np.uint8)
        labels = [PATTERNS[k] for k in np.flatnonzero(hot[i])] or [NONE_LABEL]
        rows.append({"id": f"mixedwm38-{i}", "source": "mixedwm38", "lot": "", "wafer_index": i,
                     "wafer_map": m, "height": m.shape[0], "width": m.shape[1], "labels": labels})
    log.info("loaded %d MixedWM38 maps from %s", n, path)
    return validate_maps(pd.DataFrame(rows), str(path))


#: Where the public samples live relative to the project root, and the variables that override them.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"  # beside the repository, never inside it
DATA_ENV = {"wm811k": "WAFERSAGE_WM811K", "mixedwm38": "WAFERSAGE_MIXEDWM38"}
DEFAULT_FILES = {"wm811k": SHARED_DATA / "wm811k" / "wm811k_dev.pkl.xz",
                 "mixedwm38": SHARED_DATA / "mixedwm38" / "mixedwm38_dev.npz"}


def resolve_data_path(source: str, path: str = "") -> Path:
    """The file for a real source: the given path, else $WAFERSAGE_WM811K / $WAFERSAGE_MIXEDWM38, else ../shared/data."""
    import os
    if source not in DATA_ENV:
        raise ValueError(f"source: expected 'synthetic', 'wm811k' or 'mixedwm38', got {source!r}")
    chosen = Path(path or os.environ.get(DATA_ENV[source], "") or DEFAULT_FILES[source])
    if not chosen.exists():
        raise FileNotFoundError(f"{chosen}: no {source} file here; set data_path in the params or ${DATA_ENV[source]}")
    return chosen
