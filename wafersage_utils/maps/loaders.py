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
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

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
    """A pickle referenced a global outside :data:`ALLOWED_GLOBALS`, or an Arrow array it holds is malformed."""


#: Arrow types a pickled string column may hold (pandas' Arrow-backed `str` columns of modern re-saves).
_ARROW_STRING_TYPES = (pa.string(), pa.large_string())


def _checked_restore_array(data):
    """Stand-in for `pyarrow.lib._restore_array`: rebuild a pickled Arrow *string* array through the public
    `Array.from_buffers` and validate it in full before anything reads it.

    The real function trusts the pickled offsets and lengths, so a crafted pickle could make a later read
    run past its buffers (a crash, or process memory in an error message). Only the shape a string column
    pickles to is admitted: (type, length, null_count, offset, [validity, offsets, data], [], None).
    """
    if not (isinstance(data, tuple) and len(data) == 7):
        raise UnsafePickleError(f"pickled Arrow array: expected a 7-item tuple, got {type(data).__name__}")
    typ, length, null_count, offset, buffers, children, dictionary = data
    if typ not in _ARROW_STRING_TYPES:
        raise UnsafePickleError(f"pickled Arrow array: only string arrays are accepted, got type {typ!r}")
    if children or dictionary is not None:
        raise UnsafePickleError("pickled Arrow array: a string array has no children or dictionary")
    ints = (length, null_count, offset)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or length < 0 or offset < 0:
        raise UnsafePickleError(f"pickled Arrow array: bad length/null count/offset {ints}")
    if not (isinstance(buffers, list) and len(buffers) == 3
            and all(b is None or isinstance(b, pa.Buffer) for b in buffers) and buffers[1] is not None):
        raise UnsafePickleError("pickled Arrow array: expected three buffers (validity or None, offsets, data)")
    try:
        arr = pa.Array.from_buffers(typ, length, buffers, null_count=null_count, offset=offset)
        arr.validate(full=True)  # offsets within the data, monotonic, valid UTF-8, buffers large enough
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise UnsafePickleError(f"pickled Arrow array: inconsistent buffers ({type(exc).__name__})") from exc
    return arr


#: Allowed globals that are replaced by checked stand-ins instead of being resolved.
_CHECKED_GLOBALS = {("pyarrow.lib", "_restore_array"): _checked_restore_array}


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
        if (mod, name) in _CHECKED_GLOBALS:
            return _CHECKED_GLOBALS[(mod, name)]
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
    except UnsafePickleError as exc:
        if str(path) in str(exc):
            raise
        raise UnsafePickleError(f"{path}: {exc}") from exc
    except MemoryError as exc:
        raise ValueError(f"{path}: corrupt pickle (it asks for more memory than the machine has)") from exc
    except (EOFError, lzma.LZMAError, zlib.error, OSError, pickle.UnpicklingError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, UnicodeDecodeError, OverflowError, RecursionError,
            pa.ArrowException) as exc:
        # A corrupt or bit-flipped file fails in the decompressor, the pickle machine or a constructor it
        # calls; the library's own message is left out (it may quote the file's bytes).
        raise ValueError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}); expected a pickled "
                         "pandas DataFrame (WM-811K LSWMD.pkl layout), plain or xz/gzip/bz2-compressed") from exc


def _nested_name(value, where: str, field: str) -> str | None:
    """'Center' from WM-811K's nested [['Center']]; None for an empty (unlabelled) entry."""
    try:
        arr = np.asarray(value, dtype=object).ravel()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {field} is not a label (got {type(value).__name__}); expected [['Center']] "
                         "or an empty array") from exc
    if not arr.size:
        return None
    if not isinstance(arr[0], str | np.str_):
        raise ValueError(f"{where}: {field} holds a {type(arr[0]).__name__}; expected a label name such as "
                         "[['Center']] or an empty array")
    return str(arr[0]).strip()


