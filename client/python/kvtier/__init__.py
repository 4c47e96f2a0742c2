# SPDX-License-Identifier: MIT
"""ctypes binding of libkvtier, the client library of the kvtier KV-cache store.

The binding is thin on purpose: each method is one call of ``client/kvtier.h``, and block data
moves between numpy arrays and the daemon's shared-memory arena with exactly one copy (put:
your array -> arena; get: arena -> your array) or none (:meth:`Client.reserve` hands you a
writable numpy view of the arena, :meth:`Client.lease` a read-only one).

    import numpy as np, kvtier
    with kvtier.Client() as c:
        lay = c.register_layout(n_layers=32, n_kv_heads=8, head_dim=128, block_tokens=16)
        keys = kvtier.key_chain(lay, token_ids)
        n = c.lookup(lay, keys)                 # cached prefix, in blocks
        c.put(lay, keys[n], block)              # block: any C-contiguous array of block_bytes
        out = c.get(lay, keys[0], dtype=np.float16, shape=lay.block_shape)

The library is found through ``$KVTIER_LIB``, else ``build/client/libkvtier.so`` of the source
checkout this package sits in, else the dynamic loader (``libkvtier.so.0`` as installed, found
through ld.so's cache or ``LD_LIBRARY_PATH``), else ``ctypes.util.find_library('kvtier')``.

Errors are raised as :class:`KvtError` (an :class:`OSError`; ``errno`` is set for errno
codes, ``code`` always holds the positive code).  A miss is not an error for :meth:`Client.get`
(it returns ``None``); it is for :meth:`Client.lease`, :meth:`Client.pin` (``ENOENT``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import weakref
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "KvtError", "Client", "Layout", "Reservation", "Lease", "key_chain", "layout_fingerprint",
    "layout_block_bytes", "strerror", "version", "KEY_DTYPE", "KVT_ERRNO_BASE", "KVT_EVERSION",
    "KVT_ECORRUPT", "KVT_ENOLAYOUT", "KVT_EDAEMON", "KVT_EPROTOCOL", "KVT_ELIMIT",
    "CONNECT_CHECK_UID",
]

KVT_ERRNO_BASE = 4096
KVT_EVERSION = KVT_ERRNO_BASE
KVT_ECORRUPT = KVT_ERRNO_BASE + 1
KVT_ENOLAYOUT = KVT_ERRNO_BASE + 2
KVT_EDAEMON = KVT_ERRNO_BASE + 3
KVT_EPROTOCOL = KVT_ERRNO_BASE + 4
KVT_ELIMIT = KVT_ERRNO_BASE + 5

DTYPES = {"fp16": 1, "bf16": 2, "fp8": 3, "fp8_e4m3": 3}
#: numpy dtype that holds one element of each kvtier dtype (bf16/fp8 as raw bits)
_NP_DTYPES = {1: np.dtype(np.float16), 2: np.dtype(np.uint16), 3: np.dtype(np.uint8)}
KV_ORDERS = {"kv": 0, "k_then_v": 0, "vk": 1, "v_then_k": 1}

#: numpy dtype of one 128-bit key, laid out as ``struct kvt_key`` (native uint64 lo, hi)
KEY_DTYPE = np.dtype([("lo", np.uint64), ("hi", np.uint64)])

#: what the API accepts as a key: 16 raw bytes, a (lo, hi) tuple, an int < 2**128, a record
#: of KEY_DTYPE (e.g. one element of an array returned by key_chain(..., as_array=True))
KeyLike = Union[bytes, bytearray, memoryview, Tuple[int, int], int, np.void, np.ndarray]


# ---------------------------------------------------------------------------------------------
# C declarations (client/kvtier.h)

class _Key(ctypes.Structure):
    _fields_ = [("lo", ctypes.c_uint64), ("hi", ctypes.c_uint64)]


class _ConnectOpts(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("socket_path", ctypes.c_char_p),
                ("name", ctypes.c_char_p), ("timeout_ms", ctypes.c_int),
                ("flags", ctypes.c_uint32), ("daemon_uid", ctypes.c_uint32)]


#: kvt_connect_opts.flags: refuse a daemon not run by root, this uid or ``daemon_uid``
CONNECT_CHECK_UID = 1


class _Layout(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("n_layers", ctypes.c_uint32),
                ("n_kv_heads", ctypes.c_uint32), ("head_dim", ctypes.c_uint32),
                ("block_tokens", ctypes.c_uint32), ("dtype", ctypes.c_uint32),
                ("kv_order", ctypes.c_uint32), ("rank", ctypes.c_uint32),
                ("world", ctypes.c_uint32), ("model_id", ctypes.c_char * 64)]


class _Reservation(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("len", ctypes.c_size_t),
                ("handle", ctypes.c_uint64), ("layout", ctypes.c_int), ("key", _Key)]


class _Lease(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("len", ctypes.c_size_t),
                ("handle", ctypes.c_uint64)]


_STATS_FIELDS = ("puts", "gets", "hits", "misses", "lookups", "host_capacity_bytes",
                 "host_used_bytes", "host_blocks", "evictions", "host_hits", "host_misses",
                 "promotions", "prefetch_useful", "prefetch_late")


class _Stats(ctypes.Structure):
    _fields_ = ([("size", ctypes.c_uint32), ("pad", ctypes.c_uint32)] +
                [(f, ctypes.c_uint64) for f in _STATS_FIELDS])


def _find_library() -> str:
    env = os.environ.get("KVTIER_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    local = os.path.normpath(os.path.join(here, "..", "..", "..", "build", "client",
                                          "libkvtier.so"))
    if os.path.exists(local):
        return local
    # The installed library through the loader: its SONAME first (no -dev symlink needed),
    # then whatever find_library reports (ldconfig's cache, gcc's search path).
    for name in ("libkvtier.so.0", "libkvtier.so"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            pass
    found = ctypes.util.find_library("kvtier")
    if found:
        return found
    raise ImportError("libkvtier not found: install it (ldconfig), or set $KVTIER_LIB to the "
                      "path of libkvtier.so")


_MISSING: set = set()


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_find_library())
    P = ctypes.POINTER
    c_client = ctypes.c_void_p
    sigs = {
        "kvt_version": (ctypes.c_char_p, []),
        "kvt_version_number": (ctypes.c_uint, []),
        "kvt_strerror": (ctypes.c_char_p, [ctypes.c_int]),
        "kvt_connect": (ctypes.c_int, [P(_ConnectOpts), P(c_client)]),
        "kvt_close": (None, [c_client]),
        "kvt_layout_check": (ctypes.c_int, [P(_Layout)]),
        "kvt_layout_block_bytes": (ctypes.c_size_t, [P(_Layout)]),
        "kvt_layout_layer_bytes": (ctypes.c_size_t, [P(_Layout)]),
        "kvt_layout_fingerprint": (ctypes.c_uint64, [P(_Layout)]),
        "kvt_register_layout": (ctypes.c_int, [c_client, P(_Layout)]),
        "kvt_key_chain": (ctypes.c_int, [ctypes.c_uint64, ctypes.c_uint32, P(_Key),
                                         ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                         ctypes.c_size_t]),
        "kvt_put_reserve": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key), ctypes.c_size_t,
                                           P(_Reservation)]),
        "kvt_put_commit": (ctypes.c_int, [c_client, P(_Reservation)]),
        "kvt_put_commit_at": (ctypes.c_int, [c_client, P(_Reservation), ctypes.c_uint32]),
        "kvt_put_abort": (ctypes.c_int, [c_client, P(_Reservation)]),
        "kvt_put": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key), ctypes.c_void_p,
                                   ctypes.c_size_t]),
        "kvt_lookup": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_size_t]),
        "kvt_get": (ctypes.c_ssize_t, [c_client, ctypes.c_int, P(_Key), ctypes.c_void_p,
                                       ctypes.c_size_t]),
        "kvt_get_lease": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key), P(_Lease)]),
        "kvt_lease_release": (ctypes.c_int, [c_client, P(_Lease)]),
        "kvt_delete": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key)]),
        "kvt_pin": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key)]),
        "kvt_unpin": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key)]),
        "kvt_stats": (ctypes.c_int, [c_client, P(_Stats)]),
        "kvt_prefetch": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                                        ctypes.c_uint, ctypes.c_uint32]),
        "kvt_put_batch": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.c_size_t, ctypes.c_void_p]),
        "kvt_get_batch": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                         ctypes.c_void_p]),
        "kvt_lookup_batch": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p,
                                            ctypes.c_size_t, ctypes.c_void_p]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name, None)
        if fn is None:  # an older library: the binding's method reports ENOSYS
            _MISSING.add(name)
            continue
        fn.restype = res
        fn.argtypes = args
    return lib


_lib = _load()

#: the largest n accepted by one kvt_lookup() call (kvtier.h)
_LOOKUP_MAX = 4096


# ---------------------------------------------------------------------------------------------
# Errors

def strerror(code: int) -> str:
    """Message of a kvtier or errno code (sign ignored), from kvt_strerror()."""
    return _lib.kvt_strerror(int(code)).decode("utf-8", "replace")


class KvtError(OSError):
    """A libkvtier call failed.

    ``code`` is the positive error code; ``errno`` equals it for system errno codes
    (``ENOENT``, ``ENOBUFS``, ...) and is ``None`` for kvtier's own codes (``KVT_E*``,
    ``>= KVT_ERRNO_BASE``).  ``strerror`` is kvt_strerror()'s message.
    """

    code: int
    op: str

    def __init__(self, code: int, op: str = "") -> None:
        code = abs(int(code))
        msg = strerror(code)
        if code < KVT_ERRNO_BASE:
            super().__init__(code, msg)
        else:
            super().__init__(msg)
            self.strerror = msg
        self.code = code
        self.op = op

    def __str__(self) -> str:
        where = f"{self.op}: " if self.op else ""
        name = _errno.errorcode.get(self.code) or _KVT_NAMES.get(self.code, str(self.code))
        return f"{where}{self.strerror} ({name})"


_KVT_NAMES = {KVT_EVERSION: "KVT_EVERSION", KVT_ECORRUPT: "KVT_ECORRUPT",
              KVT_ENOLAYOUT: "KVT_ENOLAYOUT", KVT_EDAEMON: "KVT_EDAEMON",
              KVT_EPROTOCOL: "KVT_EPROTOCOL", KVT_ELIMIT: "KVT_ELIMIT"}


def _check(ret: int, op: str) -> int:
    if ret < 0:
        raise KvtError(-ret, op)
    return ret


def version() -> str:
    """Version string of the loaded libkvtier, e.g. ``"0.1.0"``."""
    return _lib.kvt_version().decode()


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

    ``array`` is a read-only view of the block in the arena (no copy); the block cannot be
    evicted, moved or deleted until :meth:`release`.  As a context manager, ``with
    client.lease(lay, key) as view:`` yields the view and releases on exit.  The view must
    not be used after release.
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

    def release(self) -> None:
        if self.released:
            return
        h = self._client._handle()
        self.released = True
        _check(_lib.kvt_lease_release(h, ctypes.byref(self._l)), "kvt_lease_release")

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
        object) of the layout's block_bytes under ``key``: reserve, one copy into the arena,
        commit.  Returns 0 when stored, 1 when the key was already stored (nothing written).
        ``partial=True`` accepts a shorter block (the last, partial block of a prompt);
        anything else of the wrong size or type raises ValueError/TypeError before any
        request.  Raises KvtError otherwise.  ``position``: the block's first token's
        position in its sequence, for codecs that undo RoPE."""
        src = self._block_src(layout, data, partial)
        try:
            res = self.reserve(layout, key, src.size)
        except KvtError as e:
            if e.code == _errno.EEXIST:
                return 1
            raise
        try:
            np.copyto(res.array, src, casting="no")
        except BaseException:
            res.abort()
            raise
        res.commit(position)
        return 0

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
        # Length unknown (or larger than a layout block): read it in place under a lease.
        try:
            with self.lease(lid, ck) as view:
                return _shaped(view.copy(), dtype, shape)
        except KvtError as e:
            if e.code == _errno.ENOENT:
                return None
            raise

    def lease(self, layout: LayoutLike, key: KeyLike, dtype: Any = None,
              shape: Any = None) -> Lease:
        """Borrows a stored block in place: returns a :class:`Lease` whose ``array`` is a
        read-only numpy view of the arena (flat uint8, or ``dtype``/``shape``).  Use it as a
        context manager.  Raises KvtError(ENOENT) on a miss."""
        ck = _to_key(key)
        ls = _Lease()
        _check(_lib.kvt_get_lease(self._handle(), self._lid(layout), ctypes.byref(ck),
                                  ctypes.byref(ls)), "kvt_get_lease")
        try:
            view = _shaped(_arena_view(ls.data, ls.len, readonly=True, keep=self._conn),
                           dtype, shape)
        except Exception:
            _lib.kvt_lease_release(self._c, ctypes.byref(ls))
            raise
        lease = Lease(self, ls, view)
        self._holds.add(lease)
        return lease

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


