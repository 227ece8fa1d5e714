#!/usr/bin/env bash
# Real consumers of tracealloc's outputs, on the workload of examples/top.rs:
#   - `go tool pprof -top` reads heap.pb.gz and lists the workload's call sites, for both the
#     in-use and the allocation sample types;
#   - `go tool pprof -tags` shows the `bytes` label; the peak profile lists the workload;
#   - the `tracealloc` CLI reads the snapshot file (top, top --peak, report);
#   - headless Chromium renders the flame graph (its subtitle) and the timeline (its tracer
#     line), loads dhat.json in Valgrind's dh_view.html and opens pprof's web UI on a profile
#     fetched from the service (named after the binary) (tests/consumers/view.js), saving
#     screenshots.
#   - a service with TRACEALLOC_HTTP is read over HTTP by `go tool pprof` (heap, allocs, a
#     delta), and bad requests are refused while it goes on serving;
# Needs: go (Debian golang-go), curl, chromium (Debian chromium), node + npm, valgrind's dh_view.html.
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

# The endpoint: a service with no profiling code, TRACEALLOC_HTTP set, read over HTTP.
cargo build -q --release --features http --example service
TRACEALLOC_HTTP=127.0.0.1:0 target/release/examples/service 40 > "$out/service.out" 2> "$out/service.err" &
service=$!
trap 'kill $service 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q 'serving heap profiles' "$out/service.err" && break; sleep 0.2; done
url=$(sed -n 's|^tracealloc: serving heap profiles at \(http://[^ ]*\)/debug/pprof/$|\1|p' "$out/service.err")
[ -n "$url" ] || fail "TRACEALLOC_HTTP: the service announced no address: $(cat "$out/service.err")"
sleep 2
export PPROF_TMPDIR="$out/pprof"
heap=$(go tool pprof -top -lines "$url/debug/pprof/heap" 2>&1)
printf '%s\n' "$heap" | head -8
printf '%s\n' "$heap" | grep -q '^File: service' || fail "pprof over HTTP: the profile is not named after the binary"
printf '%s\n' "$heap" | grep -q '^Type: inuse_space' || fail "/debug/pprof/heap is not inuse_space by default"
printf '%s\n' "$heap" | grep -Eq 'examples/service.rs:3[0-9]' || fail "/debug/pprof/heap misses the service's lines"
printf '%s\n' "$heap" | grep -qi 'binary filename' && fail "pprof warns about the binary's name"
allocs=$(go tool pprof -top -lines "$url/debug/pprof/allocs" 2>&1)
printf '%s\n' "$allocs" | grep -q '^Type: alloc_space' || fail "/debug/pprof/allocs is not alloc_space by default"
printf '%s\n' "$allocs" | grep -Eq 'examples/service.rs:(28|30|33)' || fail "/debug/pprof/allocs misses the service's lines"
delta=$(go tool pprof -top "$url/debug/pprof/heap?seconds=2" 2>&1)
printf '%s\n' "$delta" | grep -q '^Duration: 2s' || fail "?seconds=2 is not a 2 s delta: $delta"
traces=$(go tool pprof -traces "$url/debug/pprof/heap" 2>&1)
printf '%s\n' "$traces" | grep -q '^ *[0-9.kMG]*B *<' || fail "-traces lost the trait-method names (<T as Trait>::f)"
printf '%s\n' "$traces" | grep -Eq '^ +[0-9.kMG]*B? +::' && fail "-traces shows names cut to ::method"
# Refusals, each answered while the service goes on serving.
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/debug/pprof/heap")
[ "$code" = 405 ] || fail "a POST got $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $(head -c 20000 /dev/zero | tr '\0' a)" "$url/debug/pprof/heap")
[ "$code" = 431 ] || fail "an oversized header got $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/debug/pprof/heap?seconds=x")
[ "$code" = 400 ] || fail "a bad ?seconds got $code"
go tool pprof -top "$url/debug/pprof/heap" > /dev/null 2>&1 || fail "the service stopped serving"
curl -s -o "$out/service-heap.pb.gz" "$url/debug/pprof/heap" || fail "curl could not fetch the heap profile"
kill $service 2>/dev/null || true
trap - EXIT
echo "consumers: go tool pprof read the live endpoint (heap, allocs, a 2 s delta)"

# pprof's web UI on the fetched profile: view.js checks it is named after the binary.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
go tool pprof -http="127.0.0.1:$port" -no_browser "$out/service-heap.pb.gz" > "$out/webui.log" 2>&1 &
webui=$!
trap 'kill $webui 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/ui/" && break; sleep 0.2; done

pw=${PLAYWRIGHT_DIR:-$out/playwright}
if [ ! -d "$pw/node_modules/playwright-core" ]; then
  mkdir -p "$pw"
  (cd "$pw" && npm init -y > /dev/null && npm install --no-audit --no-fund playwright-core > /dev/null)
fi
NODE_PATH="$pw/node_modules" node tests/consumers/view.js \
  "$out/live.svg" "$out/dhat.json" "$out/timeline.svg" "$out" "http://127.0.0.1:$port/ui/top"
kill $webui 2>/dev/null || true
trap - EXIT
echo "consumers: all outputs read by their real consumers; screenshots in $out"