def _wafer_index(value, where: str) -> int:
    """WM-811K's waferIndex (a float in the 2015 pickle) as an int; -1 when missing."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return -1
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating) \
            or not np.isfinite(value) or float(value) != int(value):
        raise ValueError(f"{where}: waferIndex must be a whole number, got {value!r}")
    return int(value)


def load_wm811k(path: str | Path, keep_unlabelled: bool = False, max_maps: int | None = None) -> pd.DataFrame:
    """WM-811K `LSWMD.pkl` (original 2015 pickle, modern re-saves, compressed or not) as the common table.

    Every field is checked before use (the map's values before any cast); an error names the file, the row
    and what was expected.
    """
    path = Path(path)
    raw = safe_read_pickle(path)
    if not isinstance(raw, pd.DataFrame):
        raise ValueError(f"{path}: expected a pickled pandas DataFrame, got {type(raw).__name__}")
    missing = [c for c in WM811K_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing WM-811K column(s) {missing}; expected {list(WM811K_COLUMNS)}")
    has_split = "trianTestLabel" in raw.columns
    rows = []
    for pos, (idx, rec) in enumerate(raw.iterrows()):
        where = f"{path}, row {pos} (index {idx})"
        name = _nested_name(rec["failureType"], where, "failureType")
        if name is None and not keep_unlabelled:
            continue
        if name is not None and name not in VOCAB:
            raise ValueError(f"{where}: unknown failureType {name!r}; expected one of {list(VOCAB)}")
        m = check_map(np.asarray(rec["waferMap"]), where).astype(np.uint8)
        lot = rec["lotName"]
        if lot is not None and not isinstance(lot, str) and not pd.isna(lot):
            raise ValueError(f"{where}: lotName must be text, got {type(lot).__name__}")
        rows.append({
            "id": f"wm811k-{idx}", "source": "wm811k", "lot": lot if isinstance(lot, str) else "",
            "wafer_index": _wafer_index(rec["waferIndex"], where), "wafer_map": m,
            "height": m.shape[0], "width": m.shape[1], "labels": [name] if name else [],
            "original_split": _nested_name(rec["trianTestLabel"], where, "trianTestLabel") if has_split else None,
        })
        if max_maps and len(rows) >= max_maps:
            break
    log.info("loaded %d WM-811K maps from %s", len(rows), path)
    return validate_maps(pd.DataFrame(rows), str(path))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`arr_0` and `arr_1` of a MixedWM38 `.npz`; any unreadable file is a ValueError naming it."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or unreadable .npz archive ({type(exc).__name__}); expected a MixedWM38 "
                         "file with arrays 'arr_0' (maps) and 'arr_1' (labels)") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array (a .npy file), not a .npz archive with 'arr_0' (maps) "
                         "and 'arr_1' (labels)")
    with z:
        out = []
        for key, what in (("arr_0", "maps"), ("arr_1", "labels")):
            if key not in z.files:
                raise ValueError(f"{path}: missing array '{key}' ({what}); expected 'arr_0' (maps) and 'arr_1' "
                                 f"(labels), found {z.files or 'no arrays'}")
            try:
                out.append(z[key])
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as exc:
                raise ValueError(f"{path}: array '{key}' is truncated or corrupt ({type(exc).__name__})") from exc
    return out[0], out[1]


def load_mixedwm38(path: str | Path, value3: str = "fail", max_maps: int | None = None) -> pd.DataFrame:
    """MixedWM38 `.npz` (`arr_0` maps, `arr_1` 8-way multi-hot) as the common table.

    value3: what a stray 3 (the authors' "noise") becomes: 'fail', 'pass' or 'error'. Maps must hold exactly
    0, 1, 2 (or 3) and labels exactly 0 or 1, checked before any cast.
    """
    path = Path(path)
    if value3 not in ("fail", "pass", "error"):
        raise ValueError(f"value3: expected 'fail', 'pass' or 'error', got {value3!r}")
    maps, hot = _read_npz(path)
    if maps.ndim != 3 or hot.shape != (len(maps), len(PATTERNS)):
        raise ValueError(f"{path}: expected arr_0 (N, H, W) and arr_1 (N, 8); got {maps.shape} and {hot.shape}")
    for key, arr in (("arr_0", maps), ("arr_1", hot)):
        if arr.dtype.kind not in "buif":
            raise ValueError(f"{path}: '{key}' must hold numbers, got dtype {arr.dtype}")
    bad_hot = ~np.isin(hot, (0, 1))  # NaN, -1, 2 or 0.5 are not a yes or a no
    if bad_hot.any():
        i, k = np.argwhere(bad_hot)[0]
        raise ValueError(f"{path}, row {i}: arr_1 (labels) holds {hot[i, k]!r} for {PATTERNS[k]}; expected 0 or 1")
    n = min(len(maps), max_maps or len(maps))
    rows = []
    for i in range(n):
        where = f"{path}, row {i}"
        raw = maps[i]
        if value3 != "error":
            raw = np.where(raw == 3, 2 if value3 == "fail" else 1, raw)
        elif (raw == 3).any():
            raise ValueError(f"{where}: wafer_map holds value 3 (noise); set value3 to 'fail' or 'pass'")
        m = check_map(raw, where).astype(np.uint8)
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
