# SPDX-License-Identifier: MIT
"""Tests of the Python binding against a real kvtierd started in a temporary directory.

The daemon binary comes from $KVTIER_BIN_DIR/kvtierd, else ../../build/daemon/kvtierd next to
this file; the library from $KVTIER_LIB (see kvtier.py).  Run: python3 -m pytest -q client/python
"""

import errno
import os
import socket as _socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtier  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CAPACITY = 64 << 20


def _daemon_path():
    d = os.environ.get("KVTIER_BIN_DIR")
    if d:
        return os.path.abspath(os.path.join(d, "kvtierd"))
    return os.path.normpath(os.path.join(HERE, "..", "..", "build", "daemon", "kvtierd"))


def _wait_connectable(path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if os.path.exists(path):
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            try:
                s.connect(path)
                return True
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.02)
    return False


class _Daemon:
    def __init__(self, tmp_path, opts=()):
        exe = _daemon_path()
        if not os.access(exe, os.X_OK):
            pytest.fail(f"kvtierd not found at {exe} (set KVTIER_BIN_DIR)")
        self.sock = str(tmp_path / "kvtier.sock")
        self.logpath = tmp_path / "kvtierd.log"
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [exe, "-f", "-s", self.sock, "-o", f"host.capacity={CAPACITY >> 20}MiB"] +
            [a for o in opts for a in ("-o", o)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path)
        if not _wait_connectable(self.sock, self.proc):
            self.stop()
            pytest.fail("kvtierd did not come up:\n" +
                        self.logpath.read_text(errors="replace"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def daemon_proc(tmp_path):
    """A fresh kvtierd with a 64 MiB host tier."""
    d = _Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def daemon(daemon_proc):
    """The socket path of a fresh kvtierd."""
    return daemon_proc.sock


@pytest.fixture
def client(daemon):
    with kvtier.Client(socket=daemon, name="pytest") as c:
        yield c


# Small layout: 2 layers x 2 heads x 16 tokens x 64 dims x fp16 x (K,V) = 16 KiB per block.
def small_layout(c, **kw):
    args = dict(n_layers=2, n_kv_heads=2, head_dim=64, block_tokens=16, dtype="fp16",
                model_id="test/small")
    args.update(kw)
    return c.register_layout(**args)


def rand_block(lay, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(lay.block_shape).astype(np.float16)


def test_layout_geometry(client):
    lay = small_layout(client)
    assert lay.id is not None and lay.id >= 0
    assert lay.block_bytes == 2 * 2 * 2 * 16 * 64 * 2
    assert lay.layer_bytes == lay.block_bytes // 2
    assert lay.fingerprint != 0
    # Registering the same layout twice returns the same id.
    assert small_layout(client).id == lay.id
    # Model id and rank are part of the fingerprint.
    other = small_layout(client, model_id="test/other")
    assert other.fingerprint != lay.fingerprint
    assert small_layout(client, rank=1, world=2).fingerprint != lay.fingerprint


def test_key_chain_is_a_chain():
    lay = kvtier.Layout(2, 2, 64, 16, model_id="test/small")
    tokens = np.arange(100, dtype=np.uint32) * 7919 % 50000
    keys = kvtier.key_chain(lay, tokens)
    assert len(keys) == 100 // 16
    assert all(isinstance(k, bytes) and len(k) == 16 for k in keys)
    assert len(set(keys)) == len(keys)
    # Same prefix, same keys; a partial block gets no key.
    assert kvtier.key_chain(lay, tokens[:64]) == keys[:4]
    assert kvtier.key_chain(lay, tokens[:63]) == keys[:3]
    # Continuing from prev gives the same keys as one call over the whole sequence.
    assert kvtier.key_chain(lay, tokens[32:], prev=keys[1]) == keys[2:]
    # A fingerprint works like the layout; a change of one token changes all later keys.
    assert kvtier.key_chain(lay.fingerprint, tokens, block_tokens=16) == keys
    t2 = tokens.copy()
    t2[40] += 1
    k2 = kvtier.key_chain(lay, t2)
    assert k2[:2] == keys[:2] and all(a != b for a, b in zip(k2[2:], keys[2:]))
    arr = kvtier.key_chain(lay, tokens, as_array=True)
    assert arr.dtype == kvtier.KEY_DTYPE and [r.tobytes() for r in arr] == keys


def test_put_get_bit_exact(client):
    lay = small_layout(client)
    assert client.put_encodes(lay) is False  # host.codec raw: blocks stored as they are
    keys = client.key_chain(lay, np.arange(64))
    blocks = [rand_block(lay, i) for i in range(len(keys))]
    # NaN/Inf/-0 bit patterns must survive as they are.
    blocks[0].reshape(-1)[:4] = np.array([np.nan, np.inf, -0.0, -np.inf], dtype=np.float16)
    for k, b in zip(keys, blocks):
        assert client.put(lay, k, b) == 0
    for k, b in zip(keys, blocks):
        out = client.get(lay, k, dtype=np.float16, shape=lay.block_shape)
        assert out.shape == lay.block_shape and out.dtype == np.float16
        assert np.array_equal(out.view(np.uint16), b.view(np.uint16))
        raw = client.get(lay, k)
        assert raw.dtype == np.uint8 and raw.tobytes() == b.tobytes()
        dst = np.zeros(lay.block_shape, dtype=np.float16)
        got = client.get(lay, k, out=dst)
        assert got.size == lay.block_bytes
        assert np.array_equal(dst.view(np.uint16), b.view(np.uint16))


def test_put_copy_and_reserve(client):
    lay = small_layout(client)
    k1, k2, k3 = client.key_chain(lay, np.arange(48) + 1000)
    b1, b2 = rand_block(lay, 11), rand_block(lay, 12)
    assert client.put_copy(lay, k1, b1) == 0
    with client.reserve(lay, k2, dtype=np.float16, shape=lay.block_shape) as view:
        assert view.flags.writeable and view.shape == lay.block_shape
        view[...] = b2  # written straight into the arena
    # Nothing is visible before commit, and an aborted reservation leaves nothing.
    res = client.reserve(lay, k3)
    res.array[:] = 7
    assert client.lookup(lay, [k3]) == 0
    res.abort()
    assert client.get(lay, k3) is None
    assert client.get(lay, k1).tobytes() == b1.tobytes()
    assert client.get(lay, k2).tobytes() == b2.tobytes()
    # An exception inside the with-block aborts.
    with pytest.raises(RuntimeError):
        with client.reserve(lay, k3) as view:
            view[:] = 1
            raise RuntimeError("engine failed mid-copy")
    assert client.lookup(lay, [k3]) == 0


def test_put_with_position(client):
    # the position only helps codecs; the data comes back the same
    lay = small_layout(client)
    keys = client.key_chain(lay, np.arange(48) + 5000)
    for i, k in enumerate(keys):
        b = rand_block(lay, 40 + i)
        assert client.put(lay, k, b, position=i * lay.block_tokens) == 0
        assert client.get(lay, k).tobytes() == b.tobytes()
    res = client.reserve(lay, client.key_chain(lay, np.arange(16) + 7000)[0])
    res.array[:] = 3
    res.commit(position=2**32 - 2)
    with pytest.raises(kvtier.KvtError):
        res.commit(position=0)  # spent


def test_save_kvd_calibrates(tmp_path):
    # a dump written from numpy is one kvtier-eval reads: it calibrates a dictionary from it
    rng = np.random.default_rng(3)
    k = rng.standard_normal((2, 2, 128, 64)).astype(np.float16)
    v = rng.standard_normal((2, 2, 128, 64)).astype(np.float16)
    q = rng.standard_normal((2, 4, 16, 64)).astype(np.float16)
    path = str(tmp_path / "mine.kvd")
    kvtier.save_kvd(path, k, v, q=q, tokens=range(1000, 1128), source="unit test")
    raw = open(path, "rb").read()
    assert raw[:8] == b"KVDUMP01"
    assert list(np.frombuffer(raw[8:40], "<u4")) == [2, 2, 4, 64, 128, 16, 1, 9]
    assert raw[104:104 + 128] == bytes((1000 + i) & 0xff for i in range(128))
    off = 104 + 128
    assert raw[off:off + k.nbytes] == k.tobytes()
    assert len(raw) == off + k.nbytes + v.nbytes + q.nbytes
    with pytest.raises(ValueError):
        kvtier.save_kvd(path, k, v[:, :, :64])
    ev = os.path.join(os.path.dirname(_daemon_path()), "..", "bench", "kvtier-eval")
    if not os.path.exists(ev):
        pytest.skip("no kvtier-eval next to kvtierd")
    out = subprocess.run([ev, "dict", "-o", str(tmp_path / "mine.kvdict"), path],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 blocks of 64 tokens" in out.stdout


def test_lookup_chained_prefix(client):
    lay = small_layout(client)
    keys = client.key_chain(lay, np.arange(16 * 6) + 5, as_array=True)
    assert client.lookup(lay, keys) == 0
    for i in (0, 1, 2, 4, 5):  # block 3 missing: the prefix stops there
        client.put(lay, keys[i], rand_block(lay, 100 + i))
    assert client.lookup(lay, keys) == 3
    assert client.lookup(lay, keys[:2]) == 2
    assert client.lookup(lay, keys[4:]) == 2
    assert client.lookup(lay, list(keys)) == 3  # records, not an array
    client.put(lay, keys[3], rand_block(lay, 103))
    assert client.lookup(lay, keys) == 6
    # More than one call's worth of keys (4096) still counts the whole prefix.
    many = np.concatenate([keys] + [keys[:1]] * 4100)
    assert client.lookup(lay, many) == len(many)
    # The same tokens under another model are a miss.
    other = small_layout(client, model_id="test/other")
    assert client.lookup(other, client.key_chain(other, np.arange(16 * 6) + 5)) == 0


def test_miss(client):
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 77)
    assert client.get(lay, k) is None
    assert client.get(lay, k, out=np.empty(lay.block_bytes, np.uint8)) is None
    assert not client.contains(lay, k)
    with pytest.raises(kvtier.KvtError) as ei:
        client.lease(lay, k)
    assert ei.value.errno == errno.ENOENT and isinstance(ei.value, OSError)
    with pytest.raises(kvtier.KvtError) as ei:
        client.pin(lay, k)
    assert ei.value.errno == errno.ENOENT


def test_lease_view_is_read_only(client):
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 200)
    b = rand_block(lay, 5)
    client.put(lay, k, b)
    with client.lease(lay, k, dtype=np.float16, shape=lay.block_shape) as view:
        assert not view.flags.writeable
        assert np.array_equal(view.view(np.uint16), b.view(np.uint16))
        with pytest.raises(ValueError):
            view[0, 0, 0, 0, 0] = 1
        with pytest.raises(ValueError):
            view.setflags(write=True)
    assert client.get(lay, k).tobytes() == b.tobytes()


def test_lease_survives_delete_and_pressure(client):
    """A leased block stays in place and unchanged until released (kvtier.h); a delete
    hides it from lookups at once and frees it on the last release."""
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 250)
    b = rand_block(lay, 6)
    client.put(lay, k, b)
    filler = rand_block(lay, 7)
    with client.lease(lay, k) as view:
        assert client.delete(lay, k) is True
        assert client.lookup(lay, [k]) == 0
        assert client.get(lay, k) is None
        # Fill the host tier twice over: the leased bytes must not be reused.
        n = 2 * CAPACITY // lay.block_bytes
        for fk in client.key_chain(lay, np.arange(16 * n) % 253 + 1):
            client.put(lay, fk, filler)
        assert view.tobytes() == b.tobytes()
        # The key is free again for new contents while the old ones are still leased.
        assert client.put(lay, k, filler) == 0
        assert view.tobytes() == b.tobytes()
    assert client.get(lay, k).tobytes() == filler.tobytes()


def test_delete(client):
    lay = small_layout(client)
    k1, k2 = client.key_chain(lay, np.arange(32) + 300)
    client.put(lay, k1, rand_block(lay, 1))
    client.put(lay, k2, rand_block(lay, 2))
    assert client.lookup(lay, [k1, k2]) == 2
    assert client.delete(lay, k1) is True
    assert client.lookup(lay, [k1, k2]) == 0
    assert client.lookup(lay, [k2]) == 1
    assert client.get(lay, k1) is None
    assert client.delete(lay, k1) is False
    # A deleted key can be stored again, with new contents.
    b = rand_block(lay, 3)
    assert client.put(lay, k1, b) == 0
    assert client.get(lay, k1).tobytes() == b.tobytes()


def test_put_twice_returns_1(client):
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 400)
    b = rand_block(lay, 1)
    assert client.put(lay, k, b) == 0
    assert client.put(lay, k, rand_block(lay, 2)) == 1
    assert client.put_copy(lay, k, rand_block(lay, 3)) == 1
    assert client.get(lay, k).tobytes() == b.tobytes()  # the first one stays
    with pytest.raises(kvtier.KvtError) as ei:
        client.reserve(lay, k)
    assert ei.value.errno == errno.EEXIST


