# SPDX-License-Identifier: MIT
"""kvtier.Client, a connection to kvtierd, with its two-phase puts (Reservation) and leased
gets (Lease); iter_blocks()."""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import weakref
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._clib import (CONNECT_CHECK_UID, _ConnectOpts, KeyLike, KVT_EDAEMON, KVT_ENOLAYOUT, _Lease,
                    _lib,
                    _LOOKUP_MAX, _MISSING, _Reservation, _Stats, _STATS_FIELDS)
from ._errors import _check, KvtError
from ._keys import (_arena_view, _as_bytes_view, key_chain, _keys_array, Layout, _shaped, _to_key,
                    _uint)

# ---------------------------------------------------------------------------------------------
# Client

LayoutLike = Union[Layout, int]


class Reservation:
    """A two-phase put in progress (``struct kvt_reservation``).

    ``array`` is a writable view of the reserved arena bytes (as ``dtype``/``shape`` when
    given, else flat uint8).  Fill it, then :meth:`commit` (the block becomes visible) or
    :meth:`abort`.  As a context manager it commits on normal exit and aborts on an
    exception.  The view must not be used after commit/abort: the memory belongs to the
    arena again.
    """

    def __init__(self, client: "Client", r: _Reservation, array: np.ndarray) -> None:
        self._client = client
        self._r = r
        self._array = array
        self.done = False

    @property
    def array(self) -> np.ndarray:
        """The writable view; KvtError(EBADF) once the client is closed."""
        self._client._handle()
        return self._array

    def _closed(self) -> None:
        # The client closed under us: nothing may be written through the view any more.
        self._array.flags.writeable = False

    def commit(self, position: Optional[int] = None) -> None:
        """Makes the block visible. The reservation is spent either way.  ``position``: where
        the block's first token stands in its sequence (see kvt_put_commit_at)."""
        if self.done:
            raise KvtError(_errno.EINVAL, "commit: reservation already finished")
        h = self._client._handle()
        self.done = True
        self._array.flags.writeable = False
        if position is None:
            _check(_lib.kvt_put_commit(h, ctypes.byref(self._r)), "kvt_put_commit")
        else:
            _check(_lib.kvt_put_commit_at(h, ctypes.byref(self._r),
                                          _uint(position, 32, "position")),
                   "kvt_put_commit_at")

    def abort(self) -> None:
        """Drops the reservation; nothing becomes visible."""
        if self.done:
            return
        h = self._client._handle()
        self.done = True
        self._array.flags.writeable = False
        _check(_lib.kvt_put_abort(h, ctypes.byref(self._r)), "kvt_put_abort")

    def __enter__(self) -> np.ndarray:
        return self.array

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is None:
            self.commit()
        else:
            self.abort()


