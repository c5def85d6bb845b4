#!/usr/bin/env bash
# CI step of the deterministic simulation (docs/simulation.md): 500 seeds in
# two processes (two cores), then one seed twice to check that a run
# replays exactly. Seeds in tests/sim/known-failures.txt are reported, not
# counted.
#
# Then RS_SEEDS seeds of `--ec 3+2` (Reed–Solomon, up to two faults at once)
# against tests/sim/known-failures-3+2.txt.
#
#   tests/sim/ci.sh [SEEDS] [RS_SEEDS]      (default 500 and 100)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 2
seeds=${1:-500}
rs_seeds=${2:-100}
half=$((seeds / 2))
cargo build --release --locked -p weft-sim || exit 1
bin=target/release/weft-sim
known=tests/sim/known-failures.txt
logs=$(mktemp -d "${TMPDIR:-/tmp}/weft-sim.XXXXXX")
t0=$SECONDS
"$bin" --seeds "$half" --from 1 --keep-going --quiet --known-failures "$known" >"$logs/a.log" 2>&1 &
a=$!
"$bin" --seeds "$((seeds - half))" --from "$((half + 1))" --keep-going --quiet --known-failures "$known" >"$logs/b.log" 2>&1 &
b=$!
rc=0
wait "$a" || rc=1
wait "$b" || rc=1
cat "$logs/a.log" "$logs/b.log"
echo "weft-sim: $seeds seeds in $((SECONDS - t0))s"
# The same seed twice in one process, and once more in another: one trace.
"$bin" --seed 1 --twice | tee "$logs/twice.log" || rc=1
again=$("$bin" --seed 1 | sed -n 's/.* hash \([0-9a-f]*\) .*/\1/p' | head -1)
first=$(sed -n 's/.* hash \([0-9a-f]*\) .*/\1/p' "$logs/twice.log" | head -1)
if [ -z "$first" ] || [ "$first" != "$again" ]; then
	echo "weft-sim: seed 1 gave trace hash '$first' and then '$again' in another process: not deterministic"
	rc=1
fi
# Reed–Solomon, two faults at once.
t0=$SECONDS
rs_half=$((rs_seeds / 2))
rs_known=tests/sim/known-failures-3+2.txt
"$bin" --ec 3+2 --seeds "$rs_half" --from 1 --keep-going --quiet --known-failures "$rs_known" >"$logs/c.log" 2>&1 &
c=$!
"$bin" --ec 3+2 --seeds "$((rs_seeds - rs_half))" --from "$((rs_half + 1))" --keep-going --quiet --known-failures "$rs_known" >"$logs/d.log" 2>&1 &
d=$!
wait "$c" || rc=1
wait "$d" || rc=1
cat "$logs/c.log" "$logs/d.log"
echo "weft-sim --ec 3+2: $rs_seeds seeds in $((SECONDS - t0))s"
"$bin" --ec 3+2 --seed 2 --twice || rc=1
exit "$rc"
