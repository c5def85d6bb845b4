#!/usr/bin/env bash
# Runs the fuzz targets one after another (see docs/fuzzing.md).
#   fuzz/run.sh [SECONDS] [TARGET...]
# SECONDS defaults to 600; TARGET defaults to all three. Seeds from
# fuzz/seeds/<target>/ are copied into fuzz/corpus/<target>/ (git-ignored)
# first. libFuzzer's log of each run ends up in fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pdu_decode login_text cdb_parse fabric_frame chunk_request)
fi
export RUSTC_BOOTSTRAP=1
mkdir -p target/logs
RUSTC_BOOTSTRAP=1 cargo fuzz build -O -a
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== $t: ${secs}s from $(date -u +%FT%TZ), corpus $(ls "corpus/$t" | wc -l) files"
    # -jobs=1 runs one worker process that logs to ./fuzz-0.log.
    rm -f fuzz-0.log
    status=0
    nice -n 10 cargo fuzz run -O -a "$t" -- \
        -jobs=1 -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        || status=$?
    mv -f fuzz-0.log "target/logs/$t.log"
    tail -n 20 "target/logs/$t.log"
    echo "== $t: exit $status at $(date -u +%FT%TZ), corpus $(ls "corpus/$t" | wc -l) files"
done
