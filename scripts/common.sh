# shellcheck shell=bash
# common.sh - set-up shared by the scripts of scripts/ (sourced, never run).
#
# kvt_setup installs the Debian packages that are missing, then configures and builds the
# tree into build/.  Everything a fresh Debian 12 machine needs goes through here: CI runs
# the scripts on a clean machine where nothing was installed by hand.

KVT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVT_BUILD=${KVT_BUILD:-$KVT_ROOT/build}

# Why each package is here: README.md, "Dependencies and why".  make and libc6-dev are only
# Recommends of cmake and gcc, which --no-install-recommends would leave out.
KVT_PACKAGES=(
	gcc g++ libc6-dev make cmake pkg-config
	liburing-dev liblz4-dev libzstd-dev libinih-dev libxxhash-dev libsystemd-dev libhiredis-dev
	libcmocka-dev
	clang-14 libclang-rt-14-dev
	python3 python3-numpy python3-pytest python3-matplotlib python3-setuptools python3-wheel python3-pip
	redis-server fio prometheus systemd strace
)

kvt_log()
{
	printf '%s: %s\n' "${KVT_PROG:-kvtier}" "$*" >&2
}

kvt_die()
{
	kvt_log "error: $*"
	exit 1
}

# Prints the running script's header comment (line 2 to the first line that is not a
# comment, without its "# "): the script's usage.
kvt_usage()
{
	awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
}

# Sets daemon, ctl and replay to the built kvtierd, kvtierctl and kvtier-replay; dies when one
# was not built.
kvt_built_tools()
{
	local b

	daemon=$KVT_BUILD/daemon/kvtierd
	ctl=$KVT_BUILD/client/kvtierctl
	replay=$KVT_BUILD/bench/kvtier-replay
	for b in "$daemon" "$ctl" "$replay"; do
		[[ -x $b ]] || kvt_die "$b was not built"
	done
}

# kvt_help "$@": prints the usage and exits 0 when the first argument is -h or --help.
kvt_help()
{
	case ${1:-} in
	-h | --help)
		kvt_usage
		exit 0
		;;
	esac
}

# Prints the packages of "$@" that dpkg does not have fully installed.
kvt_missing_packages()
{
	local p st
	for p in "$@"; do
		st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		[[ $st == installed ]] || printf '%s\n' "$p"
	done
}

