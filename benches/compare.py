#!/usr/bin/env python3
"""tracealloc beside dhat-rs, heapscope and heaptrack, on two workloads:

- `index`: the inverted index of examples/top.rs (DOCUMENTS=1000 documents: about a million
  allocations, 3 to 8 frames between an allocation and the program's line);
- `deep`: serde_json parsing and pretty-printing nested documents, a regex over the output, a
  HashMap index (benches/compare/src/deep.rs, 3,000 documents: about 3.8 million allocations,
  20 to 40 frames between an allocation and the program's line).

Builds benches/compare/ (one binary per profiler, all with frame pointers: heapscope requires
them on x86_64, and they are the configuration each tool recommends), and a second time without
frame pointers (`target/nofp`: the no-profiler binary and tracealloc's two, which then capture
with the unwind-rule cache, as in a program built by plain `cargo build --release`; their
ratios are to the no-profiler binary of that build; `NOFP=0` skips them), then runs every binary
on every workload one after another, ROUNDS times (default 5) in turn, and prints one table:
per workload, median whole-process wall time, its ratio to the same workload without a
profiler (taken within each round), and the median peak RSS and its ratio. heaptrack (the
Debian package), when installed, runs the no-profiler binary as a reference row: it traces
from outside through LD_PRELOAD, so its time includes writing its trace file.

    python3 benches/compare.py            # ROUNDS=5
    WORKLOADS=deep python3 benches/compare.py
    NOFP=0 python3 benches/compare.py     # only the frame-pointer builds
"""
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
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
# Built without frame pointers (`target/nofp`), each against that build's System binary.
NOFP_BINARIES = [
    ("nofp/system", "no profiler (System), built without frame pointers"),
    ("nofp/tracealloc_exact", "tracealloc, every allocation, without frame pointers"),
    ("nofp/tracealloc_sampled", "tracealloc, sampled (512 KiB), without frame pointers"),
]


def build(nofp):
    env = dict(os.environ, RUSTFLAGS="-C force-frame-pointers=yes")
    # heapscope 0.3 declares Rust 1.96; it builds and runs on 1.95.
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--ignore-rust-version"],
        cwd=CRATE, env=env, check=True,
    )
    if nofp:
        # RUSTFLAGS replaces the repository's .cargo/config.toml flags (which add frame
        # pointers); std keeps its own, as a user's build does.
        env = dict(os.environ, RUSTFLAGS="-C force-frame-pointers=no")
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "--ignore-rust-version",
             "--target-dir", os.path.join(CRATE, "target", "nofp"),
             "--bin", "system", "--bin", "tracealloc_exact", "--bin", "tracealloc_sampled"],
            cwd=CRATE, env=env, check=True,
        )


def binary(name):
    """The path of `name` (`nofp/…`: of the build without frame pointers)."""
    if name.startswith("nofp/"):
        return os.path.join(CRATE, "target", "nofp", "release", name[len("nofp/"):])
    return os.path.join(CRATE, "target", "release", name)


def baseline(name):
    return "nofp/system" if name.startswith("nofp/") else "system"


def run_once(name, workload):
    command, cwd = [binary(name)], None
    if name == "heaptrack":
        # heaptrack writes heaptrack.system.PID.zst into its working directory.
        cwd = tempfile.mkdtemp(prefix="compare-heaptrack-")
        command = ["heaptrack", os.path.join(CRATE, "target", "release", "system")]
    env = dict(os.environ, WORKLOAD=workload)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    # ru_maxrss of a waited child: the largest of it and its waited-for descendants.
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if cwd:
        shutil.rmtree(cwd, ignore_errors=True)
    if status != 0:
        sys.exit(f"{name} failed with status {status}")
    return elapsed, usage.ru_maxrss  # KiB on Linux


def main():
    rounds = int(os.environ.get("ROUNDS", "5"))
    workloads = os.environ.get("WORKLOADS", "index,deep").split(",")
    nofp = os.environ.get("NOFP", "1") != "0"
    build(nofp)
    binaries = list(BINARIES)
    if shutil.which("heaptrack"):
        binaries.append(("heaptrack", "heaptrack (Debian package, LD_PRELOAD), on the System binary"))
    if nofp:
        binaries += NOFP_BINARIES
    times = {(w, name): [] for w in workloads for name, _ in binaries}
    rss = {(w, name): [] for w in workloads for name, _ in binaries}
    for _ in range(rounds):
        for w in workloads:
            for name, _ in binaries:
                t, m = run_once(name, w)
                times[(w, name)].append(t)
                rss[(w, name)].append(m)
    # Ratios to the baseline within each round, then the median of those.
    print(f"{rounds} rounds, frame pointers on unless said; medians (ratios taken within "
          "each round, to the no-profiler binary of the same build)")
    print()
    head = "| profiler |" + "".join(
        f" {w}: wall time (s) | {w}: × System | {w}: peak RSS (MiB) | {w}: RSS × System |"
        for w in workloads)
    print(head)
    print("|---|" + "---|---|---|---|" * len(workloads))
    for name, label in binaries:
        row = f"| {label} |"
        for w in workloads:
            base_t, base_m = times[(w, baseline(name))], rss[(w, baseline(name))]
            ratios = [t / b for t, b in zip(times[(w, name)], base_t)]
            rss_ratios = [m / b for m, b in zip(rss[(w, name)], base_m)]
            row += (f" {statistics.median(times[(w, name)]):.2f} |"
                    f" **{statistics.median(ratios):.2f}×** |"
                    f" {statistics.median(rss[(w, name)]) / 1024:.0f} |"
                    f" {statistics.median(rss_ratios):.2f}× |")
        print(row)


if __name__ == "__main__":
    main()
