"""Raw tensors: arrays survive the raw form bit for bit, and joining then cutting rows gives the parts back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtimes.raw_tensors import RawTensor, RowsMismatch, array_of, cut_rows, joined, raw_of
from tests.support.tensor_strategies import NUMERIC, batch_parts


@settings(max_examples=80, deadline=None)
@given(
    dtype=st.sampled_from(NUMERIC),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    data=st.data(),
)
def test_numeric_arrays_survive_the_raw_form(dtype: str, shape: tuple[int, ...], data: st.DataObject) -> None:
    array = data.draw(hnp.arrays(np.dtype(dtype), shape))
    back = array_of(raw_of(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes(), "bit for bit, NaNs included"


def test_a_strided_array_is_made_contiguous_and_a_contiguous_one_is_shared() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_of(raw_of(array[:, ::2])).tolist() == [[0, 2], [4, 6], [8, 10]]
    assert np.shares_memory(array_of(raw_of(array)), array), "no copy of a contiguous array"


def test_a_big_endian_array_is_sent_little_endian() -> None:
    array = np.arange(3, dtype=">i4")
    raw = raw_of(array)
    assert raw.datatype == "INT32" and bytes(raw.data) == np.arange(3, dtype="<i4").tobytes()


@settings(max_examples=60, deadline=None)
@given(batch_parts(max_parts=5, max_side=3))
def test_joining_then_cutting_rows_gives_each_part_back(parts: list[np.ndarray[Any, Any]]) -> None:
    rows = [len(part) for part in parts]
    tail = parts[0].shape[1:]
    merged = joined([raw_of(part) for part in parts])
    assert merged.shape == (sum(rows), *tail)
    assert array_of(merged).tobytes() == np.concatenate(parts).tobytes()
    for part, piece in zip(parts, cut_rows(merged, rows), strict=True):
        assert piece.shape == part.shape and array_of(piece).tobytes() == part.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4),
    width=st.integers(min_value=1, max_value=3),
    data=st.data(),
)
def test_bytes_rows_are_cut_where_their_elements_end(rows: list[int], width: int, data: st.DataObject) -> None:
    element = st.binary(max_size=12)
    parts = []
    for count in rows:
        items = [data.draw(element) for _ in range(count * width)]
        array = np.empty(count * width, dtype=np.object_)
        array[:] = items
        parts.append(array.reshape(count, width))
    merged = joined([raw_of(part) for part in parts])
    assert merged.datatype == "BYTES" and merged.shape == (sum(rows), width)
    for part, piece in zip(parts, cut_rows(merged, rows), strict=True):
        assert array_of(piece).tolist() == part.tolist()


def test_a_single_part_is_passed_through_uncopied() -> None:
    part = raw_of(np.zeros((2, 3), np.float32))
    assert joined([part]) is part
    assert cut_rows(part, [2]) == [part] and cut_rows(part, [2])[0] is part


@pytest.mark.parametrize(
    ("tensor", "rows"),
    [
        (RawTensor("FP32", (), b"\0\0\0\0"), [1]),
        (RawTensor("FP32", (3, 1), b"\0" * 12), [1, 1]),
    ],
)
def test_cutting_rows_that_are_not_there_is_refused(tensor: RawTensor, rows: list[int]) -> None:
    with pytest.raises(RowsMismatch, match="expected a first axis of"):
        cut_rows(tensor, rows)
