# SPDX-License-Identifier: MIT
"""Tests of kvtier.hf (the Hugging Face transformers prefix cache) against a real kvtierd.

CPU parts (run in CI, numpy only): the page map of cache tensors against kvtier's page-first
block layout, the in-place cache layer, store -> restore through the daemon with full and
partial prefix hits and the last-token rule, and the fallbacks (no daemon, a daemon that goes
away and comes back, unsupported models).  The cache is a stand-in with transformers'
DynamicCache interface (``layers`` of ``keys``/``values``, ``update``); with torch installed
the same round trip runs on torch CPU tensors.  GPU parts (marker ``gpu``; skipped without a
GPU, torch with CUDA and libkvtier's device API): the device path, bit-exact against the host
layout, and with transformers a real Llama whose restored cache feeds ``generate``.
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtier  # noqa: E402
import kvtier.hf as hf  # noqa: E402
from test_kvtier import _daemon_path, _wait_connectable  # noqa: E402

try:
    import torch
except Exception:  # no torch here, or a broken one
    torch = None
_HAVE_CUDA = torch is not None and torch.cuda.is_available() and kvtier.dev_available() > 0

L, H, D, BT = 3, 2, 16, 8  # small geometry: a block is 3 * 2 * 2 * 8 * 16 * 2 = 3 KiB


# ---------------------------------------------------------------------------------------------
# A stand-in for transformers' DynamicCache / DynamicLayer (the interface kvtier.hf relies on)

def _cat(a, b):
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b], axis=-2)
    return torch.cat([a, b], dim=-2)


class DynamicLayer:
    is_sliding = False

    def __init__(self):
        self.keys = self.values = None
        self.is_initialized = False

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
            self.is_initialized = True
        self.keys = _cat(self.keys, key_states)
        self.values = _cat(self.values, value_states)
        return self.keys, self.values

    def get_seq_length(self):
        if not self.is_initialized or self.keys.shape[-2] == 0:
            return 0
        return self.keys.shape[-2]

    def crop(self, n):
        self.keys, self.values = self.keys[..., :n, :], self.values[..., :n, :]

    def batch_repeat_interleave(self, r):
        self.keys, self.values = (np.repeat(self.keys, r, axis=0),
                                  np.repeat(self.values, r, axis=0))


class SlidingLayer(DynamicLayer):
    is_sliding = True


class SlottedLayer:
    """As transformers 5.17's DynamicLayer: its state in __slots__, so Python refuses to
    swap the class of such an object for the in-place one (the object layout differs)."""
    __slots__ = ("keys", "values", "is_initialized", "dtype", "device", "cumulative_length")
    is_sliding = False
    __init__ = DynamicLayer.__init__
    update = DynamicLayer.update
    get_seq_length = DynamicLayer.get_seq_length
    crop = DynamicLayer.crop


class DynamicCache:
    def __init__(self, layer_class=DynamicLayer):
        self.layers = []
        self.layer_class_to_replicate = layer_class

    def update(self, k, v, layer_idx, cache_kwargs=None):
        while len(self.layers) <= layer_idx:
            self.layers.append(self.layer_class_to_replicate())
        return self.layers[layer_idx].update(k, v, cache_kwargs)

    def get_seq_length(self, layer_idx=0):
        return self.layers[layer_idx].get_seq_length() if len(self.layers) > layer_idx else 0


def _kv(tokens, start, stop, layer, lib=np):
    """A deterministic 'model': K and V [1, H, stop - start, D] of positions start..stop-1,
    depending on the layer, the position and the token ids (fp16)."""
    t = np.arange(start, stop, dtype=np.float64)[None, :, None]
    tok = np.asarray(tokens[start:stop], dtype=np.float64)[None, :, None]
    h = np.arange(H, dtype=np.float64)[:, None, None]
    d = np.arange(D, dtype=np.float64)[None, None, :]
    k = np.sin(0.01 * t + 0.1 * h + 0.37 * d + 0.5 * layer + 0.013 * tok)[None]
    v = np.cos(0.02 * t - 0.2 * h + 0.11 * d - 0.3 * layer + 0.007 * tok)[None]
    k, v = k.astype(np.float16), v.astype(np.float16)
    if lib is np:
        return k, v
    return torch.from_numpy(k), torch.from_numpy(v)


def _prefill(cache, tokens, start=0, lib=np):
    """Runs the 'model' on tokens[start:] on top of cache (as a forward pass would)."""
    for layer in range(L):
        k, v = _kv(tokens, start, len(tokens), layer, lib)
        cache.update(k, v, layer)


def _config(**kw):
    c = dict(num_hidden_layers=L, num_attention_heads=2 * H, num_key_value_heads=H,
             head_dim=D, hidden_size=2 * H * D, model_type="llama", _name_or_path="test-hf")
    c.update(kw)
    return types.SimpleNamespace(**c)


def _np_alloc(shape):
    return np.full(shape, np.nan, dtype=np.float16)  # poisoned: unwritten rows show up


def _pc(sock, **kw):
    args = dict(config=_config(), dtype=np.float16, socket=sock, block_tokens=BT,
                alloc=_np_alloc, cache_factory=DynamicCache, retry_s=0)
    args.update(kw)
    return hf.PrefixCache(**args)


class _Daemon:
    def __init__(self, tmp_path, sock=None):
        self.sock = sock or str(tmp_path / "kvtier.sock")
        self.log = open(tmp_path / "kvtierd.log", "ab")
        self.proc = subprocess.Popen([_daemon_path(), "-f", "-s", self.sock, "-o",
                                      "host.capacity=64MiB"], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=tmp_path)
        assert _wait_connectable(self.sock, self.proc), (tmp_path / "kvtierd.log").read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture
def daemon(tmp_path):
    d = _Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def _expected_block(cache_layers, b):
    """Block b in kvtier's page-first layout [layer][K, V][head][token][dim]."""
    return np.stack([np.stack([np.asarray(k)[0, :, b * BT:(b + 1) * BT],
                               np.asarray(v)[0, :, b * BT:(b + 1) * BT]])
                     for k, v in cache_layers])


