# SPDX-License-Identifier: MIT
"""libkvtier loaded through ctypes: the constants and struct mirrors of client/kvtier.h,
the library search and the C signatures (part of the kvtier package; see __init__)."""

from __future__ import annotations

import ctypes
import ctypes.util
import ctypes.util
import os
from typing import Tuple, Union

import numpy as np

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
                ("handle", ctypes.c_uint64), ("raw_len", ctypes.c_size_t),
                ("chain_id", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


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
        "kvt_put_at": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key), ctypes.c_uint32,
                                      ctypes.c_void_p, ctypes.c_size_t]),
        "kvt_lookup": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_size_t]),
        "kvt_get": (ctypes.c_ssize_t, [c_client, ctypes.c_int, P(_Key), ctypes.c_void_p,
                                       ctypes.c_size_t]),
        "kvt_get_lease": (ctypes.c_int, [c_client, ctypes.c_int, P(_Key), P(_Lease)]),
        "kvt_lease_release": (ctypes.c_int, [c_client, P(_Lease)]),
        "kvt_lease_decode": (ctypes.c_ssize_t, [c_client, P(_Lease), ctypes.c_void_p,
                                                ctypes.c_size_t]),
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
        "kvt_get_lease_batch": (ctypes.c_int, [c_client, ctypes.c_int, ctypes.c_void_p,
                                               ctypes.c_void_p, ctypes.c_size_t,
                                               ctypes.c_void_p]),
        "kvt_put_encodes": (ctypes.c_int, [c_client, ctypes.c_int]),
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
