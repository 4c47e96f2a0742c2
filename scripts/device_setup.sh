#!/usr/bin/env bash
# device_setup.sh - bring the Debian build dependencies to a GPU machine that has CUDA but
# no -dev packages and no network.
#
#   bash scripts/device_setup.sh            (here, with apt) download the .debs into .devdeps/
#   eval "$(bash scripts/device_setup.sh --unpack)"
#                                           (there) unpack them into /opt/kvtdeps and export
#                                           PKG_CONFIG_PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH
#
# The .pc files say prefix=/usr; they are rewritten to point into /opt/kvtdeps so that CMake's
# pkg_check_modules finds headers and libraries there without touching the system.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
debdir=${KVT_DEVDEPS:-$root/.devdeps}
dest=${KVT_DEPS_PREFIX:-/opt/kvtdeps}
pkgs=(liburing-dev liburing2 liblz4-dev liblz4-1 libzstd-dev libzstd1 libinih-dev libinih1
	libinireader0 libxxhash-dev libxxhash0 libcmocka-dev libcmocka0
	pkg-config pkgconf pkgconf-bin libpkgconf3)

if [[ ${1:-} != --unpack ]]; then
	mkdir -p "$debdir"
	cd "$debdir"
	# apt's sandbox user cannot write into root-owned folders; the warning is harmless.
	apt-get download "${pkgs[@]}" >&2
	ls -1 "$debdir" >&2
	exit 0
fi

shopt -s nullglob
debs=("$debdir"/*.deb)
if ((${#debs[@]} == 0)); then
	echo "device_setup: no .deb in $debdir (run it without --unpack where apt works)" >&2
	exit 1
fi
mkdir -p "$dest"
for f in "${debs[@]}"; do
	dpkg -x "$f" "$dest"
done
multi=usr/lib/x86_64-linux-gnu
for pc in "$dest"/$multi/pkgconfig/*.pc "$dest"/usr/share/pkgconfig/*.pc; do
	sed -i -E -e "s#^([a-z_]+)=/usr#\1=$dest/usr#" -e "s#(-[IL])/usr/#\1$dest/usr/#g" "$pc"
done
# Ubuntu and Debian keep pkg-config under different names; prefer the machine's own.
pkgbin=$(command -v pkg-config || true)
if [[ -z $pkgbin ]]; then
	ln -sf pkgconf "$dest/usr/bin/pkg-config"
	pkgbin=$dest/usr/bin/pkg-config
fi
cat <<EOT
export PATH="$dest/usr/bin:\$PATH"
export PKG_CONFIG="$pkgbin"
export PKG_CONFIG_PATH="$dest/$multi/pkgconfig:$dest/usr/share/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$dest/$multi\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CMAKE_PREFIX_PATH="$dest/usr\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
EOT
