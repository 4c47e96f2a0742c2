# SPDX-License-Identifier: MIT
"""Tests of the binding's device API (kvtier.Device).  Without a GPU only the -ENODEV path
runs; with one (and torch with CUDA), vLLM-shaped torch tensors go through a kvtierd with a GPU
tier and back, bit-exact."""

import errno
import os
import sys

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
