# SPDX-License-Identifier: MIT
"""Layouts and keys: Layout, key_chain() and the numpy views of arena memory (part of the
kvtier package)."""

from __future__ import annotations

import ctypes
import errno as _errno
from typing import Any, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from ._clib import DTYPES, _Key, KEY_DTYPE, KeyLike, KV_ORDERS, _Layout, _lib, _NP_DTYPES
from ._errors import _check, KvtError

# ---------------------------------------------------------------------------------------------
# Layouts and keys

class Layout:
    """One KV geometry (``struct kvt_layout``), registered or not.

    ``id`` is the layout id returned by the daemon (``None`` until registered); ``fingerprint``,
    ``block_bytes`` and ``layer_bytes`` come from the library.  ``block_shape`` is the numpy
    shape of one block in its page-first order: (layers, 2 [K,V or V,K], heads, tokens, dim).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, block_tokens: int,
                 dtype: str = "fp16", model_id: str = "", rank: int = 0, world: int = 1,
                 kv_order: str = "kv") -> None:
        try:
            dt = DTYPES[dtype]
            order = KV_ORDERS[kv_order]
        except KeyError as e:
            raise KvtError(_errno.EINVAL, f"layout: unknown {e.args[0]!r}") from None
        mid = model_id.encode()
        if len(mid) >= 64:
            raise KvtError(_errno.EINVAL, "layout: model_id longer than 63 bytes")
        for v in (n_layers, n_kv_heads, head_dim, block_tokens, rank, world):
            if not 0 <= int(v) < 2**32:
                raise KvtError(_errno.EINVAL, "layout: dimension out of range")
        self._c = _Layout(ctypes.sizeof(_Layout), n_layers, n_kv_heads, head_dim, block_tokens,
                          dt, order, rank, world, mid)
        self.id: Optional[int] = None
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.block_tokens, self.dtype, self.model_id = block_tokens, dtype, model_id
        self.rank, self.world, self.kv_order = rank, world, kv_order

    def check(self) -> None:
        """Raises KvtError(EINVAL) if the library rejects this geometry."""
        _check(_lib.kvt_layout_check(ctypes.byref(self._c)), "kvt_layout_check")

    @property
    def fingerprint(self) -> int:
        return int(_lib.kvt_layout_fingerprint(ctypes.byref(self._c)))

    @property
    def block_bytes(self) -> int:
        return int(_lib.kvt_layout_block_bytes(ctypes.byref(self._c)))

    @property
    def layer_bytes(self) -> int:
        return int(_lib.kvt_layout_layer_bytes(ctypes.byref(self._c)))

    @property
    def np_dtype(self) -> np.dtype:
        """numpy dtype of one element (bf16 as uint16 bits, fp8 as uint8 bits)."""
        return _NP_DTYPES[self._c.dtype]

    @property
    def block_shape(self) -> Tuple[int, int, int, int, int]:
        return (self.n_layers, 2, self.n_kv_heads, self.block_tokens, self.head_dim)

    def __repr__(self) -> str:
        return (f"Layout(id={self.id}, {self.n_layers}x{self.n_kv_heads}x{self.head_dim}, "
                f"block_tokens={self.block_tokens}, {self.dtype}, model_id={self.model_id!r}, "
                f"rank={self.rank}/{self.world})")


def layout_fingerprint(layout: Layout) -> int:
    """64-bit fingerprint of a layout (same as ``layout.fingerprint``)."""
    return layout.fingerprint


def layout_block_bytes(layout: Layout) -> int:
    """Bytes of one block of a layout (same as ``layout.block_bytes``)."""
    return layout.block_bytes


def _uint(v: Any, bits: int, what: str) -> int:
    """int(v), refused unless it fits an unsigned C integer of that many bits (ctypes would
    silently keep the low bits)."""
    n = int(v)
    if not 0 <= n < 1 << bits:
        raise OverflowError(f"{what} {n} is out of range for a uint{bits}")
    return n


def _to_key(key: KeyLike) -> _Key:
    if isinstance(key, _Key):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        if len(key) != 16:
            raise ValueError("a key is 16 bytes")
        return _Key.from_buffer_copy(bytes(key))
    if isinstance(key, (np.void, np.ndarray)):
        b = np.asarray(key)
        if b.dtype != KEY_DTYPE or b.size != 1:
            raise ValueError(f"a key array element must be one record of {KEY_DTYPE}")
        return _Key.from_buffer_copy(b.tobytes())
    if isinstance(key, tuple):
        lo, hi = key
        return _Key(_uint(lo, 64, "key lo"), _uint(hi, 64, "key hi"))
    if isinstance(key, int):
        if not 0 <= key < 2**128:
            raise ValueError("an integer key is in [0, 2**128)")
        return _Key(key & (2**64 - 1), key >> 64)
    raise TypeError(f"not a key: {type(key).__name__}")


def _keys_array(keys: Union[np.ndarray, Iterable[KeyLike]]) -> np.ndarray:
    if isinstance(keys, np.ndarray) and keys.dtype == KEY_DTYPE:
        return np.ascontiguousarray(keys.reshape(-1))
    lst = list(keys)
    arr = np.empty(len(lst), dtype=KEY_DTYPE)
    for i, k in enumerate(lst):
        ck = _to_key(k)
        arr[i] = (ck.lo, ck.hi)
    return arr


def key_chain(layout: Union[Layout, int], tokens: Union[Sequence[int], np.ndarray, bytes],
              block_tokens: Optional[int] = None, prev: Optional[KeyLike] = None,
              as_array: bool = False) -> Union[list, np.ndarray]:
    """Chained block keys of a token sequence: one key per FULL block of tokens.

    ``layout`` is a :class:`Layout` (its fingerprint and block_tokens are used) or a 64-bit
    fingerprint, in which case ``block_tokens`` is required.  ``tokens`` is any sequence of
    token ids (< 2**32); ``bytes`` are taken one token per byte.  ``prev`` is the key of the
    block before ``tokens[0]``.  Returns a list of 16-byte ``bytes`` keys, or with
    ``as_array=True`` a numpy array of :data:`KEY_DTYPE` (what :meth:`Client.lookup` takes
    without conversion).  A pure function: same keys in every process for the same layout.
    """
    if isinstance(layout, Layout):
        fp = layout.fingerprint
        bt = layout.block_tokens if block_tokens is None else block_tokens
    else:
        fp = int(layout)
        if block_tokens is None:
            raise TypeError("key_chain(fingerprint, ...) needs block_tokens")
        bt = block_tokens
    if isinstance(tokens, (bytes, bytearray)):
        tok = np.frombuffer(bytes(tokens), dtype=np.uint8).astype(np.uint32)
    else:
        tok = np.asarray(tokens)
        if tok.size and (tok.min() < 0 or tok.max() >= 2**32):
            raise ValueError("token ids must be in [0, 2**32)")
        tok = np.ascontiguousarray(tok.reshape(-1), dtype=np.uint32)
    if bt <= 0:
        raise KvtError(_errno.EINVAL, "key_chain: block_tokens must be > 0")
    nkeys = tok.size // bt
    out = np.zeros(nkeys, dtype=KEY_DTYPE)
    pk = ctypes.byref(_to_key(prev)) if prev is not None else None
    n = _check(_lib.kvt_key_chain(fp, bt, pk, tok.ctypes.data, tok.size, out.ctypes.data,
                                  nkeys), "kvt_key_chain")
    out = out[:n]
    if as_array:
        return out
    return [r.tobytes() for r in out]


def _as_bytes_view(arr: np.ndarray, writable: bool) -> np.ndarray:
    """Flat uint8 view of a C-contiguous array (no copy)."""
    if not arr.flags.c_contiguous:
        raise ValueError("array must be C-contiguous")
    if writable and not arr.flags.writeable:
        raise ValueError("array must be writable")
    return arr.reshape(-1).view(np.uint8)


def _arena_view(addr: int, nbytes: int, readonly: bool, keep: Any) -> np.ndarray:
    buf = (ctypes.c_uint8 * nbytes).from_address(addr)
    # Every array viewing the arena (and every view of it) holds the connection: the arena
    # stays mapped while one exists, so a view used after close() reads stale bytes at
    # worst, never unmapped memory.
    buf._kvt_keep = keep
    if readonly:
        # From a read-only memoryview numpy refuses to ever make the array writable again.
        return np.frombuffer(memoryview(buf).toreadonly(), dtype=np.uint8)
    return np.frombuffer(buf, dtype=np.uint8)


def _shaped(flat: np.ndarray, dtype: Any, shape: Any) -> np.ndarray:
    if dtype is not None:
        flat = flat.view(np.dtype(dtype))
    if shape is not None:
        flat = flat.reshape(shape)
    return flat