def test_pin_prevents_eviction(client):
    # 1 MiB blocks: 16 layers x 8 heads x 16 tokens x 128 dims x fp16 x (K,V).
    lay = client.register_layout(16, 8, 128, 16, model_id="test/big")
    assert lay.block_bytes == 1 << 20
    n = 3 * CAPACITY // lay.block_bytes  # three times the host tier
    keys = client.key_chain(lay, np.arange(16 * n) % 251)
    pinned = rand_block(lay, 42)
    client.put(lay, keys[0], pinned)
    client.pin(lay, keys[0])
    client.pin(lay, keys[0])  # pins nest
    block = rand_block(lay, 43)
    for k in keys[1:]:
        assert client.put(lay, k, block) == 0
    st = client.stats()
    assert st["evictions"] > 0
    assert st["host_used_bytes"] <= st["host_capacity_bytes"] == CAPACITY
    assert client.lookup(lay, keys[:1]) == 1
    assert client.lookup(lay, keys[1:2]) == 0  # the oldest unpinned block went first
    assert client.get(lay, keys[0]).tobytes() == pinned.tobytes()
    # Still pinned once: more pressure does not evict it.
    client.unpin(lay, keys[0])
    more = client.key_chain(lay, np.arange(16 * n) % 241 + 7)
    for k in more:
        client.put(lay, k, block)
    assert client.lookup(lay, keys[:1]) == 1
    client.unpin(lay, keys[0])
    with pytest.raises(kvtier.KvtError) as ei:
        client.unpin(lay, keys[0])
    assert ei.value.errno == errno.EINVAL
    for k in client.key_chain(lay, np.arange(16 * n) % 239 + 3):
        client.put(lay, k, block)
    assert client.lookup(lay, keys[:1]) == 0  # unpinned: evictable like any block


