#!/usr/bin/env python3
"""check_conf.py KVTIERD EXAMPLE_CONF MAN_PAGE [README] - the ctest check that the docs tell
the truth.

Asserts what an operator relies on when editing /etc/kvtier/kvtierd.conf:
  1. `kvtierd --print-config` on an empty file (the built-in defaults) and on the installed
     example give the same configuration: the example, all commented out, changes nothing;
  2. every key the daemon prints is in the example with the default it really has, and the
     example documents no key the daemon does not know;
  3. kvtierd.conf(5) describes every key, with the same default;
  4. so does the configuration table of README.md ('| `section.key` | `default` | ...').
In the example, a key line is '#key = value' ('#' directly before the key); comments are
'# text'.
"""
import os
import re
import subprocess
import sys
import tempfile

SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$", re.I)
BOOL = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_ini(text, commented):
    """{(section, key): value}; commented=True reads the '#key = value' lines instead."""
    out, sec = {}, None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^\[([A-Za-z0-9_.-]+)\]$", s)
        if m:
            sec = m.group(1)
            continue
        if commented:
            m = re.match(r"^#([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", s)
        else:
            if not s or s[0] in "#;":
                continue
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", s)
        if m:
            if sec is None:
                sys.exit(f"key {m.group(1)} outside any section")
            out[(sec, m.group(1))] = m.group(2).strip()
    return out


def norm(v):
    """A value as the daemon means it: sizes in bytes, booleans, numbers."""
    low = v.lower()
    if low in BOOL:
        return BOOL[low]
    m = SIZE.match(v)
    if m and (m.group(2) or m.group(3)):
        mult = 1024 ** "BKMGT".index((m.group(2) or "B").upper())
        return int(float(m.group(1)) * mult)
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def print_config(daemon, conf):
    env = dict(os.environ)
    # The socket default depends on these; the example documents the empty default.
    for k in ("KVTIER_SOCKET", "XDG_RUNTIME_DIR"):
        env.pop(k, None)
    r = subprocess.run([daemon, "--print-config", "-c", conf], capture_output=True, text=True,
                       env=env, timeout=30)
    if r.returncode != 0:
        sys.exit(f"{daemon} --print-config -c {conf}: exit {r.returncode}\n{r.stderr}")
    return parse_ini(r.stdout, commented=False)


def main():
    daemon, example, man = sys.argv[1:4]
    fails = []
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as empty:
        builtin = print_config(daemon, empty.name)
    if not builtin:
        sys.exit("--print-config printed no key")
    with_example = print_config(daemon, example)
    for k in sorted(set(with_example) | set(builtin)):
        if with_example.get(k) != builtin.get(k):
            fails.append(f"the example changes {k[0]}.{k[1]}: {with_example.get(k)!r} "
                         f"instead of the built-in {builtin.get(k)!r}")

    with open(example) as f:
        documented = parse_ini(f.read(), commented=True)
    for k in sorted(builtin):
        if k not in documented:
            fails.append(f"{k[0]}.{k[1]} (default {builtin[k]!r}) is not in {example}")
        elif norm(documented[k]) != norm(builtin[k]):
            # A path default such as daemon.socket may be printed resolved; the example
            # shows the empty default that means "resolve at start".
            if not (documented[k] == "" and k == ("daemon", "socket")):
                fails.append(f"{k[0]}.{k[1]}: example says {documented[k]!r}, "
                             f"daemon default is {builtin[k]!r}")
    for k in sorted(documented):
        if k not in builtin:
            fails.append(f"{k[0]}.{k[1]} is in {example} but the daemon does not print it")

    # In the man page each key is '.BR key " (default: value)"' under '.SS [section]'.
    in_man, sec = {}, None
    with open(man) as f:
        for line in f:
            m = re.match(r'^\.SS \[(\w+)\]', line)
            if m:
                sec = m.group(1)
            elif line.startswith((".SH", ".SS")):
                sec = None
            m = re.match(r'^\.BR (\w+) " \(default: (.*)\)"$', line.strip())
            if m and sec:
                in_man[(sec, m.group(1))] = "" if m.group(2) == "empty" else m.group(2)
    for k in sorted(builtin):
        if k not in in_man:
            fails.append(f"{k[0]}.{k[1]} is not described in {man}")
        elif norm(in_man[k]) != norm(builtin[k]) and k != ("daemon", "socket"):
            fails.append(f"{k[0]}.{k[1]}: {man} says default {in_man[k]!r}, "
                         f"daemon default is {builtin[k]!r}")
    for k in sorted(in_man):
        if k not in builtin:
            fails.append(f"{k[0]}.{k[1]} is in {man} but the daemon does not print it")

    if len(sys.argv) > 4:
        readme = sys.argv[4]
        in_readme = {}
        with open(readme) as f:
            for line in f:
                m = re.match(r"^\| `(\w+)\.(\w+)` \| (?:`([^`]*)`|\*\(empty\)\*) \|", line)
                if m:
                    in_readme[(m.group(1), m.group(2))] = m.group(3) or ""
        for k in sorted(builtin):
            if k not in in_readme:
                fails.append(f"{k[0]}.{k[1]} is not in the configuration table of {readme}")
            elif norm(in_readme[k]) != norm(builtin[k]) and k != ("daemon", "socket"):
                fails.append(f"{k[0]}.{k[1]}: {readme} says default {in_readme[k]!r}, "
                             f"daemon default is {builtin[k]!r}")
        for k in sorted(in_readme):
            if k not in builtin:
                fails.append(f"{k[0]}.{k[1]} is in {readme} but the daemon does not print it")

    for msg in fails:
        print("FAIL:", msg)
    print(f"{len(builtin)} keys checked, {len(fails)} problems")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
