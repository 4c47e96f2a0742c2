#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gguf_writer.py - writes Llama models as GGUF files that llama.cpp loads.

kvtier's own writer (numpy only, no gguf-py): the engine tests and the bench make their
models with it at run time instead of shipping any.

  gguf_writer.py convert HF_DIR OUT.gguf [--dtype f16|f32] [--name NAME]
      a Hugging Face Llama (config.json + *.safetensors, fp16/bf16/fp32) as GGUF
  gguf_writer.py random OUT.gguf --layers N --hidden D --heads H --kv-heads K
                 [--head-dim HD] [--ffn F] [--vocab V] [--ctx C] [--seed S] [--dtype f16|f32]
      a Llama of any geometry with random weights (N(0, 0.02), norms 1)

The vocabulary is llama.cpp's "none": tokens are ids fed straight to llama_decode (a byte
model such as ../shared/data/kvmodel reads a file's bytes as its tokens).  Q and K weights are
permuted as llama.cpp's Llama graph expects (its RoPE rotates adjacent pairs, Hugging Face's
rotates halves), as llama.cpp's own convert_hf_to_gguf.py does.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGN = 32

# GGUF metadata value types
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
# ggml tensor types
GGML_F32, GGML_F16 = 0, 1


def _str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, value):
    out = _str(key) + struct.pack("<I", vtype)
    if vtype == T_UINT32:
        out += struct.pack("<I", value)
    elif vtype == T_INT32:
        out += struct.pack("<i", value)
    elif vtype == T_FLOAT32:
        out += struct.pack("<f", value)
    elif vtype == T_BOOL:
        out += struct.pack("<B", 1 if value else 0)
    elif vtype == T_STRING:
        out += _str(value)
    else:
        raise ValueError("unsupported metadata type %d" % vtype)
    return out


def write_gguf(path, meta, tensors):
    """meta: list of (key, type, value); tensors: list of (name, numpy array f32/f16).
    Writes to path.tmp and renames, so a reader never sees half a file."""
    infos = b""
    offset = 0
    layout = []
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        gtype = {np.dtype(np.float32): GGML_F32, np.dtype(np.float16): GGML_F16}[arr.dtype]
        dims = list(reversed(arr.shape))  # ggml's ne[0] is the fastest-moving dimension
        infos += _str(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", gtype, offset)
        layout.append((offset, arr))
        offset += (arr.nbytes + ALIGN - 1) // ALIGN * ALIGN
    kvs = b"".join(_kv(*m) for m in meta)
    head = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(meta)) + kvs + infos
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(b"\0" * (-len(head) % ALIGN))
        base = f.tell()
        for off, arr in layout:
            f.seek(base + off)
            arr.tofile(f)
        f.write(b"\0" * (-f.tell() % ALIGN))
    os.replace(tmp, path)


def llama_meta(name, g):
    """Metadata of a Llama of geometry g (dict)."""
    return [
        ("general.architecture", T_STRING, "llama"),
        ("general.name", T_STRING, name),
        ("general.alignment", T_UINT32, ALIGN),
        ("llama.context_length", T_UINT32, g["ctx"]),
        ("llama.embedding_length", T_UINT32, g["hidden"]),
        ("llama.block_count", T_UINT32, g["layers"]),
        ("llama.feed_forward_length", T_UINT32, g["ffn"]),
        ("llama.attention.head_count", T_UINT32, g["heads"]),
        ("llama.attention.head_count_kv", T_UINT32, g["kv_heads"]),
        ("llama.attention.key_length", T_UINT32, g["head_dim"]),
        ("llama.attention.value_length", T_UINT32, g["head_dim"]),
        ("llama.rope.dimension_count", T_UINT32, g["head_dim"]),
        ("llama.rope.freq_base", T_FLOAT32, g["rope_theta"]),
        ("llama.attention.layer_norm_rms_epsilon", T_FLOAT32, g["eps"]),
        ("llama.vocab_size", T_UINT32, g["vocab"]),
        ("tokenizer.ggml.model", T_STRING, "none"),
    ]


