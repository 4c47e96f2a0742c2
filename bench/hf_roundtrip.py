#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Real engine round trip: Hugging Face transformers <-> kvtierd through the ctypes binding.

Part 1 (--roundtrip): a small byte-level Llama (--model DIR: the project's development model
kvmodel, not in the repository, docs/KVD.md; token ids are the bytes of the text) prefills a
chunk of Python source, its KV goes GPU -> pinned host -> kvtier arena as page-first blocks,
the torch cache is freed, the blocks come back (lookup + get), a DynamicCache is rebuilt, the
tokens of the last partial block are recomputed, and greedy decoding continues.  Each daemon
configuration (host tier; NVMe tier with raw / lossless / lossy chains) is compared with
decoding from the original cache: token agreement, max |logit diff|, KL.

Part 2 (--timing): a Llama with Llama-3-8B geometry and random bf16 weights; time to first
token by recomputing the prefill vs restoring the KV from the host tier (lookup + get into
pinned memory + H2D + cache rebuild + the forward of the last partial block).

    python3 bench/hf_roundtrip.py --build build-dev --model .devdata/kvmodel --out OUTDIR

(.devdata/, git-ignored, is where a copy of kvmodel was carried to the GPU machine.)
"""

import argparse
import concurrent.futures as cf
import errno
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client", "python"))

LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


# ------------------------------------------------------------------------------------------
# Daemon

class Daemon:
    """kvtierd in the foreground in a temporary directory; stopped by stop()."""

    def __init__(self, build, host_cap, nvme_cap=None, codec=None, extra=()):
        self.build = build
        self.dir = tempfile.mkdtemp(prefix="kvt-hf-")
        self.sock = os.path.join(self.dir, "kvtier.sock")
        args = [os.path.join(build, "daemon", "kvtierd"), "-f", "-c", "/dev/null", "-s",
                self.sock, "-o", f"host.capacity={host_cap}", "-o", "daemon.log_level=warn"]
        if nvme_cap:
            args += ["-o", "nvme.enabled=true", "-o",
                     f"nvme.paths={os.path.join(self.dir, 'nvme0.slots')}",
                     "-o", f"nvme.capacity={nvme_cap}"]
            if codec:
                args += ["-o", f"nvme.codec={codec}"]
        for e in extra:
            args += ["-o", e]
        self.args = args
        self.logf = open(os.path.join(self.dir, "kvtierd.log"), "w+")
        self.p = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)
        t0 = time.time()
        while not os.path.exists(self.sock):
            if self.p.poll() is not None or time.time() - t0 > 15:
                self.logf.seek(0)
                msg = self.logf.read()
                self.stop()
                raise RuntimeError(f"kvtierd did not start ({' '.join(args)}): {msg}")
            time.sleep(0.05)

    def ctl(self, *cmd):
        r = subprocess.run([os.path.join(self.build, "client", "kvtierctl"), "-s", self.sock,
                            "--json", *cmd], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"kvtierctl {cmd}: rc={r.returncode} {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip().startswith(("{", "[")) else r.stdout

    def status(self):
        return self.ctl("status")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_daemon(build, host_cap, nvme_cap=None, codec=None):
    """NVMe: buffered I/O (the device machine's /tmp may refuse O_DIRECT); io_uring first,
    then the pread workers if the sandbox has no io_uring."""
    if not nvme_cap:
        return Daemon(build, host_cap)
    extra = ["nvme.direct=false"]
    try:
        return Daemon(build, host_cap, nvme_cap, codec, extra)
    except RuntimeError as e:
        log(f"  kvtierd with io_uring failed ({str(e)[-200:]}); retrying with nvme.io_uring=false")
        return Daemon(build, host_cap, nvme_cap, codec, extra + ["nvme.io_uring=false"])


# ------------------------------------------------------------------------------------------
# KV cache <-> blocks

def cache_layers(cache):
    """[(K, V)] per layer, each [batch, kv_heads, tokens, head_dim], of a transformers cache."""
    if hasattr(cache, "layers"):
        return [(lay.keys, lay.values) for lay in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(cache[i][0], cache[i][1]) for i in range(len(cache))]


def kv_to_blocks(layers, nb, bt):
    """GPU tensor [nb, L, 2, H, bt, D]: block b = per layer K[h][t][d] then V[h][t][d] of
    tokens b*bt .. (b+1)*bt - 1 (kvtier's page-first order, K then V)."""
    import torch
    L = len(layers)
    _, H, _, D = layers[0][0].shape
    n = nb * bt
    kv = torch.stack([torch.stack([k[0, :, :n], v[0, :, :n]]) for k, v in layers])
    return kv.view(L, 2, H, nb, bt, D).permute(3, 0, 1, 2, 4, 5).contiguous()


def blocks_to_cache(blocks_gpu, config):
    """Rebuilds a DynamicCache from [nb, L, 2, H, bt, D] blocks on the GPU."""
    from transformers import DynamicCache
    nb, L, _, H, bt, D = blocks_gpu.shape
    kv = blocks_gpu.permute(1, 2, 3, 0, 4, 5).reshape(L, 2, 1, H, nb * bt, D)
    try:
        cache = DynamicCache(config=config)
    except TypeError:
        cache = DynamicCache()
    for l in range(L):
        cache.update(kv[l, 0].contiguous(), kv[l, 1].contiguous(), l)
    return cache


def np_view(t):
    """numpy view (no copy) of a CPU tensor; bf16 as int16 bits."""
    import torch
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


class Store:
    """Puts and gets whole prefixes of blocks; gets run on a pool of threads, one client
    each (a client serializes its requests)."""

    def __init__(self, kvtier, sock, geom, dtype, model_id, threads=8):
        self.kvtier = kvtier
        self.sock = sock
        self.geom = geom
        self.dtype = dtype
        self.model_id = model_id
        self.local = threading.local()
        self.clients = []
        self.lock = threading.Lock()
        self.c, self.lay = self._client()
        self.pool = cf.ThreadPoolExecutor(threads, initializer=self._client)

    def _client(self):
        c = self.kvtier.Client(socket=self.sock, name="hf_roundtrip")
        L, H, D, bt = self.geom
        lay = c.register_layout(L, H, D, bt, dtype=self.dtype, model_id=self.model_id)
        self.local.c, self.local.lay = c, lay
        with self.lock:
            self.clients.append(c)
        return c, lay

    def keys(self, token_ids):
        return self.kvtier.key_chain(self.lay, np.asarray(token_ids, dtype=np.uint32),
                                     as_array=True)

    def put_all(self, keys, host_np):
        """host_np: [nb, ...] pinned staging (numpy view); one reserve/copy/commit each."""
        stored = 0
        for b in range(len(keys)):
            for attempt in range(200):
                try:
                    res = self.c.reserve(self.lay, keys[b])
                    break
                except self.kvtier.KvtError as e:
                    if e.code == errno.EEXIST:
                        res = None
                        break
                    if e.code != errno.ENOSPC or attempt == 199:
                        raise
                    time.sleep(0.01)  # the host tier is demoting to make room
            if res is None:
                continue
            np.copyto(res.array, host_np[b].reshape(-1).view(np.uint8), casting="no")
            res.commit()
            stored += 1
        return stored

    def _get(self, key, out):
        loc = self.local
        for attempt in range(400):
            try:
                r = loc.c.get(loc.lay, key, out=out)
                break
            except self.kvtier.KvtError as e:
                # a promotion from NVMe needs host room; with a tiny host tier and several
                # threads promoting at once, the room comes back as the others finish
                if e.code != errno.ENOSPC or attempt == 399:
                    raise
                time.sleep(0.005)
        if r is None:
            raise KeyError("block vanished between lookup and get")
        return r.size

    def get_all(self, keys, host_np, on_chunk=None, chunk=16):
        """Gets keys[i] into host_np[i] in parallel; on_chunk(lo, hi) runs (in order) as soon
        as blocks lo..hi-1 are all in, so that their H2D copy overlaps the later gets."""
        futs = [self.pool.submit(self._get, keys[i], host_np[i]) for i in range(len(keys))]
        for lo in range(0, len(keys), chunk):
            hi = min(lo + chunk, len(keys))
            for f in futs[lo:hi]:
                f.result()
            if on_chunk:
                on_chunk(lo, hi)

    def close(self):
        self.pool.shutdown()
        for c in self.clients:
            c.close()


# ------------------------------------------------------------------------------------------
# Part 1: round trip with the trained model

def prompt_bytes(n):
    """n bytes of Python source: the installed transformers' Llama modeling file."""
    import transformers.models.llama.modeling_llama as m
    with open(m.__file__, "rb") as f:
        data = f.read()
    while len(data) < n:
        data += data
    return m.__file__, data[:n]


def decode(model, cache, first_logits, ref_tokens, n):
    """Teacher-forced greedy decoding: feeds ref_tokens (or its own argmax when ref_tokens is
    None); returns (argmax tokens, [n, vocab] fp32 logits)."""
    import torch
    toks, logits = [], [first_logits]
    cur = first_logits
    for i in range(n):
        nxt = int(torch.argmax(cur))
        toks.append(nxt)
        if i == n - 1:
            break
        feed = nxt if ref_tokens is None else ref_tokens[i]
        out = model(input_ids=torch.tensor([[feed]], device=cur.device), past_key_values=cache,
                    use_cache=True)
        cur = out.logits[0, -1].float()
        logits.append(cur)
    return toks, torch.stack(logits)


def compare(ref_toks, ref_logits, toks, logits):
    import torch
    agree = [a == b for a, b in zip(ref_toks, toks)]
    first = next((i for i, a in enumerate(agree) if not a), None)
    lp = torch.log_softmax(ref_logits, -1)
    lq = torch.log_softmax(logits, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # KL(ref || this), nats, per step
    return {
        "tokens_identical": all(agree),
        "token_agreement": sum(agree) / len(agree),
        "first_mismatch_step": first,
        "max_abs_logit_diff": float((ref_logits - logits).abs().max()),
        "kl_mean_nats": float(kl.mean()),
        "kl_max_nats": float(kl.max()),
    }


def roundtrip(args, kvtier):
    import torch
    from transformers import LlamaForCausalLM
    dev = "cuda"
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float16).to(dev).eval()
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    bt = args.block_tokens
    src, text = prompt_bytes(args.prompt_bytes)
    ids = list(text)
    P = len(ids)
    nfull = P // bt
    nrest = (P - 1) // bt  # blocks restored: at least one token is recomputed for the logits
    log(f"model {args.model}: {L} layers, {H} kv heads, head_dim {D}, fp16; prompt {P} bytes "
        f"of {src}; {nfull} full blocks of {bt} tokens stored, {nrest} restored, "
        f"{P - nrest * bt} tail tokens recomputed; decode {args.decode} tokens")
    ids_t = torch.tensor([ids], device=dev)
    res = {"model": args.model, "prompt_source": src, "prompt_tokens": P, "block_tokens": bt,
           "blocks_stored": nfull, "blocks_restored": nrest, "tail_tokens_recomputed":
           P - nrest * bt, "decode_tokens": args.decode, "layout": [L, H, D, bt, "fp16"],
           "runs": []}

    with torch.no_grad():
        out = model(input_ids=ids_t, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        res["cache_class"] = type(cache).__name__
        # GPU -> pinned host staging (kept: every daemon configuration below is fed from it)
        blocks = kv_to_blocks(cache_layers(cache), nfull, bt)
        staging = torch.empty(blocks.shape, dtype=blocks.dtype, pin_memory=True)
        staging.copy_(blocks)
        del blocks
        ref_toks, ref_logits = decode(model, cache, out.logits[0, -1].float(), None,
                                      args.decode)
        del cache, out
        torch.cuda.empty_cache()
        res["reference_tokens"] = ref_toks
        res["reference_text"] = bytes(ref_toks).decode("latin-1")
        log(f"reference continuation: {res['reference_text']!r}")
        st_np = np_view(staging)
        block_bytes = staging[0].numel() * staging.element_size()

        for name, host_cap, nvme_cap, codec, lossy in args.configs:
            log(f"--- {name}: host.capacity={host_cap}" +
                (f" nvme.capacity={nvme_cap} nvme.codec={codec}" if nvme_cap else ""))
            run = {"name": name, "host_capacity": host_cap, "nvme_capacity": nvme_cap,
                   "nvme_codec": codec, "lossy": lossy}
            try:
                d = start_daemon(args.build, host_cap, nvme_cap, codec)
            except RuntimeError as e:
                run["error"] = str(e)[-500:]
                log(f"  FAILED to start: {run['error']}")
                res["runs"].append(run)
                continue
            store = None
            try:
                store = Store(kvtier, d.sock, (L, H, D, bt), "fp16", "kvmodel-byte-llama")
                keys = store.keys(ids)
                assert len(keys) == nfull
                t0 = time.perf_counter()
                run["stored"] = store.put_all(keys, st_np)
                run["put_s"] = time.perf_counter() - t0
                if nvme_cap:
                    s = d.status()
                    run["demotions_by_pressure"] = s["metrics"]["demotions_total"]
                    run["tiers_before_flush"] = [(t["name"], t["blocks"]) for t in s["tiers"]]
                    # Everything down to NVMe and out of the host tier, so that every block
                    # comes back through the NVMe chain (and is promoted).
                    d.ctl("flush")
                    d.ctl("evict", "--all")
                before = d.status()
                # restore: lookup + get into pinned memory + H2D + rebuild the cache
                back = torch.empty((nrest,) + tuple(staging.shape[1:]), dtype=staging.dtype,
                                   pin_memory=True)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                hit = store.c.lookup(store.lay, keys[:nrest])
                run["lookup_hit_blocks"] = hit
                if hit < nrest:
                    raise RuntimeError(f"lookup found {hit} of {nrest} blocks")
                store.get_all(keys[:nrest], np_view(back))
                gpu = back.to(dev, non_blocking=True)
                cache = blocks_to_cache(gpu, cfg)
                torch.cuda.synchronize()
                run["restore_s"] = time.perf_counter() - t0
                after = d.status()
                m0, m1 = before["metrics"], after["metrics"]
                run["tiers_after_put"] = before["tiers"]
                run["demotions_total"] = m1["demotions_total"]
                run["promotions_total"] = m1["promotions_total"]
                run["promotions_during_restore"] = m1["promotions_total"] - m0["promotions_total"]
                run["nvme_bytes_used"] = next((t["used_bytes"] for t in before["tiers"]
                                               if t["name"] == "nvme"), 0)
                if nvme_cap:
                    run["nvme_ratio"] = (nfull * block_bytes) / max(1, run["nvme_bytes_used"])
                exact = torch.equal(back.view(torch.int16),
                                    staging[:nrest].view(torch.int16))
                run["kv_bit_exact"] = bool(exact)
                if not exact:
                    a = staging[:nrest].float()
                    b = back.float()
                    run["kv_max_abs_err"] = float((a - b).abs().max())
                    run["kv_rel_rms_err"] = float(((a - b).pow(2).mean() / a.pow(2).mean())
                                                  .sqrt())
                del back
                # the tail (last partial block, and the last full one when P % bt == 0)
                out = model(input_ids=ids_t[:, nrest * bt:], past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                # lossless: free-running greedy; lossy: teacher-forced on the reference
                # tokens so that every step's logits compare with the reference's
                toks, logits = decode(model, cache, out.logits[0, -1].float(),
                                      None if not lossy else ref_toks, args.decode)
                del cache, out
                run.update(compare(ref_toks, ref_logits, toks, logits))
                if lossy:
                    # free-running greedy as well: how long it stays on the reference
                    cache = blocks_to_cache(gpu, cfg)
                    out = model(input_ids=ids_t[:, nrest * bt:], past_key_values=cache,
                                use_cache=True, logits_to_keep=1)
                    free, _ = decode(model, cache, out.logits[0, -1].float(), None,
                                     args.decode)
                    del cache, out
                    run["free_run_identical_tokens"] = next(
                        (i for i, (a, b) in enumerate(zip(free, ref_toks)) if a != b),
                        len(ref_toks))
                    run["free_run_text"] = bytes(free).decode("latin-1")
                del gpu
                run["text"] = bytes(toks).decode("latin-1")
                log("  " + ", ".join(f"{k}={v}" for k, v in run.items()
                                     if k not in ("tiers_after_put", "text", "free_run_text")))
            except Exception as e:  # record and go on with the next configuration
                run["error"] = f"{type(e).__name__}: {e}"[-500:]
                log(f"  FAILED: {run['error']}")
            finally:
                if store:
                    store.close()
                d.stop()
            res["runs"].append(run)
            torch.cuda.empty_cache()
    del model
    torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------
# Part 2: TTFT, restore from the host tier vs recompute, Llama-3-8B geometry

def cuda_time(fn, reps):
    import torch
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return ts, r


def timing(args, kvtier):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    dev = "cuda"
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, max_position_embeddings=max(args.lengths) + 1024,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model = model.to(dtype=torch.bfloat16).eval()
    nparam = sum(p.numel() for p in model.parameters())
    log(f"8B-geometry Llama, random bf16 weights: {nparam / 1e9:.2f} B parameters, "
        f"built in {time.perf_counter() - t0:.1f} s; attention {model.config._attn_implementation}")
    L, H, D, bt = 32, 8, 128, args.timing_block_tokens
    maxT = max(args.lengths)
    block_bytes = L * 2 * H * bt * D * 2
    host_cap = ((maxT // bt + 8) * block_bytes * 5 // 4 >> 20) + 64
    d = start_daemon(args.build, f"{host_cap}MiB")
    store = Store(kvtier, d.sock, (L, H, D, bt), "bf16", "llama3-8b-geometry-random",
                  threads=args.threads)
    out_res = {"config": "Llama-3-8B geometry (32 layers, hidden 4096, 32 heads, 8 kv heads, "
                         "head_dim 128, ffn 14336, vocab 128256), random bf16 weights",
               "params_b": nparam / 1e9, "attn_implementation": model.config._attn_implementation,
               "block_tokens": bt, "block_bytes": block_bytes, "host_capacity_mib": host_cap,
               "get_threads": args.threads, "gpu": torch.cuda.get_device_name(),
               "torch": torch.__version__, "reps": args.reps, "lengths": []}
    g = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            for T in args.lengths:
                ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g).to(dev)
                nrest = (T - 1) // bt
                tail = T - nrest * bt

                def prefill():
                    return model(input_ids=ids, use_cache=True, logits_to_keep=1)

                cuda_time(prefill, 1)  # warm-up
                ts_pre, out = cuda_time(prefill, args.reps)
                ref_logits = out.logits[0, -1].float()
                blocks = kv_to_blocks(cache_layers(out.past_key_values), nrest, bt)
                del out
                torch.cuda.empty_cache()
                staging = torch.empty(blocks.shape, dtype=torch.bfloat16, pin_memory=True)
                staging.copy_(blocks)
                del blocks
                keys = store.keys(ids[0].tolist())[:nrest]
                t0 = time.perf_counter()
                store.put_all(keys, np_view(staging))
                put_s = time.perf_counter() - t0
                del staging
                back = torch.empty((nrest, L, 2, H, bt, D), dtype=torch.bfloat16,
                                   pin_memory=True)
                back_np = np_view(back)
                gpu = torch.empty(back.shape, dtype=torch.bfloat16, device=dev)
                parts = {}

                def restore():
                    t = time.perf_counter()
                    hit = store.c.lookup(store.lay, keys)
                    assert hit == nrest, (hit, nrest)
                    parts["lookup"] = time.perf_counter() - t

                    def h2d(lo, hi):
                        gpu[lo:hi].copy_(back[lo:hi], non_blocking=True)

                    store.get_all(keys, back_np, on_chunk=h2d, chunk=args.chunk)
                    parts["get"] = time.perf_counter() - t
                    cache = blocks_to_cache(gpu, model.config)
                    torch.cuda.synchronize()
                    parts["h2d_rebuild"] = time.perf_counter() - t
                    o = model(input_ids=ids[:, nrest * bt:], past_key_values=cache,
                              use_cache=True, logits_to_keep=1)
                    return o.logits[0, -1].float()

                ts_res, logits = [], None
                split = []
                for r in range(args.reps + 1):  # the first is the warm-up
                    tt, logits = cuda_time(restore, 1)
                    if r:
                        ts_res += tt
                        split.append(dict(parts))
                ttft_pre = statistics.median(ts_pre)
                ttft_res = statistics.median(ts_res)
                med = {k: statistics.median(s[k] for s in split) for k in split[0]}
                row = {"tokens": T, "blocks_restored": nrest, "tail_tokens_recomputed": tail,
                       "kv_bytes_restored": nrest * block_bytes,
                       "recompute_prefill_s": ttft_pre, "recompute_prefill_all_s": ts_pre,
                       "restore_s": ttft_res, "restore_all_s": ts_res,
                       "restore_lookup_s": med["lookup"],
                       "restore_lookup_get_s": med["get"],
                       "restore_until_cache_ready_s": med["h2d_rebuild"],
                       "restore_tail_forward_s": ttft_res - med["h2d_rebuild"],
                       "get_GBps": nrest * block_bytes / med["get"] / 1e9,
                       "speedup": ttft_pre / ttft_res, "put_s": put_s,
                       "first_token_same": int(torch.argmax(logits)) ==
                       int(torch.argmax(ref_logits)),
                       "max_abs_logit_diff": float((logits - ref_logits).abs().max())}
                log(f"T={T}: recompute {ttft_pre * 1e3:.1f} ms, restore {ttft_res * 1e3:.1f} ms "
                    f"(lookup+get {med['get'] * 1e3:.1f}, cache ready "
                    f"{med['h2d_rebuild'] * 1e3:.1f}, tail {tail} tok "
                    f"{(ttft_res - med['h2d_rebuild']) * 1e3:.1f}) -> "
                    f"{ttft_pre / ttft_res:.2f}x; get {row['get_GBps']:.1f} GB/s; "
                    f"first token same {row['first_token_same']}, max|dlogit| "
                    f"{row['max_abs_logit_diff']:.3g}")
                out_res["lengths"].append(row)
                back = back_np = gpu = None  # frees them (the closures hold the cells)
                for k in keys:  # make room for the next length
                    store.c.delete(store.lay, k)
                torch.cuda.empty_cache()
    finally:
        store.close()
        d.stop()
    return out_res


def parse_configs(args):
    # name, host.capacity, nvme.capacity, nvme.codec, lossy
    cfgs = [("host", "256MiB", None, None, False),
            ("nvme-raw", "8MiB", "512MiB", "raw", False)]
    for spec in args.lossless:
        cfgs.append((f"nvme-{spec}", "8MiB", "512MiB", spec, False))
    for spec in args.lossy:
        cfgs.append((f"nvme-{spec}", "8MiB", "512MiB", spec, True))
    return cfgs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="build dir with daemon/kvtierd, client/")
    ap.add_argument("--model", help="Hugging Face directory of a byte-level LlamaForCausalLM, "
                    "e.g. the development model kvmodel (not in the repository); needed "
                    "unless --no-roundtrip")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--prefix", default="hf_")
    ap.add_argument("--no-roundtrip", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--prompt-bytes", type=int, default=3000)
    ap.add_argument("--block-tokens", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--lossless", nargs="*", default=["fpx", "zstd"],
                    help="lossless NVMe chains to run")
    ap.add_argument("--lossy", nargs="*",
                    default=["kivi:k=8,v=8,g=32", "kivi:k=4,v=4,g=32",
                             "uq:k=0.08,v=0.08,rope=10000"], help="lossy NVMe chains")
    ap.add_argument("--lengths", type=int, nargs="*", default=[8192, 32768])
    ap.add_argument("--timing-block-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=32)
    args = ap.parse_args()
    if not args.no_roundtrip and not args.model:
        ap.error("--model DIR is needed for the round trip (or --no-roundtrip)")
    args.build = os.path.abspath(args.build)
    os.environ.setdefault("KVTIER_LIB", os.path.join(args.build, "client", "libkvtier.so"))
    args.configs = parse_configs(args)
    import kvtier
    import torch
    import transformers
    os.makedirs(args.out, exist_ok=True)
    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
           "kvtier": kvtier.version(), "python": sys.version.split()[0],
           "argv": sys.argv}
    log(f"env: {env}")
    if not args.no_roundtrip:
        r = roundtrip(args, kvtier)
        r["env"] = env
        with open(os.path.join(args.out, args.prefix + "roundtrip.json"), "w") as f:
            json.dump(r, f, indent=1)
    if not args.no_timing:
        r = timing(args, kvtier)
        r["env"] = env
        with open(os.path.join(args.out, args.prefix + "timing.json"), "w") as f:
            json.dump(r, f, indent=1)
    with open(os.path.join(args.out, args.prefix + "roundtrip.txt"), "w") as f:
        f.write("\n".join(LOG) + "\n")


if __name__ == "__main__":
    main()
