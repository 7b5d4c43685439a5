"""Reader for the IDX format (MNIST / Fashion-MNIST files), plain or gzipped.

Layout: a 4-byte magic ``0x00 0x00 <dtype code> <ndim>`` followed by ``ndim``
big-endian uint32 dimension sizes and then the row-major data, big-endian.
Image files have magic 2051 (ubyte, 3 dims), label files 2049 (ubyte, 1 dim).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: str | os.PathLike):
    """Opens `path`, transparently un-gzipping it when it is gzip-compressed."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes the bytes of one IDX file into a numpy array in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: not an IDX file (bad magic {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{source}: unknown IDX type code 0x{code:02x}; "
            f"accepted: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{source}: IDX shape {shape} needs {expected} data bytes, "
            f"found {len(data) - header}"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # writable, native-endian copy


def read_idx_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Reads only the header of an IDX file: its shape, without loading the data."""
    with _open(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
            raise ValueError(f"{os.fspath(path)}: not an IDX file (bad magic {head!r})")
        dims = f.read(4 * head[3])
    if len(dims) != 4 * head[3]:
        raise ValueError(f"{os.fspath(path)}: truncated IDX header")
    return tuple(int(d) for d in np.frombuffer(dims, ">u4"))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (``.gz`` or raw) from disk into a numpy array."""
    with _open(path) as f:
        return parse_idx(f.read(), source=os.fspath(path))
