# SPDX-License-Identifier: MIT
"""Tests of the binding's device API (kvtier.Device).  Without a GPU only the -ENODEV path
runs; with one (and torch with CUDA), vLLM-shaped torch tensors go through a kvtierd with a GPU
tier and back, bit-exact."""

import errno
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvtier  # noqa: E402

try:
    import torch
    _HAVE_CUDA = torch.cuda.is_available()
except Exception:  # no torch here, or a broken one
    torch = None
    _HAVE_CUDA = False


@pytest.mark.skipif(kvtier.dev_available() > 0, reason="a GPU is present")
def test_device_without_gpu(gpu_daemon):
    with kvtier.Client(socket=gpu_daemon) as c:
        with pytest.raises(kvtier.KvtError) as e:
            kvtier.Device(c, socket=gpu_daemon)
        assert e.value.errno == errno.ENODEV


@pytest.mark.gpu
@pytest.mark.skipif(not _HAVE_CUDA or kvtier.dev_available() == 0, reason="no GPU/torch")
@pytest.mark.parametrize("host_only", [False, True])
def test_device_torch_roundtrip(gpu_daemon, host_only):
    layers, blocks, bs, heads, dim = 4, 64, 16, 8, 128
    kv = [torch.randn(2, blocks, bs, heads, dim, dtype=torch.float16, device="cuda")
          for _ in range(layers)]
    orig = [t.clone() for t in kv]
    lay = kvtier.Layout(layers, heads, dim, bs, model_id="py-gpu")
    keys = [(i + 1, 77) for i in range(32)]
    put_ids = list(range(0, 64, 2))
    get_ids = list(range(1, 64, 2))
    with kvtier.Client(socket=gpu_daemon) as c, kvtier.Device(c, 0, gpu_daemon) as d:
        lid = d.register_layout(lay)
        pages = kvtier.DevPages.vllm(kv)
        s = torch.cuda.current_stream()
        assert d.put(lid, pages, keys, put_ids, stream=s, host_only=host_only) == 32
        for t in kv:
            t.zero_()
        assert d.get(lid, pages, keys, get_ids, stream=s, host_only=host_only) == 32
        for t, o in zip(kv, orig):
            assert torch.equal(t[:, 1::2], o[:, 0::2])
        info = d.info()
        assert info["gpu_tier"] == 1 and info["uuid"].startswith("GPU-")
        where = "host" if host_only else "gpu"
        assert info[where + "_puts"] == 32 and info[where + "_gets"] == 32


class _FakeTensor:
    """What DevPages.vllm reads of a tensor, without torch or a GPU."""

    def __init__(self, shape, ptr):
        self.shape, self._ptr = shape, ptr

    def data_ptr(self):
        return self._ptr

    def numel(self):
        n = 1
        for x in self.shape:
            n *= x
        return n

    def element_size(self):
        return 2


def test_devpages_vllm_abi_order():
    import ctypes
    kv = [_FakeTensor((2, 10, 16, 8, 128), 0x10000 * (i + 1)) for i in range(3)]
    p = kvtier.DevPages.vllm(kv)  # 5-D: the layout's order by default
    assert p._c.size == ctypes.sizeof(p._c) and p._c.page_heads == 8
    assert p._c.page_bytes == 16 * 8 * 128 * 2 and p._c.kv_stride == 10 * p._c.page_bytes
    assert kvtier.DevPages.vllm(kv, abi_order=False)._c.page_heads == 0
    flat = [_FakeTensor((2, 10, 16 * 8 * 128), 1)]
    assert kvtier.DevPages.vllm(flat)._c.page_heads == 0  # heads unknown: as they are
    p = kvtier.DevPages.vllm(kv, pages_per_block=2, abi_order=True)
    assert p._c.page_heads == 8 and p._c.pages_per_block == 2
    with pytest.raises(kvtier.KvtError):
        kvtier.DevPages.vllm([_FakeTensor((2, 10, 16 * 8 * 128), 1)], abi_order=True)


@pytest.mark.gpu
@pytest.mark.skipif(not _HAVE_CUDA or kvtier.dev_available() == 0, reason="no GPU/torch")
def test_device_torch_abi_order(gpu_daemon):
    """abi_order: a CPU get of a block put from vLLM pages is the layout's [head][token][dim]
    order (torch's permute of the pages), and the pages come back bit-exact."""
    layers, blocks, bs, heads, dim = 4, 64, 16, 8, 128
    kv = [torch.randn(2, blocks, bs, heads, dim, dtype=torch.float16, device="cuda")
          for _ in range(layers)]
    orig = [t.clone() for t in kv]
    lay = kvtier.Layout(layers, heads, dim, bs, model_id="py-gpu-abi")
    keys = [(i + 1, 99) for i in range(8)]
    ids = list(range(8))
    with kvtier.Client(socket=gpu_daemon) as c, kvtier.Device(c, 0, gpu_daemon) as d:
        lid = d.register_layout(lay)
        clay = c.register_layout(lay)
        pages = kvtier.DevPages.vllm(kv, abi_order=True)
        s = torch.cuda.current_stream()
        assert d.put(lid, pages, keys, ids, stream=s) == 8
        for b in range(8):
            got = c.get(clay, keys[b], dtype=np.float16)
            want = torch.stack([t[:, b].permute(0, 2, 1, 3) for t in orig])  # [L][2][H][T][D]
            assert np.array_equal(got, want.cpu().numpy().reshape(-1))
        for t in kv:
            t.zero_()
        assert d.get(lid, pages, keys, ids, stream=s) == 8
        for t, o in zip(kv, orig):
            assert torch.equal(t[:, :8], o[:, :8])