def test_stats(client):
    lay = small_layout(client)
    before = client.stats()
    assert set(before) >= {"puts", "gets", "hits", "misses", "lookups", "host_capacity_bytes",
                           "host_used_bytes", "host_blocks", "evictions"}
    assert before["host_capacity_bytes"] == CAPACITY
    keys = client.key_chain(lay, np.arange(48) + 900)
    for k in keys[:2]:
        client.put(lay, k, rand_block(lay, 0))
    client.get(lay, keys[0])
    client.get(lay, keys[2])  # a miss
    client.lookup(lay, keys)
    st = client.stats()
    assert st["puts"] - before["puts"] == 2
    assert st["gets"] - before["gets"] == 2
    assert st["hits"] - before["hits"] >= 1
    assert st["misses"] - before["misses"] >= 1
    assert st["lookups"] - before["lookups"] >= 1
    assert st["host_blocks"] - before["host_blocks"] == 2
    assert st["host_used_bytes"] - before["host_used_bytes"] >= 2 * lay.block_bytes


def test_errors(client):
    with pytest.raises(kvtier.KvtError) as ei:
        client.register_layout(0, 2, 64, 16)  # zero layers
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(kvtier.KvtError):
        client.register_layout(2, 2, 64, 16, dtype="fp32")
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 500)
    # A layout id this client never registered.
    with pytest.raises(kvtier.KvtError) as ei:
        client.put(lay.id + 1000, k, rand_block(lay, 0))
    assert ei.value.code == kvtier.KVT_ENOLAYOUT and ei.value.errno is None
    assert "KVT_ENOLAYOUT" in str(ei.value)
    with pytest.raises(kvtier.KvtError) as ei:
        client.lookup(12345, [k])
    assert ei.value.code == kvtier.KVT_ENOLAYOUT
    # get into a buffer smaller than the block: ENOBUFS and nothing copied.
    b = rand_block(lay, 9)
    client.put(lay, k, b)
    small = np.full(lay.block_bytes - 1, 0xAB, dtype=np.uint8)
    with pytest.raises(kvtier.KvtError) as ei:
        client.get(lay, k, out=small)
    assert ei.value.errno == errno.ENOBUFS
    assert (small == 0xAB).all()
    # Bad Python-side input never reaches the library.
    with pytest.raises(ValueError):
        client.get(lay, b"short", out=small)
    with pytest.raises(ValueError):
        client.put(lay, k, np.asfortranarray(np.zeros((64, 64))))
    assert kvtier.strerror(-errno.ENOENT)
    assert kvtier.strerror(kvtier.KVT_ECORRUPT)


