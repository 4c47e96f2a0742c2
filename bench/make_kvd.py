#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""make_kvd.py - a .kvd dump (docs/KVD.md) of the development model, made with numpy on a CPU.

The shared data's model (a byte-level Llama: 4 layers, 2 KV heads, 4 query heads, head_dim 128,
RoPE theta 10000, fp16 safetensors) run over N bytes of any text, in float32, with no PyTorch:
K (post-RoPE, as an engine's cache holds it), V, and Q of the last P positions, in fp16. Held-out
dumps for the codec figures (bq's calibrated variants need a dump to calibrate on and another to
measure on) can so be made on the build machine.

RoPE uses the frequencies rounded to fp16, as Hugging Face's model cast to fp16 has them (its
inv_freq buffer follows the model's dtype): with them, this script reproduces the development dump
sympy_fancysets.kvd (the first 4096 bytes of sympy/sets/fancysets.py) to 4e-4 relative in K and V
(float32 here against the GPU's fp16); with exact frequencies K would differ by up to 20 % at
position 4000.

Usage: bench/make_kvd.py MODEL_DIR TEXT OUT.kvd [--tokens 4096] [--queries 512] [--offset 0]
"""
import argparse
import json
import os
import struct

import numpy as np


def load_weights(d):
    w = {}
    idx = os.path.join(d, 'model.safetensors.index.json')
    files = sorted(set(json.load(open(idx))['weight_map'].values())) if os.path.exists(idx) \
        else ['model.safetensors']
    for f in files:
        b = open(os.path.join(d, f), 'rb').read()
        n = struct.unpack('<Q', b[:8])[0]
        for k, v in json.loads(b[8:8 + n]).items():
            if k == '__metadata__':
                continue
            if v['dtype'] != 'F16':
                raise SystemExit('%s: %s is %s, only F16 is read' % (f, k, v['dtype']))
            s, e = v['data_offsets']
            w[k] = np.frombuffer(b, np.float16, (e - s) // 2, 8 + n + s).reshape(v['shape']) \
                .astype(np.float32)
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model')
    ap.add_argument('text')
    ap.add_argument('out')
    ap.add_argument('--tokens', type=int, default=4096)
    ap.add_argument('--queries', type=int, default=512)
    ap.add_argument('--offset', type=int, default=0)
    ap.add_argument('--name', default='')
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model, 'config.json')))
    L, QH, H = cfg['num_hidden_layers'], cfg['num_attention_heads'], cfg['num_key_value_heads']
    D = cfg.get('head_dim') or cfg['hidden_size'] // QH
    theta = (cfg.get('rope_parameters') or {}).get('rope_theta', cfg.get('rope_theta', 10000.0))
    eps = cfg.get('rms_norm_eps', 1e-6)
    T, P = a.tokens, a.queries
    toks = np.frombuffer(open(a.text, 'rb').read()[a.offset:a.offset + T], np.uint8)
    if len(toks) != T or not 0 <= P <= T:
        raise SystemExit('%s: fewer than %d bytes from offset %d' % (a.text, T, a.offset))
    W = load_weights(a.model)

    inv = (1.0 / theta ** (np.arange(0, D, 2, dtype=np.float32) / D)).astype(np.float16)
    ang = np.arange(T)[:, None] * inv.astype(np.float64)[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        return x * cos + np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    x = W['model.embed_tokens.weight'][toks]
    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    ks, vs, qs = [], [], []
    for l in range(L):
        p = 'model.layers.%d.' % l
        h = rms(x, W[p + 'input_layernorm.weight'])
        q = rope((h @ W[p + 'self_attn.q_proj.weight'].T).reshape(T, QH, D).transpose(1, 0, 2))
        k = rope((h @ W[p + 'self_attn.k_proj.weight'].T).reshape(T, H, D).transpose(1, 0, 2))
        v = (h @ W[p + 'self_attn.v_proj.weight'].T).reshape(T, H, D).transpose(1, 0, 2)
        ks.append(k)
        vs.append(v)
        qs.append(q[:, T - P:])
        o = np.zeros((QH, T, D), np.float32)
        for j in range(QH):
            s = q[j] @ k[j // (QH // H)].T / np.sqrt(D) + mask
            e = np.exp(s - s.max(1, keepdims=True))
            o[j] = (e / e.sum(1, keepdims=True)) @ v[j // (QH // H)]
        x = x + o.transpose(1, 0, 2).reshape(T, QH * D) @ W[p + 'self_attn.o_proj.weight'].T
        h = rms(x, W[p + 'post_attention_layernorm.weight'])
        g, u = h @ W[p + 'mlp.gate_proj.weight'].T, h @ W[p + 'mlp.up_proj.weight'].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + 'mlp.down_proj.weight'].T
    name = (a.name or os.path.splitext(os.path.basename(a.out))[0]).encode()[:63]
    with open(a.out, 'wb') as f:
        f.write(b'KVDUMP01' + struct.pack('<8I', L, H, QH, D, T, P, 1, len(name)))
        f.write(name.ljust(64, b'\0') + toks.tobytes())
        for arr in (ks, vs, qs):
            f.write(np.stack(arr).astype(np.float16).tobytes())


if __name__ == '__main__':
    main()
