#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bq_model.py - a numpy model of the bq codec's quantizer, for screening ideas before they are
built in C (codecs/CODECS.md "bq", "tried, no gain").  It reproduces kvtier-eval codec's ratio
and err for bq's rope chains (bq:k=0.1,v=0.038,dup=4,rope=10000: 4.650 x at 0.0491 here,
4.650 x at 0.04899 in C) and measures variants of it on a .kvd dump:

  --kw G       key steps per RoPE pair ~ (the pair's energy in the slab, pre-RoPE)^(-G/2)
  --qw G       the same with the pair's query energy (query positions [0, P/2) of the dump)
  --frac       any level count per channel (ceil(range/step)), log2(levels) bits (ideal
               mixed-radix packing, no word overhead)
  --lloyd      Lloyd-Max levels per channel and slab (2^b levels fitted to the slab's values;
               the levels' cost is NOT counted: an upper bound)
  --basis N    a calibrated block-diagonal KLT: channels grouped into blocks of N by
               correlation (N = head_dim: the dense KLT), per (layer, kv head, K or V),
               calibrated on tokens [0, T/2); with --basis (and --half) only the blocks of
               tokens [T/2, T) are coded, the first half kept exact, so no block is coded with a
               basis calibrated on it
  --half       code only tokens [T/2, T) (the reference for --basis)
  --grid       a companded grid: for each bit count b, 2^b levels over the channel's span
               (Lloyd, pooled over all channels and slabs of K or of V) fitted on tokens
               [0, T/2), only tokens [T/2, T) coded (compare with --half); no side information
  --heavy F    oracle: the fraction F of rows that receive the most attention from the dump's
               queries kept exact (2 bytes an element); the encoder could not know them
  --kl/--vl    per-layer step factors in octaves (one number a layer)
  --calib C    calibrate the basis (--basis), the grid (--grid), the query energies (--qw) and
               the means (--lo8) on another dump C (all of its tokens and queries) and code every
               token of DUMP (instead of the halves of one dump)
  --ropef16    RoPE frequencies rounded to fp16 (as a Hugging Face model cast to fp16 has them)
  --entropy    also print the code entropy per (K or V, b), pooled over the dump, the ratio if
               the codes were entropy-coded with such static tables (ideal, no overhead) and the
               share of coded elements in channels of no bits
  --table B    bytes of the channel table a channel (3: bq's b|m byte and 16-bit range start)
  --lo8        the range start on the channel's step grid around the calibration's mean
               coordinate, a signed byte in steps (the finest of the 16 steps that covers the
               values from there, else one bit more); a channel whose offset does not fit a
               byte costs 3 bytes more; use with --table 2
  --int16      decode through the basis in integers: the basis per output channel as int16
               (absolute column sum < 2^16), the coordinates in a power-of-two unit within 15
               bits, int32 sums, one float multiply a channel (what a CPU and a GPU can both do
               exactly)

With --basis and --qw together the key channels are scaled by the query weights first and the
basis is calibrated on the scaled keys (the metric's frame).

Usage: bench/bq_model.py [options] DUMP.kvd K V   (K, V: bq's k and v)
"""
import argparse
import struct

import numpy as np


def load(path):
    b = open(path, 'rb').read()
    L, H, QH, D, T, P, _ = struct.unpack('<7I', b[8:36])
    o = 104 + T
    n = L * H * T * D
    k = np.frombuffer(b, np.float16, n, o).reshape(L, H, T, D).astype(np.float32)
    v = np.frombuffer(b, np.float16, n, o + 2 * n).reshape(L, H, T, D).astype(np.float32)
    q = np.frombuffer(b, np.float16, L * QH * P * D, o + 4 * n).reshape(L, QH, P, D)
    return k, v, q.astype(np.float32)


def attn(k, v, q):
    L, H, T, D = k.shape
    QH, P = q.shape[1], q.shape[2]
    out = np.zeros((L, QH, P, D), np.float32)
    mask = np.arange(T)[None, :] <= (T - P + np.arange(P))[:, None]
    for l in range(L):
        for j in range(QH):
            h = j // (QH // H)
            s = np.where(mask, (q[l, j] / np.sqrt(D)) @ k[l, h].T, -np.inf)
            w = np.exp(s - s.max(1, keepdims=True))
            out[l, j] = (w / w.sum(1, keepdims=True)) @ v[l, h]
    return out


def err(o, o2):
    return float(np.mean(np.linalg.norm(o - o2, axis=-1) / np.linalg.norm(o, axis=-1)))


ROPE_F16 = False  # --ropef16: the frequencies rounded to fp16, as a model cast to fp16 has them


def rope_freqs(D, theta=10000.0):
    f = theta ** (-2.0 * np.arange(D // 2) / D)
    return f.astype(np.float16).astype(np.float64) if ROPE_F16 else f


def rope(x, sign, theta=10000.0):
    T, D = x.shape[-2], x.shape[-1]
    ang = np.arange(T)[:, None] * rope_freqs(D, theta)[None, :]
    c, s = np.cos(ang), sign * np.sin(ang)
    a, b = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


COLLECT = None  # {b: [positions in the channel's grid span, 0..1]}: --grid's calibration
GRID = None     # {b: 2^b levels in [0, 1]}: a companded grid (--grid)
TABLE = 3       # bytes of the channel table a channel (--table)
HIST = None     # {(is key, b): histogram of the codes}: --entropy's estimate
ISK = False
ZERO_B = [0, 0]  # coded elements, those of channels with no bits (--entropy prints the share)


LO8 = None         # --lo8: the slab's calibrated coordinate means (q_slab's one-byte lo)
LO8_STATS = [0, 0]  # channels, channels whose lo did not fit a byte (3 bytes more each)


def lo8(v, mu, delta, b):
    """--lo8: the channel's grid start lo = mu + s * o, o a signed byte, the finest step
    s = delta * 2^(-m/16) (m 0..15) whose 2^b levels from lo cover v, else b + 1 bits; returns
    (lo, s, b, fits); a channel whose o does not fit a byte keeps today's 16-bit lo."""
    lo_v, hi_v = float(v.min()), float(v.max())
    for bb in (b, b + 1, b + 2):
        for m in range(15, -1, -1):
            s = delta * 2 ** (-m / 16)
            o = np.floor((lo_v - mu) / s)
            lo = mu + s * o
            if hi_v < lo + 2**bb * s:
                if -128 <= o <= 127:
                    return lo, s, bb, True
                return None, None, None, False
    return None, None, None, False


def q_slab(x, delta, nsink, outl, dup, mode):
    """bq's steps 1-5 on one slab: returns (decoded, bytes)."""
    T, D = x.shape
    y = x.copy()
    nbytes = 12 + TABLE * D + nsink * D * 2 + (T + 7) // 8 + 4
    xs = x[nsink:]
    n = len(xs)
    ref = -np.ones(T, int)
    if dup > 0:
        near = np.abs(xs[:, None, :] - xs[None, :, :]).max(-1) <= dup * delta / 2
        first = np.array([not near[t, :t].any() for t in range(n)], bool)
        for t in range(n):
            cand = first[:t] & near[t, :t]
            if not first[t] and cand.any():
                ref[nsink + t] = nsink + int(np.argmax(cand))
    coded = [t for t in range(nsink, T) if ref[t] < 0]
    nbytes += n - len(coded)
    xc = x[coded]
    R = len(coded)
    bits = 0.0
    for c in range(D):
        col = xc[:, c]
        order = np.argsort(col, kind='stable')
        best = None
        for i in range(outl + 1):
            for j in range(outl + 1):
                if i + j >= R:
                    continue
                lo, r = col[order[i]], col[order[R - 1 - j]] - col[order[i]]
                if mode == 'frac':
                    b = max(1, int(np.ceil(r / delta - 1e-9))) if r > 0 else 1
                    cost = R * np.log2(b) + 48 * (i + j)
                else:
                    b = 0 if r <= 0 else max(0, int(np.ceil(np.log2(r / delta) - 1e-12)))
                    cost = R * b + 48 * (i + j)
                if best is None or cost < best[0]:
                    best = (cost, i, j, b, lo, r)
        _, i, j, b, lo, r = best
        keep = np.ones(R, bool)
        keep[order[:i]] = False
        if j:
            keep[order[R - j:]] = False
        if mode == 'frac':
            s = r / b if r > 0 else delta
            dec = np.clip(np.floor((col - lo) / s), 0, b - 1) * s + lo + s / 2
            bits += np.log2(b)
        else:
            s = delta
            if b:
                m = int(np.floor(16 * np.log2(2**b * delta / r) + 1e-9))
                s = delta * 2 ** (-min(max(m, 0), 15) / 16)
            if LO8 is not None:  # lo on the channel's step grid around mu[c], one byte
                lo2, s2, b2, fit = lo8(col[keep], LO8[c], delta, b)
                if fit:
                    lo, s, b = lo2, s2, b2
                LO8_STATS[0] += 1
                LO8_STATS[1] += not fit
                nbytes += 0 if fit else 3
            cent = np.arange(2**b) * s + lo + s / 2
            if COLLECT is not None and b:
                COLLECT.setdefault(b, []).append(((col[keep] - lo) / (2**b * s)).astype(np.float32))
            if GRID is not None and b in GRID:
                cent = lo + 2**b * s * GRID[b]
                dec = cent[np.searchsorted((cent[1:] + cent[:-1]) / 2, col)]
            elif mode == 'lloyd' and b:
                kv = col[keep]
                for _ in range(20):
                    a = np.searchsorted((cent[1:] + cent[:-1]) / 2, kv)
                    n = np.bincount(a, minlength=len(cent))
                    sm = np.bincount(a, kv, minlength=len(cent))
                    cent = np.sort(np.where(n > 0, sm / np.maximum(n, 1), cent))
                dec = cent[np.searchsorted((cent[1:] + cent[:-1]) / 2, col)]
            else:
                dec = np.clip(np.floor((col - lo) / s), 0, 2**b - 1) * s + lo + s / 2
            bits += b
            if HIST is not None and b and mode == 'base' and GRID is None:
                qc = np.clip(np.floor((col[keep] - lo) / s), 0, 2**b - 1).astype(int)
                h = HIST.setdefault((ISK, b), np.zeros(2**b))
                np.add.at(h, qc, 1)
        y[coded, c] = np.where(keep, dec, col)
        nbytes += 6 * (i + j)
        ZERO_B[0] += R
        ZERO_B[1] += R * (b == 0)
    nbytes += R * (bits / 8 if mode == 'frac' else (int(bits) + 7) // 8)
    for t in range(T):
        if ref[t] >= 0:
            y[t] = y[ref[t]]
    return y, nbytes


def klt(x, N, t1):
    """per (layer, head): an orthonormal basis, block-diagonal in blocks of N channels grouped
    by correlation (the channel of most variance left and the N-1 most correlated with it)."""
    L, H, _, D = x.shape
    out = []
    for l in range(L):
        row = []
        for h in range(H):
            xx = x[l, h, :t1] - x[l, h, :t1].mean(0)
            C = xx.T @ xx / len(xx)
            sd = np.sqrt(np.diag(C)) + 1e-12
            corr = np.abs(C / sd[:, None] / sd[None, :])
            left, groups = set(range(D)), []
            while left:
                c0 = max(left, key=lambda c: C[c, c])
                left.remove(c0)
                g = sorted(left, key=lambda c: -corr[c0, c])[:N - 1]
                left -= set(g)
                groups.append([c0] + g)
            U, col = np.zeros((D, D)), 0
            for g in groups:
                _, u = np.linalg.eigh(C[np.ix_(g, g)])
                for jj in range(len(g)):
                    U[g, col] = u[:, ::-1][:, jj]
                    col += 1
            row.append(U)
        out.append(row)
    return out


def int16_inverse(z, B, ns):
    """z @ B in the integers (--int16): B per output column as int16 entries whose absolute sum
    stays below 2^16, the coordinates in a power-of-two unit that keeps them within 15 bits, so
    the int32 sum cannot overflow; then one float multiply a column. Sink rows stay exact."""
    sc = np.abs(B).sum(0) / 65535.0
    Bi = np.round(B / sc[None, :])
    unit = 2.0 ** np.ceil(np.log2(np.abs(z[ns:]).max() / 32767.0 + 1e-30))
    zi = np.round(z / unit)
    y = (zi @ Bi) * (sc * unit)[None, :]
    y[:ns] = z[:ns] @ B
    return y


def lloyd01(u, n):
    """n levels in [0, 1] fitted to the positions u (1-D Lloyd from the uniform grid)."""
    u = np.clip(u, 0, 1)
    c = (np.arange(n) + 0.5) / n
    for _ in range(30):
        a = np.searchsorted((c[1:] + c[:-1]) / 2, u)
        cnt = np.bincount(a, minlength=n)
        c = np.sort(np.where(cnt > 0, np.bincount(a, u, minlength=n) / np.maximum(cnt, 1), c))
    return c


def heavy_mass(k, q):
    """attention each key row receives from the dump's queries, summed (--heavy's oracle)."""
    L, H, T, D = k.shape
    QH, P = q.shape[1], q.shape[2]
    mass = np.zeros((L, H, T))
    mask = np.arange(T)[None, :] <= (T - P + np.arange(P))[:, None]
    for l in range(L):
        for j in range(QH):
            s = np.where(mask, (q[l, j] / np.sqrt(D)) @ k[l, j // (QH // H)].T, -np.inf)
            w = np.exp(s - s.max(1, keepdims=True))
            mass[l, j // (QH // H)] += (w / w.sum(1, keepdims=True)).sum(0)
    return mass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('dump')
    ap.add_argument('k', type=float)
    ap.add_argument('v', type=float)
    ap.add_argument('--block', type=int, default=64)
    ap.add_argument('--sink', type=int, default=4)
    ap.add_argument('--dup', type=float, default=4.0)
    ap.add_argument('--kw', type=float, default=0.0)
    ap.add_argument('--qw', type=float, default=0.0)
    ap.add_argument('--frac', action='store_true')
    ap.add_argument('--lloyd', action='store_true')
    ap.add_argument('--basis', type=int, default=0)
    ap.add_argument('--half', action='store_true')
    ap.add_argument('--grid', action='store_true')
    ap.add_argument('--heavy', type=float, default=0.0)
    ap.add_argument('--kl', type=str, default='')
    ap.add_argument('--vl', type=str, default='')
    ap.add_argument('--calib', type=str, default='')
    ap.add_argument('--ropef16', action='store_true')
    ap.add_argument('--entropy', action='store_true')
    ap.add_argument('--table', type=float, default=3.0)
    ap.add_argument('--int16', action='store_true')
    ap.add_argument('--lo8', action='store_true')
    a = ap.parse_args()
    global ROPE_F16, COLLECT, GRID, HIST, ISK, TABLE
    ROPE_F16 = a.ropef16
    TABLE = a.table
    mode = 'frac' if a.frac else 'lloyd' if a.lloyd else 'base'
    k, v, q = load(a.dump)
    L, H, T, D = k.shape
    G = q.shape[1] // H
    o = attn(k, v, q)
    kp = rope(k, -1)
    if a.calib:  # basis, grid and query energies from another dump; every token coded
        kc, vc, qc = load(a.calib)
        kcp, Tc, qcal = rope(kc, -1), kc.shape[2], qc
        t0 = 0
    else:  # from tokens [0, T/2) (queries [0, P/2)) of this dump; tokens [T/2, T) coded
        kcp, vc, Tc, qcal = kp, v, T // 2, q[:, :, :q.shape[2] // 2]
        t0 = T // 2 if (a.half or a.basis or a.grid) else 0
    kl = [float(p) for p in a.kl.split(':')] if a.kl else [0.0] * L
    vl = [float(p) for p in a.vl.split(':')] if a.vl else [0.0] * L
    mass = heavy_mass(k, q) if a.heavy else None
    thr = np.quantile(mass, 1 - a.heavy) if a.heavy else None
    kd, vd = kp.copy(), v.copy()
    tot = raw = 0
    # --qw: a fixed scale per key channel (per layer and kv head), the pair's query energy
    wq = np.ones((L, H, D))
    if a.qw:
        for l in range(L):
            for h in range(H):
                qq = rope(qcal[l, h * G:(h + 1) * G], -1).reshape(-1, D)
                qe = (qq[:, :D // 2] ** 2 + qq[:, D // 2:] ** 2).mean(0)
                w = np.maximum(qe, 1e-12) ** (-a.qw / 2)
                w = np.concatenate([w, w])
                wq[l, h] = w / np.exp(np.mean(np.log(w)))

    def code(src, dst, f, isk, prof, t_from, t_to, tr):
        global LO8
        nbytes = 0
        for l in range(L):
            for h in range(H):
                for b0 in range(t_from, t_to, a.block):
                    x = src[l, h, b0:b0 + a.block]
                    ns = max(0, min(a.sink - b0, a.block))
                    w = wq[l, h] if isk and a.qw else None
                    if isk and a.kw:
                        xs = x[ns:]
                        e = (xs[:, :D // 2] ** 2 + xs[:, D // 2:] ** 2).mean(0)
                        w = np.maximum(e, 1e-12) ** (-a.kw / 2)
                        w = np.concatenate([w, w])
                        w /= np.exp(np.mean(np.log(w)))
                    if w is not None:
                        x = x / w[None, :]
                    if tr is not None:
                        x = x @ tr[l][h]
                    if a.lo8:
                        LO8 = mus[l][h]
                    ext = np.sort(x[ns:], 0)
                    delta = f * 2 ** prof[l] * np.sqrt(np.mean((ext[-2] - ext[1]) ** 2))
                    y, nb = q_slab(x, delta, ns, 0 if isk else 2, a.dup, mode)
                    if tr is not None and a.int16:  # integer decode: exact on any machine
                        y = int16_inverse(y, tr[l][h].T, ns)
                    elif tr is not None:
                        y = y @ tr[l][h].T
                    if w is not None:
                        y = y * w[None, :]
                        nb += D // 4 if a.kw else 0
                    if mass is not None:  # oracle: the rows of most attention exact
                        hv = mass[l, h, b0:b0 + a.block] >= thr
                        hv[:ns] = False
                        y[hv] = src[l, h, b0:b0 + a.block][hv]
                        nb += int(hv.sum()) * D * 2
                    if dst is not None:
                        dst[l, h, b0:b0 + a.block] = y
                    nbytes += nb
        return nbytes

    if a.entropy:
        HIST = {}
    for src, csrc, dst, f, isk, prof in ((kp, kcp, kd, a.k, True, kl), (v, vc, vd, a.v, False, vl)):
        ISK = isk
        GRID = None
        tr = None
        if a.basis:
            cs = csrc / wq[:, :, None, :] if isk else csrc
            tr = klt(cs, a.basis, Tc)
        if a.lo8:  # the calibration's mean coordinates (in the basis, if any)
            cs = csrc / wq[:, :, None, :] if isk else csrc
            mus = [[(cs[l, h, :Tc] @ tr[l][h] if tr is not None else cs[l, h, :Tc]).mean(0)
                    for h in range(H)] for l in range(L)]
        if a.grid:
            COLLECT = {}
            hist = HIST
            HIST = None
            code(csrc, None, f, isk, prof, 0, Tc, tr)
            HIST = hist
            GRID = {b: lloyd01(np.concatenate(us), 2**b) for b, us in COLLECT.items()}
            COLLECT = None
        tot += code(src, dst, f, isk, prof, t0, T, tr)
        raw += L * H * (T - t0) * D * 2
    tot += (T - t0) // a.block * (32 + 8 + 4 * (2 * L * H + 1))
    kd = rope(kd, 1).astype(np.float16).astype(np.float32)
    vd = vd.astype(np.float16).astype(np.float32)
    e = err(o, attn(kd, vd, q))
    print('ratio %.3f err %.4f' % (raw / tot, e))
    if a.lo8:
        print('lo8: %d of %d channels did not fit a byte' % (LO8_STATS[1], LO8_STATS[0]))
    if a.entropy:  # static code tables per (K or V, b), pooled over the dump: ideal cost
        nb_fixed = nb_ent = 0.0
        for (isk, b), h in sorted(HIST.items()):
            p = h / h.sum()
            ent = -(p[p > 0] * np.log2(p[p > 0])).sum()
            nb_fixed += h.sum() * b
            nb_ent += h.sum() * ent
            print('  %s b=%d n=%d entropy %.3f bits' % ('K' if isk else 'V', b, h.sum(), ent))
        saved = (nb_fixed - nb_ent) / 8
        print('channels with no bits: %.1f%% of the coded elements' % (100 * ZERO_B[1] / ZERO_B[0]))
        print('entropy-coded codes: %.1f%% of the code bits saved; ratio %.3f (no table or '
              'coder overhead)' % (100 * (1 - nb_ent / nb_fixed), raw / (tot - saved)))


if __name__ == '__main__':
    main()
