"""fleche_redis.pickling: cloudpickle's meaning, the C pickler's stream where the two agree."""

import fractions
import pickle
import sys
from collections import defaultdict

import cloudpickle
import numpy as np
import pytest
from fleche.call import DigestedCall
from fleche.digest import Digest
from hypothesis import given
from hypothesis import strategies as st

from fleche_redis.storage import pickling


class Label(str):
    pass


plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=40,
)


@given(plain_data)
def test_plain_data_is_written_as_both_picklers_write_it(value):
    data = pickling.dumps(value)
    assert data == pickle.dumps(value, protocol=pickling.PROTOCOL)
    assert data == cloudpickle.dumps(value, protocol=pickling.PROTOCOL)
    assert pickle.loads(data) == value


def record(metadata):
    return DigestedCall(
        name="f",
        arguments={"x": Digest("a" * 64)},
        result=Digest("b" * 64),
        metadata=metadata,
        module="__main__",  # a record of a script's function names __main__ as data
    )


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6.0).reshape(2, 3),
        record(defaultdict(dict, {"runtime": {"walltime": 0.5}})),
        {"nested": [np.zeros(3), (1, "two", b"3")], "digest": Digest("c" * 64)},
    ],
    ids=["array", "record", "nested"],
)
def test_plain_values_skip_cloudpickle(value, monkeypatch):
    monkeypatch.setattr(cloudpickle, "dumps", _refuse)
    assert pickling.is_plain(value)
    data = pickling.dumps(value)
    assert data == pickle.dumps(value, protocol=pickling.PROTOCOL)
    _assert_same(pickle.loads(data), value)


def test_values_that_are_not_plain_but_importable_take_the_checked_fast_path(monkeypatch):
    value = [fractions.Fraction(1, 3), np.float64(2.5), {"who": fractions.Fraction(1, 2)}]
    assert not pickling.is_plain(value)
    monkeypatch.setattr(cloudpickle, "dumps", _refuse)
    assert pickle.loads(pickling.dumps(value)) == value


def test_a_function_from_main_is_pickled_by_value(monkeypatch):
    namespace = {"__name__": "__main__"}
    exec("def triple(x):\n    return 3 * x\n", namespace)
    triple = namespace["triple"]
    # Reachable as __main__.triple, so the C pickler would write a reference
    # that another process could not resolve; cloudpickle must take it.
    monkeypatch.setattr(sys.modules["__main__"], "triple", triple, raising=False)
    assert pickle.dumps(triple)  # the C pickler alone succeeds, by reference
    data = pickling.dumps({"f": triple})
    monkeypatch.delattr(sys.modules["__main__"], "triple")
    assert pickle.loads(data)["f"](2) == 6  # loads without __main__.triple: it went by value


def test_local_functions_and_lambdas_go_to_cloudpickle():
    def local(x):
        return x + 1

    data = pickling.dumps([local, lambda y: y * 2])
    first, second = pickle.loads(data)
    assert first(1) == 2 and second(3) == 6


def test_modules_registered_by_value_turn_the_fast_path_off(monkeypatch):
    monkeypatch.setattr(
        cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", {"somewhere"}, raising=False
    )
    called = []
    real = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda v, **kw: called.append(v) or real(v, **kw))
    value = [fractions.Fraction(1, 3)]
    assert pickle.loads(pickling.dumps(value)) == value
    assert called == [value]


def test_a_string_naming_main_costs_only_the_slow_path():
    value = [fractions.Fraction(1, 2), "if __name__ == '__main__':"]
    assert pickle.loads(pickling.dumps(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        np.array([object(), 1], dtype=object),
        defaultdict(lambda: 0, {"a": 1}),
        list(range(pickling._BUDGET + 1)),
        Label("x"),
    ],
    ids=["object-array", "lambda-factory", "too-big", "foreign-str-subclass"],
)
def test_what_is_not_plain(value):
    assert not pickling.is_plain(value)


def _refuse(*args, **kwargs):
    raise AssertionError("cloudpickle was used for a value the C pickler writes the same")


def _assert_same(got, expected):
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for k in expected:
            _assert_same(got[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b)
    else:
        assert got == expected
