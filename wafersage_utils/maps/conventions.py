"""Fixed conventions shared by every stage: label vocabulary, die codes, wafer geometry.

Geometry (tested once, used everywhere):
- array row 0 is the top of the wafer; x grows to the right, y grows upwards;
- radius is normalised so that the wafer edge is r = 1 (per axis, so non-square die grids map to a disc);
- clock angle is measured clockwise from 12 o'clock, in degrees [0, 360);
- 12 clock sectors, sector k centred on hour k (sector 0 = 12 o'clock, 3 = 3 o'clock, ...);
- zones: center r < 0.35, mid-radius 0.35 <= r < 0.75, edge r >= 0.75.
"""
from __future__ import annotations

import numpy as np

NO_DIE, PASS, FAIL = 0, 1, 2

#: Pattern names in MixedWM38's multi-hot order, then the defect-free label.
PATTERNS: tuple[str, ...] = (
    "Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Scratch", "Random",
)
NONE_LABEL = "none"
VOCAB: tuple[str, ...] = PATTERNS + (NONE_LABEL,)

#: WM-811K labelled class counts (Wu et al. 2015), used for the "natural" class mix.
WM811K_COUNTS: dict[str, int] = {
    "none": 147431, "Edge-Ring": 9680, "Edge-Loc": 5189, "Center": 4294, "Loc": 3593,
    "Scratch": 1193, "Random": 866, "Donut": 555, "Near-full": 149,
}

ZONE_EDGES: tuple[float, float] = (0.35, 0.75)
ZONES: tuple[str, ...] = ("center", "mid-radius", "edge")
N_SECTORS = 12


UNLABELLED = ""


def label_key(labels) -> str:
    """Canonical class key: pattern names joined by '+' in vocabulary order; '' when unlabelled."""
    labels = [x for x in labels if x != NONE_LABEL] if len(labels) > 1 else list(labels)
    if not labels:
        return UNLABELLED
    if labels == [NONE_LABEL]:
        return NONE_LABEL
    order = {name: i for i, name in enumerate(VOCAB)}
    return "+".join(sorted(set(labels), key=order.__getitem__))


def check_labels(labels, where: str) -> list[str]:
    """Return labels as a list, raising ValueError naming `where` for a name outside VOCAB."""
    out = [str(x) for x in labels]
    bad = [x for x in out if x not in VOCAB]
    if bad:
        raise ValueError(f"{where}: unknown label name(s) {bad}; expected names from {list(VOCAB)}")
    return out  # an empty list means unlabelled


def die_coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (x, y) of every cell centre, each (H, W); the inscribed ellipse is r = 1."""
    rows = np.arange(height, dtype=np.float64)
    cols = np.arange(width, dtype=np.float64)
    y = ((height - 1) / 2.0 - rows) / (height / 2.0)
    x = (cols - (width - 1) / 2.0) / (width / 2.0)
    return np.broadcast_to(x[None, :], (height, width)), np.broadcast_to(y[:, None], (height, width))


def polar(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius and clock angle in degrees (clockwise from 12 o'clock), each (H, W)."""
    x, y = die_coordinates(height, width)
    r = np.hypot(x, y)
    theta = np.degrees(np.arctan2(x, y)) % 360.0
    return r, theta


def clock_sector(theta_deg: np.ndarray) -> np.ndarray:
    """Sector index 0..11 of a clock angle; sector k is centred on hour k (0 = 12 o'clock)."""
    return (np.floor((np.asarray(theta_deg) + 15.0) / 30.0).astype(np.int64)) % N_SECTORS


def zone_index(r: np.ndarray) -> np.ndarray:
    """Zone 0 (center), 1 (mid-radius) or 2 (edge) of a normalised radius."""
    return np.digitize(r, ZONE_EDGES)


def clock_hour(theta_deg: float) -> int:
    """Nearest clock hour 1..12 of an angle measured clockwise from 12 o'clock."""
    h = int(np.floor((theta_deg % 360.0 + 15.0) / 30.0)) % 12
    return 12 if h == 0 else h

#: Fixed palette for no die / pass / fail (RGB), used by every figure and by image rendering.
PALETTE: tuple[tuple[int, int, int], ...] = ((255, 255, 255), (158, 202, 225), (178, 24, 43))


#: How many of the symmetries below a map can be shown in: itself, its quarter turns, those and their mirrors.
VIEW_COUNTS = (1, 4, 8)


def symmetry(wafer_map: np.ndarray, k: int) -> np.ndarray:
    """The map under the k-th symmetry of the square (0 <= k < 8): k % 4 quarter turns counter-clockwise,
    then mirrored left-right when k >= 4. k = 0 is the map itself."""
    if not 0 <= k < 8:
        raise ValueError(f"symmetry index {k}: expected 0 to 7")
    out = np.rot90(wafer_map, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)
