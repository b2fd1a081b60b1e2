"""Hypothesis strategies for tensors: arrays of every numeric datatype, and parts of one batch."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# numpy dtype codes of every fixed-size datatype of the protocol (BOOL, INT*, UINT*, FP*).
NUMERIC = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]


@st.composite
def batch_parts(draw: st.DrawFn, max_parts: int, max_side: int) -> list[np.ndarray[Any, Any]]:
    """Arrays of one dtype and one tail shape, with any number of rows each (zero included)."""
    dtype = np.dtype(draw(st.sampled_from(NUMERIC)))
    rows = draw(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=max_parts))
    tail = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=max_side))
    return [draw(hnp.arrays(dtype, (count, *tail))) for count in rows]
