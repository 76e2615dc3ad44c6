"""The common table and every loader: real files when present, small fixtures built here, bad input."""
import lzma
import os
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.conftest import real_file
from wafersage_utils.maps import loaders, table


def _wm811k_frame(n=4):
    rng = np.random.default_rng(0)
    maps = [np.where(rng.random((20, 22)) < 0.1, 2, 1).astype(np.uint8) for _ in range(n)]
    for m in maps:
        m[0, :3] = 0
    return pd.DataFrame({
        "waferMap": maps, "dieSize": [400.0] * n, "lotName": [f"lot{i // 2}" for i in range(n)],
        "waferIndex": [float(i + 1) for i in range(n)],
        "trianTestLabel": [np.array([["Training"]])] * (n - 1) + [np.array([])],
        "failureType": [np.array([["Center"]]), np.array([["Edge-Ring"]]), np.array([["none"]])][: n - 1] + [np.array([])],
    })


def test_table_roundtrip_keeps_maps_and_labels(tmp_path, small_synth):
    path = table.write_table(small_synth.head(20), tmp_path / "maps.parquet")
    back = table.read_table(path)
    assert list(back.id) == list(small_synth.id[:20])
    assert all(np.array_equal(a, b) for a, b in zip(back.wafer_map, small_synth.wafer_map[:20]))
    assert back.labels.tolist() == small_synth.labels[:20].tolist()


def test_failed_write_leaves_the_previous_file_intact(tmp_path, small_synth):
    path = table.write_table(small_synth.head(5), tmp_path / "maps.parquet")
    before = path.read_bytes()
    bad = small_synth.head(5).copy()
    bad["geometry"] = [object()] * 5  # not serialisable
    with pytest.raises(pa.ArrowException):
        table.write_table(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["maps.parquet"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns=["lot"]), r"missing column\(s\) \['lot'\]"),
    (lambda d: d.assign(wafer_map=[np.full((3, 3), 5, np.uint8)] + list(d.wafer_map[1:])), r"row 0 .*value 5"),
    (lambda d: d.assign(wafer_map=[np.zeros((0, 4), np.uint8)] + list(d.wafer_map[1:])), r"row 0 .*empty"),
    (lambda d: d.assign(wafer_map=[np.ones(9, np.uint8)] + list(d.wafer_map[1:])), r"row 0 .*2-D"),
    (lambda d: d.assign(labels=[["Ring"]] + list(d.labels[1:])), r"row 0 .*unknown label.*'Ring'"),
])
def test_bad_rows_are_named(small_synth, mutate, message):
    with pytest.raises(ValueError, match=message):
        table.validate_maps(mutate(small_synth.head(3).copy()), "maps.parquet")


def test_wm811k_fixture_plain_and_compressed(tmp_path):
    df = _wm811k_frame()
    plain = tmp_path / "LSWMD.pkl"
    df.to_pickle(plain)
    xz = tmp_path / "LSWMD.pkl.xz"
    with lzma.open(xz, "wb") as fh:
        pickle.dump(df, fh)
    for path in (plain, xz):
        got = loaders.load_wm811k(path)
        assert len(got) == 3 and got.labels.tolist() == [["Center"], ["Edge-Ring"], ["none"]]
        assert got.lot.tolist() == ["lot0", "lot0", "lot1"] and got.wafer_index.tolist() == [1, 2, 3]
    assert len(loaders.load_wm811k(plain, keep_unlabelled=True)) == 4


def test_wm811k_bad_label_and_truncated_file_are_named(tmp_path):
    df = _wm811k_frame()
    df.loc[1, "failureType"] = np.array([["Ring"]])
    path = tmp_path / "bad.pkl"
    df.to_pickle(path)
    with pytest.raises(ValueError, match=r"bad.pkl, row 1 .*unknown failureType 'Ring'"):
        loaders.load_wm811k(path)
    good = tmp_path / "good.pkl"
    _wm811k_frame().to_pickle(good)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pkl: truncated or corrupt"):
        loaders.load_wm811k(cut)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/wafersage_pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(loaders.UnsafePickleError, match=r"evil.pkl: refused to unpickle global (posix|os)\.system"):
        loaders.load_wm811k(path)
    assert not os.path.exists("/tmp/wafersage_pwned")


def test_old_pandas_module_paths_are_aliased():
    up = loaders.RestrictedUnpickler(__import__("io").BytesIO(b""), "old.pkl")
    assert up.find_class("pandas.indexes.base", "_new_Index") is pd.core.indexes.base._new_Index
    assert up.find_class("pandas.core.internals", "BlockManager").__name__ == "BlockManager"
    assert up.find_class("pandas.indexes.numeric", "Int64Index") is pd.Index


def test_mixedwm38_fixture_value3_and_errors(tmp_path):
    maps = np.ones((3, 8, 8), np.uint8)
    maps[0, 2, 2] = 3
    hot = np.zeros((3, 8), np.int64)
    hot[1, [0, 6]] = 1
    path = tmp_path / "mixed.npz"
    np.savez(path, arr_0=maps, arr_1=hot)
    got = loaders.load_mixedwm38(path)
    assert got.labels.tolist() == [["none"], ["Center", "Scratch"], ["none"]]
    assert got.wafer_map[0][2, 2] == 2
    assert loaders.load_mixedwm38(path, value3="pass").wafer_map[0][2, 2] == 1
    with pytest.raises(ValueError, match=r"mixed.npz, row 0: .*value 3"):
        loaders.load_mixedwm38(path, value3="error")
    np.savez(tmp_path / "nolabels.npz", arr_0=maps)
    with pytest.raises(ValueError, match="missing array 'arr_1'"):
        loaders.load_mixedwm38(tmp_path / "nolabels.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.npz: truncated"):
        loaders.load_mixedwm38(tmp_path / "cut.npz")


def test_real_wm811k_sample_loads():
    got = loaders.load_wm811k(real_file("wm811k").parent / "LSWMD_sample.pkl")
    assert len(got) == 200 and got.labels.map(tuple).value_counts()[("Edge-Ring",)] == 69
    assert got.id.str.startswith("wm811k-").all()


def test_real_wm811k_dev_set_loads():
    got = loaders.load_wm811k(real_file("wm811k"), max_maps=3000)
    assert len(got) == 3000 and set(np.unique(np.concatenate([np.unique(m) for m in got.wafer_map]))) <= {0, 1, 2}
    assert (got.lot == "").all()  # the dev subset dropped lot names


def test_real_mixedwm38_loads():
    got = loaders.load_mixedwm38(real_file("mixedwm38"))
    assert len(got) == 5703 and got.labels.map(lambda x: "+".join(x)).nunique() == 38
