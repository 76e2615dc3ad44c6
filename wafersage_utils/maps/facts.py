"""Measured facts of a wafer map: the single source of spatial truth for descriptions, rubrics and scores.

Everything is read off the map in the conventions of :mod:`.conventions` (zones center r < 0.35,
mid-radius 0.35 to 0.75, edge r >= 0.75; 12 clock sectors clockwise from 12 o'clock; quadrants).
Systematic failures are the clustered fails of :func:`.features.filtered_fails` (background removed by a
binomial neighbour test at the map's own fail ratio); the main failing regions are their connected
components, each with a shape (blob, ring, arc, line), size, length and width in dies, and position and
orientation in clock terms.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .conventions import FAIL, N_SECTORS, ZONES, clock_hour, clock_sector, die_coordinates, polar, zone_index
from .features import filtered_fails, radial_alignment

QUADRANTS = ("upper-left", "upper-right", "lower-left", "lower-right")


@dataclass(frozen=True)
class FactRules:
    """Thresholds that turn measurements into statements; every one is a stage parameter."""

    min_region: int = 4  # dies; smaller clustered groups are not regions
    chance_shuffles: int = 8  # background-only shuffles of the map; a region must beat their largest
    max_regions: int = 3  # regions described per map
    zone_density: float = 0.08  # share of a zone's dies that must be clustered fails to say it holds failures
    sector_density: float = 0.08  # the same for a clock sector (within the zones that hold failures)
    line_max_width: float = 2.5  # dies of mean width (dies / length); thinner regions are lines
    ring_coverage: float = 300.0  # degrees of angle covered for a ring
    arc_coverage: float = 60.0  # degrees of angle covered (at a steady radius) for an arc
    random_ratio: float = 0.3  # fail ratio above which scattered failures read as random
    near_full_ratio: float = 0.8  # fail ratio above which the wafer reads as near-full


def _coverage_degrees(theta: np.ndarray) -> float:
    """Degrees of the circle covered by points at these clock angles (30-degree sectors)."""
    return 30.0 * len(set(clock_sector(theta).tolist()))


def _arc_ends(theta: np.ndarray) -> tuple[float, float]:
    """Start and end clock angle of an arc (clockwise), found as the complement of the largest gap."""
    a = np.sort(theta % 360.0)
    gaps = np.diff(np.concatenate([a, [a[0] + 360.0]]))
    i = int(np.argmax(gaps))
    return float(a[(i + 1) % len(a)]), float(a[i])


def describe_region(sel: np.ndarray, x: np.ndarray, y: np.ndarray, r: np.ndarray, theta: np.ndarray,
                    die: float, rules: FactRules) -> dict:
    """Shape, size, position and orientation of one connected region (sel: boolean mask (H, W))."""
    px, py, pr, pt = x[sel], y[sel], r[sel], theta[sel]
    cx, cy = float(px.mean()), float(py.mean())
    cov = np.cov(np.stack([px, py]), bias=True) if sel.sum() > 1 else np.zeros((2, 2))
    evals, evecs = np.linalg.eigh(cov)
    lam2, lam1 = np.clip(evals, 0.0, None)
    major = evecs[:, 1]
    along = (px - cx) * major[0] + (py - cy) * major[1]
    length = float((along.max() - along.min()) / die + 1.0)
    width = float(4.0 * np.sqrt(lam2) / die) if lam2 > 0 else 1.0
    elong = 1.0 - np.sqrt(lam2 / lam1) if lam1 > 0 else 0.0
    coverage = _coverage_degrees(pt)
    steady_radius = float(pr.std()) < 0.12
    hollow = float(np.percentile(pr, 5)) >= 0.12  # a ring leaves its middle clear; a centred blob does not
    mean_width = sel.sum() / max(length, 1.0)  # dies per die of length: thin regions are lines, even curved
    r_c = np.hypot(cx, cy)
    ux, uy = (cx / r_c, cy / r_c) if r_c > 1e-6 else (0.0, 0.0)
    tangential = float(radial_alignment(cov[0, 0], cov[1, 1], cov[0, 1], ux, uy)) < -0.3
    # A thick annulus (real Donut maps) is not steady in radius, but it is centred and its middle is empty:
    # even the innermost 2% of its dies lie well away from the wafer center (a filled disc's do not).
    thick_ring = float(np.hypot(cx, cy)) < 0.15 and float(np.percentile(pr, 2)) >= 0.15
    if coverage >= rules.ring_coverage and ((steady_radius and hollow) or thick_ring):
        shape = "ring"
    elif coverage >= rules.arc_coverage and steady_radius and tangential and elong >= 0.5:
        shape = "arc"
    elif length >= 5 and mean_width <= rules.line_max_width and length >= 3 * mean_width:
        shape = "line"
    else:
        shape = "blob"
    centroid_r = float(np.hypot(cx, cy))
    where_r = float(np.median(pr))  # the zone of a region is where its dies lie (a ring's centroid is empty)
    out = {"shape": shape, "dies": int(sel.sum()), "length_dies": round(length, 1), "width_dies": round(width, 1),
           "centroid_r": round(centroid_r, 3), "zone": ZONES[int(zone_index(np.array([where_r]))[0])],
           "clock": clock_hour(float(np.degrees(np.arctan2(cx, cy)) % 360)) if centroid_r > 0.1 else None,
           "r_min": round(float(pr.min()), 3), "r_max": round(float(pr.max()), 3),
           "clock_sectors": sorted({12 if s == 0 else int(s) for s in clock_sector(pt)})}
    if shape == "line":
        ends = [(px[along.argmin()], py[along.argmin()]), (px[along.argmax()], py[along.argmax()])]
        out["from_clock"], out["to_clock"] = sorted(clock_hour(float(np.degrees(np.arctan2(ex, ey)) % 360))
                                                    for ex, ey in ends)
    elif shape == "arc":
        start, end = _arc_ends(pt)
        out["from_clock"], out["to_clock"] = clock_hour(start), clock_hour(end)
    return out


_PLANE = np.stack([np.zeros((3, 3), bool), np.ones((3, 3), bool), np.zeros((3, 3), bool)])


def chance_region_size(m: np.ndarray, ratio: float, shuffles: int) -> int:
    """Largest clustered region that background alone produces on this map: the map's fails are shuffled
    over its dies `shuffles` times (seeded by the map's content) and the largest region is kept."""
    if shuffles <= 0:
        return 0
    dies = np.flatnonzero(m.ravel() > 0)
    n_fail = int((m == FAIL).sum())
    rng = np.random.default_rng(int.from_bytes(m.tobytes()[:64].ljust(8, b"\0")[:8], "little") ^ m.size)
    stack = np.zeros((shuffles, m.size), dtype=bool)
    for k in range(shuffles):
        stack[k, rng.choice(dies, size=n_fail, replace=False)] = True
    stack = stack.reshape(shuffles, *m.shape)
    lab, n = ndimage.label(filtered_fails(stack, np.full(shuffles, ratio)), structure=_PLANE)
    return int(np.bincount(lab.ravel())[1:].max()) if n else 0


def measure(m: np.ndarray, rules: FactRules = FactRules()) -> dict:
    """All facts of one map, JSON-serialisable."""
    h, w = m.shape
    dies, fails = m > 0, m == FAIL
    n_dies = max(int(dies.sum()), 1)
    ratio = float(fails.sum() / n_dies)
    near_full = bool(ratio >= rules.near_full_ratio)
    # The neighbour test finds structure against the map's own fail ratio; when nearly every die fails there
    # is no background left to test against, and every failing die counts as a systematic failure.
    clustered = fails if near_full else filtered_fails(fails[None], np.array([ratio]))[0]
    x, y = die_coordinates(h, w)
    r, theta = polar(h, w)
    zone, sector = zone_index(r), clock_sector(theta)
    quad = (x >= 0).astype(int) + 2 * (y < 0)

    def density(mask_of_bin, values, n_bins):
        num = np.bincount(values[mask_of_bin], minlength=n_bins)
        den = np.bincount(values[dies], minlength=n_bins)
        return num / np.maximum(den, 1)

    zone_dens = density(clustered, zone, 3)
    zone_raw = density(fails, zone, 3)
    zs_dens = density(clustered, zone * N_SECTORS + sector, 3 * N_SECTORS).reshape(3, N_SECTORS)
    quad_share = np.bincount(quad[clustered], minlength=4) / max(int(clustered.sum()), 1)
    zones_with = [ZONES[z] for z in range(3) if zone_dens[z] >= rules.zone_density]
    hours = lambda ks: [12 if k == 0 else int(k) for k in ks]  # noqa: E731
    sectors_by_zone = {ZONES[z]: hours(np.flatnonzero(zs_dens[z] >= rules.sector_density)) for z in range(3)}
    lab, n = ndimage.label(clustered, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    floor = max(rules.min_region, chance_region_size(m, ratio, rules.chance_shuffles) + 1)
    order = [] if near_full else [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= floor][: rules.max_regions]
    die = 2.0 / np.sqrt(h * w)  # one die, in normalised radius units
    regions = [describe_region(lab == k, x, y, r, theta, die, rules) for k in order]
    zones_with = [z for z in ZONES if z in zones_with or any(reg["zone"] == z for reg in regions)]
    sym = clustered & clustered[::-1, ::-1]
    return {
        "fail_ratio": round(ratio, 4), "n_dies": n_dies, "n_fail": int(fails.sum()),
        "clustered_ratio": round(float(clustered.sum() / n_dies), 4),
        "zones_with_failures": zones_with,
        "zone_fail_density": {ZONES[z]: round(float(zone_raw[z]), 4) for z in range(3)},
        "zone_clustered_density": {ZONES[z]: round(float(zone_dens[z]), 4) for z in range(3)},
        "clock_sectors_by_zone": sectors_by_zone,
        "clock_sectors": sorted({s for v in sectors_by_zone.values() for s in v}),
        # A zone beyond a clear center whose clustered failures reach (nearly) every clock sector holds a ring.
        "ring_zones": [z for z in ZONES[1:] if len(sectors_by_zone[z]) * 30 >= rules.ring_coverage
                       and zone_dens[0] < rules.zone_density],
        "quadrant_share": {QUADRANTS[q]: round(float(quad_share[q]), 3) for q in range(4)},
        "regions": regions,
        "region_min_dies": int(floor),
        "point_symmetry": round(float(sym.sum() / max(int(clustered.sum()), 1)), 3),
        "scattered": bool(ratio >= rules.random_ratio and float(clustered.sum()) < 0.5 * fails.sum()),
        "near_full": near_full,
    }


def failing_hours(f: dict) -> set[int]:
    """Clock hours (1 to 12) holding clustered failures: the sectors of the failing zones and of every region,
    all twelve around a ring."""
    if f["ring_zones"]:
        return set(range(1, 13))
    return set(f["clock_sectors"]) | {s for r in f["regions"] for s in r["clock_sectors"]}


def fails_near(hour: int, f: dict) -> bool:
    """Are there clustered failures within one hour of this clock position?"""
    hours = failing_hours(f)
    return any(((hour - 1 + d) % 12) + 1 in hours for d in (-1, 0, 1))
