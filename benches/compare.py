#!/usr/bin/env python3
"""tracealloc beside dhat-rs and heapscope, on the identical workload (the inverted index of
examples/top.rs, DOCUMENTS=1000 documents by default: about a million allocations).

Builds benches/compare/ (one binary per profiler, all with frame pointers: heapscope requires
them on x86_64, and they are the configuration each tool recommends), then runs the binaries
one after another, ROUNDS times (default 7) in turn, and prints one table: median whole-process
wall time, its ratio to the same workload without a profiler, and the median peak RSS.

    python3 benches/compare.py            # ROUNDS=7 DOCUMENTS=1000 by default
"""
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.join(HERE, "compare")
BINARIES = [
    ("system", "no profiler (System)"),
    ("tracealloc_exact", "tracealloc, every allocation"),
    ("tracealloc_sampled", "tracealloc, sampled (512 KiB)"),
    ("heapscope", "heapscope 0.3, every allocation"),
    ("dhat", "dhat-rs 0.3, heap mode"),
]


def build():
    env = dict(os.environ, RUSTFLAGS="-C force-frame-pointers=yes")
    # heapscope 0.3 declares Rust 1.96; it builds and runs on 1.95.
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--ignore-rust-version"],
        cwd=CRATE, env=env, check=True,
    )


def run_once(name):
    path = os.path.join(CRATE, "target", "release", name)
    start = time.perf_counter()
    proc = subprocess.Popen([path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{name} failed with status {status}")
    return elapsed, usage.ru_maxrss  # KiB on Linux


def main():
    rounds = int(os.environ.get("ROUNDS", "7"))
    build()
    times = {name: [] for name, _ in BINARIES}
    rss = {name: [] for name, _ in BINARIES}
    for _ in range(rounds):
        for name, _ in BINARIES:
            t, m = run_once(name)
            times[name].append(t)
            rss[name].append(m)
    # Ratios to the baseline within each round, then the median of those.
    base = times["system"]
    print(f"{rounds} rounds, DOCUMENTS={os.environ.get('DOCUMENTS', '1000')}, "
          f"frame pointers on; medians")
    print()
    print("| profiler | wall time (s) | × no profiler | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, label in BINARIES:
        ratios = [t / b for t, b in zip(times[name], base)]
        print(f"| {label} | {statistics.median(times[name]):.2f} | "
              f"**{statistics.median(ratios):.2f}×** | {statistics.median(rss[name]) / 1024:.0f} |")


if __name__ == "__main__":
    main()