def test_closed_client(daemon):
    c = kvtier.Client(socket=daemon)
    lay = small_layout(c)
    c.close()
    c.close()  # idempotent
    with pytest.raises(kvtier.KvtError) as ei:
        c.lookup(lay, [b"\0" * 16])
    assert ei.value.errno == errno.EBADF


def test_no_daemon(tmp_path):
    with pytest.raises(kvtier.KvtError) as ei:
        kvtier.Client(socket=str(tmp_path / "nothing.sock"))
    assert ei.value.errno in (errno.ENOENT, errno.ECONNREFUSED)


def test_two_clients_share_blocks(daemon):
    with kvtier.Client(socket=daemon) as a, kvtier.Client(socket=daemon) as b:
        la, lb = small_layout(a), small_layout(b)
        keys = a.key_chain(la, np.arange(32) + 600)
        assert keys == b.key_chain(lb, np.arange(32) + 600)
        blk = rand_block(la, 77)
        a.put(la, keys[0], blk)
        assert b.lookup(lb, keys) == 1
        assert b.get(lb, keys[0]).tobytes() == blk.tobytes()


def test_threads_share_one_client(client):
    """kvtier.h: a client may be used from several threads at once (ctypes drops the GIL
    around each call, so the calls really overlap)."""
    import threading

    lay = small_layout(client)
    errors = []

    def work(t):
        try:
            keys = client.key_chain(lay, np.arange(16 * 40) + 10000 * (t + 1))
            blocks = [rand_block(lay, 1000 * t + i) for i in range(len(keys))]
            for k, b in zip(keys, blocks):
                assert client.put(lay, k, b) == 0
            assert client.lookup(lay, keys) == len(keys)
            for k, b in zip(keys, blocks):
                assert client.get(lay, k).tobytes() == b.tobytes()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert client.stats()["host_blocks"] == 4 * 40


