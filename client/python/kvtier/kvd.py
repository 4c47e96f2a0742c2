# SPDX-License-Identifier: MIT
"""save_kvd(): KV dumps in the .kvd format (docs/KVD.md) for kvtier-eval."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

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
