#!/usr/bin/env python3
"""Cut the small .kvd test files of tests/data out of the shared real KV dump.

    python3 tests/data/make_excerpt.py --src PATH/TO/sympy_fancysets.kvd [--out tests/data]

--src is the project's development dump sympy_fancysets.kvd, which is not in the repository
(docs/KVD.md describes it). Writes, each a valid .kvd (format: docs/KVD.md):

  sympy_head640.kvd   the first 640 tokens (10 blocks of 64), every layer and head, no queries
                      (n_query_positions = 0): real K/V for put/get/replay workloads.
  sympy_l1h0_q128.kvd all 4096 tokens of one layer (1) and one kv head (0) with the two query
                      heads that read it, and Q of the last 128 positions: a causal prefix that
                      starts at token 0 with real queries, for attention-error and predictor tests.

Q of the full dump covers only its last P = 512 positions (3584..4095), so a head excerpt has
no queries; keeping every token of one (layer, kv head) keeps real queries under 3 MB.
The output is a pure function of the input: rerunning gives identical files.
"""
import argparse
import os
import struct
import sys

import numpy as np

HDR = 104
MAGIC = b"KVDUMP01"
LIMIT = 3_000_000


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:8] != MAGIC:
        sys.exit(f"{path}: not a .kvd file")
    L, H, QH, D, T, P, dtype, nlen = struct.unpack_from("<8I", raw, 8)
    if dtype != 1 or QH % H:
        sys.exit(f"{path}: unsupported dtype {dtype} or heads {QH}/{H}")
    src = raw[40:104].split(b"\0", 1)[0]
    off = HDR
    tokens = np.frombuffer(raw, np.uint8, T, off)
    off += T
    kv = L * H * T * D
    k = np.frombuffer(raw, "<u2", kv, off).reshape(L, H, T, D)
    off += 2 * kv
    v = np.frombuffer(raw, "<u2", kv, off).reshape(L, H, T, D)
    off += 2 * kv
    q = np.frombuffer(raw, "<u2", L * QH * P * D, off).reshape(L, QH, P, D)
    off += 2 * q.size
    if off != len(raw):
        sys.exit(f"{path}: size {len(raw)} does not match its header ({off})")
    return dict(src=src, tokens=tokens, k=k, v=v, q=q, P=P)


def save(path, src, tokens, k, v, q):
    L, H, T, D = k.shape
    QH, P = q.shape[1], q.shape[2]
    assert v.shape == k.shape and q.shape[0] == L and q.shape[3] == D and len(tokens) == T
    name = src[:64]
    hdr = MAGIC + struct.pack("<8I", L, H, QH, D, T, P, 1, len(name)) + name.ljust(64, b"\0")
    assert len(hdr) == HDR
    with open(path, "wb") as f:
        for part in (hdr, tokens, k, v, q):
            f.write(np.ascontiguousarray(part).tobytes() if not isinstance(part, bytes) else part)
    size = os.path.getsize(path)
    if size >= LIMIT:
        sys.exit(f"{path}: {size} bytes, over the {LIMIT} limit of committed test data")
    print(f"{path}: L={L} H={H} QH={QH} D={D} T={T} P={P}, {size} bytes")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True,
                    help="the development dump sympy_fancysets.kvd (not in the repository)")
    ap.add_argument("--out", default=here)
    ap.add_argument("--head-tokens", type=int, default=640)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--kv-head", type=int, default=0)
    ap.add_argument("--q-positions", type=int, default=128)
    a = ap.parse_args()

    d = load(a.src)
    k, v, q = d["k"], d["v"], d["q"]
    L, H, T, D = k.shape
    QH = q.shape[1]
    group = QH // H

    n = a.head_tokens
    if not 0 < n <= T:
        sys.exit(f"--head-tokens must be in 1..{T}")
    # Causal attention: the K/V of the first n tokens do not depend on later tokens, so the
    # head of the dump is exactly the cache of a run over those n tokens alone.
    save(os.path.join(a.out, "sympy_head%d.kvd" % n), d["src"], d["tokens"][:n],
         k[:, :, :n], v[:, :, :n], q[:, :, :0])

    p = a.q_positions
    if not 0 <= p <= d["P"] or not 0 <= a.layer < L or not 0 <= a.kv_head < H:
        sys.exit("--layer, --kv-head or --q-positions out of range")
    lay, kh = a.layer, a.kv_head
    # Query head j reads kv head j // group: keep the group of query heads of kv head kh, in
    # order, so that in the excerpt query head j' reads kv head j' // group = 0.
    qh = slice(kh * group, (kh + 1) * group)
    save(os.path.join(a.out, "sympy_l%dh%d_q%d.kvd" % (lay, kh, p)), d["src"], d["tokens"],
         k[lay:lay + 1, kh:kh + 1], v[lay:lay + 1, kh:kh + 1],
         q[lay:lay + 1, qh, d["P"] - p:])


if __name__ == "__main__":
    main()
