"""The restricted unpickler: only the NumPy constructors that arrays, dtypes and scalars
need can be named by a pickle; nothing else is importable, and dtypes and sizes are checked
before anything is allocated.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import IO, Any, Protocol, cast

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from common.errors import DecodeError, ForbiddenGlobal

_ALLOWED_DTYPE_KINDS = "biufc"  # bool, ints, floats, complex: no object, void, strings


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` in a pickle: usable by _reconstruct, not callable."""


_NDARRAY = _NdarrayType()


def _plain_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise DecodeError(f"expected a dtype, got {type(dtype).__name__}")
    if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype:
        raise DecodeError(f"dtype {dtype} is not allowed")
    return dtype


def _dtype(obj, align=False, copy=False):
    if not isinstance(obj, str) or len(obj) > 8:
        raise DecodeError("dtype spec must be a short string")
    return _plain_dtype(np.dtype(obj, bool(align), bool(copy)))


def _reconstruct(subtype, shape, dtype_code):
    # ndarray.__reduce__ writes _reconstruct(ndarray, (0,), b'b') and fills the array in BUILD.
    if subtype is not _NDARRAY or shape != (0,) or dtype_code != b"b":
        raise DecodeError("only empty ndarray placeholders may be reconstructed")
    return _multiarray._reconstruct(np.ndarray, (0,), dtype_code)


def _scalar(dtype, data=None):
    _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise DecodeError("scalar data does not match its dtype")
    return _multiarray.scalar(dtype, data)


def _frombuffer(buffer, dtype, shape, order):
    _plain_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(shape, tuple):
        raise DecodeError("bad array buffer")
    if math.prod(shape) * dtype.itemsize != len(buffer):
        raise DecodeError("array buffer size does not match its shape")
    return _numeric._frombuffer(buffer, dtype, shape, order)


def _codecs_encode(text, encoding="utf-8"):
    # Protocol 2 pickles carry bytes as latin-1 text (numpy writes them so).
    if not isinstance(text, str) or encoding != "latin1":
        raise DecodeError("only latin1 text may be encoded to bytes")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    (module, name): value
    for prefix in ("numpy._core", "numpy.core")
    for module, name, value in (
        (f"{prefix}.multiarray", "_reconstruct", _reconstruct),
        (f"{prefix}.multiarray", "scalar", _scalar),
        (f"{prefix}.numeric", "_frombuffer", _frombuffer),
    )
} | {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class ByteSource(Protocol):
    """What the unpickler reads: a large read may come as the bytearray it was received
    into, which ``load_bytearray8`` and ``_adopt_array_data`` use in place."""

    def read(self, n: int, /) -> bytes | bytearray: ...

    def readline(self) -> bytes: ...


# typeshed types the pure-Python unpickler's table for its own methods, and its file as
# returning bytes only: ours are registered, and our reader passed, as these.
_Handler = Callable[[pickle.Unpickler], None]


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler: it reads a declared length before allocating it, so our
    reader's budget check comes first (the C one allocates a BINBYTES8 length up front)."""

    dispatch = dict(pickle._Unpickler.dispatch)
    stack: list[Any]  # the pure-Python unpickler's own state, which typeshed leaves out
    memo: dict[int, Any]

    def __init__(self, file: ByteSource):
        super().__init__(cast(IO[bytes], file))

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"pickle names {module}.{name}, which is not allowed") from None

    def persistent_load(self, pid):
        raise DecodeError("persistent ids are not allowed")

    def load_build(self):
        state = self.stack[-1]
        inst = self.stack[-2]
        if type(inst) is np.ndarray:
            if not (
                isinstance(state, tuple)
                and len(state) == 5
                and isinstance(state[1], tuple)
                and isinstance(state[4], (bytes, bytearray))
            ):
                raise DecodeError("bad ndarray state")
            if math.prod(state[1]) * _plain_dtype(state[2]).itemsize != len(state[4]):
                raise DecodeError("array data does not match its shape")
            if isinstance(state[4], bytearray):
                self._adopt_array_data(inst, state)
                return
        elif isinstance(inst, np.dtype):
            # A plain dtype's state only restates its byte order; anything more is refused.
            if not (
                isinstance(state, tuple)
                and len(state) == 8
                and state[1] in "<>|="
                and state[2:] == (None, None, None, -1, -1, 0)
            ):
                raise DecodeError("bad dtype state")
        else:
            raise DecodeError(f"BUILD on {type(inst).__name__} is not allowed")
        super().load_build()
        if isinstance(inst, np.dtype):
            _plain_dtype(inst)

    dispatch[pickle.BUILD[0]] = cast(_Handler, load_build)

    def _adopt_array_data(self, placeholder: np.ndarray, state: tuple) -> None:
        # A large read arrives as the bytearray it was received into. ndarray.__setstate__
        # takes only bytes, which would cost one more copy of the whole array, so the array
        # is made over the bytearray instead and put wherever the placeholder was.
        _, shape, dtype, fortran_order, data = state
        array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))  # as __setstate__ does on reading
        self.stack.pop()
        self.stack[-1] = array
        for key, value in self.memo.items():
            if value is placeholder:
                self.memo[key] = array

    def load_bytearray8(self):
        (length,) = pickle.unpack("<Q", self.read(8))
        data = self.read(length)  # read() checks the budget first
        self.append(data if isinstance(data, bytearray) else bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = cast(_Handler, load_bytearray8)
