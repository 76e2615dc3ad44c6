import numpy as np
import pytest

from wafersage_utils.maps.conventions import check_labels, clock_hour, clock_sector, label_key, polar, zone_index


def test_clock_positions_follow_a_watch_face():
    r, theta = polar(21, 21)
    assert clock_sector(theta[0, 10]) == 0  # top row, middle: 12 o'clock
    assert clock_sector(theta[10, 20]) == 3  # right edge: 3 o'clock
    assert clock_sector(theta[20, 10]) == 6  # bottom: 6 o'clock
    assert clock_sector(theta[10, 0]) == 9  # left: 9 o'clock
    assert clock_hour(0.0) == 12 and clock_hour(61.0) == 2 and clock_hour(239.0) == 8


def test_radius_is_one_at_the_edge_and_zones_use_documented_radii():
    r, _ = polar(41, 41)
    assert r[20, 20] == pytest.approx(0.0, abs=1e-9)
    assert r[20, 40] == pytest.approx(20 / 20.5)  # last cell centre, half a die inside the edge
    assert r[0, 20] == pytest.approx(20 / 20.5)
    assert list(zone_index(np.array([0.1, 0.34, 0.35, 0.74, 0.75, 0.99]))) == [0, 0, 1, 1, 2, 2]


def test_label_keys_are_canonical_and_unknown_names_are_refused():
    assert label_key(["Scratch", "Center"]) == "Center+Scratch"
    assert label_key(["none"]) == "none" and label_key([]) == ""
    with pytest.raises(ValueError, match="row 3.*'Ring'"):
        check_labels(["Ring"], "file.pkl, row 3")
