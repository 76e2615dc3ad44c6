"""Fast, vectorised descriptors of wafer maps.

Maps are grouped by shape; within a group every binned density (radial rings, clock sectors,
zone x quadrant, Radon-style line projections, a fixed-size downsampled map) is one matrix product
of the stacked fail and die indicators with a 0/1 bin matrix built once per shape. The geometry of the
failing regions comes from one connected-component labelling of the whole stack (in-plane
connectivity only) and bincount moments. :func:`features_reference` computes the same numbers one map
at a time, plainly; tests check that both agree and the benchmark compares their speed.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .conventions import FAIL, N_SECTORS, clock_sector, die_coordinates, polar, zone_index

log = logging.getLogger(__name__)

N_RINGS = 8  # radial rings of width 1/8
RADON_ANGLES = (0, 30, 60, 90, 120, 150)  # projection directions, degrees
RADON_BINS = 12  # bins of the signed distance t in [-1, 1]
GRID = 12  # downsampled map is GRID x GRID
MIN_REGION = 3  # dies; smaller failing regions are noise
N_CLUSTERED = N_RINGS + N_SECTORS + 12  # ring, sector and zone x quadrant densities of clustered fails
_STRUCT = np.ones((3, 3), dtype=bool)  # 8-connectivity

REGION_NAMES = ("n_regions", "main_area", "main_share", "main_r", "main_sin", "main_cos", "main_major",
                "main_minor", "main_elong", "main_radial_align", "main_r_std", "main_ang_conc", "filtered_ratio")


def _bin_blocks() -> list[tuple[str, int]]:
    return ([("ring", N_RINGS), ("sector", N_SECTORS), ("zonequad", 12)]
            + [(f"radon{a}", RADON_BINS) for a in RADON_ANGLES] + [("grid", GRID * GRID)])


def feature_names() -> list[str]:
    """Names of the columns returned by :func:`extract_features`, in order."""
    names = ["fail_ratio", "log_dies"]
    for block, n in _bin_blocks():
        names += [f"{block}_{i}" for i in range(n)]
    summary = ([f"radon{a}_{s}" for a in RADON_ANGLES for s in ("max", "std")] + ["radon_any_max", "radon_any_std"]
               + ["grid_max", "grid_top4", "grid_std"])
    names += summary
    # The same location-free view of the clustered fails only (background removed).
    names += [f"clustered_{b}_{i}" for b, n in _bin_blocks()[:3] for i in range(n)]
    names += [f"clustered_{x}" for x in summary]
    return names + list(REGION_NAMES)


def _bin_indices(height: int, width: int) -> list[np.ndarray]:
    """For each bin block, the bin index (H*W,) of every cell."""
    r, theta = polar(height, width)
    x, y = die_coordinates(height, width)
    quad = (x >= 0).astype(int) + 2 * (y < 0)  # 0 UL, 1 UR, 2 LL, 3 LR
    out = [np.minimum((r * N_RINGS).astype(int), N_RINGS - 1), clock_sector(theta), zone_index(r) * 4 + quad]
    for a in RADON_ANGLES:
        t = x * np.cos(np.radians(a)) + y * np.sin(np.radians(a))
        out.append(np.clip(((t + 1.0) / 2.0 * RADON_BINS).astype(int), 0, RADON_BINS - 1))
    rows = (np.arange(height)[:, None] * GRID // height).repeat(width, 1)
    cols = (np.arange(width)[None, :] * GRID // width).repeat(height, 0)
    out.append(rows * GRID + cols)
    return [b.ravel() for b in out]


@lru_cache(maxsize=512)
def _bin_matrix(height: int, width: int) -> np.ndarray:
    """0/1 matrix (H*W, n_bins) mapping each cell to its bin in every block."""
    offset, cols = 0, []
    for (_, n), idx in zip(_bin_blocks(), _bin_indices(height, width)):
        cols.append(idx + offset)
        offset += n
    mat = np.zeros((height * width, offset), dtype=np.float32)
    for c in cols:
        mat[np.arange(height * width), c] = 1.0
    return mat


def _summaries(dens: np.ndarray, dcount: np.ndarray) -> np.ndarray:
    """Location-free summaries of the binned densities (N, n_bins) and die counts per bin.

    Max and std of each Radon projection and their largest over directions; for the downsampled grid (cells with at least 2 dies), the
    max, the mean of the top 4 and the std of the cell densities: a local cluster anywhere shows up.
    """
    start = N_RINGS + N_SECTORS + 12
    out = []
    for k in range(len(RADON_ANGLES)):
        proj = dens[:, start + k * RADON_BINS: start + (k + 1) * RADON_BINS]
        out += [proj.max(axis=1), proj.std(axis=1)]
    out += [np.max(out[0::2], axis=0), np.max(out[1::2], axis=0)]  # strongest line in any direction
    g0 = start + len(RADON_ANGLES) * RADON_BINS
    grid = np.where(dcount[:, g0: g0 + GRID * GRID] >= 2, dens[:, g0: g0 + GRID * GRID], 0.0)
    top = np.sort(grid, axis=1)[:, -4:]
    out += [top[:, -1], top.mean(axis=1), grid.std(axis=1)]
    return np.stack(out, axis=1)


def neighbour_threshold(fail_ratio: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Failing 8-neighbours a fail needs to count as clustered, per map: the smallest k >= 2 that random
    background at the map's own fail ratio reaches with probability below alpha (binomial tail)."""
    from scipy.stats import binom
    p = np.clip(np.asarray(fail_ratio, dtype=np.float64), 0.0, 1.0)
    ks = np.arange(2, 9)
    tail = binom.sf(ks[None, :] - 1, 8, p[:, None])  # P(X >= k), (N, 7)
    ok = tail < alpha
    return np.where(ok.any(1), ks[np.argmax(ok, axis=1)], 9)


