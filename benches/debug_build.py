#!/usr/bin/env python3
"""What tracealloc costs in the debug builds `cargo test` runs in, against a release build.

Writes a small crate to a temporary directory (tracealloc as a path dependency on this
repository, frame pointers on) in three builds:

- `debug, no block`: `cargo build`, the dev profile as Cargo ships it;
- `debug, README block`: the same with the README's `[profile.dev.package]` block, read from
  README.md so that what is measured is what the README tells users to paste;
- `release`: `cargo build --release`.

All are built with `CARGO_INCREMENTAL=0`, as tracealloc is built when it comes from the crate
registry (a path dependency is built incrementally in debug: a few percent slower). Each binary
times a loop of `Box::new([u8; 64])` dropped at once, traced and with the tracer stopped, and
the first `take_snapshot` with 1,000 live strings; a second binary without the tracer times the
same loop on `System`. Every binary runs once per round, ROUNDS rounds (default 5) in turn;
the table gives medians.

    python3 benches/debug_build.py
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MAIN = r'''
#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

fn main() {
    let keep: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
    let t = std::time::Instant::now();
    let snapshot = tracealloc::take_snapshot().unwrap();
    let first = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(&snapshot);
    drop(keep);
    let (mut traced, mut stopped) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        tracealloc::start(16).unwrap();
        traced.push(common::pairs(200_000));
        tracealloc::stop();
        stopped.push(common::pairs(200_000));
    }
    println!("{first} {} {}", common::median(traced), common::median(stopped));
}
'''

PLAIN = r'''
fn main() {
    println!("{}", common::median((0..7).map(|_| common::pairs(200_000)).collect()));
}
'''

COMMON = r'''
pub fn pairs(n: usize) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        let b = Box::new([7u8; 64]);
        std::hint::black_box(&b);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
'''


def readme_block():
    text = open(os.path.join(ROOT, "README.md")).read()
    match = re.search(r"^\[profile\.dev\.package\]\n(?:[^\n`]+\n)+", text, re.M)
    if not match:
        sys.exit("README.md has no [profile.dev.package] block")
    return match.group(0)


def write_crate(directory, block):
    os.makedirs(os.path.join(directory, "src", "bin"))
    os.makedirs(os.path.join(directory, ".cargo"))
    with open(os.path.join(directory, "Cargo.toml"), "w") as f:
        f.write('[package]\nname = "debugbuild"\nversion = "0.1.0"\nedition = "2021"\n\n'
                f'[dependencies]\ntracealloc = {{ path = "{ROOT}" }}\n\n'
                '[lib]\nname = "common"\npath = "src/common.rs"\n\n'
                '[[bin]]\nname = "traced"\npath = "src/main.rs"\n\n'
                '[[bin]]\nname = "plain"\npath = "src/bin/plain.rs"\n\n' + block)
    with open(os.path.join(directory, ".cargo", "config.toml"), "w") as f:
        f.write('[build]\nrustflags = ["-C", "force-frame-pointers=yes"]\n')
    for name, text in (("main.rs", MAIN), ("common.rs", COMMON), ("bin/plain.rs", PLAIN)):
        with open(os.path.join(directory, "src", name), "w") as f:
            f.write(text)


def main():
    rounds = int(os.environ.get("ROUNDS", "5"))
    scratch = tempfile.mkdtemp(prefix="tracealloc-debug-build-")
    env = dict(os.environ, CARGO_INCREMENTAL="0")
    builds = []
    for label, block, release in (("debug, no block", "", False),
                                  ("debug, README block", readme_block(), False),
                                  ("release", "", True)):
        directory = os.path.join(scratch, label.replace(", ", "-").replace(" ", "-"))
        write_crate(directory, block)
        print(f"building {label} ...", file=sys.stderr)
        command = ["cargo", "build", "--quiet", "--bins"] + (["--release"] if release else [])
        subprocess.run(command, cwd=directory, env=env, check=True)
        out = os.path.join(directory, "target", "release" if release else "debug")
        builds.append((label, os.path.join(out, "traced"), os.path.join(out, "plain")))
    figures = {label: {"first": [], "traced": [], "stopped": [], "system": []}
               for label, _, _ in builds}
    for _ in range(rounds):
        for label, traced, plain in builds:
            first, pair, stopped = map(float, subprocess.run(
                [traced], capture_output=True, text=True, check=True).stdout.split())
            system = float(subprocess.run(
                [plain], capture_output=True, text=True, check=True).stdout)
            for key, value in (("first", first), ("traced", pair), ("stopped", stopped),
                               ("system", system)):
                figures[label][key].append(value)
    med = {label: {k: statistics.median(v) for k, v in f.items()} for label, f in figures.items()}
    release = med["release"]
    print(f"{rounds} rounds, medians; 64 B pair in ns, first snapshot in ms\n")
    print("| build | System pair | stopped pair | traced pair | traced × release | "
          "tracer's share (traced − stopped) × release's | first snapshot |")
    print("|---|---|---|---|---|---|---|")
    for label, _, _ in builds:
        m = med[label]
        share = (m["traced"] - m["stopped"]) / (release["traced"] - release["stopped"])
        print(f"| {label} | {m['system']:.0f} | {m['stopped']:.0f} | {m['traced']:.0f} | "
              f"{m['traced'] / release['traced']:.2f}× | {share:.2f}× | {m['first']:.0f} ms |")


if __name__ == "__main__":
    main()
