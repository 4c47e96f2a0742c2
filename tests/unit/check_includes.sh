#!/bin/sh
# SPDX-License-Identifier: MIT
#
# check_includes.sh SRC cycles|proto - include rules of issue 13 that no compiler checks.
#   cycles  no cycle of #include "..." among the headers of daemon/ and proto/ (a header is
#           found by its file name in those two folders: names are unique in the tree)
#   proto   nothing in proto/ includes a header of client/ (the ABI sits under the API)
# Prints what breaks the rule and exits 1; exits 0 when the rule holds.
# check_includes.sh --selftest: the checks must catch a cycle and a proto -> client include
# in a small made-up tree, and pass a clean one.
set -eu

includes() { # the "..." includes of file $1, one a line
	sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$1"
}

check_cycles() {
	src=$1
	tmp=$(mktemp -d)
	for h in "$src"/daemon/*.h "$src"/proto/*.h; do
		[ -f "$h" ] || continue
		from=${h#"$src"/}
		echo "$from $from" >>"$tmp/edges" # a node, even without edges
		for inc in $(includes "$h"); do
			name=${inc##*/}
			for dir in daemon proto; do
				if [ -f "$src/$dir/$name" ]; then
					echo "$from $dir/$name" >>"$tmp/edges"
				fi
			done
		done
	done
	if [ -f "$tmp/edges" ] && ! tsort "$tmp/edges" >/dev/null 2>"$tmp/err"; then
		echo "include cycle among the headers of daemon/ and proto/ (tsort):"
		sed 's/^tsort: //' "$tmp/err"
		rm -rf "$tmp"
		return 1
	fi
	rm -rf "$tmp"
	echo "no include cycle among the headers of daemon/ and proto/"
}

check_proto() {
	src=$1
	bad=0
	for f in "$src"/proto/*.h "$src"/proto/*.c; do
		[ -f "$f" ] || continue
		for inc in $(includes "$f"); do
			name=${inc##*/}
			if [ -f "$src/client/$name" ] && [ ! -f "$src/proto/$name" ]; then
				echo "${f#"$src"/} includes client/$name"
				bad=1
			fi
		done
	done
	if [ $bad = 1 ]; then
		echo "proto/ must not include client/ (issue 13: the ABI under the API)"
		return 1
	fi
	echo "nothing in proto/ includes client/"
}

selftest() {
	t=$(mktemp -d)
	mkdir "$t/daemon" "$t/proto" "$t/client"
	printf '#include "b.h"\n#include <stdint.h>\n' >"$t/daemon/a.h"
	printf '#include "kvt_x.h"\n' >"$t/daemon/b.h"
	printf '#include "kvt_y.h"\n' >"$t/proto/kvt_x.h"
	printf '/* none */\n' >"$t/proto/kvt_y.h"
	printf '#include "kvt_x.h"\n' >"$t/client/api.h"
	check_cycles "$t" >/dev/null || { echo "selftest: a clean tree failed"; exit 1; }
	check_proto "$t" >/dev/null || { echo "selftest: a clean proto/ failed"; exit 1; }
	printf '#include  "a.h"\n' >"$t/proto/kvt_y.h" # daemon/a.h -> b.h -> kvt_x.h -> kvt_y.h -> a.h
	if check_cycles "$t" >/dev/null; then
		echo "selftest: a cycle went unseen"
		exit 1
	fi
	printf ' # include "../client/api.h"\n' >"$t/proto/kvt_y.h"
	if check_proto "$t" >/dev/null; then
		echo "selftest: proto/ including client/ went unseen"
		exit 1
	fi
	rm -rf "$t"
	echo "selftest: both checks catch what they must"
}

case ${1:-} in
--selftest) selftest ;;
*)
	[ $# = 2 ] || { echo "usage: $0 SRC cycles|proto | --selftest" >&2; exit 2; }
	case $2 in
	cycles) check_cycles "$1" ;;
	proto) check_proto "$1" ;;
	*) echo "usage: $0 SRC cycles|proto | --selftest" >&2; exit 2 ;;
	esac
	;;
esac
