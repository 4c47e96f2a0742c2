# SPDX-License-Identifier: MIT
"""The device API (kvt_dev_*): KV pages on the GPU <-> the GPU and host tiers, no CPU copies:
Device, DevPages, dev_available()."""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from typing import Any, Optional, Sequence

import numpy as np

from ._clib import _Layout, _lib, _MISSING
from ._errors import _check, KvtError
from ._keys import _keys_array, Layout
from .client import Client

# ---------------------------------------------------------------------------------------------
# Device API (kvt_dev_*): KV pages on the GPU <-> the GPU and host tiers, no CPU copies.

class _DevPages(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("n_layers", ctypes.c_uint32),
                ("layer_base", ctypes.POINTER(ctypes.c_uint64)),
                ("page_bytes", ctypes.c_uint64), ("block_stride", ctypes.c_uint64),
                ("kv_stride", ctypes.c_uint64), ("n_kv", ctypes.c_uint32),
                ("pages_per_block", ctypes.c_uint32), ("page_heads", ctypes.c_uint32)]


class _DevOpts(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("device", ctypes.c_int32),
                ("socket_path", ctypes.c_char_p), ("flags", ctypes.c_uint32)]


_DEV_COUNTS = ("gpu_puts", "host_puts", "gpu_gets", "host_gets", "wait_ns", "gpu_encodes",
               "gpu_decodes", "cpu_decodes", "daemon_ns", "queue_ns")


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
    blocks; ``kv_stride``: bytes from a page's K to its V; ``n_kv``: 2, or 1 for one buffer;
    ``page_heads``: 0 to store pages byte for byte, or H when a page is token-major
    ``[block_size][H][dim]``: blocks are then stored in the layout's ``[head][token][dim]``
    order (``struct kvt_dev_pages``, client/kvtier.h).
    """

    def __init__(self, layer_ptrs: Sequence[int], page_bytes: int, block_stride: int,
                 kv_stride: int, n_kv: int = 2, pages_per_block: int = 1,
                 page_heads: int = 0) -> None:
        self._bases = (ctypes.c_uint64 * len(layer_ptrs))(*[int(p) for p in layer_ptrs])
        self._c = _DevPages(ctypes.sizeof(_DevPages), len(layer_ptrs), self._bases,
                            page_bytes, block_stride, kv_stride, n_kv, pages_per_block,
                            page_heads)

    @classmethod
    def vllm(cls, kv_caches: Sequence[Any], pages_per_block: int = 1,
             abi_order: Optional[bool] = None) -> "DevPages":
        """From vLLM's per-layer tensors of shape [2, num_blocks, block_size, heads, dim]
        (contiguous, on the GPU; torch tensors or anything with ``data_ptr()``, ``shape``
        and ``element_size()``).  ``abi_order``: store blocks in the layout's
        ``[head][token][dim]`` order (``page_heads = heads``), as CPU readers and the bq host
        codec expect; False: the pages are stored as they are (token-major).  Default: on
        for tensors of that 5-D shape, off for others (flattened pages, where the heads
        cannot be told)."""
        t = kv_caches[0]
        two, num_blocks = int(t.shape[0]), int(t.shape[1])
        if two != 2:
            raise KvtError(_errno.EINVAL, "vllm pages: first dimension must be 2 (K, V)")
        if abi_order is None:
            abi_order = len(t.shape) == 5
        if abi_order and len(t.shape) != 5:
            raise KvtError(_errno.EINVAL, "vllm pages: abi_order needs [2, blocks, size, heads,"
                           " dim] tensors")
        page = int(t.numel() // (2 * num_blocks)) * int(t.element_size())
        return cls([x.data_ptr() for x in kv_caches], page, page, num_blocks * page, 2,
                   pages_per_block, int(t.shape[3]) if abi_order else 0)


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