def test_daemon_gone(daemon_proc):
    """A client whose daemon died gets errors (KVT_EDAEMON), never a hang or a crash."""
    c = kvtier.Client(socket=daemon_proc.sock, timeout_ms=5000)
    lay = small_layout(c)
    (k,) = c.key_chain(lay, np.arange(16) + 42)
    b = rand_block(lay, 1)
    c.put(lay, k, b)
    with c.lease(lay, k) as view:
        daemon_proc.proc.kill()
        daemon_proc.proc.wait()
        # The lease's bytes stay mapped in this process.
        assert view.tobytes() == b.tobytes()
    with pytest.raises(kvtier.KvtError) as ei:
        c.lookup(lay, [k])
    assert ei.value.code in (kvtier.KVT_EDAEMON, errno.ECONNRESET, errno.EPIPE)
    c.close()


def test_prefetch(client):
    lay = small_layout(client)
    keys = client.key_chain(lay, np.arange(16 * 4) + 7000)
    for k in keys[:2]:
        client.put(lay, k, rand_block(lay, 3))
    # Fire and forget; keys not stored are ignored, never an error.
    n = client.prefetch(lay, keys, priority=3, deadline_us=1000)
    assert 0 <= n <= len(keys)
    assert client.prefetch(lay, []) == 0
    assert client.lookup(lay, keys) == 2
    with pytest.raises(kvtier.KvtError) as ei:
        client.prefetch(lay.id + 1000, keys)
    assert ei.value.code == kvtier.KVT_ENOLAYOUT


def test_daemon_restart(tmp_path):
    """A client survives a daemon restart: the next call attaches to the new daemon and its
    layout ids stay valid."""
    d1 = _Daemon(tmp_path)
    try:
        c = kvtier.Client(socket=d1.sock)
        lay = small_layout(c)
        (k,) = c.key_chain(lay, np.arange(16) + 4242)
        c.put(lay, k, rand_block(lay, 1))
        d1.proc.kill()
        d1.proc.wait()
    finally:
        d1.stop()
    d2 = _Daemon(tmp_path)
    try:
        b = rand_block(lay, 2)
        # The call that finds the old daemon gone may say so once; the next one attaches.
        try:
            n = c.lookup(lay, [k])
        except kvtier.KvtError as e:
            assert e.code == kvtier.KVT_EDAEMON
            n = c.lookup(lay, [k])
        # The host tier died with the first daemon: a miss, then a normal put and get.
        assert n == 0
        assert c.put(lay, k, b) == 0
        assert c.get(lay, k).tobytes() == b.tobytes()
        c.close()
    finally:
        d2.stop()