# ---------------------------------------------------------------------------------------------
# Page map


@pytest.mark.parametrize("capacity", [None, 5 * BT + 3])
def test_pages_match_page_first_layout(capacity):
    T = 4 * BT + 5
    tokens = np.arange(100, 100 + T)
    layers = []
    for layer in range(L):
        k, v = _kv(tokens, 0, T, layer)
        if capacity:  # views of a larger buffer, as the in-place layers hold them
            buf = _np_alloc((2, 1, H, capacity, D))
            buf[0][:, :, :T], buf[1][:, :, :T] = k, v
            k, v = buf[0][:, :, :T], buf[1][:, :, :T]
        layers.append((k, v))
    p = hf.Pages(layers, H, D, 2, BT)
    lay = kvtier.Layout(L, H, D, BT)
    assert p.block_bytes == lay.block_bytes and p.tokens == T
    assert p.ids(1, 2).tolist() == [BT + h * p.head_rows for h in range(H)] + \
        [2 * BT + h * p.head_rows for h in range(H)]
    for b in range(T // BT):
        out = np.zeros(lay.block_shape, dtype=np.float16)
        p.copy_block(b, out.ctypes.data, to_block=True)
        assert np.array_equal(out, _expected_block(layers, b))
    # and back: a block written into other tensors lands at the same rows
    dst = [tuple(_np_alloc((1, H, T, D)) for _ in range(2)) for _ in range(L)]
    q = hf.Pages(dst, H, D, 2, BT)
    blk = np.ascontiguousarray(_expected_block(layers, 2))
    q.copy_block(2, blk.ctypes.data, to_block=False)
    assert np.array_equal(_expected_block(dst, 2), blk)


def test_pages_refuse_other_shapes():
    k = np.zeros((1, H, 4 * BT, D), np.float16)
    with pytest.raises(hf.Unsupported):
        hf.Pages([(k, k)], H + 1, D, 2, BT)  # heads
    with pytest.raises(hf.Unsupported):
        hf.Pages([(np.zeros((2, H, 4 * BT, D), np.float16),) * 2], H, D, 2, BT)  # batch 2
    t = np.zeros((1, 4 * BT, H, D), np.float16).transpose(0, 2, 1, 3)  # [B,T,H,D] storage
    with pytest.raises(hf.Unsupported):
        hf.Pages([(t, t)], H, D, 2, BT)
    with pytest.raises(hf.Unsupported):
        hf.Pages([(k, k), (k[:, :, ::2], k[:, :, ::2])], H, D, 2, BT)  # rows apart


# ---------------------------------------------------------------------------------------------
# In-place cache layers


def test_inplace_layer_writes_in_place_and_grows():
    tokens = np.arange(40)
    cache = hf.attach(DynamicCache(), [_np_alloc((2, 1, H, 16, D)) for _ in range(L)], 0)
    assert len(cache.layers) == L and cache.get_seq_length() == 0
    assert isinstance(cache.layers[0], DynamicLayer)
    _prefill(cache, tokens[:10])
    base = cache.layers[0].keys.__array_interface__["data"][0]
    _prefill(cache, tokens[:14], 10)
    assert cache.get_seq_length() == 14
    assert cache.layers[0].keys.__array_interface__["data"][0] == base  # no copy
    _prefill(cache, tokens[:40], 14)  # past the capacity of 16: grows
    assert cache.get_seq_length() == 40 and cache.layers[0]._kvt_store.shape[3] >= 40
    ref = DynamicCache()
    _prefill(ref, tokens[:40])
    for a, b in zip(cache.layers, ref.layers):
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.values, b.values)
    # a crop keeps the storage; the next tokens overwrite the cropped ones
    for lay in cache.layers:
        lay.crop(30)
    _prefill(cache, tokens[:33], 30)
    assert cache.get_seq_length() == 33 and cache.layers[0]._kvt_store is not None
    assert np.array_equal(cache.layers[1].keys, ref.layers[1].keys[:, :, :33])
    # replaced tensors (a batch repeat): the layer falls back to concatenation
    for lay in cache.layers:
        lay.batch_repeat_interleave(2)
    k, v = _kv(tokens, 33, 34, 0)
    keys, _ = cache.layers[0].update(np.repeat(k, 2, 0), np.repeat(v, 2, 0))
    assert keys.shape == (2, H, 34, D) and cache.layers[0]._kvt_store is None


