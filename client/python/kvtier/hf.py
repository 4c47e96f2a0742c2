# SPDX-License-Identifier: MIT
"""kvtier as the prefix cache of a Hugging Face transformers model.

Two calls around ``model.generate``::

    import kvtier.hf
    kv = kvtier.hf.PrefixCache(model)                   # once: the model's KV geometry

    cache = kv.restore(input_ids)                       # the cached prefix, or None
    out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)
    kv.store(input_ids, cache)                          # the prompt's blocks, for next time

:meth:`PrefixCache.restore` looks up the prompt's blocks (64 tokens each, keys chained over
the token ids as :func:`kvtier.key_chain` computes them), loads the leading ones that are
stored straight into the tensors of a transformers ``DynamicCache`` and returns it; ``generate``
then runs the model on the tokens that are not in it (a partial hit restores what is there and
the rest is computed as usual).  The last prompt token is always left out of the cache: the
model must run on it to produce the logits of the first new token.  :meth:`PrefixCache.store`
writes the full blocks of the prompt that the daemon does not hold yet.

With the model on a GPU, blocks move with libkvtier's device API: one ``kvt_dev_get`` (or
``kvt_dev_put``) for all blocks, on the caller's CUDA stream, between the daemon's tiers and
the cache tensors themselves (DMA from the registered host arena, or device-to-device from the
daemon's GPU tier): no pinned staging buffer and no Python loop per block.  The cache tensors
are preallocated for the prompt plus ``max_new_tokens`` and the cache layers write new tokens
in place, so neither the restore nor decoding copies the whole cache as ``DynamicCache``'s
``torch.cat`` does.  On the CPU (a CPU model, or numpy arrays in tests) the same block layout
is copied through the host arena with :meth:`kvtier.Client.reserve` / :meth:`kvtier.Client.lease`.

Block layout: kvtier's page-first order, per layer K then V, each ``[head][token][dim]`` (the
``block_shape`` of :class:`kvtier.Layout`), in the model's dtype.  A cache tensor
``[1, heads, tokens, dim]`` whose token rows are contiguous holds page (head h, block b) at
row ``h * head_stride + b * block_tokens``: the device API is given one "layer" per K or V
tensor, a page of ``block_tokens`` rows and an engine block id per (block, head).

Failures never break generation: without a daemon (or when it goes away) :meth:`restore`
returns None (``generate`` computes the prompt as without kvtier) and :meth:`store` returns 0;
a retry waits ``retry_s``.  Models whose cache is not one full-attention ``DynamicLayer`` per
layer (sliding windows, hybrid models), batches of more than one sequence, and dtypes other
than fp16/bf16 fall back the same way, with one warning each.  Not thread-safe: one
PrefixCache per thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import (KVT_EDAEMON, Client, Device, DevPages, KvtError, Layout, dev_available,
               key_chain)

__all__ = ["PrefixCache", "Unsupported"]

log = logging.getLogger(__name__)


class Unsupported(Exception):
    """A model, cache or tensor that kvtier.hf cannot map onto kvtier blocks (the caller
    falls back to computing the prompt)."""


# ---------------------------------------------------------------------------------------------
# Tensors: torch or numpy, read through one small interface


def _desc(a: Any) -> Tuple[int, Tuple[int, ...], Tuple[int, ...], int]:
    """(address, shape, strides in elements, element size) of a torch tensor or numpy array."""
    if isinstance(a, np.ndarray):
        isz = a.itemsize
        st = tuple(s // isz if s % isz == 0 else -1 for s in a.strides)
        return int(a.__array_interface__["data"][0]), tuple(a.shape), st, isz
    return int(a.data_ptr()), tuple(a.shape), tuple(a.stride()), int(a.element_size())


def _is_cuda(a: Any) -> bool:
    return bool(getattr(a, "is_cuda", False))


def _empty_like(a: Any, shape: Tuple[int, ...]) -> Any:
    if isinstance(a, np.ndarray):
        return np.empty(shape, dtype=a.dtype)
    return a.new_empty(shape)


def _kvt_dtype(dtype: Any) -> Optional[str]:
    """kvtier's name of a torch / numpy / kvtier dtype, or None when kvtier cannot store it."""
    if isinstance(dtype, str) and dtype in ("fp16", "bf16"):
        return dtype
    name = str(dtype)
    if not name.startswith("torch."):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if "bfloat16" in name:
        return "bf16"
    if name.endswith("float16"):
        return "fp16"
    return None


