"""The one wafer-map table every source is turned into, its checks, and its parquet form.

In memory: a DataFrame with one row per map and `wafer_map` holding 2-D uint8 arrays
(0 no die, 1 pass, 2 fail). On disk: parquet, with the map stored as raw bytes beside its shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..runner.runs import atomic_target
from .conventions import check_labels

REQUIRED = ("id", "source", "lot", "wafer_index", "wafer_map", "height", "width", "labels")
OPTIONAL = ("labels_true", "geometry")


def validate_maps(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check the table's columns, maps and labels; raise ValueError naming `where` and the row."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected at least {list(REQUIRED)}")
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"{where}: duplicate id {dup!r}; ids must be unique")
    for pos, (rid, m, h, w, labels) in enumerate(zip(df["id"], df["wafer_map"], df["height"], df["width"], df["labels"])):
        row = f"{where}, row {pos} (id {rid!r})"
        check_map(m, row)
        if m.shape != (h, w):
            raise ValueError(f"{row}: wafer_map shape {m.shape} differs from height/width ({h}, {w})")
        check_labels(labels, row)
    return df


def check_map(m, row: str) -> np.ndarray:
    """Check one map: a non-empty 2-D numeric array whose values are exactly 0, 1 or 2, with at least one die.

    Values are checked before any cast, so 256, -254, NaN, inf or 1.5 are refused rather than wrapped or
    truncated into a valid die code.
    """
    if not isinstance(m, np.ndarray) or m.ndim != 2:
        shape = getattr(m, "shape", type(m).__name__)
        raise ValueError(f"{row}: wafer_map must be a 2-D array, got {shape}")
    if m.size == 0:
        raise ValueError(f"{row}: wafer_map is empty (shape {m.shape})")
    if m.dtype.kind not in "buif":
        raise ValueError(f"{row}: wafer_map must hold numbers 0, 1 or 2, got dtype {m.dtype}")
    bad = m[(m != 0) & (m != 1) & (m != 2)]  # NaN compares unequal to all three, so it is caught here too
    if bad.size:
        v = bad.flat[0]
        shown = repr(float(v)) if m.dtype.kind == "f" else str(int(v))
        raise ValueError(f"{row}: wafer_map holds value {shown} ({bad.size} cell(s) in all); "
                         "expected 0 (no die), 1 (pass) or 2 (fail)")
    if not (m > 0).any():
        raise ValueError(f"{row}: wafer_map has no die (all zeros)")
    return m


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the table to parquet atomically: a failed write leaves any earlier file intact."""
    flat = df.copy()
    flat["wafer_map"] = [np.ascontiguousarray(m, dtype=np.uint8).tobytes() for m in df["wafer_map"]]
    with atomic_target(path) as tmp:
        pq.write_table(pa.Table.from_pandas(flat, preserve_index=False), tmp)
    return Path(path)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table`, with maps back as 2-D uint8 arrays."""
    path = Path(path)
    try:
        df = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path}: not a readable parquet table ({exc})") from exc
    maps = []
    for pos, (buf, h, w) in enumerate(zip(df["wafer_map"], df["height"], df["width"])):
        if len(buf) != h * w:
            raise ValueError(f"{path}, row {pos}: wafer_map holds {len(buf)} bytes, expected height*width = {h * w}")
        maps.append(np.frombuffer(buf, dtype=np.uint8).reshape(h, w))
    df["wafer_map"] = maps
    for col in ("labels", "labels_true"):
        if col in df.columns:
            df[col] = [list(x) if x is not None else None for x in df[col]]
    return df