def test_attach_slotted_layers():
    tokens = np.arange(20)
    cache = DynamicCache(SlottedLayer)
    cache.layers = [SlottedLayer() for _ in range(L)]
    cache = hf.attach(cache, [_np_alloc((2, 1, H, 8, D)) for _ in range(L)], 0)
    assert all(isinstance(lay, SlottedLayer) and lay._kvt_store is not None
               for lay in cache.layers)
    _prefill(cache, tokens)  # past the capacity of 8: grows, in place
    ref = DynamicCache()
    _prefill(ref, tokens)
    assert cache.get_seq_length() == 20
    for a, b in zip(cache.layers, ref.layers):
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.values, b.values)


def test_attach_refuses_sliding_layers():
    with pytest.raises(hf.Unsupported):
        hf.attach(DynamicCache(SlidingLayer), [_np_alloc((2, 1, H, 8, D))], 0)


# ---------------------------------------------------------------------------------------------
# Through the daemon


def _check_restored(cache, tokens, n):
    ref = DynamicCache()
    _prefill(ref, tokens)
    assert cache.get_seq_length() == n
    for a, b in zip(cache.layers, ref.layers):
        assert np.array_equal(a.keys, b.keys[:, :, :n]) and \
            np.array_equal(a.values, b.values[:, :, :n])


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_store_then_restore(daemon, lib):
    if lib == "torch" and torch is None:
        pytest.skip("no torch")
    kw = {} if lib == "numpy" else dict(dtype=torch.float16, device="cpu", alloc=None)
    mod = np if lib == "numpy" else torch
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, 50000, 5 * BT + 3)
    with _pc(daemon.sock, **kw) as pc:
        cache = pc.restore(prompt)  # nothing stored yet: an empty cache, the whole tail
        assert cache is not None and cache.get_seq_length() == 0
        assert pc.stats["hit_blocks"] == 0 and pc.stats["tail_tokens"] == len(prompt)
        _prefill(cache, prompt, 0, mod)
        assert pc.store(prompt, cache) == 5 and pc.stats["new_blocks"] == 5
        assert pc.store(prompt, cache) == 5 and pc.stats["new_blocks"] == 0  # already there

        cache = pc.restore(prompt)  # full hit: all 5 blocks, 3 tokens left to compute
        assert pc.stats["hit_blocks"] == 5 and pc.stats["tail_tokens"] == 3
        _check_restored(cache, prompt, 5 * BT)
        _prefill(cache, prompt, cache.get_seq_length(), mod)  # the tail, in place
        _check_restored(cache, prompt, len(prompt))

        # prompt of whole blocks: the last token is recomputed (its block is restored whole)
        whole = prompt[:4 * BT]
        cache = pc.restore(whole)
        assert pc.stats["hit_blocks"] == 4 and cache.get_seq_length() == 4 * BT - 1
        _check_restored(cache, whole, 4 * BT - 1)

        # partial hit: the first two blocks shared, then another text; its own blocks stored
        other = np.concatenate([prompt[:2 * BT + 3], rng.integers(0, 50000, 3 * BT)])
        cache = pc.restore(other)
        assert pc.stats["hit_blocks"] == 2 and cache.get_seq_length() == 2 * BT
        _prefill(cache, other, cache.get_seq_length(), mod)
        _check_restored(cache, other, len(other))
        assert pc.store(other, cache) == 5 and pc.stats["new_blocks"] == 3
        cache = pc.restore(other)
        assert pc.stats["hit_blocks"] == 5
        _check_restored(cache, other, 5 * BT)

        # prompt + generated tokens: the blocks that the cache holds are stored
        longer = np.concatenate([prompt, rng.integers(0, 50000, 2 * BT)])
        cache = pc.restore(longer)
        _prefill(cache, longer, cache.get_seq_length(), mod)
        assert pc.store(longer[:6 * BT + 4], cache) == 6
        assert pc.restore(longer) is not None and pc.stats["hit_blocks"] == 6

        # a short prompt: nothing to look up
        cache = pc.restore(prompt[:1])
        assert cache.get_seq_length() == 0 and pc.stats["tail_tokens"] == 1


