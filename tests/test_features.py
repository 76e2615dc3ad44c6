"""Vectorised features equal the plain per-map computation, and describe geometry sensibly."""
import numpy as np

from wafersage_utils.maps import features
from wafersage_utils.maps.conventions import FAIL, NO_DIE, PASS, die_coordinates


def _names():
    return np.array(features.feature_names())


def test_vectorised_equals_per_map_reference_on_mixed_shapes(small_synth):
    maps = list(small_synth.wafer_map[:150]) + [np.full((5, 7), PASS, np.uint8)]
    fast = features.extract_features(maps, batch_size=16)
    slow = np.stack([features.features_reference(m) for m in maps])
    assert fast.shape == (len(maps), len(_names()))
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_row_order_follows_input_across_shape_groups(small_synth):
    maps = list(small_synth.wafer_map[:40])
    fast = features.extract_features(maps[::-1])
    np.testing.assert_allclose(fast[::-1], features.extract_features(maps), atol=0)


def _disc(n=40):
    x, y = die_coordinates(n, n)
    m = np.where(np.hypot(x, y) <= 1, PASS, NO_DIE).astype(np.uint8)
    return m, np.hypot(x, y), x, y


def test_ring_arc_and_radial_line_are_told_apart():
    names = list(_names())
    ring, r, x, y = _disc()
    ring[(r > 0.85) & (r <= 1)] = FAIL
    line, r, x, y = _disc()
    line[(np.abs(x) < 0.04) & (y > 0.1) & (r <= 1)] = FAIL  # radial line from centre to 12 o'clock
    arc, r, x, y = _disc()
    arc[(r > 0.55) & (r < 0.65) & (y > 0.3)] = FAIL  # tangential arc
    f = features.extract_features([ring, line, arc])
    conc, align = names.index("main_ang_conc"), names.index("main_radial_align")
    assert f[0, conc] < 0.1 < f[1, conc]  # a full ring has no preferred direction
    assert f[1, align] > 0.8 and f[2, align] < -0.5
    assert f[1, names.index("main_cos")] > 0.99  # centroid at 12 o'clock: cos of clock angle is 1
    assert f[0, names.index("ring_7")] > 0.9 and f[0, names.index("ring_5")] == 0


def test_isolated_background_fails_are_not_regions():
    m, r, x, y = _disc()
    rng = np.random.default_rng(0)
    m[(r <= 1) & (rng.random(m.shape) < 0.01)] = FAIL
    f = features.extract_features([m])[0]
    names = list(_names())
    assert f[names.index("fail_ratio")] > 0 and f[names.index("n_regions")] == 0


def test_empty_input_and_progress_bar_give_the_same_result(small_synth):
    assert features.extract_features([]).shape == (0, len(_names()))
    maps = list(small_synth.wafer_map[:20])
    np.testing.assert_array_equal(features.extract_features(maps, progress=True), features.extract_features(maps))


def test_neighbour_threshold_rises_with_background():
    k = features.neighbour_threshold(np.array([0.0, 0.05, 0.15, 0.3, 0.9]))
    assert k[0] == 2 and list(k) == sorted(k) and k[3] >= 4 and k[-1] == 9  # 9: nothing counts as clustered


def test_thin_scratch_survives_a_noisy_background():
    m, r, x, y = _disc()
    rng = np.random.default_rng(1)
    m[(r <= 1) & (rng.random(m.shape) < 0.12)] = FAIL
    line = (np.abs(x - y) < 0.03) & (r < 0.8)  # one-die diagonal line
    m[line] = FAIL
    filt = features.filtered_fails((m == FAIL)[None], np.array([(m == FAIL).sum() / (m > 0).sum()]))[0]
    assert filt[line].mean() > 0.8 and filt[~line & (m == FAIL)].mean() < 0.25
