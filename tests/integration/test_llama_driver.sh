#!/bin/sh
# test_llama_driver.sh - kvtier-llama end to end: a first run prefills and stores, a second
# run with the same prompt restores, a prompt sharing a prefix restores that prefix, and the
# first token (and, with --predict, the tokens generated after it) are those evaluating without
# kvtier gives.
#   test_llama_driver.sh KVTIER-LLAMA KVTIERD PYTHON3 GGUF_WRITER.py
set -eu
drv=$1 kvtierd=$2 py=$3 writer=$4
dir=$(mktemp -d /tmp/kvtier-llama-drv.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	exit 1
}

"$py" "$writer" random "$dir/m.gguf" --layers 2 --hidden 128 --heads 4 --kv-heads 2 --ctx 1024
"$kvtierd" -f -s "$dir/sock" -o host.capacity=64MiB -o daemon.log_level=warn &
pid=$!
i=0
while [ ! -S "$dir/sock" ]; do
	kill -0 "$pid" 2>/dev/null || fail "kvtierd exited"
	i=$((i + 1))
	[ $i -lt 3000 ] || fail "kvtierd did not create its socket"
	sleep 0.01
done
# 400 bytes = 400 tokens of a byte model: 6 full blocks.
"$py" -c "import sys; sys.stdout.buffer.write(bytes((i * 37 + 11) % 251 for i in range(400)))" >"$dir/a.txt"
head -c 200 "$dir/a.txt" >"$dir/b.txt"
printf 'another ending of the same prefix' >>"$dir/b.txt"

"$drv" -s "$dir/sock" -t 2 "$dir/m.gguf" "$dir/a.txt" | tee "$dir/1"
"$drv" -s "$dir/sock" -t 2 -n 12 "$dir/m.gguf" "$dir/a.txt" "$dir/b.txt" | tee "$dir/2"
"$drv" --no-kvtier -t 2 -n 12 "$dir/m.gguf" "$dir/a.txt" | tee "$dir/3"
grep -q 'a.txt: 400 tokens, restored 0, evaluated 400, stored 6 blocks' "$dir/1" || fail "first run did not store"
grep -q 'a.txt: 400 tokens, restored 384, evaluated 16, stored 0 blocks' "$dir/2" || fail "second run did not restore"
grep -q 'b.txt: 233 tokens, restored 192, evaluated 41, stored 0 blocks' "$dir/2" || fail "shared prefix not restored"
grep -q 'TTFT' "$dir/2" || fail "no TTFT reported"
t1=$(sed -n 's/.*a.txt.*first token \([0-9]*\).*/\1/p' "$dir/1")
t2=$(sed -n 's/.*a.txt.*first token \([0-9]*\).*/\1/p' "$dir/2")
t3=$(sed -n 's/.*a.txt.*first token \([0-9]*\).*/\1/p' "$dir/3")
[ -n "$t1" ] && [ "$t1" = "$t2" ] && [ "$t1" = "$t3" ] || fail "first tokens differ: $t1 $t2 $t3"
# --predict: the tokens generated after a restored prefix are those without kvtier (raw tier)
g2=$(grep 'a.txt: generated 12:' "$dir/2")
g3=$(grep 'a.txt: generated 12:' "$dir/3")
[ -n "$g2" ] && [ "$g2" = "$g3" ] || fail "generated tokens differ: '$g2' '$g3'"
[ "$(echo "$g2" | wc -w)" -eq 15 ] || fail "not 12 tokens: $g2"
# A daemon that is not there: the driver evaluates and says why kvtier was not used.
kill "$pid"
wait "$pid" || true
pid=
"$drv" -s "$dir/sock" -t 2 "$dir/m.gguf" "$dir/a.txt" | tee "$dir/4"
grep -q 'a.txt: 400 tokens, restored 0, evaluated 400.*kvtier: ' "$dir/4" || fail "no fallback without a daemon"
echo "ok: driver stores, restores, and falls back"
