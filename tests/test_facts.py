"""Measured facts agree with the generator's geometry; rendering is deterministic and exact."""
import numpy as np
import pytest
from PIL import Image

from tests.test_synth import _one
from wafersage_utils.maps import facts, render, synth
from wafersage_utils.maps.conventions import PALETTE


def test_scratch_from_2_to_8_oclock_is_reported_there():
    x0, y0 = 0.8 * np.sin(np.radians(60)), 0.8 * np.cos(np.radians(60))
    m, _ = _one("Scratch", x0=x0, y0=y0, heading=240.0, length=1.6, curvature=0.0, width_dies=1.0, density=1.0)
    main = facts.measure(m)["regions"][0]
    assert main["shape"] == "line" and (main["from_clock"], main["to_clock"]) == (2, 8)
    assert main["length_dies"] > 25 and main["width_dies"] <= 3


def test_edge_ring_covers_all_edge_sectors():
    m, _ = _one("Edge-Ring", width=0.1, density=0.95)
    f = facts.measure(m)
    assert f["zones_with_failures"] == ["edge"]
    assert f["clock_sectors_by_zone"]["edge"] == list(range(1, 13)) or sorted(f["clock_sectors_by_zone"]["edge"]) == list(range(1, 13))
    assert f["ring_zones"] == ["edge"]


def test_center_blob_is_a_blob_in_the_center_zone():
    m, _ = _one("Center", cx=0.0, cy=0.0, radius=0.22, density=1.0)
    f = facts.measure(m)
    assert f["zones_with_failures"] == ["center"]
    assert f["regions"][0]["shape"] == "blob" and f["regions"][0]["zone"] == "center"


def test_donut_is_a_ring_at_mid_radius_with_a_clear_center():
    m, _ = _one("Donut", cx=0.0, cy=0.0, r_inner=0.4, r_outer=0.6, density=0.95)
    f = facts.measure(m)
    assert f["regions"][0]["shape"] == "ring" and f["regions"][0]["zone"] == "mid-radius"
    assert "center" not in f["zones_with_failures"]


def test_edge_loc_is_local_to_its_clock_position():
    m, _ = _one("Edge-Loc", angle=90.0, span=60.0, depth=0.3, density=1.0)
    f = facts.measure(m)
    assert f["zones_with_failures"] == ["edge"] and f["regions"][0]["clock"] == 3
    assert set(f["clock_sectors"]) <= {2, 3, 4} and f["quadrant_share"]["upper-left"] == 0


def test_random_and_none_maps():
    df = synth.generate(synth.SynthConfig(n_wafers=400, seed=11, mixed_fraction=0.0, label_noise=0.0))
    got = {}
    for m, labels in zip(df.wafer_map, df.labels_true):
        got.setdefault(labels[0], []).append(facts.measure(m))
    assert np.mean([f["scattered"] for f in got["Random"]]) > 0.7
    assert np.mean([not f["regions"] for f in got["none"]]) > 0.7
    assert np.mean([f["near_full"] for f in got["Near-full"]]) > 0.9


@pytest.mark.parametrize("size", [32, 64, 448])
def test_rendering_is_exact_nearest_neighbour_and_deterministic(tmp_path, size):
    m, _ = _one("Scratch", density=1.0)
    rgb = render.render_array(m, size)
    assert rgb.shape == (size, size, 3)
    assert {tuple(c) for c in rgb.reshape(-1, 3)} <= set(PALETTE)
    h, w = m.shape
    for i, j in [(0, 0), (size - 1, size - 1), (size // 2, size // 3)]:
        assert tuple(rgb[i, j]) == PALETTE[m[i * h // size, j * w // size]]
    a = render.render_cached([m], size, tmp_path)[0]
    b = render.render_cached([m], size, tmp_path / "again")[0]
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert np.array_equal(np.asarray(Image.open(a).convert("RGB")), rgb)  # lossless


def test_render_cache_reuses_files(tmp_path):
    m, _ = _one("Center", density=1.0)
    p = render.render_cached([m], 64, tmp_path)[0]
    stamp = p.stat().st_mtime_ns
    assert render.render_cached([m], 64, tmp_path)[0].stat().st_mtime_ns == stamp
    assert render.render_cached([m], 128, tmp_path)[0] != p


def test_near_full_fails_everywhere_without_regions():
    m, _ = _one("Near-full", density=0.95)
    f = facts.measure(m)
    assert f["near_full"] and f["zones_with_failures"] == ["center", "mid-radius", "edge"]
    assert f["regions"] == [] and f["ring_zones"] == []


def test_thick_annulus_is_a_ring_and_a_large_centred_blob_is_not():
    m, _ = _one("Donut", cx=0.0, cy=0.0, r_inner=0.32, r_outer=0.9, density=0.95)
    assert facts.measure(m)["regions"][0]["shape"] == "ring"
    m, _ = _one("Center", cx=0.0, cy=0.0, radius=0.6, density=0.95)
    assert facts.measure(m)["regions"][0]["shape"] == "blob"
