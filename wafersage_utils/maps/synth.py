"""Synthetic wafer-map generator: the embedded default data source.

Wafers come in lots that share a die grid (one product), a background failure level and a dominant
defect tendency. Each map is drawn from a per-die failure probability: a radially rising background
combined with the fields of its patterns (per-die overlay, as in MixedWM38). Every pattern's geometry is
kept, in the conventions of :mod:`wafersage_utils.maps.conventions`, so later stages can be tested against it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from scipy.ndimage import distance_transform_cdt, gaussian_filter

from .conventions import FAIL, NO_DIE, NONE_LABEL, PASS, PATTERNS, WM811K_COUNTS, die_coordinates, label_key

log = logging.getLogger(__name__)

#: MixedWM38's mixtures: at most one of each group, 2 to 4 groups (13 + 12 + 4 = 29 combinations).
MIX_GROUPS: tuple[tuple[str, ...], ...] = (("Center", "Donut"), ("Edge-Loc", "Edge-Ring"), ("Loc",), ("Scratch",))

#: Realistic annotation confusions, used to inject label noise (the true label is kept).
CONFUSIONS: dict[str, tuple[str, ...]] = {
    "Center": ("Loc", "Donut"),
    "Donut": ("Edge-Ring", "Center"),
    "Edge-Loc": ("Edge-Ring", "Loc", NONE_LABEL),
    "Edge-Ring": ("Edge-Loc", "Donut"),
    "Loc": ("Center", "Edge-Loc", NONE_LABEL),
    "Near-full": ("Random",),
    "Scratch": ("Loc", NONE_LABEL),
    "Random": ("Near-full", NONE_LABEL),
    NONE_LABEL: ("Random", "Loc"),
}


#: Background failure level by class, relative to the lot's (median 0.08): the default, `background_by_class=
#: "pooled"`. Calibrated on the WM-811K development sample's median fail ratios of whole maps (none 0.15,
#: Scratch 0.09, Edge-Ring 0.14, Loc 0.14, Edge-Loc 0.15, Center 0.25, Donut 0.26, Random 0.48, Near-full 0.90).
#: Those ratios pool every grid size, and real classes sit on different grids (Scratch and Edge-Ring mostly on
#: large ones, whose background is lower), so with the die-count level (`background_area_exponent`) the grid
#: size counts twice: see BACKGROUND_FACTOR_MEASURED.
BACKGROUND_FACTOR: dict[str, float] = {
    NONE_LABEL: 1.3, "Scratch": 0.6, "Edge-Ring": 0.35, "Loc": 1.1, "Edge-Loc": 0.8, "Center": 1.3,
    "Donut": 1.1, "Random": 1.0, "Near-full": 1.0,
}

#: The same measured at a fixed grid size (`background_by_class="measured"`, not the default): on the WM-811K
#: development sample's "Training" half, the fail rate of dies 3 or more steps inside the edge and away from
#: the largest failing group, divided by the die-count level, median per class relative to defect-free maps:
#: Scratch 0.94, Loc 1.06, Edge-Loc 1.20, Edge-Ring 1.36, Center 1.18, Donut 1.70 (the pooled factors give
#: generated maps 0.57, 0.81, 0.77, 0.46, 1.14, 2.04 on the same measure). Each factor was scaled by real /
#: generated twice (clipping makes one pass fall short); Random and Near-full cover the wafer, so their
#: background cannot be measured and is kept. More realistic by this measure, yet the default's VLM did not
#: gain on real maps (macro-F1 +0.006 against a same-machine control, accuracy -0.06; docs/experiments.md,
#: 2026-12-02), so it stays an option.
BACKGROUND_FACTOR_MEASURED: dict[str, float] = {
    NONE_LABEL: 1.3, "Scratch": 1.1, "Edge-Ring": 1.5, "Loc": 1.45, "Edge-Loc": 1.3, "Center": 1.35,
    "Donut": 0.77, "Random": 1.0, "Near-full": 1.0,
}

BACKGROUND_BY_CLASS = {"pooled": BACKGROUND_FACTOR, "measured": BACKGROUND_FACTOR_MEASURED}


@dataclass(frozen=True)
class SynthConfig:
    """What shapes a synthetic data set; every field is a notebook parameter."""

    n_wafers: int = 2000
    lot_size_min: int = 10
    lot_size_max: int = 25
    class_mix: str = "balanced"  # "balanced" or "natural" (WM-811K's labelled proportions)
    mixed_fraction: float = 0.1  # share of maps carrying 2-4 overlaid patterns
    label_noise: float = 0.1  # share of maps whose given label is a realistic confusion
    lot_affinity: float = 0.5  # chance a wafer takes its lot's dominant pattern
    median_side: float = 33.0  # dies across; WM-811K's median
    background_clumping: float = 0.0  # largest log-scale of a clumped background (0: independent dies, the default)
    loc_area_dies: float = 24.0  # median area of a Loc blob in dies (lognormal, sigma 0.7); 0: a share of the wafer
    background_area_exponent: float = 1.0  # background rate scales as (dies on a 27 x 27 grid / dies)^this (0: one rate on every grid)
    edge_fail_extra: float = 0.11  # median extra fail chance of the outermost die ring (0: the old smooth r^6 rise)
    scratch_width_dies: float = 1.4  # median width of a scratch in dies (0: the old 1.7 to 2.4-die band)
    background_by_class: str = "pooled"  # class background factors: "pooled" over grid sizes | "measured" at one grid size
    seed: int = 0


def class_probabilities(mix: str) -> dict[str, float]:
    """Single-class probabilities for a class mix name."""
    names = list(PATTERNS) + [NONE_LABEL]
    if mix == "balanced":
        return {n: 1.0 / len(names) for n in names}
    if mix == "natural":
        total = sum(WM811K_COUNTS.values())
        return {n: WM811K_COUNTS[n] / total for n in names}
    raise ValueError(f"class_mix: expected 'balanced' or 'natural', got {mix!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _angle_diff(a: np.ndarray, b: float) -> np.ndarray:
    """Absolute angular difference in degrees, in [0, 180]."""
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


def _clock_deg(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(x, y)) % 360.0


def _draw_pattern(name: str, rng: np.random.Generator, lot: dict) -> dict:
    """Random geometry of one pattern, in normalised wafer coordinates and clock degrees.

    Sizes have a floor in dies (`lot["die"]` is one die in normalised units) so that a drawn pattern is
    visible on small grids too: an invisible pattern would be label noise that nobody injected.
    """
    die = lot["die"]
    g: dict = {"type": name, "density": float(rng.uniform(0.7, 0.97))}
    if name == "Center":
        g.update(cx=float(rng.normal(0, 0.05)), cy=float(rng.normal(0, 0.05)), radius=max(float(rng.uniform(0.15, 0.33)), 2.5 * die))
    elif name == "Donut":
        inner = float(rng.uniform(0.22, 0.42))
        g.update(cx=float(rng.normal(0, 0.03)), cy=float(rng.normal(0, 0.03)), r_inner=inner,
                 r_outer=inner + float(rng.uniform(0.13, 0.28)))
    elif name == "Edge-Ring":
        g.update(width=float(rng.uniform(1.0, 2.5)) * die)  # WM-811K edge rings are 1 to 2.5 dies wide
    elif name == "Edge-Loc":
        g.update(angle=float((lot["angle"] + rng.normal(0, 25)) % 360), span=float(rng.uniform(40, 120)),
                 depth=max(float(rng.uniform(0.15, 0.35)), 2.5 * die))
    elif name == "Loc":
        rad, ang = float(rng.uniform(0.15, 0.65)), float(rng.uniform(0, 360))
        if lot.get("loc_area_dies", 0.0) > 0:  # a blob's size in dies, as real ones: about the same on every grid
            area = float(np.clip(rng.lognormal(np.log(lot["loc_area_dies"]), 0.7), 8.0, 400.0))
            ratio = float(rng.uniform(0.55, 1.0))  # b / a
            a = min(float(np.sqrt(area / (np.pi * ratio))) * die, 0.45)
            b = max(a * ratio, 1.5 * die)
        else:
            a = max(float(rng.uniform(0.09, 0.2)), 2.0 * die)
            b = max(a * float(rng.uniform(0.55, 1.0)), 1.5 * die)
        g.update(cx=rad * np.sin(np.radians(ang)), cy=rad * np.cos(np.radians(ang)), a=a, b=b,
                 rotation=float(rng.uniform(0, 180)))
    elif name == "Scratch":
        g.update(_draw_scratch(rng, lot))
    elif name == "Random":
        g.update(density=float(rng.uniform(0.3, 0.6)))  # WM-811K Random maps: fail ratio 0.3 to 0.65
    elif name == "Near-full":
        g.update(density=float(rng.uniform(0.8, 0.97)))
    return g


def _draw_scratch(rng: np.random.Generator, lot: dict) -> dict:
    """A curved thin line: start point, heading (clock degrees), length and signed curvature.

    Redrawn (up to 20 times) until at least 80% of its length lies on the wafer.
    """
    length = max(float(rng.uniform(0.6, 1.5)), 10 * lot["die"])
    heading = float((lot["scratch_heading"] + rng.normal(0, 30)) % 360)
    curvature = float(rng.uniform(-1.2, 1.2))
    for _ in range(20):
        start_r, start_a = float(np.sqrt(rng.uniform(0.0, 0.5))), float(rng.uniform(0, 360))
        # Centre the chord on the drawn point so that most of the line stays on the wafer.
        x0 = start_r * np.sin(np.radians(start_a)) - 0.5 * length * np.sin(np.radians(heading))
        y0 = start_r * np.cos(np.radians(start_a)) - 0.5 * length * np.cos(np.radians(heading))
        g = {"x0": float(x0), "y0": float(y0), "heading": heading, "length": length, "curvature": curvature}
        on_wafer = float((np.hypot(*scratch_points(g).T) <= 0.97).mean())
        if on_wafer >= 0.8:
            break
    u = float(rng.uniform(0.7, 1.4))
    width = u / 1.05 * lot["scratch_width_dies"] if lot.get("scratch_width_dies", 0.0) > 0 else u + 1.0
    return g | {"width_dies": width, "on_wafer": on_wafer,
                "density": float(rng.uniform(0.75, 1.0))}


def scratch_points(g: dict, n: int = 96) -> np.ndarray:
    """Points (n, 2) along a scratch: an arc of constant curvature from (x0, y0) along `heading`."""
    s = np.linspace(0.0, g["length"], n)
    phi = np.radians(g["heading"]) + g["curvature"] * s  # heading in radians, clockwise from +y
    ds = np.diff(s, prepend=0.0)
    x = g["x0"] + np.cumsum(np.sin(phi) * ds)
    y = g["y0"] + np.cumsum(np.cos(phi) * ds)
    return np.stack([x, y], axis=1)


def pattern_field(g: dict, x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-die failure probability (H, W) contributed by one pattern."""
    name, dens = g["type"], g["density"]
    r = np.hypot(x, y)
    soft = 2.0 / max(height, width)  # about one die of soft edge
    if name == "Center":
        d = np.hypot(x - g["cx"], y - g["cy"])
        return dens * _sigmoid((g["radius"] - d) / soft)
    if name == "Donut":
        d = np.hypot(x - g["cx"], y - g["cy"])
        return dens * _sigmoid((d - g["r_inner"]) / soft) * _sigmoid((g["r_outer"] - d) / soft)
    if name == "Edge-Ring":
        return dens * _sigmoid((r - (1.0 - g["width"])) / soft)
    if name == "Edge-Loc":
        da = _angle_diff(_clock_deg(x, y), g["angle"])
        taper = np.clip(1.0 - (da / (g["span"] / 2.0)) ** 2, 0.0, 1.0)  # deepest at the centre angle
        return dens * _sigmoid((r - (1.0 - g["depth"] * np.sqrt(taper) - 1e-9)) / soft) * (taper > 0)
    if name == "Loc":
        t = np.radians(g["rotation"])
        u = (x - g["cx"]) * np.cos(t) + (y - g["cy"]) * np.sin(t)
        v = -(x - g["cx"]) * np.sin(t) + (y - g["cy"]) * np.cos(t)
        d = np.sqrt((u / g["a"]) ** 2 + (v / g["b"]) ** 2)
        return dens * _sigmoid((1.0 - d) * 2.0 * g["b"] / soft)  # plateau inside, half-die edge
    if name == "Scratch":
        pts = scratch_points(g)
        d = np.min(np.hypot(x[..., None] - pts[:, 0], y[..., None] - pts[:, 1]), axis=-1)
        half = g["width_dies"] * soft / 2.0  # dies whose centre is within half the width of the line
        return dens * (d <= half)
    if name in ("Random", "Near-full"):
        return np.full_like(r, dens)
    raise ValueError(f"unknown pattern type {name!r}")


