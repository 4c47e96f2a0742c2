#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Real engine round trip: Hugging Face transformers <-> kvtierd through kvtier.hf.

Part 1 (--roundtrip): a small byte-level Llama (--model DIR: the project's development model
kvmodel, not in the repository, docs/KVD.md; token ids are the bytes of the text) and a chunk
of Python source.  For each daemon configuration (host tier; NVMe tier with raw / lossless /
lossy chains): the first request restores nothing, computes the prompt and stores its blocks
(kvtier.hf.PrefixCache.store: one kvt_dev_put from the cache tensors); the blocks are pushed
down to NVMe; the second request restores them (PrefixCache.restore: one kvt_dev_get into the
cache tensors) and generate() computes the rest.  Compared with generate() without kvtier:
the restored KV bits, the greedy tokens, max |logit diff|, KL (lossy chains teacher-forced).

Part 2 (--timing): a Llama with Llama-3-8B geometry and random bf16 weights; time to first
token of generate() recomputing the prompt vs restore + generate (which computes the last
prompt token only), time to cache-ready against pinned cudaMemcpy H2D measured in the same
run, and the components.

    python3 bench/hf_roundtrip.py --build build-dev --model .devdata/kvmodel --out OUTDIR

(.devdata/, git-ignored, is where a copy of kvmodel was carried to the GPU machine.)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def kv_equal(cache, ref, n):
    """Whether the first n tokens of every layer of two caches are the same bits."""
    import torch
    from kvtier.hf import cache_kv
    for (k, v), (k0, v0) in zip(cache_kv(cache), cache_kv(ref)):
        if not (torch.equal(k[:, :, :n], k0[:, :, :n]) and
                torch.equal(v[:, :, :n], v0[:, :, :n])):
            return False
    return True


