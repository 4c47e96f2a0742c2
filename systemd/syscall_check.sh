#!/bin/sh
# syscall_check.sh UNIT KVTIERD KVTIERCTL KVTIER_REPLAY DATA_DIR - the ctest check that kvtierd
# stays inside the SystemCallFilter= of its unit.
#
# A call outside the filter fails with EPERM under systemd (SystemCallErrorNumber=EPERM),
# which would surface as an odd error only on production hosts.  So: run the daemon under
# strace through a workload that touches every path we can reach without a GPU (host tier,
# eviction, NVMe demotion and promotion with io_uring, every kvtierctl command, a clean stop),
# and check each system call it made against the filter, expanded by systemd-analyze from
# the unit as configured.  Exit 77 (skipped) without strace or systemd-analyze, or where
# ptrace is refused.
set -eu

unit=$1
daemon=$2
ctl=$3
replay=$4
data=$5

for t in strace systemd-analyze; do
	if ! command -v $t >/dev/null 2>&1; then
		echo "$t not found: skipped"
		exit 77
	fi
done
if ! strace -f -qq -o /dev/null true 2>/dev/null; then
	echo "strace cannot trace here (ptrace refused): skipped"
	exit 77
fi

tmp=$(mktemp -d)
spid=
cleanup()
{
	if [ -n "$spid" ]; then
		kill "$spid" 2>/dev/null || true
		wait "$spid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# Expands a filter word (a call or an @group) into call names, one a line.
expand()
{
	case $1 in
	@*)
		systemd-analyze syscall-filter "$1" 2>/dev/null | sed -n '2,$p' |
			grep -v '^[[:space:]]*#' | awk 'NF { print $1 }' | while read -r w; do
			expand "$w"
		done
		;;
	*) echo "$1" ;;
	esac
}
: >"$tmp/allow"
: >"$tmp/deny"
grep '^SystemCallFilter=' "$unit" | sed 's/^SystemCallFilter=//' >"$tmp/lines"
[ -s "$tmp/lines" ] || { echo "$unit has no SystemCallFilter="; exit 1; }
while read -r line; do
	case $line in
	~*) out=deny line=${line#\~} ;;
	*) out=allow ;;
	esac
	for w in $line; do
		expand "$w" >>"$tmp/$out"
	done
done <"$tmp/lines"
sort -u -o "$tmp/allow" "$tmp/allow"
sort -u -o "$tmp/deny" "$tmp/deny"

direct=true
[ "$(stat -f -c %T "$tmp")" = tmpfs ] && direct=false
# LeakSanitizer cannot run under ptrace; the sanitizer build's leak checks run elsewhere.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
# kvtierd writes one byte to fd 3 once it serves, or exits without (a refusal): an event to
# wait on, however slow strace makes it.
mkfifo "$tmp/ready"
strace -f -qq -o "$tmp/trace" "$daemon" -f --ready-fd 3 -c /dev/null -s "$tmp/sock" \
	-o host.capacity=3MiB -o nvme.enabled=true -o "nvme.paths=$tmp/nvme0.slots" \
	-o nvme.capacity=64MiB -o nvme.direct=$direct 2>"$tmp/log" 3>"$tmp/ready" &
spid=$!
if [ "$(head -c 1 "$tmp/ready")" != R ]; then
	echo "kvtierd did not start under strace:"
	cat "$tmp/log"
	exit 1
fi
dpid=$(pgrep -P "$spid" | head -n 1)
[ -n "$dpid" ] || { echo "cannot find kvtierd under strace"; exit 1; }

fail=0
"$replay" --socket "$tmp/sock" --quiet --requests 2 "$data/sympy_head640.kvd" || fail=1
"$replay" --socket "$tmp/sock" --quiet --requests 2 "$data/sympy_l1h0_q128.kvd" || fail=1
"$replay" --socket "$tmp/sock" --quiet --requests 1 --expect-full-hit "$data/sympy_head640.kvd" || fail=1
for c in ping status tiers blocks clients metrics config writeback flush "evict --all"; do
	# shellcheck disable=SC2086 # $c is a command and its arguments
	"$ctl" --socket "$tmp/sock" $c >/dev/null || { echo "kvtierctl $c failed"; fail=1; }
	# shellcheck disable=SC2086
	"$ctl" --socket "$tmp/sock" --json $c >/dev/null 2>&1 || true
done
kill -TERM "$dpid"
wait "$spid" || { echo "kvtierd did not exit 0 on SIGTERM"; fail=1; }
spid=
[ $fail -eq 0 ] || { cat "$tmp/log"; echo "the workload failed"; exit 1; }

# "1234 name(args..." -> name; "<... name resumed>" lines repeat a call already counted.
sed -n 's/^[0-9]\{1,\} \{1,\}\([a-z_0-9]\{1,\}\)(.*/\1/p' "$tmp/trace" | sort -u >"$tmp/used"
n=$(wc -l <"$tmp/used")
[ "$n" -gt 20 ] || { echo "only $n system calls traced: strace output not understood"; exit 1; }
bad=0
while read -r s; do
	if ! grep -qx "$s" "$tmp/allow"; then
		echo "kvtierd calls $s, which SystemCallFilter= does not allow"
		bad=1
	elif grep -qx "$s" "$tmp/deny"; then
		echo "kvtierd calls $s, which SystemCallFilter=~ denies"
		bad=1
	fi
done <"$tmp/used"
echo "$n distinct system calls traced: $(tr '\n' ' ' <"$tmp/used")"
[ $bad -eq 0 ] || exit 1
echo "all inside the unit's SystemCallFilter="