def save_kvd(path: str, k: np.ndarray, v: np.ndarray, q: Optional[np.ndarray] = None,
             tokens: Optional[Sequence[int]] = None, source: str = "") -> None:
    """Writes a KV dump in the ``.kvd`` format (docs/KVD.md) that ``kvtier-eval``
    reads: to calibrate a codec dictionary (``kvtier-eval dict``) or measure codecs on your
    own model's KV.

    ``k``, ``v``: [layers][kv_heads][tokens][head_dim], keys post-RoPE as the engine's cache
    holds them (fp16; other float types are converted).  ``q``: optional post-RoPE queries of
    the last P positions, [layers][q_heads][P][head_dim] (needed by ``kvtier-eval codec``,
    not by ``dict``).  ``tokens``: the token ids; the format keeps one byte a token (the low
    byte of each id; informational).  From a Hugging Face transformers cache, for the first
    sequence of the batch (as bench/hf_roundtrip.py's cache_layers() reads it)::

        layers = ([(c.keys, c.values) for c in cache.layers] if hasattr(cache, "layers")
                  else list(zip(cache.key_cache, cache.value_cache)))
        k = np.stack([kk[0].float().cpu().numpy() for kk, _ in layers])
        v = np.stack([vv[0].float().cpu().numpy() for _, vv in layers])

    The file is written whole or not at all (a temporary renamed in place)."""
    k = np.ascontiguousarray(np.asarray(k, dtype=np.float16))
    v = np.ascontiguousarray(np.asarray(v, dtype=np.float16))
    if k.ndim != 4 or k.shape != v.shape or 0 in k.shape:
        raise ValueError(f"save_kvd: k and v must be equal [L][H][T][D] arrays, got "
                         f"{k.shape} and {v.shape}")
    n_layers, n_kv, n_tok, dim = k.shape
    if q is None:
        q = np.zeros((n_layers, n_kv, 0, dim), dtype=np.float16)
    q = np.ascontiguousarray(np.asarray(q, dtype=np.float16))
    if q.ndim != 4 or q.shape[0] != n_layers or q.shape[3] != dim or q.shape[1] % n_kv \
            or q.shape[2] > n_tok:
        raise ValueError(f"save_kvd: q must be [{n_layers}][a multiple of {n_kv}][P <= "
                         f"{n_tok}][{dim}], got {q.shape}")
    tok = np.zeros(n_tok, dtype=np.uint8) if tokens is None else \
        (np.asarray(tokens, dtype=np.int64) & 0xff).astype(np.uint8)
    if tok.size != n_tok:
        raise ValueError(f"save_kvd: {tok.size} tokens for {n_tok} positions")
    name = source.encode()[:63]
    hdr = b"KVDUMP01" + np.array([n_layers, n_kv, q.shape[1], dim, n_tok, q.shape[2], 1,
                                  len(name)], dtype="<u4").tobytes() + name.ljust(64, b"\0")
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            for part in (hdr, tok.tobytes(), k.astype("<f2").tobytes(),
                         v.astype("<f2").tobytes(), q.astype("<f2").tobytes()):
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Device API (kvt_dev_*): KV pages on the GPU <-> the GPU and host tiers, no CPU copies.