def roundtrip(args, kvtier):
    """Each daemon configuration: the first request (restore misses, prefill, store), the
    blocks pushed down to NVMe, then the second request: restore + generate, compared with
    generate without kvtier."""
    import torch
    from transformers import LlamaForCausalLM
    import kvtier.hf
    dev = "cuda"
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float16).to(dev).eval()
    bt = args.block_tokens
    src, text = prompt_bytes(args.prompt_bytes)
    ids = list(text)
    P = len(ids)
    nfull = P // bt
    log(f"model {args.model}: {model.config.num_hidden_layers} layers, "
        f"{model.config.num_key_value_heads} kv heads, fp16; prompt {P} bytes of {src}; "
        f"{nfull} full blocks of {bt} tokens; decode {args.decode} tokens")
    ids_t = torch.tensor([ids], device=dev)
    gen = dict(max_new_tokens=args.decode, min_new_tokens=args.decode, do_sample=False,
               return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    res = {"model": args.model, "prompt_source": src, "prompt_tokens": P, "block_tokens": bt,
           "blocks_stored": nfull, "decode_tokens": args.decode, "runs": []}
    with torch.no_grad():
        # the reference: generate without kvtier, and the prefill's KV
        ref = model.generate(ids_t, **gen)
        ref_toks = ref.sequences[0, P:].tolist()
        ref_logits = torch.stack([x[0].float() for x in ref.logits])
        ref_cache = model(input_ids=ids_t, use_cache=True, logits_to_keep=1).past_key_values
        res["reference_tokens"] = ref_toks
        res["reference_text"] = bytes(ref_toks).decode("latin-1")
        res["cache_class"] = type(ref_cache).__name__
        log(f"reference continuation: {res['reference_text']!r}")

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
            pc = None
            try:
                pc = kvtier.hf.PrefixCache(model, socket=d.sock, model_id="kvmodel-byte-llama",
                                           block_tokens=bt, host_only=True)
                # first request: nothing stored, the whole prompt is computed, then stored
                cache = pc.restore(ids_t, max_new_tokens=args.decode)
                if cache is None:
                    raise RuntimeError(f"restore fell back: {pc.stats}")
                run["first_hit_blocks"] = pc.stats["hit_blocks"]
                model(input_ids=ids_t, past_key_values=cache, use_cache=True, logits_to_keep=1)
                t0 = time.perf_counter()
                run["stored"] = pc.store(ids_t, cache)
                run["put_s"] = time.perf_counter() - t0
                # what was stored, to check the restore bit for bit; and whether the prefill
                # into the in-place cache gave the same KV as the plain one
                stored_kv = [(k[:, :, :nfull * bt].clone(), v[:, :, :nfull * bt].clone())
                             for k, v in kvtier.hf.cache_kv(cache)]
                run["inplace_prefill_kv_equal_plain"] = kv_equal(cache, ref_cache, P)
                del cache
                if nvme_cap:
                    s = d.status()
                    run["demotions_by_pressure"] = s["metrics"]["demotions_total"]
                    # Everything down to NVMe and out of the host tier, so that every block
                    # comes back through the NVMe chain (and is promoted).
                    d.ctl("flush")
                    d.ctl("evict", "--all")
                before = d.status()
                # second request: restore, then generate computes the tail only
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                cache = pc.restore(ids_t, max_new_tokens=args.decode)
                torch.cuda.synchronize()
                run["restore_s"] = time.perf_counter() - t0
                if cache is None:
                    raise RuntimeError(f"restore fell back: {pc.stats}")
                st = pc.stats
                run.update(hit_blocks=st["hit_blocks"], restored_tokens=st["restored_tokens"],
                           tail_tokens=st["tail_tokens"])
                after = d.status()
                m0, m1 = before["metrics"], after["metrics"]
                run["promotions_during_restore"] = m1["promotions_total"] - m0["promotions_total"]
                run["nvme_bytes_used"] = next((t["used_bytes"] for t in before["tiers"]
                                               if t["name"] == "nvme"), 0)
                if nvme_cap:
                    run["nvme_ratio"] = (nfull * pc.layout.block_bytes) / \
                        max(1, run["nvme_bytes_used"])
                R = st["restored_tokens"]
                run["kv_bit_exact"] = kv_equal(cache, stored_kv, R)
                if not run["kv_bit_exact"]:
                    errs = [((k[:, :, :R].float() - k0[:, :, :R].float()).pow(2).mean() /
                             k0[:, :, :R].float().pow(2).mean()).sqrt().item()
                            for (k, _), (k0, _) in zip(kvtier.hf.cache_kv(cache), stored_kv)]
                    run["k_rel_rms_err_max"] = max(errs)
                del stored_kv
                if not lossy:
                    out = model.generate(ids_t, past_key_values=cache, **gen)
                    toks = out.sequences[0, P:].tolist()
                    logits = torch.stack([x[0].float() for x in out.logits])
                else:
                    # teacher-forced on the reference tokens: every step's logits compare
                    o = model(input_ids=ids_t[:, R:], past_key_values=cache, use_cache=True,
                              logits_to_keep=1)
                    toks, logits = decode(model, cache, o.logits[0, -1].float(), ref_toks,
                                          args.decode)
                    cache = pc.restore(ids_t, max_new_tokens=args.decode)
                    free = model.generate(ids_t, past_key_values=cache, **gen)
                    free = free.sequences[0, P:].tolist()
                    run["free_run_identical_tokens"] = next(
                        (i for i, (a, b) in enumerate(zip(free, ref_toks)) if a != b),
                        len(ref_toks))
                    run["free_run_text"] = bytes(free).decode("latin-1")
                del cache
                run.update(compare(ref_toks, ref_logits, toks, logits))
                run["text"] = bytes(toks).decode("latin-1")
                log("  " + ", ".join(f"{k}={v}" for k, v in run.items()
                                     if k not in ("text", "free_run_text")))
            except Exception as e:  # record and go on with the next configuration
                run["error"] = f"{type(e).__name__}: {e}"[-500:]
                log(f"  FAILED: {run['error']}")
            finally:
                if pc:
                    pc.close()
                d.stop()
            res["runs"].append(run)
            torch.cuda.empty_cache()
    del model, ref_cache
    torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------
# Part 2: TTFT, restore from the host tier vs recompute, Llama-3-8B geometry

def copy_ceiling(nbytes, reps=5):
    """Pinned cudaMemcpyAsync H2D and D2H (torch copy_ of a pinned tensor), GB/s, median."""
    import torch
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    gpu = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    out = {}
    for name, dst, src in (("h2d", gpu, host), ("d2h", host, gpu)):
        ts = []
        for r in range(reps + 1):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src, non_blocking=True)
            b.record()
            b.synchronize()
            if r:
                ts.append(a.elapsed_time(b) / 1e3)
        out[name + "_GBps"] = nbytes / statistics.median(ts) / 1e9
    del host, gpu
    return out