class Lease:
    """A read lease on a stored block (``struct kvt_lease``).

    ``array`` is a read-only view of the block as stored in the arena (no copy); the block
    cannot be evicted, moved or deleted until :meth:`release`.  With a compressed host tier
    (``host.codec = bq``) a block may be stored as a record of a codec chain: then
    ``encoded`` is true, ``chain_id`` names the chain, ``array`` is the record's bytes (flat
    uint8) and :meth:`decode` gives the block (``raw_len`` bytes); for a raw block
    :meth:`decode` is a copy.  As a context manager, ``with
    client.lease(lay, key) as view:`` yields the view and releases on exit.  The view must
    not be used after release.  Releasing a lease whose daemon has gone away does nothing
    (the lease ended with the daemon; the next request says KVT_EDAEMON).
    """

    def __init__(self, client: "Client", lease: _Lease, array: np.ndarray) -> None:
        self._client = client
        self._l = lease
        self._array = array
        self.released = False

    @property
    def array(self) -> np.ndarray:
        """The read-only view; KvtError(EBADF) once the client is closed."""
        self._client._handle()
        return self._array

    def _closed(self) -> None:
        pass

    @property
    def chain_id(self) -> int:
        """Codec chain of the stored bytes: 0 for a raw block."""
        return int(self._l.chain_id)

    @property
    def encoded(self) -> bool:
        return self._l.chain_id != 0

    @property
    def raw_len(self) -> int:
        """Bytes of the block once decoded."""
        return int(self._l.raw_len)

    def decode(self, out: Optional[np.ndarray] = None, dtype: Any = None,
               shape: Any = None) -> np.ndarray:
        """The block, decoded (``kvt_lease_decode``): into ``out`` (writable, C-contiguous;
        the returned array views its first ``raw_len`` bytes) or a new array; flat uint8 or
        viewed as ``dtype``/``shape``.  KvtError(EBADMSG) for a record that fails to decode,
        KvtError(ENOBUFS) when ``out`` is too small."""
        h = self._client._handle()
        if self.released:
            raise KvtError(_errno.EINVAL, "decode: the lease was released")
        dst = (_as_bytes_view(out, writable=True) if out is not None
               else np.empty(self.raw_len, dtype=np.uint8))
        n = _lib.kvt_lease_decode(h, ctypes.byref(self._l), dst.ctypes.data, dst.size)
        _check(n, "kvt_lease_decode")
        return _shaped(dst[:n], dtype, shape)

    def release(self) -> None:
        if self.released:
            return
        h = self._client._handle()
        self.released = True
        ret = _lib.kvt_lease_release(h, ctypes.byref(self._l))
        # A lease of a daemon that went away died with it: nothing is left to return, and
        # raising from the end of a ``with`` block would hide the error that matters (the
        # next request's KVT_EDAEMON).
        if ret != -KVT_EDAEMON:
            _check(ret, "kvt_lease_release")

    def __enter__(self) -> np.ndarray:
        return self.array

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self.release()


class _Conn:
    """Owns one ``struct kvt_client``: kvt_close() runs when the last reference goes, i.e.
    when the Client is closed and no arena view of it is left (each holds a reference)."""

    def __init__(self, h: int) -> None:
        self.h = h

    def __del__(self) -> None:
        if self.h is not None and _lib is not None:
            _lib.kvt_close(self.h)
            self.h = None