kvt_install_packages()
{
	local -a want=("${KVT_PACKAGES[@]}") missing
	local made_policy=0

	command -v dpkg-query >/dev/null || kvt_die "dpkg-query not found: these scripts expect Debian 12"
	# nvcc compiles its host code with g++; without it CMake quietly builds the GPU stub.
	[[ -x /usr/local/cuda/bin/nvcc ]] && want+=(g++)
	mapfile -t missing < <(kvt_missing_packages "${want[@]}")
	if ((${#missing[@]} == 0)); then
		kvt_log "all ${#want[@]} Debian packages present"
		return 0
	fi
	if ((EUID != 0)); then
		kvt_log "missing Debian packages: ${missing[*]}"
		kvt_log "run as root, or install them first:"
		printf '  apt-get update && apt-get install -y --no-install-recommends %s\n' "${missing[*]}" >&2
		exit 1
	fi
	kvt_log "installing: ${missing[*]}"
	# redis-server and prometheus would start system services from their postinst; the tests
	# start their own on temporary ports, so keep the machine free of them while installing.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				"${missing[@]}"
	} || rc=$?
	((made_policy)) && rm -f /usr/sbin/policy-rc.d
	((rc == 0)) || kvt_die "apt-get failed (exit $rc)"
	mapfile -t missing < <(kvt_missing_packages "${want[@]}")
	((${#missing[@]} == 0)) || kvt_die "still missing after apt-get: ${missing[*]}"
}

# llama.cpp for the engine integration (client/llama): Debian 12 has no package, so its
# prebuilt CPU libraries come from the npm registry, with the llama.h of the same build from
# the llama.cpp source (a git bundle) that node-llama-cpp of the same version carries.  The
# version is pinned, and so are the tarballs' digests: client/llama parses llama.cpp's
# per-sequence state, whose format belongs to exactly this build.  Installed into
# $KVT_LLAMA_DIR (ignored by git), where CMake's KVT_LLAMA=AUTO finds it.
KVT_LLAMA_NPM_VERSION=3.21.1
KVT_LLAMA_NPM_SHA512=(
	"@node-llama-cpp/linux-x64 4e8b63e914c3306a371682b6c8d51acffa069990f4a2502a4eb465b855169aed245b68bd4cecc7496d0e5820221a4cd10955f45ac5360b2510a3f5b6358b5d3c"
	"node-llama-cpp 13737412fd956b4c33c9dbd7605c0cf47bf2a34ecfa168edf13ffd18c738dc2bedf18915fcd53fb5852010c0b582b4cfbf6a3d3d18d08b41b759be4ffdac2232"
)
KVT_LLAMA_DIR=${KVT_LLAMA_DIR:-$KVT_ROOT/.devdeps/npm/llama-$KVT_LLAMA_NPM_VERSION}

# kvt_install_llama: idempotent; once $KVT_LLAMA_DIR/.complete exists nothing is fetched (an
# offline machine keeps working).  Layout: lib/ (libllama, libggml*), include/ (llama.h and
# ggml's headers), LICENSE, VERSION.
kvt_install_llama()
{
	local dir=$KVT_LLAMA_DIR tmp entry pkg sum tgz
	if [[ -e $dir/.complete ]]; then
		kvt_log "llama.cpp (npm node-llama-cpp $KVT_LLAMA_NPM_VERSION) present in $dir"
		return 0
	fi
	if ! command -v npm >/dev/null; then
		if ((EUID != 0)); then
			kvt_die "npm not found: install Debian's npm (or Node.js) to fetch llama.cpp"
		fi
		kvt_log "installing Debian's npm to fetch llama.cpp"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm ||
			kvt_die "apt-get install npm failed"
	fi
	command -v git >/dev/null || kvt_die "git not found: it unpacks llama.cpp's source bundle"
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvt-llama.XXXXXX")
	kvt_log "fetching llama.cpp from npm: node-llama-cpp $KVT_LLAMA_NPM_VERSION"
	for entry in "${KVT_LLAMA_NPM_SHA512[@]}"; do
		pkg=${entry% *}
		sum=${entry#* }
		tgz=$(cd "$tmp" && npm pack --silent "$pkg@$KVT_LLAMA_NPM_VERSION" 2>/dev/null | tail -1) ||
			kvt_die "npm pack $pkg@$KVT_LLAMA_NPM_VERSION failed"
		[[ -f $tmp/$tgz ]] || kvt_die "npm pack $pkg@$KVT_LLAMA_NPM_VERSION gave no tarball"
		[[ $(sha512sum "$tmp/$tgz" | cut -d' ' -f1) == "$sum" ]] ||
			kvt_die "$tgz: sha512 differs from the pinned one"
		mkdir -p "$tmp/$pkg" || kvt_die "cannot create $tmp/$pkg"
		tar -xzf "$tmp/$tgz" -C "$tmp/$pkg" || kvt_die "cannot unpack $tgz"
	done
	rm -rf "$dir.new"
	mkdir -p "$dir.new/lib" "$dir.new/include" || kvt_die "cannot create $dir.new"
	cp -a "$tmp/@node-llama-cpp/linux-x64/package/bins/linux-x64/"lib*.so "$dir.new/lib/" ||
		kvt_die "no libraries in @node-llama-cpp/linux-x64"
	if ! git init -q --bare "$tmp/src.git" ||
		! git -C "$tmp/src.git" fetch -q "$tmp/node-llama-cpp/package/llama/gitRelease.bundle" HEAD ||
		! git -C "$tmp/src.git" archive -o "$tmp/src.tar" FETCH_HEAD include/llama.h ggml/include LICENSE ||
		! tar -xf "$tmp/src.tar" -C "$tmp"; then
		kvt_die "cannot read llama.cpp's source bundle"
	fi
	cp "$tmp/include/llama.h" "$tmp/ggml/include/"*.h "$dir.new/include/" ||
		kvt_die "llama.h missing from the source bundle"
	cp "$tmp/LICENSE" "$dir.new/LICENSE" || kvt_die "LICENSE missing from the source bundle"
	sed -n 's/.*"tag": *"\([^"]*\)".*/\1/p' "$tmp/node-llama-cpp/package/llama/llama.cpp.info.json" \
		>"$dir.new/VERSION"
	touch "$dir.new/.complete"
	rm -rf "$dir" "$tmp"
	mv "$dir.new" "$dir" || kvt_die "cannot move $dir.new into place"
	kvt_log "llama.cpp $(cat "$dir/VERSION") installed in $dir"
}

# Debian's python3-* packages install for /usr/bin/python3.  A python3 found earlier in PATH
# (pyenv, a virtualenv) would not see numpy or pytest, so the build and the tests use Debian's.
kvt_debian_python()
{
	local py
	py=$(command -v python3 || true)
	if [[ -x /usr/bin/python3 && $py != /usr/bin/python3 ]]; then
		kvt_log "using /usr/bin/python3 (Debian's) instead of ${py:-none}"
		export PATH="/usr/bin:$PATH"
	fi
}

# kvt_configure BUILD_DIR [CMAKE_ARGS...]
kvt_configure()
{
	local dir=$1
	shift
	local -a args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
	[[ -n ${CI:-} ]] && args+=(-DKVT_WERROR=ON)
	kvt_log "configure $dir"
	cmake -S "$KVT_ROOT" -B "$dir" "${args[@]}" "$@" || kvt_die "cmake configure of $dir failed"
}

# kvt_build BUILD_DIR
kvt_build()
{
	local dir=$1
	kvt_log "build $dir with -j$(nproc)"
	cmake --build "$dir" -j"$(nproc)" || kvt_die "build of $dir failed"
}

# The common set-up of both commands: packages, then build/.
kvt_setup()
{
	kvt_install_packages
	kvt_install_llama
	kvt_debian_python
	kvt_configure "$KVT_BUILD"
	kvt_build "$KVT_BUILD"
}