def timed(fn, *a, **kw):
    import torch
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, r


def timing(args, kvtier):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import kvtier.hf
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
    bt = args.timing_block_tokens
    block_bytes = 32 * 2 * 8 * bt * 128 * 2
    nblocks = sum(T // bt for T in args.lengths)
    host_cap = ((nblocks + 16) * block_bytes >> 20) + 256
    d = start_daemon(args.build, f"{host_cap}MiB")
    pc = kvtier.hf.PrefixCache(model, socket=d.sock, model_id="llama3-8b-geometry-random",
                               block_tokens=bt, host_only=True)
    ceil = copy_ceiling(1 << 30)
    log(f"pinned cudaMemcpy (1 GiB, median of 5): H2D {ceil['h2d_GBps']:.1f} GB/s, "
        f"D2H {ceil['d2h_GBps']:.1f} GB/s")
    out_res = {"config": "Llama-3-8B geometry (32 layers, hidden 4096, 32 heads, 8 kv heads, "
                         "head_dim 128, ffn 14336, vocab 128256), random bf16 weights",
               "params_b": nparam / 1e9, "attn_implementation": model.config._attn_implementation,
               "block_tokens": bt, "block_bytes": block_bytes, "host_capacity_mib": host_cap,
               "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "reps": args.reps, "ceiling_before": ceil, "lengths": [],
               "prefill_chunk": args.prefill_chunk}
    g = torch.Generator().manual_seed(1)
    gen = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0,
               return_dict_in_generate=True, output_logits=True, logits_to_keep=1)
    try:
        with torch.no_grad():
            for T in args.lengths:
                ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g).to(dev)
                mask = torch.ones_like(ids)
                nblk = T // bt

                # recompute: generate without kvtier (the first run of a new length also
                # warms up up to 32K; a long one is run 3 times and the median taken)
                def recompute():
                    if not args.prefill_chunk or T <= args.prefill_chunk:
                        return model.generate(ids, attention_mask=mask, **gen)
                    return chunked_prefill(model, ids, args.prefill_chunk)
                if T <= 32768:
                    timed(recompute)
                ts_pre = []
                for r in range(args.reps):
                    t, o = timed(recompute)
                    ts_pre.append(t)
                    ref_tok = int(o.sequences[0, -1])
                    ref_logits = o.logits[0][0].float()
                    if r < args.reps - 1:
                        del o  # and its cache

                # the first request stores its blocks: from generate's own cache (a plain
                # DynamicCache; the same put as from a restored one)
                put_s, stored = timed(pc.store, ids, o.past_key_values)
                assert stored == nblk, (stored, nblk, pc.stats)
                del o
                torch.cuda.empty_cache()

                # restore + generate (the tail), median of reps after a warm-up
                rows = []
                for r in range(args.reps + 1):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    cache = pc.restore(ids, max_new_tokens=16)
                    torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    o = model.generate(ids, attention_mask=mask, past_key_values=cache, **gen)
                    torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    st = dict(pc.stats)
                    tok = int(o.sequences[0, -1])
                    logits = o.logits[0][0].float()
                    del cache, o
                    if r:
                        rows.append({"cache_ready_s": t1 - t0, "ttft_s": t2 - t0,
                                     "generate_s": t2 - t1})
                assert st["hit_blocks"] == nblk, st
                # components: the tail forward alone, on a restored cache
                ts_tail = []
                for r in range(args.reps):
                    cache = pc.restore(ids, max_new_tokens=16)
                    R = cache.get_seq_length()
                    t, o = timed(model, input_ids=ids[:, R:], past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                    ts_tail.append(t)
                    del cache, o
                # kvt_dev_get of the same blocks into one contiguous buffer (8 MiB a block):
                # what the device API does with the largest possible pages
                ts_flat = flat_get(pc, ids, nblk, args.reps)
                torch.cuda.empty_cache()

                med = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
                nbytes = st["restored_bytes"]
                pre = statistics.median(ts_pre)
                row = {"tokens": T, "blocks_restored": st["hit_blocks"],
                       "recompute": ("chunked prefill of %d tokens" % args.prefill_chunk
                                     if args.prefill_chunk and T > args.prefill_chunk
                                     else "generate, one prefill forward"),
                       "restored_tokens": st["restored_tokens"],
                       "tail_tokens_recomputed": st["tail_tokens"],
                       "kv_bytes_restored": nbytes,
                       "recompute_ttft_s": pre, "recompute_ttft_all_s": ts_pre,
                       "restore_ttft_s": med["ttft_s"],
                       "restore_ttft_all_s": [x["ttft_s"] for x in rows],
                       "cache_ready_s": med["cache_ready_s"],
                       "cache_ready_all_s": [x["cache_ready_s"] for x in rows],
                       "generate_tail_s": med["generate_s"],
                       "tail_forward_s": statistics.median(ts_tail),
                       "cache_ready_GBps": nbytes / med["cache_ready_s"] / 1e9,
                       "cache_ready_vs_pinned_h2d": nbytes / med["cache_ready_s"] / 1e9 /
                       ceil["h2d_GBps"],
                       "dev_get_flat_GBps": nbytes / statistics.median(ts_flat) / 1e9,
                       "ttft_speedup": pre / med["ttft_s"],
                       "put_s": put_s, "put_GBps": nbytes / put_s / 1e9,
                       "first_token_same": tok == ref_tok,
                       "max_abs_logit_diff": float((logits - ref_logits).abs().max())}
                log(f"T={T}: recompute TTFT {pre * 1e3:.1f} ms; restore TTFT "
                    f"{med['ttft_s'] * 1e3:.1f} ms (cache ready {med['cache_ready_s'] * 1e3:.1f}"
                    f" ms = {row['cache_ready_GBps']:.1f} GB/s = "
                    f"{row['cache_ready_vs_pinned_h2d']:.3f} x pinned H2D; generate of the "
                    f"{st['tail_tokens']}-token tail {med['generate_s'] * 1e3:.1f} ms, its "
                    f"forward alone {row['tail_forward_s'] * 1e3:.1f} ms) -> "
                    f"{row['ttft_speedup']:.2f}x; flat dev_get {row['dev_get_flat_GBps']:.1f}"
                    f" GB/s; put {row['put_GBps']:.1f} GB/s; first token same "
                    f"{row['first_token_same']}, max|dlogit| {row['max_abs_logit_diff']:.3g}")
                out_res["lengths"].append(row)
                if args.partial_out:
                    with open(args.partial_out, "w") as f:
                        json.dump(out_res, f, indent=1)
        out_res["ceiling_after"] = copy_ceiling(1 << 30)
        log(f"pinned cudaMemcpy after: H2D {out_res['ceiling_after']['h2d_GBps']:.1f} GB/s")
    finally:
        pc.close()
        d.stop()
    return out_res


class _Prefilled:
    """What generate() returns that the bench reads: sequences, logits, past_key_values."""

    def __init__(self, sequences, logits, past_key_values):
        self.sequences, self.logits, self.past_key_values = sequences, logits, past_key_values


def chunked_prefill(model, ids, chunk):
    """Recompute as an engine with a memory budget does it: the prompt's forward in chunks of
    `chunk` tokens over a growing DynamicCache, then the greedy first token.  Same FLOPs as one
    forward; the attention of each chunk only materialises chunk x T, not T x T."""
    import torch
    from transformers import DynamicCache
    cache = DynamicCache()
    T = ids.shape[1]
    for a in range(0, T, chunk):
        out = model(input_ids=ids[:, a:a + chunk], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
    logits = out.logits[:, -1, :]
    tok = logits.argmax(-1, keepdim=True)
    return _Prefilled(torch.cat([ids, tok], dim=1), (logits,), cache)


def flat_get(pc, ids, nblk, reps):
    """kvt_dev_get of nblk blocks into one contiguous [nblk, block] buffer: seconds each."""
    import torch
    import kvtier
    bb = pc.layout.block_bytes
    buf = torch.empty((nblk, bb), dtype=torch.uint8, device="cuda")
    keys = kvtier.key_chain(pc.layout, ids[0, :nblk * pc.block_tokens].cpu().numpy()
                            .astype(np.uint32), as_array=True)
    with kvtier.Client(socket=pc.socket) as c, kvtier.Device(c, socket=pc.socket,
                                                             host_only=True) as d:
        lid = d.register_layout(pc.layout)
        pages = kvtier.DevPages([buf.data_ptr()], bb, bb, 0, n_kv=1, pages_per_block=1)
        s = torch.cuda.Stream()
        ts = []
        for r in range(reps + 1):
            t, n = timed(d.get, lid, pages, keys, np.arange(nblk, dtype=np.uint32), stream=s,
                         host_only=True)
            assert n == nblk, n
            if r:
                ts.append(t)
    del buf
    return ts


def parse_configs(args):
    # name, host.capacity, nvme.capacity, nvme.codec, lossy.  32 MiB of host tier: a device
    # get holds up to 64 leases (two rounds of 32) while it promotes the next blocks from NVMe.
    cfgs = [("host", "256MiB", None, None, False),
            ("nvme-raw", "32MiB", "512MiB", "raw", False)]
    for spec in args.lossless:
        cfgs.append((f"nvme-{spec}", "32MiB", "512MiB", spec, False))
    for spec in args.lossy:
        cfgs.append((f"nvme-{spec}", "32MiB", "512MiB", spec, True))
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
    ap.add_argument("--lengths", type=int, nargs="*", default=[8192, 32768, 131072])
    ap.add_argument("--timing-block-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefill-chunk", type=int, default=0,
                    help="recompute prompts longer than this in chunks of this many tokens "
                    "(0: one forward; a 128K sdpa prefill does not fit an 80 GB GPU)")
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
    args.partial_out = os.path.join(args.out, args.prefix + "timing.json")
    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
           "kvtier": kvtier.version(), "python": sys.version.split()[0],
           "argv": sys.argv}
    log(f"env: {env}")

    def save_log():
        with open(os.path.join(args.out, args.prefix + "roundtrip.txt"), "w") as f:
            f.write("\n".join(LOG) + "\n")
    try:
        if not args.no_roundtrip:
            r = roundtrip(args, kvtier)
            r["env"] = env
            with open(os.path.join(args.out, args.prefix + "roundtrip.json"), "w") as f:
                json.dump(r, f, indent=1)
            save_log()
        if not args.no_timing:
            r = timing(args, kvtier)
            r["env"] = env
            with open(args.partial_out, "w") as f:
                json.dump(r, f, indent=1)
    finally:
        save_log()


if __name__ == "__main__":
    main()