def _neighbour_count(mask: np.ndarray) -> np.ndarray:
    """Number of set 8-neighbours of every cell of a stack (N, H, W), as uint8."""
    n, h, w = mask.shape
    pad = np.zeros((n, h + 2, w + 2), dtype=np.uint8)
    pad[:, 1:-1, 1:-1] = mask
    nb = np.zeros((n, h, w), dtype=np.uint8)
    for dr in range(3):
        for dc in range(3):
            if dr != 1 or dc != 1:
                nb += pad[:, dr: dr + h, dc: dc + w]
    return nb


def filtered_fails(fails: np.ndarray, fail_ratio: np.ndarray, grow_steps: int = 3) -> np.ndarray:
    """Clustered fails of a stack (N, H, W), by hysteresis: seeds have enough failing neighbours to be
    unlikely as background at the map's fail ratio; fails with two failing neighbours that touch a seed
    join it (a few steps), so thin scratches survive on a noisy background."""
    nb = _neighbour_count(fails)
    seeds = fails & (nb >= neighbour_threshold(fail_ratio)[:, None, None])
    weak = fails & (nb >= 2)
    for _ in range(grow_steps):
        seeds = seeds | (weak & (_neighbour_count(seeds) > 0))
    return seeds


def _region_features(filt: np.ndarray, n_dies: np.ndarray) -> np.ndarray:
    """Geometry of the failing regions of each map of a same-shape stack (N, H, W) -> (N, 13)."""
    n, h, w = filt.shape
    lab, nlab = ndimage.label(filt, structure=np.stack([np.zeros_like(_STRUCT), _STRUCT, np.zeros_like(_STRUCT)]))
    out = np.zeros((n, len(REGION_NAMES)), dtype=np.float64)
    out[:, -1] = filt.reshape(n, -1).sum(1) / n_dies
    if nlab == 0:
        return out
    x, y = die_coordinates(h, w)
    r, theta = polar(h, w)
    flat = lab.reshape(n, -1)
    which, cell = np.nonzero(flat)
    labels = flat[which, cell]
    owner = np.zeros(nlab + 1, dtype=np.int64)
    owner[labels] = which

    def s(v):
        return np.bincount(labels, weights=v.ravel()[cell], minlength=nlab + 1)

    cnt = np.bincount(labels, minlength=nlab + 1).astype(np.float64)
    sx, sy, sxx, syy, sxy = s(x), s(y), s(x * x), s(y * y), s(x * y)
    sr, srr = s(r), s(r * r)
    sc, ss = s(np.cos(np.radians(theta))), s(np.sin(np.radians(theta)))
    big = (cnt >= MIN_REGION) & (np.arange(nlab + 1) > 0)
    n_regions = np.bincount(owner[big], minlength=n)
    fails_filtered = filt.reshape(n, -1).sum(1)
    # Main region per map: largest count; ties broken by lowest label.
    order = np.lexsort((np.arange(nlab + 1), -cnt, owner))
    order = order[order > 0]
    first = np.unique(owner[order], return_index=True)
    maps, main = first[0], order[first[1]]
    c = cnt[main]
    mx, my = sx[main] / c, sy[main] / c
    vxx, vyy, vxy = sxx[main] / c - mx**2, syy[main] / c - my**2, sxy[main] / c - mx * my
    tr, det = vxx + vyy, vxx * vyy - vxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0.0))
    lam1, lam2 = np.maximum(tr / 2 + disc, 0.0), np.maximum(tr / 2 - disc, 0.0)
    cr = np.hypot(mx, my)
    ux, uy = np.where(cr > 1e-6, mx / np.maximum(cr, 1e-12), 0.0), np.where(cr > 1e-6, my / np.maximum(cr, 1e-12), 0.0)
    out[maps, 0] = n_regions[maps]
    out[maps, 1] = c / n_dies[maps]
    out[maps, 2] = c / np.maximum(fails_filtered[maps], 1)
    out[maps, 3] = cr
    out[maps, 4], out[maps, 5] = ux, uy  # sin and cos of the centroid's clock angle
    out[maps, 6] = 4 * np.sqrt(lam1)
    out[maps, 7] = 4 * np.sqrt(lam2)
    out[maps, 8] = 1.0 - np.sqrt(lam2 / np.maximum(lam1, 1e-12))
    out[maps, 9] = radial_alignment(vxx, vyy, vxy, ux, uy)
    out[maps, 10] = np.sqrt(np.maximum(srr[main] / c - (sr[main] / c) ** 2, 0.0))
    out[maps, 11] = np.hypot(sc[main], ss[main]) / c
    return out