def test_blocks_are_kvtier_layout(daemon):
    """What store() writes is the page-first block a CPU client reads with Client.get."""
    prompt = np.arange(1000, 1000 + 2 * BT)
    with _pc(daemon.sock) as pc, kvtier.Client(socket=daemon.sock) as c:
        cache = DynamicCache()
        _prefill(cache, prompt)  # a plain cache (concatenated tensors) works as well
        assert pc.store(prompt, cache) == 2
        lay = c.register_layout(pc.layout)
        keys = kvtier.key_chain(lay, prompt.astype(np.uint32))
        for b in range(2):
            got = c.get(lay, keys[b], dtype=np.float16, shape=lay.block_shape)
            assert np.array_equal(got, _expected_block(cache_kvs(cache), b))


def cache_kvs(cache):
    return [(lay.keys, lay.values) for lay in cache.layers]


def test_different_model_ids_do_not_share(daemon):
    prompt = np.arange(3 * BT + 1)
    with _pc(daemon.sock) as a, _pc(daemon.sock, model_id="another-model") as b:
        cache = a.restore(prompt)
        _prefill(cache, prompt)
        assert a.store(prompt, cache) == 3
        assert b.restore(prompt).get_seq_length() == 0 and b.stats["hit_blocks"] == 0


def test_no_daemon_falls_back(tmp_path):
    pc = _pc(str(tmp_path / "none.sock"))
    prompt = np.arange(4 * BT)
    assert pc.restore(prompt) is None
    assert "no kvtier daemon" in pc.stats["fallback"]
    cache = DynamicCache()
    _prefill(cache, prompt)
    assert pc.store(prompt, cache) == 0
    assert pc.store(prompt, None) == 0
    pc.close()


def test_daemon_restart(tmp_path):
    """A daemon that goes away: calls fall back; once it is back, kvtier is used again."""
    d = _Daemon(tmp_path)
    prompt = np.arange(3 * BT + 2)
    pc = _pc(d.sock)
    try:
        cache = pc.restore(prompt)
        _prefill(cache, prompt)
        assert pc.store(prompt, cache) == 3
        d.stop()
        assert pc.restore(prompt) is None and "fallback" in pc.stats
        assert pc.store(prompt, cache) == 0
        d = _Daemon(tmp_path, d.sock)  # host-only blocks do not survive a restart
        cache = pc.restore(prompt)
        assert cache is not None and pc.stats["hit_blocks"] == 0
        _prefill(cache, prompt)
        assert pc.store(prompt, cache) == 3
        assert pc.restore(prompt).get_seq_length() == 3 * BT
    finally:
        pc.close()
        d.stop()


@pytest.mark.parametrize("what", ["sliding", "float32", "batch"])
def test_unsupported_falls_back(daemon, what):
    kw = {}
    if what == "sliding":
        kw["config"] = _config(sliding_window=4096)
    if what == "float32":
        kw["dtype"] = np.float32
    with _pc(daemon.sock, **kw) as pc:
        prompt = np.arange(2 * BT)
        ids = np.stack([prompt, prompt]) if what == "batch" else prompt
        assert pc.restore(ids) is None and pc.stats["fallback"]
        cache = DynamicCache()
        _prefill(cache, prompt)
        assert pc.store(ids, cache) == 0