def _tokens(input_ids: Any) -> np.ndarray:
    """Token ids of one sequence as uint32: a 1-D sequence, or a [1, T] batch."""
    if hasattr(input_ids, "detach"):
        input_ids = input_ids.detach().cpu().numpy()
    a = np.asarray(input_ids)
    if a.ndim == 2:
        if a.shape[0] != 1:
            raise Unsupported(f"a batch of {a.shape[0]} sequences (kvtier.hf takes one)")
        a = a[0]
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(f"input_ids: expected integer token ids, [T] or [1, T], got shape "
                         f"{a.shape} of {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= 2**32):
        raise ValueError("input_ids: token ids must be in [0, 2**32)")
    return a.astype(np.uint32)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


# ---------------------------------------------------------------------------------------------
# Where blocks live in a cache's tensors


class Pages:
    """The page map of one cache: per layer a K and a V tensor ``[1, H, T, D]`` (the token
    rows contiguous, the same head stride in every tensor).

    Given to the device API as ``2 * n_layers`` "layers" (K0, V0, K1, V1, ...) of one tensor
    each (``n_kv = 1``), pages of ``block_tokens`` rows, ``pages_per_block = H`` and engine
    block ids counted in rows: page (head h, block b) is row ``h * head_rows + b *
    block_tokens``, so a kvtier block is ``[layer][K, V][head][token][dim]``.
    """

    def __init__(self, layers: Sequence[Tuple[Any, Any]], n_kv_heads: int, head_dim: int,
                 elem_size: int, block_tokens: int) -> None:
        if not layers:
            raise Unsupported("a cache without layers")
        ptrs: List[int] = []
        head_stride = None
        tokens = None
        for k, v in layers:
            for t in (k, v):
                p, shape, st, esz = _desc(t)
                if (len(shape) != 4 or shape[0] != 1 or shape[1] != n_kv_heads or
                        shape[3] != head_dim or esz != elem_size):
                    raise Unsupported(f"cache tensor of shape {shape} and element size {esz}: "
                                      f"expected [1, {n_kv_heads}, T, {head_dim}] of "
                                      f"{elem_size}-byte elements")
                # pages of rows: contiguous rows, heads apart by whole rows, not overlapping
                hs = st[1] if n_kv_heads > 1 else 0
                if st[3] != 1 or st[2] != head_dim or (n_kv_heads > 1 and (
                        hs % head_dim or hs < shape[2] * head_dim)):
                    raise Unsupported(f"cache tensor strides {st}: token rows must be "
                                      f"contiguous")
                if head_stride is None:
                    head_stride = hs
                elif hs != head_stride:
                    raise Unsupported("cache tensors of different head strides")
                tokens = shape[2] if tokens is None else min(tokens, shape[2])
                ptrs.append(p)
        self.ptrs = ptrs
        self.n_layers = len(layers)
        self.heads = n_kv_heads
        self.block_tokens = block_tokens
        self.row_bytes = head_dim * elem_size
        self.page_bytes = block_tokens * self.row_bytes
        self.head_rows = head_stride // head_dim
        self.tokens = tokens  # rows every tensor has
        self.block_bytes = len(ptrs) * n_kv_heads * self.page_bytes

    def ids(self, first_block: int, n: int) -> np.ndarray:
        """Engine block ids (rows) of blocks first_block .. first_block + n - 1, H each."""
        blk = np.arange(first_block, first_block + n, dtype=np.int64)[:, None] * \
            self.block_tokens
        head = np.arange(self.heads, dtype=np.int64)[None, :] * self.head_rows
        ids = (blk + head).reshape(-1)
        if ids.size and int(ids.max()) >= 2**32:
            raise Unsupported("cache too long for 32-bit page ids")
        return ids.astype(np.uint32)

    def dev_pages(self) -> DevPages:
        return DevPages(self.ptrs, self.page_bytes, self.row_bytes, 0, n_kv=1,
                        pages_per_block=self.heads)

    def copy_block(self, block: int, addr: int, to_block: bool) -> None:
        """Host copy of one block between the tensors and block memory at addr (the same
        offsets as kvt_gpu_paged_segments: ((layer * n_kv + kv) * H + page) * page_bytes)."""
        import ctypes
        ids = self.ids(block, 1)
        off = 0
        for base in self.ptrs:
            for j in range(self.heads):
                page = base + int(ids[j]) * self.row_bytes
                if to_block:
                    ctypes.memmove(addr + off, page, self.page_bytes)
                else:
                    ctypes.memmove(page, addr + off, self.page_bytes)
                off += self.page_bytes


# ---------------------------------------------------------------------------------------------
# Cache layers that write new tokens in place


class _InPlaceLayer:
    """Mixed in front of a transformers cache layer class (DynamicLayer): keys/values are
    views ``[:, :, :n]`` of one preallocated ``[2, 1, H, capacity, D]`` tensor, and update()
    writes the new tokens after them instead of concatenating.  When the views were replaced
    (beam reordering, batch repeats) or the states do not fit (another batch size), the
    layer drops the storage and is the base class again; a crop() keeps it (its views still
    start at the storage)."""

    _kvt_store: Any = None

    def _kvt_attach(self, store: Any, n: int) -> None:
        self._kvt_store = store
        self.keys = store[0][:, :, :n]
        self.values = store[1][:, :, :n]
        self.dtype = store.dtype
        self.device = getattr(store, "device", "cpu")
        self.is_initialized = True
        self.cumulative_length = n  # the counter some layer classes keep

    def _kvt_len(self) -> Optional[int]:
        """Tokens in the cache while keys/values are still views of the storage, else None."""
        st = self._kvt_store
        if st is None or self.keys is None or self.values is None:
            return None
        pk, shk, sk, _ = _desc(self.keys)
        pv, shv, sv, _ = _desc(self.values)
        p0, sh0, s0, _ = _desc(st[0])
        p1, _, s1, _ = _desc(st[1])
        if (pk != p0 or pv != p1 or sk != s0 or sv != s1 or shk != shv or
                shk[:2] != sh0[:2] or shk[3] != sh0[3] or shk[2] > sh0[2]):
            return None
        return shk[2]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
        n = self._kvt_len()
        st = self._kvt_store
        if (n is None or tuple(key_states.shape) != tuple(value_states.shape) or
                key_states.shape[0] != 1 or key_states.shape[1] != st.shape[2] or
                key_states.shape[3] != st.shape[4] or key_states.dtype != st.dtype):
            self._kvt_store = None
            return super().update(key_states, value_states, *args, **kwargs)  # type: ignore
        t = key_states.shape[2]
        if n + t > st.shape[3]:
            st = self._kvt_grow(n, n + t)
        st[0][:, :, n:n + t] = key_states
        st[1][:, :, n:n + t] = value_states
        self.keys = st[0][:, :, :n + t]
        self.values = st[1][:, :, :n + t]
        self.cumulative_length = n + t
        return self.keys, self.values

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        n = self._kvt_len()
        return super().get_seq_length(*args, **kwargs) if n is None else n  # type: ignore

    def _kvt_grow(self, n: int, need: int) -> Any:
        old = self._kvt_store
        cap = _round_up(max(need, old.shape[3] + old.shape[3] // 2), 256)
        new = _empty_like(old, (2, 1, old.shape[2], cap, old.shape[4]))
        new[:, :, :, :n] = old[:, :, :, :n]
        self._kvt_store = new
        return new


_INPLACE: dict = {}


def _inplace_class(base: type) -> type:
    if issubclass(base, _InPlaceLayer):
        return base
    cls = _INPLACE.get(base)
    if cls is None:
        name = "KvtierInPlace" + base.__name__
        cls = type(name, (_InPlaceLayer, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls  # so that pickle finds it
        _INPLACE[base] = cls
    return cls


def attach(cache: Any, stores: Sequence[Any], n: int) -> Any:
    """Makes the layers of a transformers cache hold stores[l] (``[2, 1, H, capacity, D]``)
    with n tokens each, and write new tokens in place.  Returns the cache.  Raises
    Unsupported for a cache that is not made of full-attention layers with keys/values."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise Unsupported(f"{type(cache).__name__} has no .layers (transformers >= 4.56 has)")
    while len(layers) < len(stores):
        cls = getattr(cache, "layer_class_to_replicate", None)
        if cls is None:
            if not layers:
                raise Unsupported(f"{type(cache).__name__} has no layers to copy")
            cls = type(layers[0])
        layers.append(cls())
    if len(layers) != len(stores):
        raise Unsupported(f"the cache has {len(layers)} layers, the model {len(stores)}")
    for lay in layers:
        if getattr(lay, "is_sliding", False) or not hasattr(lay, "update") or \
                not hasattr(lay, "keys"):
            raise Unsupported(f"cache layer {type(lay).__name__} (sliding window or not "
                              f"key/value)")
    for i, st in enumerate(stores):
        layers[i] = _as_inplace(layers[i])
        layers[i]._kvt_attach(st, n)
    return cache


def _slot_names(cls: type) -> List[str]:
    names: List[str] = []
    for k in cls.__mro__:
        sl = k.__dict__.get("__slots__", ())
        names += [sl] if isinstance(sl, str) else [x for x in sl if x not in ("__dict__",
                                                                          "__weakref__")]
    return names


def _as_inplace(lay: Any) -> Any:
    """lay as an instance of its in-place class: the same object where Python allows the
    class change, else (a base with __slots__, as transformers' DynamicLayer has: the
    mixin's __dict__ changes the object layout) a new object carrying lay's state."""
    cls = _inplace_class(type(lay))
    if type(lay) is cls:
        return lay
    try:
        lay.__class__ = cls
        return lay
    except TypeError:
        pass
    new = cls.__new__(cls)
    for name in _slot_names(type(lay)):
        if hasattr(lay, name):
            setattr(new, name, getattr(lay, name))
    new.__dict__.update(getattr(lay, "__dict__", {}))
    return new


def cache_kv(cache: Any) -> List[Tuple[Any, Any]]:
    """[(keys, values)] per layer of a transformers cache (``.layers``, the older
    ``key_cache``/``value_cache`` lists, or legacy tuples)."""
    if hasattr(cache, "layers"):
        return [(lay.keys, lay.values) for lay in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(kv[0], kv[1]) for kv in cache]


# ---------------------------------------------------------------------------------------------
# Moving blocks


class _HostMover:
    """Blocks between host tensors and the arena: memmove of each page, no staging."""

    def __init__(self, client: Client, layout: Layout) -> None:
        self.c = client
        self.lay = layout

    def get(self, pages: Pages, keys: np.ndarray, first: int) -> int:
        for i in range(len(keys)):
            try:
                lease = self.c.lease(self.lay, keys[i])
            except KvtError as e:
                if e.code in (errno.ENOENT, errno.ENOSPC):  # the prefix ends here, or no
                    return i  # host room to promote it from NVMe
                raise
            try:
                if lease.array.size != pages.block_bytes:
                    return i  # stored with another geometry
                pages.copy_block(first + i, lease.array.ctypes.data, to_block=False)
            finally:
                lease.release()
        return len(keys)

    def put(self, pages: Pages, keys: np.ndarray, first: int) -> int:
        for i in range(len(keys)):
            try:
                res = self.c.reserve(self.lay, keys[i], pages.block_bytes)
            except KvtError as e:
                if e.code == errno.EEXIST:  # stored meanwhile
                    continue
                if e.code == errno.ENOSPC:  # everything leased or pinned: keep what is in
                    return i
                raise
            try:
                pages.copy_block(first + i, res.array.ctypes.data, to_block=True)
            except BaseException:
                res.abort()
                raise
            res.commit((first + i) * pages.block_tokens)
        return len(keys)

    def close(self) -> None:
        pass


class _DevMover:
    """Blocks between CUDA tensors and the daemon's tiers: one kvt_dev_get / kvt_dev_put for
    all blocks, on the caller's stream."""

    def __init__(self, client: Client, layout: Layout, device: int, socket: Optional[str],
                 host_only: bool) -> None:
        self.dev = Device(client, device, socket, host_only)
        self.lid = self.dev.register_layout(layout)
        self.host_only = host_only
        self.device = device
        self._side = None

    def _stream(self) -> Any:
        """The caller's current stream.  The legacy default stream has no handle to pass (the
        library would take NULL for its own, unordered stream): then a side stream that first
        waits for the work already queued on it."""
        import torch
        cur = torch.cuda.current_stream(self.device)
        if cur.cuda_stream:
            return cur
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(cur)
        return self._side

    def get(self, pages: Pages, keys: np.ndarray, first: int) -> int:
        return self.dev.get(self.lid, pages.dev_pages(), keys, pages.ids(first, len(keys)),
                            stream=self._stream(), host_only=self.host_only)

    def put(self, pages: Pages, keys: np.ndarray, first: int) -> int:
        return self.dev.put(self.lid, pages.dev_pages(), keys, pages.ids(first, len(keys)),
                            stream=self._stream(), host_only=self.host_only)

    def close(self) -> None:
        self.dev.close()


# ---------------------------------------------------------------------------------------------
# The application's object


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except TypeError:
            pass
    return config


def _geometry(config: Any) -> Tuple[int, int, int]:
    """(layers, KV heads, head dim) of a transformers config; Unsupported when its layers
    are not all full attention."""
    c = _text_config(config)
    L = int(c.num_hidden_layers)
    q_heads = int(c.num_attention_heads)
    H = int(getattr(c, "num_key_value_heads", None) or q_heads)
    D = int(getattr(c, "head_dim", None) or c.hidden_size // q_heads)
    types = getattr(c, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        raise Unsupported(f"layer types {sorted(set(types))}: only full attention")
    if not types and getattr(c, "sliding_window", None) and \
            getattr(c, "use_sliding_window", True):
        raise Unsupported("a sliding-window model")
    return L, H, D


def _model_id(config: Any, L: int, H: int, D: int) -> str:
    c = _text_config(config)
    name = str(getattr(config, "_name_or_path", "") or "") or \
        f"{getattr(c, 'model_type', 'model')}-{L}x{H}x{D}"
    if len(name.encode()) <= 63:
        return name
    h = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[-50:].decode("utf-8", "ignore") + "#" + h


class PrefixCache:
    """kvtier as the prefix cache of one transformers model (see the module's text).

    ``model``: a transformers model (its ``config``, ``dtype`` and ``device`` are used), or
    give ``config``, ``dtype`` and ``device`` alone.  ``socket``: the daemon's socket (None:
    ``$KVTIER_SOCKET``, then the default paths).  ``model_id``: names the model in the layout
    fingerprint (default: the config's ``_name_or_path``): blocks are shared only between
    processes that give the same model_id and geometry.  ``block_tokens``: tokens per kvtier
    block.  ``host_only``: leave the daemon's GPU tier out.  ``headroom``: tokens of room
    after the prompt when :meth:`restore` is not told ``max_new_tokens`` (the cache grows by
    half when it runs out).  ``retry_s``: after a failed connection, how long calls fall
    back without trying again.  ``alloc`` and ``cache_factory`` replace ``torch.empty`` and
    ``transformers.DynamicCache`` (tests use numpy arrays and a stand-in cache).

    After each call, ``stats`` holds what it did: ``tokens``, ``hit_blocks``,
    ``restored_tokens``, ``tail_tokens`` (restore), ``stored_blocks`` (store), ``seconds``
    and ``fallback`` (the reason when kvtier was not used).
    """

    def __init__(self, model: Any = None, *, config: Any = None, dtype: Any = None,
                 device: Any = None, socket: Optional[str] = None,
                 model_id: Optional[str] = None, block_tokens: int = 64,
                 host_only: bool = False, headroom: int = 256, retry_s: float = 1.0,
                 name: str = "kvtier.hf", timeout_ms: int = 0,
                 alloc: Optional[Callable[[Tuple[int, ...]], Any]] = None,
                 cache_factory: Optional[Callable[[], Any]] = None) -> None:
        if model is not None:
            config = model.config if config is None else config
            dtype = getattr(model, "dtype", None) if dtype is None else dtype
            device = getattr(model, "device", None) if device is None else device
        if config is None:
            raise TypeError("PrefixCache needs a model or a config")
        self.config = config
        self.socket = socket
        self.block_tokens = int(block_tokens)
        self.host_only = host_only
        self.headroom = int(headroom)
        self.retry_s = retry_s
        self.name = name
        self.timeout_ms = timeout_ms
        self.torch_dtype = dtype
        self.device = device
        self._alloc = alloc
        self._cache_factory = cache_factory
        self.stats: dict = {}
        self._client: Optional[Client] = None
        self._movers: dict = {}
        self._retry_at = 0.0
        self._warned: set = set()
        self.unsupported: Optional[str] = None
        self.layout: Optional[Layout] = None
        try:
            L, H, D = _geometry(config)
            kdt = _kvt_dtype(dtype)
            if kdt is None:
                raise Unsupported(f"dtype {dtype} (kvtier stores fp16 and bf16)")
            self.n_layers, self.n_kv_heads, self.head_dim = L, H, D
            self.elem_size = 2
            self.layout = Layout(L, H, D, self.block_tokens, dtype=kdt,
                                 model_id=model_id or _model_id(config, L, H, D))
            self.layout.check()
        except (Unsupported, KvtError) as e:
            self.unsupported = str(e)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        for m in self._movers.values():
            if m is not None:
                m.close()
        self._movers = {}
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "PrefixCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _fallback(self, why: str) -> None:
        self.stats["fallback"] = why
        if why not in self._warned:
            self._warned.add(why)
            log.warning("kvtier.hf: %s; computing without kvtier", why)

    def _connect(self) -> bool:
        if self._client is not None:
            return True
        if time.monotonic() < self._retry_at:
            self.stats["fallback"] = "daemon unavailable (retry pending)"
            return False
        try:
            c = Client(socket=self.socket, name=self.name, timeout_ms=self.timeout_ms)
            try:
                self._reg = c.register_layout(self.layout)
            except BaseException:
                c.close()
                raise
        except KvtError as e:
            self._retry_at = time.monotonic() + self.retry_s
            self._fallback(f"no kvtier daemon ({e})")
            return False
        self._client = c
        return True

    def _lost(self, e: KvtError) -> None:
        """A call failed: the library reconnects a restarted daemon by itself; anything else
        waits retry_s before the next try."""
        if e.code != KVT_EDAEMON:
            self.close()
            self._retry_at = time.monotonic() + self.retry_s
        self._fallback(f"kvtier call failed ({e})")

    def _mover(self, sample: Any) -> Any:
        """The mover for tensors like sample: device API for CUDA tensors, host otherwise."""
        if not _is_cuda(sample):
            key: Any = "host"
        else:
            key = int(sample.device.index or 0)
        if key in self._movers:
            return self._movers[key]
        m: Any = None
        if key == "host":
            m = _HostMover(self._client, self._reg)
        elif dev_available() <= 0:
            self._fallback("libkvtier has no CUDA device support (built without KVT_CUDA?)")
        else:
            try:
                m = _DevMover(self._client, self.layout, key, self.socket, self.host_only)
            except KvtError as e:
                self._fallback(f"kvt_dev_open failed ({e})")
        self._movers[key] = m
        return m

    def _new_cache(self) -> Any:
        if self._cache_factory is not None:
            return self._cache_factory()
        from transformers import DynamicCache
        try:
            return DynamicCache(config=self.config)
        except TypeError:
            return DynamicCache()

    def _new_store(self, capacity: int) -> Any:
        shape = (2, 1, self.n_kv_heads, capacity, self.head_dim)
        if self._alloc is not None:
            return self._alloc(shape)
        import torch
        return torch.empty(shape, dtype=self.torch_dtype, device=self.device)

    # -- the two calls ----------------------------------------------------------------------
    def restore(self, input_ids: Any, max_new_tokens: Optional[int] = None) -> Any:
        """A transformers cache holding the longest stored prefix of input_ids (one sequence:
        ``[T]`` or ``[1, T]``), at most T - 1 tokens; None when kvtier is not usable (then
        generate computes everything, as without kvtier).  Pass it to ``generate`` (or to the
        model with ``input_ids[:, cache.get_seq_length():]``).  Its tensors have room for
        ``max_new_tokens`` (default ``headroom``) more tokens before they grow."""
        t0 = time.perf_counter()
        self.stats = {"tokens": 0, "hit_blocks": 0, "restored_tokens": 0, "tail_tokens": 0}
        if self.unsupported:
            self._fallback(self.unsupported)
            return None
        try:
            tok = _tokens(input_ids)
        except Unsupported as e:
            self._fallback(str(e))
            return None
        T = int(tok.size)
        bt = self.block_tokens
        self.stats.update(tokens=T, tail_tokens=T)
        if not self._connect():
            return None
        extra = self.headroom if max_new_tokens is None else int(max_new_tokens)
        stores = [self._new_store(_round_up(max(T + extra, 1), bt))
                  for _ in range(self.n_layers)]
        nfull = T // bt if T > 1 else 0
        hit = 0
        if nfull:
            try:
                mover = self._mover(stores[0])
                if mover is None:
                    return None
                pages = Pages([(s[0], s[1]) for s in stores], self.n_kv_heads, self.head_dim,
                              self.elem_size, bt)
                keys = key_chain(self.layout, tok[:nfull * bt], as_array=True)
                hit = self._get(mover, pages, keys)
            except KvtError as e:
                self._lost(e)
                return None
            except Unsupported as e:
                self._fallback(str(e))
                return None
        n = min(hit * bt, T - 1) if T else 0
        try:
            cache = attach(self._new_cache(), stores, n)
        except Unsupported as e:
            self._fallback(str(e))
            return None
        self.stats.update(hit_blocks=hit, restored_tokens=n, tail_tokens=T - n,
                          restored_bytes=hit * self.layout.block_bytes,
                          seconds=time.perf_counter() - t0)
        return cache

    def _get(self, mover: Any, pages: Pages, keys: np.ndarray) -> int:
        """Loads the leading stored blocks of keys.  A call stops early, with what it
        loaded, when the host tier had no room left to promote a block from NVMe (its own
        leases hold it): the next call, once those are returned, goes on from there."""
        hit = 0
        for _ in range(8):
            try:
                got = mover.get(pages, keys[hit:], hit)
            except KvtError as e:
                if e.code != errno.ENOSPC:
                    raise
                got = 0
            hit += got
            if not got or hit == len(keys):
                break
        return hit

    def store(self, input_ids: Any, cache: Any) -> int:
        """Stores the full blocks of input_ids whose KV is in cache (the first
        ``min(len(input_ids), cache length) // block_tokens``) and that the daemon does not
        hold yet.  input_ids may be the prompt or prompt + generated tokens.  Returns the
        blocks now stored (0 when kvtier is not usable)."""
        t0 = time.perf_counter()
        self.stats = {"stored_blocks": 0}
        if cache is None:
            return 0
        if self.unsupported:
            self._fallback(self.unsupported)
            return 0
        try:
            tok = _tokens(input_ids)
            layers = cache_kv(cache)
            if len(layers) != self.n_layers or any(k is None for k, _ in layers):
                raise Unsupported(f"a cache of {len(layers)} layers for a model of "
                                  f"{self.n_layers}")
            pages = Pages(layers, self.n_kv_heads, self.head_dim, self.elem_size,
                          self.block_tokens)
        except Unsupported as e:
            self._fallback(str(e))
            return 0
        if _kvt_dtype(layers[0][0].dtype) != self.layout.dtype:
            self._fallback(f"cache dtype {layers[0][0].dtype} is not the layout's "
                           f"{self.layout.dtype}")
            return 0
        nblk = min(int(tok.size), pages.tokens) // self.block_tokens
        if not nblk or not self._connect():
            return 0
        try:
            mover = self._mover(layers[0][0])
            if mover is None:
                return 0
            keys = key_chain(self.layout, tok[:nblk * self.block_tokens], as_array=True)
            have = self._client.lookup(self._reg, keys)
            stored = have
            if have < nblk:
                stored += mover.put(pages, keys[have:], have)
        except KvtError as e:
            self._lost(e)
            return 0
        self.stats.update(stored_blocks=stored, new_blocks=stored - have,
                          seconds=time.perf_counter() - t0)
        return stored
