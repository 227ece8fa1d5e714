#!/usr/bin/env bash
# Real consumers of tracealloc's outputs, on the workload of examples/top.rs:
#   - `go tool pprof -top` reads heap.pb.gz and lists the workload's call sites, for both the
#     in-use and the allocation sample types;
#   - `go tool pprof -tags` shows the `bytes` label; the peak profile lists the workload;
#   - the `tracealloc` CLI reads the snapshot file (top, top --peak, report);
#   - headless Chromium renders the flame graph and the timeline and loads dhat.json in
#     Valgrind's dh_view.html (tests/consumers/view.js), saving screenshots.
# Needs: go (Debian golang-go), chromium (Debian chromium), node + npm, valgrind's dh_view.html.
# Usage: bash tests/consumers/check.sh [OUT_DIR]   (screenshots land in OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
fail() { echo "consumers: $*" >&2; exit 1; }

cargo run -q --release --all-features --example report -- "$out" > "$out/report.txt"

top=$(go tool pprof -top -lines "$out/heap.pb.gz" 2>&1)
printf '%s\n' "$top" | head -12
printf '%s\n' "$top" | grep -q '^Type: inuse_space' || fail "pprof: not an inuse_space profile"
printf '%s\n' "$top" | grep -Eq 'build_index .*examples/shared/index_workload.rs:[0-9]+( \(inline\))?$' \
  || fail "go tool pprof does not list the workload's call sites"
alloc=$(go tool pprof -top -sample_index=alloc_space "$out/heap.pb.gz" 2>&1)
printf '%s\n' "$alloc" | grep -q '^Type: alloc_space' || fail "pprof: no alloc_space"
printf '%s\n' "$alloc" | grep -q 'report::workload::tokenize' \
  || fail "pprof alloc_space misses tokenize (its blocks are all freed, so only totals show it)"

# Go's heap profiles label each sample with its blocks' size; -tags tabulates it.
tags=$(go tool pprof -tags "$out/heap.pb.gz" 2>&1)
printf '%s\n' "$tags" | head -6
printf '%s\n' "$tags" | grep -Eq '^ *bytes: Total' || fail "pprof -tags shows no bytes label"
printf '%s\n' "$tags" | grep -Eq '^ +[0-9.]+[kMG]?B \( *[0-9.]+%\): ' \
  || fail "pprof -tags lists no block sizes"
peak=$(go tool pprof -top -lines "$out/peak.pb.gz" 2>&1)
printf '%s\n' "$peak" | grep -Eq 'build_index .*examples/shared/index_workload.rs:[0-9]+' \
  || fail "the peak profile misses the workload's call sites"

cli=$(cargo run -q --release --features cli --bin tracealloc -- top "$out/snapshot.tracealloc" -n 3)
printf '%s\n' "$cli"
printf '%s\n' "$cli" | grep -q '^#1: examples/shared/index_workload.rs:[0-9]*: size=' \
  || fail "the CLI does not list the workload's top line"
report=$(cargo run -q --release --features cli --bin tracealloc -- report "$out/snapshot.tracealloc" -n 3)
printf '%s\n' "$report" | head -4
printf '%s\n' "$report" | grep -q '^tracealloc: top 3 lines at the peak' || fail "report: no peak section"
printf '%s\n' "$report" | grep -q '^tracealloc: temporary allocations' || fail "report: no temporaries"
printf '%s\n' "$report" | grep -q '^tracealloc: allocation sizes' || fail "report: no size histogram"
cli=$(cargo run -q --release --features cli --bin tracealloc -- top --peak "$out/snapshot.tracealloc" -n 1)
printf '%s\n' "$cli" | grep -q '^#1: examples/shared/index_workload.rs:[0-9]*: size=' \
  || fail "top --peak does not list the workload's top line"

pw=${PLAYWRIGHT_DIR:-$out/playwright}
if [ ! -d "$pw/node_modules/playwright-core" ]; then
  mkdir -p "$pw"
  (cd "$pw" && npm init -y > /dev/null && npm install --no-audit --no-fund playwright-core > /dev/null)
fi
NODE_PATH="$pw/node_modules" node tests/consumers/view.js \
  "$out/live.svg" "$out/dhat.json" "$out/timeline.svg" "$out"
echo "consumers: all outputs read by their real consumers; screenshots in $out"
