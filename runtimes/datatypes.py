"""The tensor datatype vocabulary shared by the wire and the runtimes (Open Inference Protocol names).

Fixed-size types map one-to-one onto numpy dtypes. BYTES elements are variable length: in memory they
are a numpy ``object`` array of ``bytes``; in serialized ("raw") form each element is a 4-byte
little-endian length followed by its bytes, elements concatenated in row-major order.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

BYTES = "BYTES"

_NUMPY_BY_DATATYPE: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    BYTES: np.dtype(np.object_),
}

_DATATYPE_BY_KIND: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in _NUMPY_BY_DATATYPE.items() if name != BYTES
}

DATATYPES: tuple[str, ...] = tuple(_NUMPY_BY_DATATYPE)
# The 4-byte little-endian length before each element of a BYTES tensor in its raw form.
BYTES_LENGTH = struct.Struct("<I")


class UnknownDatatype(ValueError):
    """A datatype name (or numpy dtype) that has no place in the protocol's vocabulary."""


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype that holds elements of ``datatype`` (``object`` for BYTES)."""
    try:
        return _NUMPY_BY_DATATYPE[datatype]
    except KeyError:
        raise UnknownDatatype(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def datatype_of(dtype: np.dtype[np.generic]) -> str:
    """The protocol datatype name for a numpy dtype (strings and bytes become BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return BYTES
    try:
        return _DATATYPE_BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise UnknownDatatype(f"numpy dtype {dtype} has no protocol datatype") from None


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype; 0 for BYTES, whose elements vary."""
    return 0 if datatype == BYTES else numpy_dtype(datatype).itemsize


def encode_bytes(array: npt.NDArray[np.object_]) -> bytes:
    """Serialize a BYTES tensor to the length-prefixed raw form."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        data = element.encode("utf-8") if isinstance(element, str) else bytes(element)
        parts.append(BYTES_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes(raw: bytes | memoryview, count: int | None = None) -> npt.NDArray[np.object_]:
    """Parse length-prefixed raw BYTES into a flat object array.

    Raises ValueError when an element runs past the end of the buffer, or, with ``count``,
    when the buffer does not hold exactly ``count`` elements.
    """
    view = memoryview(raw)
    elements: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise ValueError(f"truncated length prefix at byte {offset}")
        (length,) = BYTES_LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise ValueError(f"element {len(elements)} claims {length} bytes but only {end - offset} remain")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(elements) != count:
        raise ValueError(f"holds {len(elements)} elements, expected {count}")
    result = np.empty(len(elements), dtype=np.object_)
    result[:] = elements
    return result