def test_bad_token_ids(daemon):
    with _pc(daemon.sock) as pc:
        with pytest.raises(ValueError):
            pc.restore(np.array([1.5, 2.0]))
        with pytest.raises(ValueError):
            pc.restore(np.array([-1, 3]))


def test_model_id_default_fits_the_layout():
    pc = hf.PrefixCache(config=_config(_name_or_path="/very/long/path/" * 8 + "model"),
                        dtype=np.float16)
    assert pc.unsupported is None and len(pc.layout.model_id.encode()) <= 63
    other = hf.PrefixCache(config=_config(_name_or_path="/other/long/path/" * 8 + "model"),
                           dtype=np.float16)
    assert other.layout.fingerprint != pc.layout.fingerprint


# ---------------------------------------------------------------------------------------------
# GPU: the device API into torch CUDA tensors


# gpu_daemon: the fixture in conftest.py.


@pytest.mark.gpu
@pytest.mark.skipif(not _HAVE_CUDA, reason="no GPU, torch with CUDA or libkvtier device API")
@pytest.mark.parametrize("host_only", [True, False])
def test_gpu_store_restore_bit_exact(gpu_daemon, host_only):
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 50000, 6 * BT + 5)
    with _pc(gpu_daemon, dtype=torch.float16, device="cuda", alloc=None,
             host_only=host_only) as pc, kvtier.Client(socket=gpu_daemon) as c:
        cache = pc.restore(prompt)
        assert cache.get_seq_length() == 0
        for layer in range(L):
            k, v = _kv(prompt, 0, len(prompt), layer, torch)
            cache.update(k.cuda(), v.cuda(), layer)
        assert pc.store(prompt, cache) == 6
        # the device put wrote kvtier's page-first blocks, as a CPU client reads them
        lay = c.register_layout(pc.layout)
        keys = kvtier.key_chain(lay, prompt.astype(np.uint32))
        cpu = [(k.cpu().numpy(), v.cpu().numpy()) for k, v in cache_kvs(cache)]
        for b in range(6):
            got = c.get(lay, keys[b], dtype=np.float16, shape=lay.block_shape)
            assert np.array_equal(got, _expected_block(cpu, b))
        back = pc.restore(prompt)
        assert pc.stats["hit_blocks"] == 6 and back.get_seq_length() == 6 * BT
        for (k, v), (k0, v0) in zip(cache_kvs(back), cache_kvs(cache)):
            assert k.is_cuda and torch.equal(k, k0[:, :, :6 * BT])
            assert torch.equal(v, v0[:, :, :6 * BT])


@pytest.mark.gpu
@pytest.mark.skipif(not _HAVE_CUDA, reason="no GPU, torch with CUDA or libkvtier device API")
def test_gpu_transformers_generate(gpu_daemon):
    """A real (random, tiny) Llama: generate with the cache of a miss (written in place) and
    with a restored one (the KV stored from the first, bit for bit) matches generate alone."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to("cuda", torch.float16).eval()
    ids = torch.randint(0, 512, (1, 4 * 64 + 17), device="cuda")
    gen = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
               output_logits=True)
    with hf.PrefixCache(model, socket=gpu_daemon) as pc, torch.no_grad():
        cache = pc.restore(ids, max_new_tokens=8)  # a miss: the in-place cache, empty
        out = model.generate(ids, past_key_values=cache, **gen)
        ref = model.generate(ids, **gen)
        assert out.sequences.shape == ref.sequences.shape
        for a, b in zip(out.logits, ref.logits):
            assert torch.allclose(a.float(), b.float(), atol=2e-2, rtol=0)
        assert pc.store(ids, cache) == 4
        back = pc.restore(ids, max_new_tokens=8)
        assert pc.stats["hit_blocks"] == 4 and back.get_seq_length() == 256
        for (k, v), (k0, v0) in zip(cache_kvs(back), cache_kvs(cache)):
            assert torch.equal(k, k0[:, :, :256]) and torch.equal(v, v0[:, :, :256])
        out = model.generate(ids, past_key_values=back, **gen)  # the tail: 17 tokens
        assert out.sequences.shape == ref.sequences.shape
        for a, b in zip(out.logits, ref.logits):
            assert torch.allclose(a.float(), b.float(), atol=2e-2, rtol=0)
