#!/usr/bin/env python3
"""Plots the codec frontier from `kvtier-eval codec --json DUMP.kvd` output.

    build/bench/kvtier-eval codec --json sympy_fancysets.kvd > codecs.json
    python3 docs/plot_codecs.py codecs.json docs/codec_pareto.png

(sympy_fancysets.kvd: the project's development dump, not in the repository; any .kvd dump
with queries works, docs/KVD.md.)
Every chain is a point (compression ratio vs attention-output error, docs/KVD.md); the Pareto
frontier is drawn as a line; the issue's targets are the shaded corners. Lossless chains
(err = 0) sit on the bottom axis. Needs matplotlib (Debian: python3-matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLOOR = 1e-3  # where err = 0 is drawn on the log axis


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
    front = frontier(rows)
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.set_xscale("log")
    ax.set_yscale("log")
    for x0, e0, lab in ((4, 0.02, "target: ≥4× at err ≤ 0.02"), (6, 0.05, "target: ≥6× at err ≤ 0.05")):
        ax.fill_between([x0, 20], FLOOR * 0.8, e0, color="tab:green", alpha=0.08)
        ax.plot([x0, x0, 20], [FLOOR * 0.8, e0, e0], color="tab:green", lw=0.8, ls="--")
        ax.annotate(lab, (x0 * 1.02, e0 * 1.08), fontsize=8, color="tab:green")
    ax.axvline(1.30, color="tab:blue", lw=0.8, ls=":")
    ax.annotate("lossless target 1.30×", (1.31, 0.0013), fontsize=8, color="tab:blue", rotation=90)
    fam = {"uq": "tab:red", "kivi": "tab:orange", "fp8": "tab:purple", "lowrank": "tab:brown",
           "lsh": "tab:pink", "fpx": "tab:blue"}
    for r in rows:
        # the depth profile as in the tables; chains in a calibrated basis in dark red
        name = r["codec"].replace(",kl=-0.45:-0.05:0.4:-0.3,vl=-0.5:-1.1:0.1:0.35", ",P")
        color = next((c for k, c in fam.items() if name.startswith(k)), "tab:gray")
        if "kb=1" in name:
            color = "darkred"
        y = max(r["err"], FLOOR)
        ax.scatter(r["ratio"], y, s=22, color=color, zorder=3,
                   marker="s" if r["lossless"] else "o")
        ax.annotate(name, (r["ratio"], y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.plot([r["ratio"] for r in front], [max(r["err"], FLOOR) for r in front], color="black",
            lw=1.2, zorder=2, label="Pareto frontier")
    ax.set_xlabel("compression ratio (raw fp16 bytes / all encoded bytes)")
    ax.set_ylabel("attention-output error err (lossless drawn at 1e-3)")
    ax.set_title("kvtier codecs on sympy_fancysets.kvd (64-token blocks)")
    ax.set_xlim(0.9, 12)
    ax.set_ylim(FLOOR * 0.8, 0.6)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=130)


if __name__ == "__main__":
    main()