def permute_rope(w, n_head):
    """Hugging Face's half-split RoPE rows -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_geometry(g):
    for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "ctx"):
        if g[k] <= 0:
            raise SystemExit("gguf_writer: %s must be > 0" % k)
    if g["heads"] % g["kv_heads"]:
        raise SystemExit("gguf_writer: heads (%d) must be a multiple of kv-heads (%d)" % (g["heads"], g["kv_heads"]))
    if g["head_dim"] % 2:
        raise SystemExit("gguf_writer: head-dim must be even (RoPE)")


def n_params(g):
    d, hd = g["hidden"], g["head_dim"]
    per_layer = d * hd * (2 * g["heads"] + 2 * g["kv_heads"]) + 3 * d * g["ffn"] + 2 * d
    return g["layers"] * per_layer + 2 * g["vocab"] * d + d


def random_model(args):
    g = dict(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
             head_dim=args.head_dim or args.hidden // args.heads, ffn=args.ffn or 4 * args.hidden,
             vocab=args.vocab, ctx=args.ctx, rope_theta=10000.0, eps=1e-5)
    check_geometry(g)
    rng = np.random.default_rng(args.seed)
    dt = np.float16 if args.dtype == "f16" else np.float32
    d, hd = g["hidden"], g["head_dim"]

    def w(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(dt)

    t = [("token_embd.weight", w(g["vocab"], d))]
    for i in range(g["layers"]):
        p = "blk.%d." % i
        t += [
            (p + "attn_norm.weight", np.ones(d, np.float32)),
            (p + "attn_q.weight", w(g["heads"] * hd, d)),
            (p + "attn_k.weight", w(g["kv_heads"] * hd, d)),
            (p + "attn_v.weight", w(g["kv_heads"] * hd, d)),
            (p + "attn_output.weight", w(d, g["heads"] * hd)),
            (p + "ffn_norm.weight", np.ones(d, np.float32)),
            (p + "ffn_gate.weight", w(g["ffn"], d)),
            (p + "ffn_up.weight", w(g["ffn"], d)),
            (p + "ffn_down.weight", w(d, g["ffn"])),
        ]
    t += [("output_norm.weight", np.ones(d, np.float32)), ("output.weight", w(g["vocab"], d))]
    name = args.name or "kvtier-random-l%d-d%d-h%d-kv%d-s%d" % (g["layers"], d, g["heads"], g["kv_heads"], args.seed)
    write_gguf(args.out, llama_meta(name, g), t)
    print("%s: %s, %.1f M parameters" % (args.out, name, n_params(g) / 1e6))


# --- safetensors ---------------------------------------------------------------------------

_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": "bf16"}


def read_safetensors(path):
    """All tensors of one .safetensors file as float32 numpy arrays."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100 << 20:
            raise SystemExit("%s: header of %d bytes is not a safetensors header" % (path, n))
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dt = _ST_DTYPES.get(info["dtype"])
            if dt is None:
                raise SystemExit("%s: tensor %s has dtype %s (want F16, BF16 or F32)" % (path, name, info["dtype"]))
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            if len(raw) != b - a:
                raise SystemExit("%s: tensor %s is truncated" % (path, name))
            if dt == "bf16":
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dt).astype(np.float32)
            out[name] = arr.reshape(info["shape"])
    return out


def convert(args):
    with open(os.path.join(args.hf_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "llama":
        raise SystemExit("gguf_writer: %s is a %s, not a llama" % (args.hf_dir, cfg.get("model_type")))
    rope = cfg.get("rope_parameters") or {}
    if (cfg.get("rope_scaling") or rope.get("rope_type", "default")) not in (None, "default"):
        raise SystemExit("gguf_writer: RoPE scaling is not supported")
    heads = cfg["num_attention_heads"]
    g = dict(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], heads=heads,
             kv_heads=cfg.get("num_key_value_heads", heads),
             head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, ffn=cfg["intermediate_size"],
             vocab=cfg["vocab_size"], ctx=cfg.get("max_position_embeddings", 4096),
             rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
             eps=float(cfg.get("rms_norm_eps", 1e-6)))
    check_geometry(g)
    st = {}
    for fn in sorted(os.listdir(args.hf_dir)):
        if fn.endswith(".safetensors"):
            st.update(read_safetensors(os.path.join(args.hf_dir, fn)))
    if not st:
        raise SystemExit("gguf_writer: no .safetensors in %s" % args.hf_dir)
    dt = np.float16 if args.dtype == "f16" else np.float32

    def get(name):
        if name not in st:
            raise SystemExit("gguf_writer: tensor %s missing" % name)
        return st[name]

    def mat(a):
        return a.astype(dt)

    t = [("token_embd.weight", mat(get("model.embed_tokens.weight")))]
    for i in range(g["layers"]):
        hf, p = "model.layers.%d." % i, "blk.%d." % i
        t += [
            (p + "attn_norm.weight", get(hf + "input_layernorm.weight").astype(np.float32)),
            (p + "attn_q.weight", mat(permute_rope(get(hf + "self_attn.q_proj.weight"), heads))),
            (p + "attn_k.weight", mat(permute_rope(get(hf + "self_attn.k_proj.weight"), g["kv_heads"]))),
            (p + "attn_v.weight", mat(get(hf + "self_attn.v_proj.weight"))),
            (p + "attn_output.weight", mat(get(hf + "self_attn.o_proj.weight"))),
            (p + "ffn_norm.weight", get(hf + "post_attention_layernorm.weight").astype(np.float32)),
            (p + "ffn_gate.weight", mat(get(hf + "mlp.gate_proj.weight"))),
            (p + "ffn_up.weight", mat(get(hf + "mlp.up_proj.weight"))),
            (p + "ffn_down.weight", mat(get(hf + "mlp.down_proj.weight"))),
        ]
    out_w = st.get("lm_head.weight")
    if out_w is None or cfg.get("tie_word_embeddings"):
        out_w = get("model.embed_tokens.weight")
    t += [("output_norm.weight", get("model.norm.weight").astype(np.float32)), ("output.weight", mat(out_w))]
    name = args.name or os.path.basename(os.path.normpath(args.hf_dir))
    write_gguf(args.out, llama_meta(name, g), t)
    print("%s: %s, %.1f M parameters" % (args.out, name, n_params(g) / 1e6))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="Hugging Face Llama (safetensors) -> GGUF")
    c.add_argument("hf_dir")
    c.add_argument("out")
    c.add_argument("--dtype", choices=("f16", "f32"), default="f16")
    c.add_argument("--name")
    r = sub.add_parser("random", help="random-weight Llama of any geometry -> GGUF")
    r.add_argument("out")
    r.add_argument("--layers", type=int, required=True)
    r.add_argument("--hidden", type=int, required=True)
    r.add_argument("--heads", type=int, required=True)
    r.add_argument("--kv-heads", type=int, required=True)
    r.add_argument("--head-dim", type=int, default=0)
    r.add_argument("--ffn", type=int, default=0)
    r.add_argument("--vocab", type=int, default=256)
    r.add_argument("--ctx", type=int, default=8192)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--dtype", choices=("f16", "f32"), default="f16")
    r.add_argument("--name")
    args = ap.parse_args(argv)
    (convert if args.cmd == "convert" else random_model)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
