# shellcheck shell=bash
# common.sh - set-up shared by scripts/run.sh and scripts/test.sh (sourced, never run).
#
# kvt_setup installs the Debian packages that are missing, then configures and builds the
# tree into build/.  Everything a fresh Debian 12 machine needs goes through here: CI runs
# the scripts on a clean machine where nothing was installed by hand.

KVT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVT_BUILD=${KVT_BUILD:-$KVT_ROOT/build}

# Why each package is here: README.md, "Dependencies and why".  make and libc6-dev are only
# Recommends of cmake and gcc, which --no-install-recommends would leave out.
KVT_PACKAGES=(
	gcc libc6-dev make cmake pkg-config
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
	kvt_debian_python
	kvt_configure "$KVT_BUILD"
	kvt_build "$KVT_BUILD"
}
