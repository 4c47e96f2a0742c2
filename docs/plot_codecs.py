#!/usr/bin/env python3
"""Plots the codec frontier from `kvtier-eval codec --json DUMP.kvd` output.

    build/bench/kvtier-eval codec --json sympy_fancysets.kvd > codecs.json
    python3 docs/plot_codecs.py codecs.json docs/codec_pareto.png

    # the committed figure, from the committed results:
    python3 docs/plot_codecs.py bench/results/codec_sympy_fancysets.json docs/codec_pareto.png

Top: every lossy chain (compression ratio vs attention-output error, docs/KVD.md, both on log
axes), coloured by codec family; the Pareto frontier is the black line, its points numbered
and named in the key on the right; the issue's targets are the shaded corners. Bottom: the
lossless chains, whose error is exactly 0 and so has no place on a log axis: a strip of their
ratios alone (same ratio axis). Needs matplotlib (Debian: python3-matplotlib).

(sympy_fancysets.kvd: the project's development dump, not in the repository; any .kvd dump
with queries works, docs/KVD.md.)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

PROFILE = ",kl=-0.45:-0.05:0.4:-0.3,vl=-0.5:-1.1:0.1:0.35"  # UQ_PROFILE in eval_codec.c
FAMILIES = [  # (prefix, legend label, colour); the first matching prefix wins
    ("uq:", "uq with a model dictionary (kb=1)", "darkred"),
    ("uq", "uq (uniform quantization + rANS)", "tab:red"),
    ("kivi", "kivi (per-channel / per-token ints)", "tab:orange"),
    ("fp8", "fp8", "tab:purple"),
    ("lowrank", "lowrank", "tab:brown"),
    ("lsh", "lsh", "tab:pink"),
]
LOSSLESS = ("lossless (err = 0)", "tab:blue")


def short(name):
    return name.replace(PROFILE, ",P")


def family(r):
    name = r["codec"]
    if "kb=1" in name:
        return FAMILIES[0]
    for f in FAMILIES[1:]:
        if name.startswith(f[0]):
            return f
    return ("", "other", "tab:gray")


def frontier(rows):
    keep = []
    for r in rows:
        if not any(o is not r and o["ratio"] >= r["ratio"] and o["err"] <= r["err"]
                   and (o["ratio"] > r["ratio"] or o["err"] < r["err"]) for o in rows):
            keep.append(r)
    return sorted(keep, key=lambda r: r["ratio"])


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = json.load(open(sys.argv[1]))
    lossy = [r for r in rows if not r["lossless"] and r["err"] > 0]
    lossless = sorted((r for r in rows if r["lossless"]), key=lambda r: r["ratio"])
    front = [r for r in frontier(lossy)]
    best_lossless = lossless[-1] if lossless else None

    fig = plt.figure(figsize=(12, 7.2))
    gs = fig.add_gridspec(2, 2, height_ratios=[6, 1], width_ratios=[3, 1.25], hspace=0.08,
                          wspace=0.03)
    ax = fig.add_subplot(gs[0, 0])
    strip = fig.add_subplot(gs[1, 0], sharex=ax)
    key = fig.add_subplot(gs[:, 1])
    key.axis("off")

    xmin = min(r["ratio"] for r in rows) * 0.93
    xmax = max(r["ratio"] for r in rows) * 1.12
    ymin = min(r["err"] for r in lossy) * 0.6
    ymax = max(r["err"] for r in lossy) * 1.6
    ax.set_xscale("log")
    ax.set_yscale("log")
    for x0, e0 in ((4, 0.02), (6, 0.05)):
        ax.fill_between([x0, xmax], ymin, e0, color="tab:green", alpha=0.08, lw=0)
        ax.plot([x0, x0, xmax], [ymin, e0, e0], color="tab:green", lw=0.8, ls="--")
    for r in lossy:
        _, _, color = family(r)
        ax.scatter(r["ratio"], r["err"], s=24, color=color, zorder=3)
    ax.plot([r["ratio"] for r in front], [r["err"] for r in front], color="black", lw=1.2,
            zorder=2)
    # Frontier points get a number; the key on the right names them (no labels to collide).
    for i, r in enumerate(front, 1):
        ax.annotate(str(i), (r["ratio"], r["err"]), fontsize=8, fontweight="bold",
                    xytext=(-4, 6), textcoords="offset points", ha="right")
    ax.set_ylabel("attention-output error err (log)")
    ax.set_title("kvtier codecs on sympy_fancysets.kvd (64-token blocks)")
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.tick_params(axis="x", which="both", labelbottom=False)

    # Lossless chains: their ratio only, spread over three rows so that close ratios stay
    # apart; the best one is named.
    for i, r in enumerate(lossless):
        strip.scatter(r["ratio"], i % 3, s=24, marker="s", color=LOSSLESS[1], zorder=3)
    if best_lossless:
        i = lossless.index(best_lossless)
        strip.annotate(f"{best_lossless['codec']} {best_lossless['ratio']:.3f}×",
                       (best_lossless["ratio"], i % 3), fontsize=8, xytext=(6, -3),
                       textcoords="offset points")
    strip.axvline(1.30, color="tab:blue", lw=0.8, ls=":")
    strip.set_ylim(-0.8, 2.8)
    strip.set_yticks([])
    strip.set_ylabel("lossless\n(err = 0)", fontsize=8)
    strip.set_xlabel("compression ratio (raw fp16 bytes / all encoded bytes, log)")
    strip.grid(True, which="both", axis="x", lw=0.3, alpha=0.5)
    strip.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    strip.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    strip.tick_params(axis="x", which="minor", labelsize=7)

    handles = [Line2D([], [], marker="o", ls="", color=c, label=lab)
               for _, lab, c in FAMILIES if any(family(r)[2] == c for r in lossy)]
    handles += [
        Line2D([], [], marker="s", ls="", color=LOSSLESS[1], label=LOSSLESS[0] + " (bottom)"),
        Line2D([], [], color="black", lw=1.2, label="Pareto frontier (numbered)"),
        Patch(color="tab:green", alpha=0.25, label="targets: ≥4× at err ≤ 0.02, ≥6× at ≤ 0.05"),
        Line2D([], [], color="tab:blue", lw=0.8, ls=":", label="lossless target 1.30×"),
    ]
    key.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    lines = ["Pareto frontier (P = the depth profile)"]
    for i, r in enumerate(front, 1):
        lines.append(f"{i:2d}  {short(r['codec'])}")
        lines.append(f"    {r['ratio']:.3f}×  err {r['err']:.4f}")
    key.text(0.0, 0.52, "\n".join(lines), fontsize=7, family="monospace", va="top",
             transform=key.transAxes)
    fig.savefig(sys.argv[2], dpi=130, bbox_inches="tight")


if __name__ == "__main__":
    main()