def radial_alignment(vxx, vyy, vxy, ux, uy):
    """(var along the radius - var across it) / total: +1 a radial line, -1 an arc, 0 isotropic."""
    var_rad = vxx * ux**2 + 2 * vxy * ux * uy + vyy * uy**2
    var_tan = vxx * uy**2 - 2 * vxy * ux * uy + vyy * ux**2
    return np.where(var_rad + var_tan > 1e-12, (var_rad - var_tan) / np.maximum(var_rad + var_tan, 1e-12), 0.0)


def _features_stack(maps: np.ndarray) -> np.ndarray:
    """Features (N, F) of a stack of same-shape maps (N, H, W)."""
    n, h, w = maps.shape
    fails = maps == FAIL
    dies = maps > 0
    mat = _bin_matrix(h, w)
    fcount = fails.reshape(n, -1).astype(np.float32) @ mat
    dcount = dies.reshape(n, -1).astype(np.float32) @ mat
    dens = fcount / np.maximum(dcount, 1.0)
    n_dies = dies.reshape(n, -1).sum(1).astype(np.float64)
    head = np.stack([fails.reshape(n, -1).sum(1) / np.maximum(n_dies, 1), np.log(np.maximum(n_dies, 1))], 1)
    filt = filtered_fails(fails, head[:, 0])
    dens_c = (filt.reshape(n, -1).astype(np.float32) @ mat) / np.maximum(dcount, 1.0)
    region = _region_features(filt, np.maximum(n_dies, 1))
    return np.hstack([head, dens, _summaries(dens, dcount), dens_c[:, :N_CLUSTERED], _summaries(dens_c, dcount),
                      region]).astype(np.float32)


def extract_features(maps, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
    """Feature matrix (N, F) for a sequence of 2-D maps of any shapes; row order follows the input."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, m in enumerate(maps):
        groups[m.shape].append(i)
    out = np.zeros((len(maps), len(feature_names())), dtype=np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(maps), desc="features", unit="map")
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            out[chunk] = _features_stack(np.stack([maps[i] for i in chunk]))
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def features_reference(m: np.ndarray) -> np.ndarray:
    """The same features for one map, computed plainly (the straightforward per-map baseline)."""
    h, w = m.shape
    fails, dies = (m == FAIL).ravel(), (m > 0).ravel()
    n_dies = max(dies.sum(), 1)
    dens, dens_c, dcount = [], [], []
    head = [fails.sum() / n_dies, np.log(n_dies)]
    filt = filtered_fails((m == FAIL)[None], np.array([head[0]]))[0]
    for (_, nb), idx in zip(_bin_blocks(), _bin_indices(h, w)):
        dc = np.bincount(idx, weights=dies, minlength=nb)
        dens.append(np.bincount(idx, weights=fails, minlength=nb) / np.maximum(dc, 1.0))
        dens_c.append(np.bincount(idx, weights=filt.ravel(), minlength=nb) / np.maximum(dc, 1.0))
        dcount.append(dc)
    dens, dens_c, dcount = (np.concatenate(x)[None, :] for x in (dens, dens_c, dcount))
    region = _region_reference(filt, n_dies)
    return np.concatenate([head, dens[0], _summaries(dens, dcount)[0], dens_c[0, :N_CLUSTERED],
                           _summaries(dens_c, dcount)[0], region]).astype(np.float32)


def _region_reference(filt: np.ndarray, n_dies: int) -> np.ndarray:
    out = np.zeros(len(REGION_NAMES))
    out[-1] = filt.sum() / n_dies
    lab, nlab = ndimage.label(filt, structure=_STRUCT)
    if nlab == 0:
        return out
    x, y = die_coordinates(*filt.shape)
    r, theta = polar(*filt.shape)
    sizes = [(lab == k).sum() for k in range(1, nlab + 1)]
    k = int(np.argmax(sizes)) + 1
    sel = lab == k
    px, py = x[sel], y[sel]
    cov = np.cov(np.stack([px, py]), bias=True)
    lam2, lam1 = np.clip(np.linalg.eigvalsh(cov), 0, None)
    cx, cy = px.mean(), py.mean()
    cr = np.hypot(cx, cy)
    ux, uy = (cx / cr, cy / cr) if cr > 1e-6 else (0.0, 0.0)
    ang = np.radians(theta[sel])
    out[:-1] = [sum(s >= MIN_REGION for s in sizes), sel.sum() / n_dies, sel.sum() / max(filt.sum(), 1), cr,
                ux, uy, 4 * np.sqrt(lam1), 4 * np.sqrt(lam2),
                1 - np.sqrt(lam2 / max(lam1, 1e-12)),
                float(radial_alignment(cov[0, 0], cov[1, 1], cov[0, 1], ux, uy)),
                r[sel].std(), np.hypot(np.cos(ang).mean(), np.sin(ang).mean())]
    return out
