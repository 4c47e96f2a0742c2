#!/bin/sh
# SPDX-License-Identifier: MIT
# The Python package installs as documented, offline:
#  1. pip install --no-build-isolation --no-index of a copy of client/python into a venv that
#     sees Debian's numpy, then `import kvtier` finds libkvtier through $KVTIER_LIB and,
#     without it, through the loader (LD_LIBRARY_PATH standing in for ldconfig's cache);
#  2. cmake --install --component python into a DESTDIR puts the package in a directory that
#     the same python3 searches once the DESTDIR is taken away.
# usage: python_package.sh PYTHON3 SOURCE_DIR BUILD_DIR LIBKVTIER PYDIR PREFIX
set -eu
py=$1 src=$2 build=$3 lib=$4 pydir=$5 prefix=$6
"$py" -c "import setuptools, wheel, pip" 2>/dev/null || {
	echo "no setuptools/wheel/pip for $py (python3-setuptools python3-wheel python3-pip)"
	exit 77
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/client/python" "$tmp/src"
"$py" -m venv --system-site-packages "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --no-build-isolation --no-index "$tmp/src"
cd "$tmp"
KVTIER_LIB="$lib" "$tmp/venv/bin/python" -c '
import kvtier, os
assert "/venv/" in kvtier.__file__ and "site-packages" in kvtier.__file__, kvtier.__file__
print("pip:", kvtier.__file__, kvtier.version())'
env -u KVTIER_LIB LD_LIBRARY_PATH="$(dirname "$lib")" "$tmp/venv/bin/python" -c '
import kvtier
assert kvtier._find_library() == "libkvtier.so.0", kvtier._find_library()
print("loader:", kvtier._find_library(), kvtier.version())'
DESTDIR="$tmp/root" cmake --install "$build" --component python >/dev/null
case $pydir in /*) dest=$pydir ;; *) dest=$prefix/$pydir ;; esac
test -f "$tmp/root$dest/kvtier/__init__.py"
"$py" -c '
import sys
want = sys.argv[1]
assert want in sys.path, (want, sys.path)
print("cmake --install:", want, "is on sys.path")' "$dest"
