"""Hostile and broken data files (issue 29): each is refused with an error naming the file, the row or key
and what was expected; none crashes the process or is silently turned into valid die codes."""
import bz2
import gzip
import lzma
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.test_table_loaders import _wm811k_frame
from wafersage_utils.maps import loaders


def test_crafted_arrow_pickle_is_refused_without_crashing(tmp_path):
    # A 1.3 kB pickle of an Arrow string array whose offsets point a gigabyte past its data: the unpickler
    # admits pyarrow's _restore_array for modern re-saves, and reading the array then crashed the process.
    # Run in a child so that a regression fails this test instead of killing the suite.
    path = tmp_path / "evil_arrow.pkl"
    script = textwrap.dedent(f"""
        import pickle, sys, numpy as np, pyarrow as pa, pyarrow.lib as pl
        class Evil:
            def __reduce__(self):
                offs = pa.py_buffer(np.array([0, 1 << 30, 2, 3], dtype=np.int32).tobytes())
                return (pl._restore_array, ((pa.string(), 3, 0, 0, [None, offs, pa.py_buffer(b"abc")], [], None),))
        open({str(path)!r}, "wb").write(pickle.dumps(Evil()))
        from wafersage_utils.maps import loaders
        try:
            x = loaders.load_wm811k({str(path)!r})
        except (ValueError, pickle.UnpicklingError) as exc:
            print("REFUSED", exc)
            sys.exit(0)
        print("LOADED", type(x))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.startswith("REFUSED") and "evil_arrow.pkl" in out.stdout and "Arrow" in out.stdout


def test_arrow_stand_in_admits_only_string_arrays():
    import pyarrow as pa
    good = pa.array(["lot1", None, "lot22"])
    fn, (data,) = good.__reduce__()
    assert loaders._checked_restore_array(data).to_pylist() == ["lot1", None, "lot22"]
    ints = pa.array([1, 2, 3])
    with pytest.raises(loaders.UnsafePickleError, match="only string arrays"):
        loaders._checked_restore_array(ints.__reduce__()[1][0])
    typ, n, nulls, off, bufs, children, dic = data
    with pytest.raises(loaders.UnsafePickleError, match="length"):
        loaders._checked_restore_array((typ, -1, nulls, off, bufs, children, dic))
    with pytest.raises(loaders.UnsafePickleError, match="inconsistent"):
        loaders._checked_restore_array((typ, n + 5, nulls, off, bufs, children, dic))


def test_the_public_modern_resave_still_loads(tmp_path):
    # A pandas 3 re-save pickles its string column as an Arrow array: the checked stand-in must admit it.
    df = _wm811k_frame()
    df["lotName"] = df["lotName"].astype("str")
    path = tmp_path / "resave.pkl"
    df.to_pickle(path)
    assert b"_restore_array" in path.read_bytes()  # the checked stand-in is what this load goes through
    assert loaders.load_wm811k(path).lot.tolist() == ["lot0", "lot0", "lot1"]


@pytest.mark.parametrize("opener", [lzma.open, gzip.open, bz2.open], ids=["xz", "gz", "bz2"])
def test_bit_flipped_compressed_pickles_are_named(tmp_path, opener):
    good = tmp_path / "good.pkl.z"
    with opener(good, "wb") as fh:
        pickle.dump(_wm811k_frame(), fh)
    raw = bytearray(good.read_bytes())
    for k, pos in enumerate(range(20, len(raw) - 8, max(1, (len(raw) - 28) // 12))):
        flipped = raw.copy()
        flipped[pos] ^= 0x5A
        bad = tmp_path / f"flip{k}.pkl.z"
        bad.write_bytes(bytes(flipped))
        try:
            loaders.load_wm811k(bad)  # a flip the format cannot detect may still load valid maps
        except (ValueError, pickle.UnpicklingError) as exc:
            assert f"flip{k}.pkl.z" in str(exc)


@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (1.5, "1.5"), (np.inf, "inf"), (2.9, "2.9"), (-1.0, "-1.0")])
def test_wm811k_map_values_are_checked_before_the_cast(tmp_path, value, shown):
    df = _wm811k_frame()
    m = df.loc[1, "waferMap"].astype(float)
    m[3, 3] = value
    df.at[1, "waferMap"] = m
    path = tmp_path / "vals.pkl"
    df.to_pickle(path)
    with pytest.raises(ValueError, match=rf"vals.pkl, row 1 .*holds value {shown}\b.*expected 0 \(no die\)"):
        loaders.load_wm811k(path)


def test_wm811k_bad_fields_are_named(tmp_path):
    df = _wm811k_frame()
    df["waferIndex"] = df["waferIndex"].astype(object)
    df.at[2, "waferIndex"] = "seven"
    path = tmp_path / "idx.pkl"
    df.to_pickle(path)
    with pytest.raises(ValueError, match=r"idx.pkl, row 2 .*waferIndex must be a whole number, got 'seven'"):
        loaders.load_wm811k(path)
    df = _wm811k_frame()
    df.at[0, "failureType"] = np.array([[3.0]])
    df.to_pickle(path)
    with pytest.raises(ValueError, match=r"idx.pkl, row 0 .*failureType holds a float"):
        loaders.load_wm811k(path)


def _mixed(tmp_path, maps, hot, name="m.npz"):
    path = tmp_path / name
    np.savez(path, arr_0=maps, arr_1=hot)
    return path


@pytest.mark.parametrize("value, shown", [(256, "256"), (258, "258"), (-254, "-254"), (np.nan, "nan"),
                                          (np.inf, "inf"), (1.5, "1.5"), (2.9, "2.9")])
def test_mixedwm38_map_values_are_not_cast_into_die_codes(tmp_path, value, shown):
    # uint8 casting used to turn 256 into 0, 258 into 2, -254 into 2 and 2.9 into 2, silently.
    maps = np.ones((3, 8, 8), np.float64 if isinstance(value, float) else np.int32)
    maps[2, 4, 4] = value
    path = _mixed(tmp_path, maps, np.zeros((3, 8), np.int64))
    with pytest.raises(ValueError, match=rf"m.npz, row 2: wafer_map holds value {shown}\b"):
        loaders.load_mixedwm38(path)


@pytest.mark.parametrize("value", [np.nan, -1, 2, 0.5])
def test_mixedwm38_labels_must_be_zero_or_one(tmp_path, value):
    hot = np.zeros((3, 8), np.float64)
    hot[1, 4] = value
    path = _mixed(tmp_path, np.ones((3, 8, 8), np.uint8), hot)
    with pytest.raises(ValueError, match=r"m.npz, row 1: arr_1 \(labels\) holds .* for Loc; expected 0 or 1"):
        loaders.load_mixedwm38(path)


def test_mixedwm38_broken_archives_are_named(tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ValueError, match=r"empty.npz: missing array 'arr_0'.*found no arrays"):
        loaders.load_mixedwm38(empty)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.ones((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"single.npz: holds a single array \(a .npy file\)"):
        loaders.load_mixedwm38(npy)
    good = _mixed(tmp_path, np.ones((40, 16, 16), np.uint8), np.zeros((40, 8), np.int64), "good.npz")
    np.savez_compressed(good, arr_0=np.ones((40, 16, 16), np.uint8), arr_1=np.zeros((40, 8), np.int64))
    raw = bytearray(good.read_bytes())
    for k, pos in enumerate(range(10, len(raw) - 10, max(1, len(raw) // 15))):
        flipped = raw.copy()
        flipped[pos] ^= 0xFF
        bad = tmp_path / f"flip{k}.npz"
        bad.write_bytes(bytes(flipped))
        try:
            loaders.load_mixedwm38(bad)
        except ValueError as exc:
            assert f"flip{k}.npz" in str(exc)
    objs = tmp_path / "objects.npz"
    np.savez(objs, arr_0=np.array([[[1]]], dtype=object), arr_1=np.zeros((1, 8)))
    with pytest.raises(ValueError, match="objects.npz"):
        loaders.load_mixedwm38(objs)