class _DevPages(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("n_layers", ctypes.c_uint32),
                ("layer_base", ctypes.POINTER(ctypes.c_uint64)),
                ("page_bytes", ctypes.c_uint64), ("block_stride", ctypes.c_uint64),
                ("kv_stride", ctypes.c_uint64), ("n_kv", ctypes.c_uint32),
                ("pages_per_block", ctypes.c_uint32)]


class _DevOpts(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("device", ctypes.c_int32),
                ("socket_path", ctypes.c_char_p), ("flags", ctypes.c_uint32)]


_DEV_COUNTS = ("gpu_puts", "host_puts", "gpu_gets", "host_gets")


class _DevInfo(ctypes.Structure):
    _fields_ = ([("size", ctypes.c_uint32), ("gpu_tier", ctypes.c_int32),
                 ("epoch", ctypes.c_uint64), ("pool_bytes", ctypes.c_uint64),
                 ("uuid", ctypes.c_char * 41), ("reattaches", ctypes.c_uint32)] +
                [(f, ctypes.c_uint64) for f in _DEV_COUNTS])


#: kvt_dev_open / put / get flag: leave the GPU tier out, use the host tier only
DEV_HOST_ONLY = 1


def _dev_sigs() -> None:
    P = ctypes.POINTER
    vp = ctypes.c_void_p
    sigs = {
        "kvt_dev_available": (ctypes.c_int, []),
        "kvt_dev_open": (ctypes.c_int, [vp, P(_DevOpts), P(vp)]),
        "kvt_dev_close": (None, [vp]),
        "kvt_dev_layout": (ctypes.c_int, [vp, P(_Layout)]),
        "kvt_dev_put": (ctypes.c_int, [vp, ctypes.c_int, P(_DevPages), vp, vp, ctypes.c_size_t,
                                       ctypes.c_uint, vp]),
        "kvt_dev_get": (ctypes.c_int, [vp, ctypes.c_int, P(_DevPages), vp, vp, ctypes.c_size_t,
                                       ctypes.c_uint, vp]),
        "kvt_dev_info": (ctypes.c_int, [vp, P(_DevInfo)]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(_lib, name, None)
        if fn is None:
            _MISSING.add(name)
            continue
        fn.restype = res
        fn.argtypes = args


_dev_sigs()


def dev_available() -> int:
    """Number of GPUs libkvtier can use (0 without a GPU or without CUDA support)."""
    if "kvt_dev_available" in _MISSING:
        return 0
    return int(_lib.kvt_dev_available())


class DevPages:
    """Where an engine keeps its KV pages (``struct kvt_dev_pages``).

    ``layer_ptrs``: one device address per layer (``tensor.data_ptr()``); ``page_bytes``:
    bytes of one engine block's K (or V) in one layer; ``block_stride``: bytes between engine
    blocks; ``kv_stride``: bytes from a page's K to its V; ``n_kv``: 2, or 1 for one buffer.
    """

    def __init__(self, layer_ptrs: Sequence[int], page_bytes: int, block_stride: int,
                 kv_stride: int, n_kv: int = 2, pages_per_block: int = 1) -> None:
        self._bases = (ctypes.c_uint64 * len(layer_ptrs))(*[int(p) for p in layer_ptrs])
        self._c = _DevPages(ctypes.sizeof(_DevPages), len(layer_ptrs), self._bases,
                            page_bytes, block_stride, kv_stride, n_kv, pages_per_block)

    @classmethod
    def vllm(cls, kv_caches: Sequence[Any], pages_per_block: int = 1) -> "DevPages":
        """From vLLM's per-layer tensors of shape [2, num_blocks, block_size, heads, dim]
        (contiguous, on the GPU; torch tensors or anything with ``data_ptr()``, ``shape``
        and ``element_size()``)."""
        t = kv_caches[0]
        two, num_blocks = int(t.shape[0]), int(t.shape[1])
        if two != 2:
            raise KvtError(_errno.EINVAL, "vllm pages: first dimension must be 2 (K, V)")
        page = int(t.numel() // (2 * num_blocks)) * int(t.element_size())
        return cls([x.data_ptr() for x in kv_caches], page, page, num_blocks * page, 2,
                   pages_per_block)


def _stream_arg(stream: Any) -> Optional[int]:
    if stream is None:
        return None
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        return int(stream.cuda_stream) or None
    return int(stream) or None


class Device:
    """libkvtier's device API on a :class:`Client` (``struct kvt_dev``); a context manager.

    ``device``: CUDA ordinal of the engine's GPU (-1: current); ``socket``: the daemon's
    socket as given to the Client.  Raises KvtError(ENODEV) without a GPU or CUDA support.
    Close it before the client.
    """

    def __init__(self, client: Client, device: int = -1, socket: Optional[str] = None,
                 host_only: bool = False) -> None:
        self._d: Optional[int] = None
        self._client = client
        if "kvt_dev_open" in _MISSING:
            raise KvtError(_errno.ENOSYS, "kvt_dev_open")
        opts = _DevOpts(ctypes.sizeof(_DevOpts), device,
                        os.fsencode(socket) if socket is not None else None,
                        DEV_HOST_ONLY if host_only else 0)
        h = ctypes.c_void_p()
        _check(_lib.kvt_dev_open(client._handle(), ctypes.byref(opts), ctypes.byref(h)),
               "kvt_dev_open")
        self._conn = client._conn  # the client's struct outlives this device
        self._d = h.value

    def close(self) -> None:
        if self._d is not None:
            _lib.kvt_dev_close(self._d)
            self._d = None

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self.close()

    def _handle(self) -> int:
        if self._d is None:
            raise KvtError(_errno.EBADF, "device is closed")
        return self._d

    def register_layout(self, layout: Layout) -> int:
        """Registers layout for device calls (and on the client); returns its device id."""
        return _check(_lib.kvt_dev_layout(self._handle(), ctypes.byref(layout._c)),
                      "kvt_dev_layout")

    def _call(self, fn: Any, name: str, lid: int, pages: DevPages, keys: Any, ids: Any,
              stream: Any, host_only: bool) -> int:
        ka = _keys_array(keys)
        ia = np.ascontiguousarray(np.asarray(ids, dtype=np.uint32))
        n = len(ka)
        if ia.size != n * pages._c.pages_per_block:
            raise KvtError(_errno.EINVAL, f"{name}: need {n * pages._c.pages_per_block} ids")
        return _check(fn(self._handle(), lid, ctypes.byref(pages._c), ka.ctypes.data,
                         ia.ctypes.data, n, DEV_HOST_ONLY if host_only else 0,
                         _stream_arg(stream)), name)

    def put(self, lid: int, pages: DevPages, keys: Any, ids: Any, stream: Any = None,
            host_only: bool = False) -> int:
        """Stores the engine blocks ``ids`` under ``keys``; returns the blocks stored (or
        already there).  The copies follow the work already queued on ``stream``."""
        return self._call(_lib.kvt_dev_put, "kvt_dev_put", lid, pages, keys, ids, stream,
                          host_only)

    def get(self, lid: int, pages: DevPages, keys: Any, ids: Any, stream: Any = None,
            host_only: bool = False) -> int:
        """Loads ``keys`` into the engine blocks ``ids``; returns the leading blocks loaded."""
        return self._call(_lib.kvt_dev_get, "kvt_dev_get", lid, pages, keys, ids, stream,
                          host_only)

    def info(self) -> dict:
        st = _DevInfo()
        st.size = ctypes.sizeof(_DevInfo)
        _check(_lib.kvt_dev_info(self._handle(), ctypes.byref(st)), "kvt_dev_info")
        d = {f: int(getattr(st, f)) for f in ("gpu_tier", "epoch", "pool_bytes",
                                              "reattaches") + _DEV_COUNTS}
        d["uuid"] = st.uuid.decode()
        return d


__all__ += ["Device", "DevPages", "dev_available", "DEV_HOST_ONLY"]
