#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""llama_greedy.py - greedy tokens after a prefix restored from a compressed host tier.

For each host.codec chain: a kvtierd with that chain, kvtier-llama run over the prompts once
(prefill; llama.cpp's blocks are encoded by the chain as they are stored), then again with
--predict N (each prompt's whole 64-token blocks restored from the host tier, decoded, the rest
evaluated, N tokens generated greedily), against kvtier-llama --no-kvtier --predict N (every
token evaluated).  Reports per chain the tokens identical to the baseline's before the first
that differs, and the share of identical tokens position by position, over all prompts; the
blocks the host tier holds encoded and its bytes against their raw size (kvtierctl tiers).

  bench/llama_greedy.py --llama build/client/llama/kvtier-llama --kvtierd build/daemon/kvtierd
      --kvtierctl build/client/kvtierctl --model kvmodel.gguf --predict 64
      --chain raw --chain bq PROMPT...

Prompts are files (a byte-level model reads bytes as tokens).  --json FILE writes the figures.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit('%s failed (%d):\n%s%s' % (' '.join(cmd), p.returncode, p.stdout, p.stderr))
    return p.stdout


def generated(out):
    """{prompt path: [token ids]} from kvtier-llama's 'PATH: generated N: ...' lines."""
    g = {}
    for line in out.splitlines():
        m = re.match(r'(.*): generated \d+:((?: -?\d+)*)$', line)
        if m:
            g[m.group(1)] = [int(x) for x in m.group(2).split()]
    return g


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--llama', required=True)
    ap.add_argument('--kvtierd', required=True)
    ap.add_argument('--kvtierctl', required=True)
    ap.add_argument('--model', required=True)
    ap.add_argument('--predict', type=int, default=64)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--chain', action='append', default=[])
    ap.add_argument('--json')
    ap.add_argument('prompts', nargs='+')
    a = ap.parse_args()
    chains = a.chain or ['raw', 'bq']
    base = generated(run([a.llama, '--no-kvtier', '-t', str(a.threads), '-n', str(a.predict),
                          a.model] + a.prompts))
    if len(base) != len(a.prompts):
        sys.exit('baseline: %d of %d prompts generated' % (len(base), len(a.prompts)))
    rows = []
    for chain in chains:
        d = tempfile.mkdtemp(prefix='kvtier-greedy-')
        sock = os.path.join(d, 'sock')
        dmn = subprocess.Popen([a.kvtierd, '-f', '-s', sock, '-o', 'host.capacity=1GiB',
                                '-o', 'host.codec=' + chain, '-o', 'daemon.log_level=warn'])
        try:
            for _ in range(3000):
                if os.path.exists(sock):
                    break
                if dmn.poll() is not None:
                    sys.exit('kvtierd exited with host.codec=%s' % chain)
                time.sleep(0.01)
            first = run([a.llama, '-s', sock, '-t', str(a.threads), a.model] + a.prompts)
            again = run([a.llama, '-s', sock, '-t', str(a.threads), '--no-store', '-n',
                         str(a.predict), a.model] + a.prompts)
            tiers = json.loads(run([a.kvtierctl, '-s', sock, '--json', 'tiers']))
        finally:
            dmn.send_signal(signal.SIGTERM)
            dmn.wait()
        host = next(t for t in (tiers['tiers'] if isinstance(tiers, dict) else tiers)
                    if t.get('name') == 'host')
        restored = sum(int(x) for x in re.findall(r'restored (\d+)', again))
        stored = sum(int(x) for x in re.findall(r'stored (\d+) blocks', first))
        g = generated(again)
        prefix, same, total = [], 0, 0
        for p in a.prompts:
            b, x = base[p], g.get(p, [])
            k = 0
            while k < min(len(b), len(x)) and b[k] == x[k]:
                k += 1
            prefix.append(k)
            same += sum(1 for i in range(min(len(b), len(x))) if b[i] == x[i])
            total += len(b)
        raw_b, st_b = host.get('raw_bytes', 0), host.get('stored_bytes', 0)
        row = {'chain': chain, 'prompts': len(a.prompts), 'predict': a.predict,
               'blocks_stored': stored, 'tokens_restored': restored,
               'encoded_blocks': host.get('encoded_blocks', 0),
               'host_ratio': round(raw_b / st_b, 3) if st_b else 1.0,
               'identical_prefix': prefix, 'identical_share': round(same / total, 4)}
        rows.append(row)
        print('%-40s restored %6d tokens, %3d blocks encoded (%.2f x), identical before the '
              'first difference %s of %d, identical %.1f %%' %
              (chain, restored, row['encoded_blocks'], row['host_ratio'], prefix, a.predict,
               100 * row['identical_share']))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'bench': 'llama_greedy', 'model': os.path.basename(a.model),
                       'prompts': [os.path.basename(p) for p in a.prompts], 'rows': rows},
                      f, indent=1)


if __name__ == '__main__':
    main()