def _run_py(code, daemon):
    """Runs code in a fresh interpreter (a segfault there fails the test, not the run)."""
    env = dict(os.environ, KVT_SOCK=daemon, PYTHONPATH=HERE)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


_VIEW_AFTER_CLOSE = r"""
import os, errno, numpy as np, kvtier
c = kvtier.Client(socket=os.environ["KVT_SOCK"])
lay = c.register_layout(2, 2, 64, 16, model_id="test/small")
(k1, k2) = c.key_chain(lay, np.arange(32) + 900)
b = np.arange(lay.block_bytes, dtype=np.uint8)
c.put(lay, k1, b)
lease = c.lease(lay, k1)
view = lease.array
res = c.reserve(lay, k2)
wview = res.array
c.close()
for what, fn in [("lease.array", lambda: lease.array), ("res.array", lambda: res.array),
                 ("release", lease.release), ("commit", res.commit), ("get", lambda: c.get(lay, k1))]:
    try:
        fn()
        print("no error:", what)
    except kvtier.KvtError as e:
        assert e.errno == errno.EBADF, e
try:
    wview[0] = 1
    print("no error: write through a reservation view")
except ValueError:
    pass
# Views still referenced keep the arena mapped: reading them must not crash.
assert int(view[5]) == 5
del view, wview, lease, res
print("done")
"""


def test_views_after_close_raise_not_crash(daemon):
    r = _run_py(_VIEW_AFTER_CLOSE, daemon)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "done", r.stdout


def test_closed_client_releases_when_views_go(daemon):
    # close() with a view alive keeps that connection (and its lease) until the view goes.
    with kvtier.Client(socket=daemon) as watcher:
        c = kvtier.Client(socket=daemon)
        lay = small_layout(c)
        (k,) = c.key_chain(lay, np.arange(16) + 950)
        c.put(lay, k, rand_block(lay, 1))
        view = c.lease(lay, k).array
        c.close()
        # Still leased: a delete only hides the block, and its bytes stay readable.
        wl = small_layout(watcher)
        assert watcher.delete(wl, k)
        held = watcher.stats()["host_used_bytes"]
        assert held >= lay.block_bytes
        assert view.size == lay.block_bytes and view.sum() >= 0
        del view
        # The connection closes with the last view, and the daemon frees the leased block
        # when it sees the hang-up (waited for, bounded only against a hang).
        deadline = time.monotonic() + 30
        while watcher.stats()["host_used_bytes"] >= held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.stats()["host_used_bytes"] < held


def test_integers_out_of_range_raise(client):
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 960)
    client.put(lay, k, rand_block(lay, 3))
    assert client.get(lay, k) is not None
    # Layout 2**40 is not layout 0 with its high bits dropped.
    for lid in (2**40, 2**32 + lay.id, -1):
        with pytest.raises(kvtier.KvtError) as ei:
            client.get(lid, k)
        assert ei.value.code == kvtier.KVT_ENOLAYOUT
    # Key halves beyond 64 bits are refused, not truncated ((2**70, 1) is not (0, 1)).
    client.put(lay, (0, 1), rand_block(lay, 4))
    for bad in ((2**70, 1), (0, 2**64 + 1), (-1, 0)):
        with pytest.raises(OverflowError):
            client.get(lay, bad)
        with pytest.raises(OverflowError):
            client.put(lay, bad, rand_block(lay, 4))
    with pytest.raises(OverflowError):
        client.put(lay, (5, 5), rand_block(lay, 5), position=2**32)
    with pytest.raises(OverflowError):
        client.reserve(lay, (5, 6), nbytes=-1)
    with pytest.raises(OverflowError):
        kvtier.Client(socket="/nonexistent", timeout_ms=2**40)


