"""The Python binding over a compressed host tier (host.codec = bq): puts are encoded and gets
decoded by libkvtier in this process; a lease of an encoded block holds its record and
decodes it with Lease.decode()."""
import numpy as np
import pytest

import kvtier
from test_kvtier import _Daemon, small_layout


@pytest.fixture
def bq_client(tmp_path):
    d = _Daemon(tmp_path, opts=("host.codec=bq",))
    try:
        with kvtier.Client(socket=d.sock, name="pytest-bq") as c:
            yield c
    finally:
        d.stop()


def smooth_block(lay, seed):
    t = np.arange(lay.block_tokens, dtype=np.float32)[:, None]
    d = np.arange(lay.head_dim, dtype=np.float32)[None, :]
    rng = np.random.default_rng(seed)
    base = np.sin(0.05 * (t + seed) + 0.11 * (d % 17)) * (0.5 + d % 7)
    block = np.broadcast_to(base, lay.block_shape) + 0.01 * rng.standard_normal(lay.block_shape)
    return block.astype(np.float16)


def test_roundtrip_encoded(bq_client):
    c = bq_client
    lay = small_layout(c)
    assert c.put_encodes(lay) is True
    keys = kvtier.key_chain(lay, np.arange(8 * lay.block_tokens, dtype=np.uint32))
    blocks = [smooth_block(lay, i) for i in range(8)]
    for k, b in zip(keys[:4], blocks[:4]):
        assert c.put(lay, k, b) == 0
    status = c.put_batch(lay, keys[4:], np.stack(blocks[4:]))
    assert list(status) == [0, 0, 0, 0]
    for i, k in enumerate(keys):
        got = c.get(lay, k, dtype=np.float16, shape=lay.block_shape)
        # lossy within bq's bound: a step is 0.08 of the channels' range at most
        err = np.abs(got.astype(np.float32) - blocks[i].astype(np.float32)).max()
        assert err <= 0.1 * float(np.ptp(blocks[i].astype(np.float32)))
        with c.lease(lay, k) as _:
            pass
        ls = c.lease(lay, k)
        try:
            assert ls.encoded and ls.chain_id != 0
            assert ls.raw_len == lay.block_bytes
            assert ls.array.size < lay.block_bytes  # the record, not the block
            dec = ls.decode(dtype=np.float16, shape=lay.block_shape)
            assert np.array_equal(dec.view(np.uint16), got.view(np.uint16))
            with pytest.raises(kvtier.KvtError):
                ls.decode(out=np.zeros(16, dtype=np.uint8))
        finally:
            ls.release()
    out, st = c.get_batch(lay, keys)
    assert list(st) == [lay.block_bytes] * 8
    for i, k in enumerate(keys):
        assert np.array_equal(out[i], c.get(lay, k))


def test_partial_block_stays_raw(bq_client):
    c = bq_client
    lay = small_layout(c)
    key = kvtier.key_chain(lay, np.arange(lay.block_tokens, dtype=np.uint32))[0]
    half = smooth_block(lay, 3).reshape(-1)[: lay.block_bytes // 4].copy()
    c.put(lay, key, half, partial=True)
    with c.lease(lay, key) as view:
        assert view.nbytes == half.nbytes
    ls = c.lease(lay, key)
    assert not ls.encoded and ls.raw_len == half.nbytes
    assert np.array_equal(ls.decode().view(np.float16), half)
    ls.release()
    assert np.array_equal(c.get(lay, key).view(np.float16), half)
