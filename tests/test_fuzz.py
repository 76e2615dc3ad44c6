"""Fuzz tests (issue 29), bounded in examples and time: the loaders, the statistics and the server's request
model meet generated input, so new kinds of bad input are found here, not by users."""
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wafersage_utils.evaluation import classification, stats
from wafersage_utils.maps import loaders
from wafersage_utils.maps.table import check_map

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

map_dtypes = st.sampled_from([np.uint8, np.int8, np.int16, np.int64, np.float32, np.float64, np.bool_])


@FAST
@given(hnp.arrays(map_dtypes, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6)))
def test_check_map_accepts_exactly_the_valid_maps(m):
    valid = (m.ndim == 2 and m.size > 0 and np.isin(m, (0, 1, 2)).all() and (m > 0).any())
    if valid:
        assert check_map(m, "row 0") is m
    else:
        with pytest.raises(ValueError, match="^row 0: wafer_map"):
            check_map(m, "row 0")


@FAST
@given(st.data())
def test_mixedwm38_files_load_exactly_or_fail_naming_the_file(tmp_path_factory, data):
    n = data.draw(st.integers(0, 4))
    maps_ = data.draw(hnp.arrays(map_dtypes, (n, 5, 5), elements=None))
    hot = data.draw(hnp.arrays(st.sampled_from([np.int64, np.float64, np.uint8]), (n, 8)))
    path = tmp_path_factory.mktemp("fz") / "f.npz"
    np.savez(path, arr_0=maps_, arr_1=hot)
    try:
        df = loaders.load_mixedwm38(path)
    except ValueError as exc:
        assert "f.npz" in str(exc)
        return
    for i, m in enumerate(df["wafer_map"]):  # what loads is the file's own values, 3 read as a fail
        assert np.array_equal(m, np.where(maps_[i] == 3, 2, maps_[i]))
        assert np.isin(hot[i], (0, 1)).all()


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_are_never_a_wm811k_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fz") / "r.pkl"
    path.write_bytes(raw)
    with pytest.raises((ValueError, pickle.UnpicklingError), match="r.pkl"):
        loaders.load_wm811k(path)


def test_mutated_pickles_never_crash_the_process(tmp_path):
    # Byte flips, cuts and splices of a real-layout pickle (numpy maps, an Arrow string column): each must
    # load or raise a named error. In a child, so that a crash fails this test instead of the suite.
    script = textwrap.dedent(f"""
        import pickle, sys
        import numpy as np, pandas as pd
        from pathlib import Path
        from wafersage_utils.maps import loaders
        rng = np.random.default_rng(0)
        df = pd.DataFrame({{"waferMap": [np.ones((6, 7), np.uint8) * (1 + (i % 2)) for i in range(3)],
                           "lotName": pd.array(["a", "bb", "ccc"], dtype="str"), "waferIndex": [1.0, 2.0, 3.0],
                           "failureType": [np.array([["none"]]), np.array([["Loc"]]), np.array([])]}})
        good = pickle.dumps(df)
        path = Path({str(tmp_path / "m.pkl")!r})
        for k in range(400):
            raw = bytearray(good)
            kind = k % 3
            if kind == 0:
                for pos in rng.integers(0, len(raw), rng.integers(1, 4)):
                    raw[pos] = int(rng.integers(0, 256))
            elif kind == 1:
                raw = raw[: int(rng.integers(1, len(raw)))]
            else:
                a, b = sorted(rng.integers(0, len(raw), 2))
                raw = raw[:a] + raw[b:]
            path.write_bytes(bytes(raw))
            try:
                loaders.load_wm811k(path)
            except (ValueError, pickle.UnpicklingError) as exc:
                assert "m.pkl" in str(exc), exc
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "OK", (out.returncode, out.stderr[-3000:])


@FAST
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0.0, 1.0, 0.5, -1.0])), min_size=1, max_size=20))
def test_wafer_intervals_are_defined_for_every_sample(rows):
    w, v = [r[0] for r in rows], [r[1] for r in rows]
    out = stats.cluster_interval(v, w, n_resamples=200)
    assert np.isfinite([out["mean"], out["ci_low"], out["ci_high"]]).all()
    assert out["ci_low"] <= out["ci_high"] + 1e-12
    d = stats.paired_difference(v, v[::-1], w, n_resamples=200)
    assert np.isfinite([d["mean"], d["ci_low"], d["ci_high"], d["p_value"]]).all()
    lo, hi = classification.wafer_interval(w, lambda idx: float(np.mean(np.asarray(v)[idx])), n_resamples=100)
    assert np.isfinite([lo, hi]).all() and lo <= hi


def test_identical_models_and_single_wafers_have_intervals():
    same = stats.paired_difference([1, 0, 1], [1, 0, 1], ["a", "b", "c"], n_resamples=200)
    assert (same["mean"], same["ci_low"], same["ci_high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    one = stats.cluster_interval([1, 0, 1, 1], ["w"] * 4, n_resamples=500)
    assert one["resampled"] == "questions" and 0 <= one["ci_low"] < 0.75 < one["ci_high"] <= 1
    none = stats.cluster_interval([], [])  # an LLM judge that scored nothing on a split: undefined, no error
    assert none["n_wafers"] == 0 and np.isnan([none["mean"], none["ci_low"], none["ci_high"]]).all()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
near_requests = st.fixed_dictionaries(
    {"model": st.one_of(st.just("tiny"), json_values),
     "messages": st.one_of(json_values, st.lists(st.fixed_dictionaries(
         {"role": st.sampled_from(["user", "system", "assistant", "tool", 3]),
          "content": st.one_of(st.text(max_size=30), json_values, st.lists(st.one_of(
              st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=20), json_values)}),
              st.fixed_dictionaries({"type": st.just("image_url"), "image_url": json_values}), json_values), max_size=3))}),
         max_size=3))},
    optional={"max_tokens": json_values, "temperature": json_values, "top_p": json_values, "stop": json_values,
              "n": json_values, "stream": json_values, "stream_options": json_values})


@FAST
@given(st.one_of(near_requests, json_values))
def test_the_request_model_answers_every_body_with_a_request_or_a_4xx(body):
    from wafersage_utils.serving import images as image_urls
    from wafersage_utils.serving import schema
    import json as _json
    cfg = schema.ServeConfig(model_path="unused")
    try:
        req = schema.parse_request(_json.dumps(body).encode())
        convo, images = image_urls.to_conversation(req, cfg)  # no image loads: data URLs only here, or refusals
    except schema.RequestError as err:
        assert 400 <= err.status < 500 and err.body()["error"]["message"]
        return
    assert len(convo) == len(req.messages) and all(m["role"] in ("system", "user", "assistant") for m in convo)


@FAST
@given(st.binary(max_size=200))
def test_raw_bodies_are_refused_with_a_400(raw):
    from wafersage_utils.serving import schema
    try:
        schema.parse_request(raw)
    except schema.RequestError as err:
        assert err.status == 400