def test_put_refuses_what_is_not_a_block(client):
    lay = small_layout(client)
    (k,) = client.key_chain(lay, np.arange(16) + 970)
    with pytest.raises(TypeError):
        client.put(lay, k, "hello")
    with pytest.raises(TypeError):
        client.put_copy(lay, k, "hello")
    with pytest.raises(TypeError):
        client.put(lay, k, np.array(["hello"] * 8))
    with pytest.raises(TypeError):
        client.put(lay, k, [1, 2, 3])
    with pytest.raises(ValueError):
        client.put(lay, k, b"hello")  # shorter than a block
    with pytest.raises(ValueError):
        client.put(lay, k, np.zeros(lay.block_bytes + 8, dtype=np.uint8))
    with pytest.raises(ValueError):
        client.put(lay, k, b"")
    assert not client.contains(lay, k)
    # A shorter, last block on purpose: stored, and read back with its own length.
    assert client.put(lay, k, b"hello" * 8, partial=True) == 0
    assert client.get(lay, k).tobytes() == b"hello" * 8


def test_batches(client):
    lay = small_layout(client)
    n = 300  # more than the ring's 256 entries
    keys = client.key_chain(lay, np.arange(16 * n) + 10000, as_array=True)
    blocks = np.stack([rand_block(lay, 2000 + i) for i in range(n)])
    assert client.put(lay, keys[4], blocks[4]) == 0
    st = client.put_batch(lay, keys, blocks, positions=[i * 16 for i in range(n)])
    assert st.dtype == np.int32 and st.shape == (n,)
    assert st[4] == 1 and (np.delete(st, 4) == 0).all()
    # Duplicates inside one batch: the second is "already stored".
    extra = client.key_chain(lay, np.arange(32) + 50000)
    st = client.put_batch(lay, [extra[0], extra[0], extra[1]],
                          [blocks[0], blocks[1], blocks[2].tobytes()])
    assert list(st) == [0, 1, 0]
    # Per-key presence, misses in between.
    miss = client.key_chain(lay, np.arange(32) + 60000)
    present = client.lookup_batch(lay, [keys[0], miss[0], keys[7], miss[1], extra[1]])
    assert present.dtype == bool and list(present) == [True, False, True, False, True]
    assert client.lookup_batch(lay, keys).all()
    # Gets: bit-exact, into a new array or the caller's, misses reported per block.
    out, st = client.get_batch(lay, keys)
    assert (st == lay.block_bytes).all()
    assert out.shape == (n, lay.block_bytes)
    assert (out.view(np.float16).reshape(blocks.shape) == blocks).all()
    mine = np.zeros((3,) + lay.block_shape, dtype=np.float16)
    out, st = client.get_batch(lay, [keys[9], miss[0], extra[0]], out=mine)
    assert out is mine
    assert list(st) == [lay.block_bytes, -errno.ENOENT, lay.block_bytes]
    assert (mine[0] == blocks[9]).all() and (mine[1] == 0).all() and (mine[2] == blocks[0]).all()
    small = np.full((2, lay.block_bytes - 2), 7, dtype=np.uint8)
    _, st = client.get_batch(lay, keys[:2], out=small)
    assert list(st) == [-errno.ENOBUFS, -errno.ENOBUFS] and (small == 7).all()
    # Refused as a whole before any request.
    with pytest.raises(ValueError):
        client.put_batch(lay, keys[:2], blocks[:3])
    with pytest.raises(ValueError):
        client.put_batch(lay, keys[:2], [blocks[0], blocks[0][:1]])
    with pytest.raises(kvtier.KvtError) as ei:
        client.lookup_batch(lay.id + 7, keys[:1])
    assert ei.value.code == kvtier.KVT_ENOLAYOUT
    assert client.lookup_batch(lay, []).size == 0
    assert client.put_batch(lay, [], np.zeros((0, lay.block_bytes), np.uint8)).size == 0
    # Leases: the stored bytes in place, misses as None, each released on its own.
    ls, st = client.lease_batch(lay, [keys[3], miss[0], keys[5]])
    assert list(st) == [0, -errno.ENOENT, 0] and ls[1] is None
    assert (ls[0].array.view(np.float16).reshape(blocks[3].shape) == blocks[3]).all()
    assert (ls[2].decode().view(np.float16).reshape(blocks[5].shape) == blocks[5]).all()
    assert not ls[0].array.flags.writeable
    assert client.delete(lay, keys[3]) and not client.contains(lay, keys[3])  # the view lives on
    assert (ls[0].array.view(np.float16).reshape(blocks[3].shape) == blocks[3]).all()
    for x in (ls[0], ls[2]):
        x.release()
    ls, st = client.lease_batch(lay, [])
    assert ls == [] and st.size == 0