class Client:
    """A connection to kvtierd (``struct kvt_client``); a context manager.

    ``socket``: path of the daemon's socket (None: ``$KVTIER_SOCKET``, then the default
    paths).  ``name``: shown by ``kvtierctl clients``.  ``timeout_ms``: per request (0: the
    library's default of 10 s, -1: forever).  One client may be shared by threads (requests
    are serialized); open one per thread for parallel throughput.
    """

    def __init__(self, socket: Optional[str] = None, name: Optional[str] = None,
                 timeout_ms: int = 0, daemon_uid: Optional[int] = None) -> None:
        self._c: Optional[int] = None
        self._conn: Optional[_Conn] = None
        self._holds: "weakref.WeakSet" = weakref.WeakSet()
        self._layouts: dict = {}
        if not -2**31 <= int(timeout_ms) < 2**31:
            raise OverflowError(f"timeout_ms {timeout_ms} is out of range for an int")
        opts = _ConnectOpts(ctypes.sizeof(_ConnectOpts),
                            os.fsencode(socket) if socket is not None else None,
                            name.encode() if name is not None else None, int(timeout_ms),
                            CONNECT_CHECK_UID if daemon_uid is not None else 0,
                            _uint(daemon_uid or 0, 32, "daemon_uid"))
        h = ctypes.c_void_p()
        _check(_lib.kvt_connect(ctypes.byref(opts), ctypes.byref(h)), "kvt_connect")
        self._conn = _Conn(h.value)
        self._c = h.value

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Closes the connection; releases every lease, pin and reservation of this client.

        Every later call raises KvtError(EBADF), and so do the methods and ``array`` of its
        leases and reservations; reservation views become read-only.  A numpy view of the
        arena still referenced elsewhere keeps the connection (and its holds) open until
        the last such view is garbage collected: touching it never reads unmapped memory.
        """
        if self._c is not None:
            self._c = None
            for hold in list(self._holds):
                hold._closed()
            self._holds = weakref.WeakSet()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _handle(self) -> int:
        if self._c is None:
            raise KvtError(_errno.EBADF, "client is closed")
        return self._c

    @staticmethod
    def _lid(layout: LayoutLike) -> int:
        if isinstance(layout, Layout):
            if layout.id is None:
                raise KvtError(KVT_ENOLAYOUT, "layout is not registered")
            return layout.id
        lid = int(layout)
        if not 0 <= lid < 2**31:  # ctypes would keep the low bits of a C int
            raise KvtError(KVT_ENOLAYOUT, f"layout id {lid}")
        return lid

    def _block_bytes(self, layout: LayoutLike) -> Optional[int]:
        if isinstance(layout, Layout):
            return layout.block_bytes
        lay = self._layouts.get(int(layout))
        return lay.block_bytes if lay is not None else None

    # -- layouts and keys ------------------------------------------------------------------
    def register_layout(self, n_layers: Union[int, Layout], n_kv_heads: int = 0,
                        head_dim: int = 0, block_tokens: int = 0, dtype: str = "fp16",
                        model_id: str = "", rank: int = 0, world: int = 1,
                        kv_order: str = "kv") -> Layout:
        """Registers a KV geometry with the daemon and returns it as a :class:`Layout`
        whose ``id`` is set.  Also accepts an unregistered :class:`Layout` as sole argument.
        Raises KvtError(EINVAL) for a bad geometry, KVT_ELIMIT for too many layouts."""
        if isinstance(n_layers, Layout):
            src = n_layers
            lay = Layout(src.n_layers, src.n_kv_heads, src.head_dim, src.block_tokens,
                         src.dtype, src.model_id, src.rank, src.world, src.kv_order)
        else:
            lay = Layout(n_layers, n_kv_heads, head_dim, block_tokens, dtype, model_id, rank,
                         world, kv_order)
        lay.id = _check(_lib.kvt_register_layout(self._handle(), ctypes.byref(lay._c)),
                        "kvt_register_layout")
        self._layouts[lay.id] = lay
        return lay

    def key_chain(self, layout: Union[Layout, int], tokens: Any, **kw: Any) -> Any:
        """Same as the module function :func:`key_chain`; an int here is a layout id of
        this client (not a fingerprint)."""
        if not isinstance(layout, Layout):
            lay = self._layouts.get(int(layout))
            if lay is None:
                raise KvtError(KVT_ENOLAYOUT, "key_chain")
            layout = lay
        return key_chain(layout, tokens, **kw)

    # -- lookups ---------------------------------------------------------------------------
    def lookup(self, layout: LayoutLike, keys: Union[np.ndarray, Iterable[KeyLike]]) -> int:
        """Length of the longest cached prefix of ``keys`` (in blocks).  Any number of keys
        (split into calls of at most 4096).  Does not change LRU order."""
        arr = _keys_array(keys)
        lid = self._lid(layout)
        total = 0
        for off in range(0, arr.size, _LOOKUP_MAX):
            part = arr[off:off + _LOOKUP_MAX]
            n = _check(_lib.kvt_lookup(self._handle(), lid, part.ctypes.data, part.size),
                       "kvt_lookup")
            total += n
            if n < part.size:
                break
        return total

    def put_encodes(self, layout: LayoutLike) -> bool:
        """Whether the host tier codes this layout's whole blocks (``host.codec``): puts of a
        whole block then store a record, ``put_reserve`` still stores raw
        (kvt_put_encodes)."""
        self._need("kvt_put_encodes")
        return bool(_check(_lib.kvt_put_encodes(self._handle(), self._lid(layout)),
                           "kvt_put_encodes"))

    def prefetch(self, layout: LayoutLike, keys: Union[np.ndarray, Iterable[KeyLike]],
                 priority: int = 0, deadline_us: int = 0) -> int:
        """Asks the daemon to bring blocks up to the host tier ahead of a get (fire and
        forget: never waits for I/O).  ``priority`` 0..3 (3 first); ``deadline_us`` > 0
        drops a request not started in time.  Keys not stored are ignored.  Returns how
        many requests were queued."""
        if "kvt_prefetch" in _MISSING:
            raise KvtError(_errno.ENOSYS, "kvt_prefetch: not in this libkvtier")
        if not 0 <= int(priority) <= 3 or not 0 <= int(deadline_us) < 2**32:
            raise ValueError("priority is 0..3, deadline_us a uint32")
        arr = _keys_array(keys)
        return _check(_lib.kvt_prefetch(self._handle(), self._lid(layout), arr.ctypes.data,
                                        arr.size, priority, deadline_us), "kvt_prefetch")

    def lookup_batch(self, layout: LayoutLike,
                     keys: Union[np.ndarray, Iterable[KeyLike]]) -> np.ndarray:
        """Which keys are stored, each on its own (not a prefix): a numpy bool array, one
        round trip to the daemon for the lot (kvt_lookup_batch)."""
        self._need("kvt_lookup_batch")
        arr = _keys_array(keys)
        present = np.zeros(arr.size, dtype=np.uint8)
        _check(_lib.kvt_lookup_batch(self._handle(), self._lid(layout), arr.ctypes.data,
                                     arr.size, present.ctypes.data), "kvt_lookup_batch")
        return present.astype(bool)

    def contains(self, layout: LayoutLike, key: KeyLike) -> bool:
        """Whether one key is stored (a lookup of one key)."""
        return self.lookup(layout, [key]) == 1

    # -- storing ---------------------------------------------------------------------------
    def reserve(self, layout: LayoutLike, key: KeyLike, nbytes: Optional[int] = None,
                dtype: Any = None, shape: Any = None) -> Reservation:
        """Reserves arena space for a block and returns a :class:`Reservation` whose
        ``array`` is a writable numpy view of it (zero copy).  ``nbytes`` defaults to the
        layout's block size (or the size of ``shape`` x ``dtype``).  Raises KvtError:
        EEXIST when the key is already stored or being stored, ENOSPC, E2BIG, KVT_ENOLAYOUT."""
        if nbytes is None:
            if shape is not None:
                nbytes = int(np.prod(shape)) * np.dtype(dtype or np.uint8).itemsize
            else:
                nbytes = self._block_bytes(layout)
                if nbytes is None:
                    raise TypeError("reserve: nbytes is required for a bare layout id")
        r = _Reservation()
        ck = _to_key(key)
        _check(_lib.kvt_put_reserve(self._handle(), self._lid(layout), ctypes.byref(ck),
                                    _uint(nbytes, 63, "nbytes"), ctypes.byref(r)),
               "kvt_put_reserve")
        try:
            view = _shaped(_arena_view(r.data, r.len, readonly=False, keep=self._conn),
                           dtype, shape)
        except Exception:
            _lib.kvt_put_abort(self._c, ctypes.byref(r))
            raise
        res = Reservation(self, r, view)
        self._holds.add(res)
        return res

    def _block_src(self, layout: LayoutLike, data: Any, partial: bool) -> np.ndarray:
        """The bytes of one block to store, as a flat uint8 array (no copy): a bytes-like
        object or a C-contiguous numpy array of block_bytes (fewer with ``partial``)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            src = np.frombuffer(data, dtype=np.uint8)
        elif isinstance(data, np.ndarray):
            if data.dtype.hasobject or data.dtype.kind in "USV":
                raise TypeError(f"a block is numeric data, not {data.dtype}")
            src = _as_bytes_view(data, writable=False)
        else:
            raise TypeError(f"a block is bytes-like or a numpy array, not "
                            f"{type(data).__name__}")
        bb = self._block_bytes(layout)
        if src.size == 0:
            raise ValueError("a block of 0 bytes")
        if bb is not None and src.size > bb:
            raise ValueError(f"a block of {src.size} bytes is longer than the layout's "
                             f"{bb}")
        if bb is not None and src.size < bb and not partial:
            raise ValueError(f"a block of {src.size} bytes, the layout's are {bb} (pass "
                             f"partial=True to store a shorter, last block)")
        return src

    def put(self, layout: LayoutLike, key: KeyLike, data: Union[np.ndarray, bytes],
            position: Optional[int] = None, partial: bool = False) -> int:
        """Stores ``data`` (a C-contiguous numpy array of any numeric dtype, or a bytes-like
        object) of the layout's block_bytes under ``key`` (kvt_put_at: one copy into the
        arena, or with a compressed host tier the block encoded in this process and its
        record copied).  Returns 0 when stored, 1 when the key was already stored (nothing
        written).
        ``partial=True`` accepts a shorter block (the last, partial block of a prompt);
        anything else of the wrong size or type raises ValueError/TypeError before any
        request.  Raises KvtError otherwise.  ``position``: the block's first token's
        position in its sequence, for codecs that undo RoPE."""
        src = self._block_src(layout, data, partial)
        ck = _to_key(key)
        pos = 0xFFFFFFFF if position is None else _uint(position, 32, "position")
        return _check(_lib.kvt_put_at(self._handle(), self._lid(layout), ctypes.byref(ck), pos,
                                      src.ctypes.data, src.size), "kvt_put_at")

    def put_copy(self, layout: LayoutLike, key: KeyLike, data: Union[np.ndarray, bytes],
                 partial: bool = False) -> int:
        """Same as :meth:`put` through the library's kvt_put() (the copy runs in C)."""
        src = self._block_src(layout, data, partial)
        ck = _to_key(key)
        return _check(_lib.kvt_put(self._handle(), self._lid(layout), ctypes.byref(ck),
                                   src.ctypes.data, src.size), "kvt_put")

    @staticmethod
    def _need(name: str) -> None:
        if name in _MISSING:
            raise KvtError(_errno.ENOSYS, f"{name}: not in this libkvtier")

    def put_batch(self, layout: LayoutLike, keys: Union[np.ndarray, Iterable[KeyLike]],
                  blocks: Any, positions: Optional[Sequence[int]] = None,
                  partial: bool = False) -> np.ndarray:
        """Stores many blocks for one round trip to the daemon (kvt_put_batch).

        ``blocks``: a C-contiguous numpy array whose first dimension is the block index
        (e.g. ``(n, *lay.block_shape)``), or a sequence of n blocks as :meth:`put` takes
        them, all of one size.  ``positions``: each block's first token position (or None).
        Returns a numpy int32 array of per-block results: 0 stored, 1 already stored, or a
        negative errno (``-errno.ENOSPC``, ...); raises KvtError when the call as a whole is
        refused."""
        self._need("kvt_put_batch")
        arr = _keys_array(keys)
        n = arr.size
        if isinstance(blocks, np.ndarray) and blocks.ndim >= 1 and \
                blocks.dtype.kind not in "OUSV":
            if blocks.shape[0] != n:
                raise ValueError(f"{blocks.shape[0]} blocks for {n} keys")
            flat = _as_bytes_view(blocks, writable=False).reshape(n, -1) if n else \
                np.zeros((0, 1), dtype=np.uint8)
            srcs = [flat[i] for i in range(n)]
        else:
            srcs = list(blocks)
            if len(srcs) != n:
                raise ValueError(f"{len(srcs)} blocks for {n} keys")
        srcs = [self._block_src(layout, b, partial) for b in srcs]
        size = srcs[0].size if srcs else 1
        if any(b.size != size for b in srcs):
            raise ValueError("the blocks of one batch are all of one size")
        ptrs = (ctypes.c_void_p * max(n, 1))(*[b.ctypes.data for b in srcs])
        pos = None
        if positions is not None:
            pl = [2**32 - 1 if p is None else _uint(p, 32, "position") for p in positions]
            if len(pl) != n:
                raise ValueError(f"{len(pl)} positions for {n} keys")
            pos = np.ascontiguousarray(pl, dtype=np.uint32)
        status = np.zeros(n, dtype=np.int32)
        _check(_lib.kvt_put_batch(self._handle(), self._lid(layout), arr.ctypes.data, ptrs,
                                  pos.ctypes.data if pos is not None else None, size, n,
                                  status.ctypes.data), "kvt_put_batch")
        return status

    def get_batch(self, layout: LayoutLike, keys: Union[np.ndarray, Iterable[KeyLike]],
                  out: Optional[np.ndarray] = None,
                  block_bytes: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Copies many blocks out for one round trip to the daemon (kvt_get_batch).

        ``out``: a writable C-contiguous array whose first dimension is the block index (its
        rows hold one block each, e.g. ``(n, *lay.block_shape)``); without it a new
        ``(n, block_bytes)`` uint8 array is made.  Returns ``(out, status)``: ``status`` is a
        numpy int32 array holding each block's length, or ``-errno.ENOENT`` for a miss
        (its row untouched), ``-errno.ENOBUFS`` when the block is longer than a row."""
        self._need("kvt_get_batch")
        arr = _keys_array(keys)
        n = arr.size
        if out is None:
            cap = block_bytes or self._block_bytes(layout)
            if not cap:
                raise TypeError("get_batch: block_bytes is required for a bare layout id")
            out = np.zeros((n, cap), dtype=np.uint8)
        if out.ndim < 1 or out.shape[0] != n:
            raise ValueError(f"out must have {n} rows")
        rows = _as_bytes_view(out, writable=True).reshape(n, -1) if n else \
            np.zeros((0, 1), dtype=np.uint8)
        cap = rows.shape[1]
        ptrs = (ctypes.c_void_p * max(n, 1))(*[rows[i].ctypes.data for i in range(n)])
        status = np.zeros(n, dtype=np.int32)
        _check(_lib.kvt_get_batch(self._handle(), self._lid(layout), arr.ctypes.data, ptrs,
                                  cap, n, status.ctypes.data), "kvt_get_batch")
        return out, status

    # -- reading ---------------------------------------------------------------------------
    def get(self, layout: LayoutLike, key: KeyLike, out: Optional[np.ndarray] = None,
            dtype: Any = None, shape: Any = None) -> Optional[np.ndarray]:
        """Copies a stored block out of the arena.

        With ``out`` (a writable C-contiguous array) the block is copied into it and the
        returned array is a flat uint8 view of ``out``'s first ``len`` bytes (or viewed as
        ``dtype``/``shape``); KvtError(ENOBUFS) when ``out`` is too small.  Without ``out``
        a new array is returned: flat uint8, or viewed as ``dtype``/``shape``.  Returns
        ``None`` on a miss (a miss is not an error: recompute and put the block).
        """
        ck = _to_key(key)
        lid = self._lid(layout)
        if out is not None:
            dst = _as_bytes_view(out, writable=True)
            n = _lib.kvt_get(self._handle(), lid, ctypes.byref(ck), dst.ctypes.data, dst.size)
            if n == -_errno.ENOENT:
                return None
            _check(n, "kvt_get")
            return _shaped(dst[:n], dtype, shape)
        cap = self._block_bytes(layout)
        if cap:
            buf = np.empty(cap, dtype=np.uint8)
            n = _lib.kvt_get(self._handle(), lid, ctypes.byref(ck), buf.ctypes.data, cap)
            if n == -_errno.ENOENT:
                return None
            if n != -_errno.ENOBUFS:
                _check(n, "kvt_get")
                return _shaped(buf[:n], dtype, shape)
        # Length unknown (or larger than a layout block): read it under a lease (decoded
        # when it is stored encoded).
        try:
            ls = self.lease(lid, ck)
            try:
                return ls.decode(dtype=dtype, shape=shape)
            finally:
                ls.release()
        except KvtError as e:
            if e.code == _errno.ENOENT:
                return None
            raise

    def lease(self, layout: LayoutLike, key: KeyLike, dtype: Any = None,
              shape: Any = None) -> Lease:
        """Borrows a stored block in place: returns a :class:`Lease` whose ``array`` is a
        read-only numpy view of the arena (flat uint8, or ``dtype``/``shape``; a block
        stored encoded is its record, flat uint8: use :meth:`Lease.decode`).  Use it as a
        context manager.  Raises KvtError(ENOENT) on a miss."""
        ck = _to_key(key)
        ls = _Lease()
        _check(_lib.kvt_get_lease(self._handle(), self._lid(layout), ctypes.byref(ck),
                                  ctypes.byref(ls)), "kvt_get_lease")
        try:
            view = _arena_view(ls.data, ls.len, readonly=True, keep=self._conn)
            if not ls.chain_id:
                view = _shaped(view, dtype, shape)
        except Exception:
            _lib.kvt_lease_release(self._c, ctypes.byref(ls))
            raise
        lease = Lease(self, ls, view)
        self._holds.add(lease)
        return lease

    def lease_batch(self, layout: LayoutLike, keys: Union[np.ndarray, Iterable[KeyLike]]
                    ) -> Tuple[List[Optional[Lease]], np.ndarray]:
        """Leases many blocks for one round trip to the daemon (kvt_get_lease_batch), as
        :meth:`lease` does each.  Returns ``(leases, status)``: ``leases[i]`` is a
        :class:`Lease` (flat uint8 view) or ``None``, ``status[i]`` 0 or the block's error
        (``-errno.ENOENT`` for a miss).  Every lease must be released (also when others
        missed); a failure of the call as a whole releases what it leased and raises."""
        self._need("kvt_get_lease_batch")
        arr = _keys_array(keys)
        n = arr.size
        raw = (_Lease * max(n, 1))()
        status = np.zeros(n, dtype=np.int32)
        got = _lib.kvt_get_lease_batch(self._handle(), self._lid(layout), arr.ctypes.data,
                                       raw, n, status.ctypes.data)
        if got < 0:
            for i in range(n):
                if raw[i].data:
                    _lib.kvt_lease_release(self._c, ctypes.byref(raw[i]))
            _check(got, "kvt_get_lease_batch")
        out: List[Optional[Lease]] = []
        try:
            for i in range(n):
                if status[i] < 0:
                    out.append(None)
                    continue
                ls = _Lease.from_buffer_copy(raw[i])
                view = _arena_view(ls.data, ls.len, readonly=True, keep=self._conn)
                lease = Lease(self, ls, view)
                self._holds.add(lease)
                out.append(lease)
        except Exception:
            for i in range(len(out), n):
                if status[i] >= 0:
                    _lib.kvt_lease_release(self._c, ctypes.byref(raw[i]))
            for lease in out:
                if lease is not None:
                    lease.release()
            raise
        return out, status

    # -- management ------------------------------------------------------------------------
    def delete(self, layout: LayoutLike, key: KeyLike) -> bool:
        """Deletes a block from every tier.  Returns True when deleted, False when it was not
        stored.  A leased block disappears from lookups at once; its memory is freed when
        the last lease is returned.  Raises KvtError(EAGAIN) while the daemon recovers its
        NVMe records: nothing deleted, retry later."""
        ck = _to_key(key)
        r = _lib.kvt_delete(self._handle(), self._lid(layout), ctypes.byref(ck))
        if r == -_errno.ENOENT:
            return False
        _check(r, "kvt_delete")
        return True

    def pin(self, layout: LayoutLike, key: KeyLike) -> None:
        """Pins a block: never evicted until unpinned or this client closes.  Pins nest.
        Raises KvtError(ENOENT) when the block is not stored."""
        ck = _to_key(key)
        _check(_lib.kvt_pin(self._handle(), self._lid(layout), ctypes.byref(ck)), "kvt_pin")

    def unpin(self, layout: LayoutLike, key: KeyLike) -> None:
        """Undoes one :meth:`pin` of this client.  KvtError(EINVAL) when not pinned by it."""
        ck = _to_key(key)
        _check(_lib.kvt_unpin(self._handle(), self._lid(layout), ctypes.byref(ck)),
               "kvt_unpin")

    def stats(self) -> dict:
        """Counters of this client (``puts``, ``gets``, ``hits``, ``misses``, ``lookups``),
        of the host tier as this tenant sees it (``host_capacity_bytes``,
        ``host_used_bytes``, ``host_blocks``, ``evictions``) and of the daemon as a whole
        (``host_hits``, ``host_misses``, ``promotions``, ``prefetch_useful``,
        ``prefetch_late``)."""
        st = _Stats()
        st.size = ctypes.sizeof(_Stats)
        _check(_lib.kvt_stats(self._handle(), ctypes.byref(st)), "kvt_stats")
        return {f: int(getattr(st, f)) for f in _STATS_FIELDS}

    def __repr__(self) -> str:
        state = "closed" if self._c is None else "open"
        return f"<kvtier.Client {state}>"


def iter_blocks(arr: np.ndarray, block_bytes: int) -> Iterator[np.ndarray]:
    """Yields consecutive flat uint8 views of ``block_bytes`` of a C-contiguous array."""
    flat = _as_bytes_view(arr, writable=False)
    for off in range(0, flat.size - block_bytes + 1, block_bytes):
        yield flat[off:off + block_bytes]