def background_clumps(height: int, width: int, on_wafer: np.ndarray, scale: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Multiplier (H, W) of the background failure rate: exp(scale z - scale^2 / 2), z white noise smoothed over
    about one die and standardised on the wafer, so the rate's mean is kept and its failures come in clumps."""
    z = gaussian_filter(rng.standard_normal((height, width)), sigma=1.0, mode="nearest")
    z = (z - z[on_wafer].mean()) / max(float(z[on_wafer].std()), 1e-9)
    return np.exp(scale * z - scale**2 / 2)


def edge_distance(on_wafer: np.ndarray) -> np.ndarray:
    """Dies (chessboard steps) from each on-wafer die to the nearest off-wafer cell, minus one: 0 on the outermost ring."""
    return distance_transform_cdt(np.pad(on_wafer, 1), metric="chessboard")[1:-1, 1:-1] - 1


def render_map(height: int, width: int, patterns: list[dict], bg_rate: float, rng: np.random.Generator,
               clumping: float = 0.0, edge_extra: float = 0.0) -> np.ndarray:
    """Sample a wafer map (H, W) uint8 in {0, 1, 2} from a background rate and pattern geometries.

    Real background failures are spatially clumped (particles, local process spots): with `clumping` > 0 each
    map draws a scale s uniformly in [0, clumping] and the background rate varies as :func:`background_clumps`.
    With 0 every die fails independently (and no random number is drawn for it).

    Towards the edge: with `edge_extra` > 0 the background is flat inside and the outermost die ring fails
    with an extra chance drawn per map (log-normal about `edge_extra`), the ring inside it with 0.15 of that,
    as on real WM-811K maps (defect-free: outermost ring 2x the inside rate on 27-die grids, 4 to 6x on
    large ones, an extra of about 0.11 on every grid). With 0 the rate rises smoothly as 1 + 1.5 r^6."""
    x, y = die_coordinates(height, width)
    r = np.hypot(x, y)
    on_wafer = r <= 1.0
    rate = np.full((height, width), bg_rate)
    if clumping > 0:
        rate = rate * background_clumps(height, width, on_wafer, float(rng.uniform(0.0, clumping)), rng)
    if edge_extra > 0:
        extra = float(np.clip(rng.lognormal(np.log(edge_extra), 0.5), 0.0, 0.6))
        d = edge_distance(on_wafer)
        p_ok = np.clip(1.0 - rate, 0.0, 1.0) * (1.0 - extra * ((d == 0) + 0.15 * (d == 1)))
    else:
        p_ok = np.clip(1.0 - rate * (1.0 + 1.5 * r**6), 0.0, 1.0)  # background fails rise towards the edge
    for g in patterns:
        p_ok = p_ok * (1.0 - pattern_field(g, x, y, height, width))
    fails = rng.random((height, width)) >= p_ok
    out = np.full((height, width), NO_DIE, dtype=np.uint8)
    out[on_wafer] = PASS
    out[on_wafer & fails] = FAIL
    return out


def _draw_labels(rng: np.random.Generator, probs: dict[str, float], dominant: str, cfg: SynthConfig) -> list[str]:
    if rng.random() < cfg.mixed_fraction:
        k = int(rng.integers(2, 5))
        groups = rng.choice(len(MIX_GROUPS), size=k, replace=False)
        return [str(rng.choice(MIX_GROUPS[i])) for i in sorted(groups)]
    if rng.random() < cfg.lot_affinity:
        return [dominant]
    names = list(probs)
    return [str(rng.choice(names, p=np.array(list(probs.values()))))]


def _noisy_labels(labels: list[str], rng: np.random.Generator) -> list[str]:
    """A realistic wrong label set for `labels`: one member swapped for one of its confusions."""
    i = int(rng.integers(len(labels)))
    swapped = str(rng.choice(CONFUSIONS[labels[i]]))
    kept = [lab for j, lab in enumerate(labels) if j != i and lab != NONE_LABEL]
    # A confusion never maps a name to itself, so the key always changes.
    return (label_key(kept + ([swapped] if swapped != NONE_LABEL else [])) or NONE_LABEL).split("+")


def _new_lot(rng: np.random.Generator, probs: dict[str, float], cfg: SynthConfig) -> dict:
    side = float(np.clip(rng.lognormal(np.log(cfg.median_side), 0.3), 15, 90))
    aspect = float(np.clip(rng.lognormal(0.0, 0.08), 0.8, 1.25))
    names = list(probs)
    return {
        "height": int(round(side * np.sqrt(aspect))), "width": int(round(side / np.sqrt(aspect))),
        "bg": float(np.clip(rng.lognormal(np.log(0.08), 0.5), 0.01, 0.25)),
        "dominant": str(rng.choice(names, p=np.array(list(probs.values())))),
        "angle": float(rng.uniform(0, 360)), "scratch_heading": float(rng.uniform(0, 360)),
        "size": int(rng.integers(cfg.lot_size_min, cfg.lot_size_max + 1)),
    } | {"die": 2.0 / side, "loc_area_dies": cfg.loc_area_dies, "scratch_width_dies": cfg.scratch_width_dies}


def area_factor(height: int, width: int, exponent: float) -> float:
    """Background scale of a grid: (dies on a 27 x 27 grid, WM-811K's commonest / dies on this one) ** exponent.

    Smaller dies fail less often (Poisson yield: a die's fail chance grows with its area), so a wafer with
    more dies has a lower background: on real defect-free WM-811K maps the inside fail rate is about 0.135
    at 520 dies, 0.056 at 1,000, 0.028 at 1,800 and 0.018 at 3,200 (an exponent near 1.1)."""
    if exponent == 0:
        return 1.0
    dies = lambda h, w: int((np.hypot(*die_coordinates(h, w)) <= 1.0).sum())
    return float((dies(27, 27) / max(dies(height, width), 1)) ** exponent)


def generate(cfg: SynthConfig) -> pd.DataFrame:
    """Generate `cfg.n_wafers` labelled maps in the common table layout (see :mod:`.table`)."""
    rng = np.random.default_rng(cfg.seed)
    probs = class_probabilities(cfg.class_mix)
    if cfg.background_by_class not in BACKGROUND_BY_CLASS:
        raise ValueError(f"background_by_class: expected one of {sorted(BACKGROUND_BY_CLASS)}, got {cfg.background_by_class!r}")
    class_factor = BACKGROUND_BY_CLASS[cfg.background_by_class]
    rows, lot_no, lot = [], -1, None
    for i in range(cfg.n_wafers):
        if lot is None or lot["left"] == 0:
            lot_no += 1
            lot = _new_lot(rng, probs, cfg)
            lot["left"] = lot["size"]
            lot["area_factor"] = area_factor(lot["height"], lot["width"], cfg.background_area_exponent)
        lot["left"] -= 1
        labels = _draw_labels(rng, probs, lot["dominant"], cfg)
        geoms = [_draw_pattern(n, rng, lot) for n in labels if n != NONE_LABEL]
        factor = min(class_factor[n] for n in labels)
        bg = float(np.clip(lot["bg"] * lot["area_factor"] * factor * rng.lognormal(0.0, 0.35), 0.005, 0.35))
        wmap = render_map(lot["height"], lot["width"], geoms, bg, rng, cfg.background_clumping, cfg.edge_fail_extra)
        rows.append({
            "id": f"syn-{cfg.seed}-{i:06d}", "source": "synthetic", "lot": f"synlot{lot_no:05d}",
            "wafer_index": lot["size"] - lot["left"], "wafer_map": wmap,
            "height": lot["height"], "width": lot["width"],
            "labels": label_key(labels).split("+"), "labels_true": label_key(labels).split("+"),
            "geometry": json.dumps({"background_rate": bg, "patterns": geoms}),
        })
    n_noisy = int(round(cfg.label_noise * cfg.n_wafers))
    for j in rng.choice(cfg.n_wafers, size=n_noisy, replace=False):
        rows[j]["labels"] = _noisy_labels(rows[j]["labels_true"], rng)
    log.info("generated %d synthetic maps in %d lots (%d noisy labels)", cfg.n_wafers, lot_no + 1, n_noisy)
    return pd.DataFrame(rows)


def write_config(cfg: SynthConfig | None, path) -> None:
    """Record the settings a run's maps were drawn with (`data/generator.json`), or remove a stale record when the
    run's maps are real (None). Stage 05 draws the tiny base's extra seeing maps with the same settings."""
    from dataclasses import asdict
    from pathlib import Path
    path = Path(path)
    if cfg is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(cfg), indent=1))
    tmp.replace(path)


def derived_config(generator: dict | None, **own) -> SynthConfig:
    """A SynthConfig for maps drawn beside a run's own: the realism settings of the run's stage 01 (`generator`,
    its data/generator.json; None: the defaults) with `own` fields (n_wafers, seed, ...) set by the caller."""
    known = {f.name for f in fields(SynthConfig)}
    unknown = set(generator or {}) - known
    if unknown:
        raise ValueError(f"generator settings {sorted(unknown)}: not SynthConfig fields (expected some of {sorted(known)})")
    return SynthConfig(**{k: v for k, v in (generator or {}).items() if k not in own} | own)


def read_config(path) -> dict | None:
    """The settings :func:`write_config` recorded, or None where there are none (a run on real maps)."""
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        return None
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not the JSON stage 01 writes ({e}); rerun stage 01") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path}: expected an object of generator settings, got {type(out).__name__}; rerun stage 01")
    return out
