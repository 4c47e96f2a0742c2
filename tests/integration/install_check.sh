#!/bin/sh
# install_check.sh BUILD_DIR CC SYSCONFDIR - what a user does after `cmake --install`:
#   1. `cmake --install BUILD --prefix P` writes nothing outside P (checked under DESTDIR);
#   2. a program builds and runs against P with pkg-config, and with find_package(kvtier);
#   3. the installed tools run: kvtierd --print-config, kvtierctl --help, and the tools that
#      link libkvtier.so find it through their RUNPATH (no LD_LIBRARY_PATH, no ldconfig).
set -eu
build=$1 cc=$2 sysconfdir=$3
tmp=$(mktemp -d /tmp/kvtier-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install_check: $*" >&2; exit 1; }
P=$tmp/home/user/.local # a user's prefix

# 1. Everything under the prefix: staged under DESTDIR, where a path outside P shows.
DESTDIR=$tmp/stage cmake --install "$build" --prefix "$P" >"$tmp/stage.log" 2>&1 ||
	{ cat "$tmp/stage.log"; fail "cmake --install into DESTDIR failed"; }
outside=$(cd "$tmp/stage" && find . ! -type d | sed 's|^\.||' | grep -v "^$P/" || true)
[ -z "$outside" ] || fail "installed outside the prefix $P: $outside"

# The real install, as that user would.
cmake --install "$build" --prefix "$P" >"$tmp/install.log" 2>&1 ||
	{ cat "$tmp/install.log"; fail "cmake --install failed"; }
[ -f "$P/etc/kvtier/kvtierd.conf" ] || fail "no $P/etc/kvtier/kvtierd.conf"
pc=$(find "$P" -name kvtier.pc)
[ -n "$pc" ] || fail "no kvtier.pc"
libdir=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=libdir kvtier)
[ -f "$libdir/libkvtier.so" ] || fail "kvtier.pc: libdir $libdir has no libkvtier.so"

cat >"$tmp/hello.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <kvtier.h>
int main(void)
{
	struct kvt_layout l = {sizeof(l), 4, 2, 128, 16, KVT_DTYPE_FP16, 0, 0, 1, "m"};
	printf("%s %zu\n", kvt_version(), kvt_layout_block_bytes(&l));
	return strcmp(kvt_version(), "") == 0;
}
C
# 2a. pkg-config, as the README shows.
export PKG_CONFIG_PATH="$(dirname "$pc")"
# shellcheck disable=SC2046
$cc -o "$tmp/hello-pc" "$tmp/hello.c" $(pkg-config --cflags --libs kvtier) \
	-Wl,-rpath,"$libdir" || fail "cannot build against pkg-config kvtier"
out=$("$tmp/hello-pc") || fail "hello (pkg-config) failed"
[ "$out" = "$("$P/bin/kvtierctl" --version | cut -d' ' -f2) 65536" ] ||
	fail "hello (pkg-config) printed '$out'"

# 2b. find_package(kvtier), as the README shows.
mkdir "$tmp/proj"
cp "$tmp/hello.c" "$tmp/proj/"
cat >"$tmp/proj/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(hello C)
find_package(kvtier 0.1 REQUIRED)
add_executable(hello hello.c)
target_link_libraries(hello PRIVATE kvtier::kvtier)
CM
cmake -S "$tmp/proj" -B "$tmp/proj/build" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_C_COMPILER="$cc" \
	>"$tmp/proj.log" 2>&1 || { cat "$tmp/proj.log"; fail "find_package(kvtier) failed"; }
cmake --build "$tmp/proj/build" >>"$tmp/proj.log" 2>&1 ||
	{ cat "$tmp/proj.log"; fail "cannot build with find_package(kvtier)"; }
[ "$("$tmp/proj/build/hello")" = "$out" ] || fail "hello (find_package) differs"

# 3. The installed tools.
unset LD_LIBRARY_PATH
"$P/bin/kvtierd" --print-config -c "$P/etc/kvtier/kvtierd.conf" >"$tmp/conf.txt" ||
	fail "installed kvtierd --print-config failed"
grep -q '^max_blocks = 1048576$' "$tmp/conf.txt" || fail "kvtierd --print-config: no defaults"
"$P/bin/kvtierd" --help | grep -qF "(default $sysconfdir/kvtier/kvtierd.conf)" ||
	fail "kvtierd's default configuration is not under $sysconfdir"
"$P/bin/kvtierctl" --help >/dev/null || fail "installed kvtierctl --help failed"
for t in "$P"/bin/*; do
	if readelf -d "$t" | grep -q 'NEEDED.*libkvtier'; then
		readelf -d "$t" | grep -q 'RUNPATH.*\$ORIGIN' || fail "$t has no RUNPATH"
		found=$(ldd "$t" | sed -n 's/.*libkvtier\.so\.0 => \([^ ]*\) .*/\1/p')
		[ -n "$found" ] && [ "$(readlink -f "$found")" = "$(readlink -f "$libdir/libkvtier.so.0")" ] ||
			fail "$t does not find $libdir/libkvtier.so.0: $(ldd "$t" | grep kvtier)"
	fi
done
echo "install_check: ok ($P)"
