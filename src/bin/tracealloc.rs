//! `tracealloc`: look at snapshot files written by `Snapshot::dump` or `TRACEALLOC_DUMP`.
//!
//! ```text
//! tracealloc top FILE [--by line|file|function|traceback|crate] [-n 10] [--sort size|count]
//!                     [--include GLOB] [--exclude GLOB] [--all-frames]
//!                     [--allocated | --peak | --temporary | --cumulative]
//! tracealloc report FILE [-n 10]
//! tracealloc diff OLD NEW [--by ...] [-n 10] [--sort size|count] [--include GLOB] [--exclude GLOB]
//! tracealloc folded FILE [-o out.folded] [--allocated | --peak | --temporary] [--merge-lines]
//! tracealloc flamegraph FILE -o out.svg [--allocated | --peak | --temporary] [--merge-lines]
//! tracealloc pprof FILE -o out.pb.gz [--peak]
//! tracealloc dhat FILE -o out.json [--live | --peak | --temporary]
//! ```
//!
//! `--attribution innermost` (any subcommand) attributes traces to their innermost frame outside
//! the allocator and std, dependencies included, instead of the program's own line.
//!
//! Errors (a missing or damaged file, a bad pattern) are one line on stderr and exit code 1.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracealloc::{Error, Filter, GroupBy, Metric, Snapshot};

#[derive(Parser)]
#[command(
    name = "tracealloc",
    version,
    about = "Look at tracealloc snapshot files: top sites, diffs, flame graphs, pprof, DHAT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Which frame a trace counts for: the program's own line (own) or the innermost frame
    /// outside the allocator and std, dependencies included (innermost). Default: as the
    /// file was written.
    #[arg(long, global = true, value_enum)]
    attribution: Option<Attributed>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Attributed {
    Own,
    Innermost,
}

#[derive(Clone, Copy, ValueEnum)]
enum By {
    Line,
    File,
    Function,
    Traceback,
    Crate,
}

impl From<By> for GroupBy {
    fn from(by: By) -> GroupBy {
        match by {
            By::Line => GroupBy::Line,
            By::File => GroupBy::File,
            By::Function => GroupBy::Function,
            By::Traceback => GroupBy::Traceback,
            By::Crate => GroupBy::Crate,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Sort {
    /// Bytes first (tracemalloc's order).
    Size,
    /// Blocks first: where the allocation calls are.
    Count,
}

/// Which traces to keep, as tracemalloc's filters.
#[derive(clap::Args)]
struct Filters {
    /// Keep only traces whose call site is in a file matching this glob (repeatable;
    /// `*` and `?` as in fnmatch).
    #[arg(long)]
    include: Vec<String>,
    /// Drop traces whose call site is in a file matching this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Match the patterns against every frame of a trace, not only its call site.
    #[arg(long)]
    all_frames: bool,
}

impl Filters {
    /// Applies the filters. A pattern that matches no trace of a non-empty snapshot is said on
    /// stderr: an empty result from a typo must not pass for a real one.
    fn apply(&self, snapshot: Snapshot, name: &Path) -> Result<Snapshot, Failure> {
        if self.include.is_empty() && self.exclude.is_empty() {
            return Ok(snapshot);
        }
        let make = |p: &String, include: bool| -> Result<Filter, Error> {
            let f = if include {
                Filter::include(p)?
            } else {
                Filter::exclude(p)?
            };
            Ok(f.all_frames(self.all_frames))
        };
        let filters = self
            .include
            .iter()
            .map(|p| make(p, true))
            .chain(self.exclude.iter().map(|p| make(p, false)))
            .collect::<Result<Vec<_>, _>>()?;
        let traces = snapshot.traces().len();
        if traces > 0 {
            let flags = self.include.iter().map(|p| ("include", p));
            for (flag, pattern) in flags.chain(self.exclude.iter().map(|p| ("exclude", p))) {
                if snapshot
                    .filter_traces(&[make(pattern, true)?])
                    .traces()
                    .is_empty()
                {
                    let frames = if self.all_frames {
                        "a frame"
                    } else {
                        "a call site (--all-frames matches any frame)"
                    };
                    eprintln!(
                        "tracealloc: --{flag} {pattern:?} matched none of the {traces} traces \
                         in {} by {frames}",
                        name.display()
                    );
                }
            }
        }
        let kept = snapshot.filter_traces(&filters);
        if traces > 0 && kept.traces().is_empty() {
            eprintln!(
                "tracealloc: the filters left no trace of {} ({traces} before)",
                name.display()
            );
        }
        Ok(kept)
    }
}

#[derive(Subcommand)]
enum Command {
    /// The biggest groups of live memory, as tracemalloc's statistics.
    Top {
        /// Snapshot file.
        file: PathBuf,
        /// How to group the traces.
        #[arg(long, value_enum, default_value = "line")]
        by: By,
        /// How many groups to print.
        #[arg(short = 'n', long, default_value_t = 10)]
        limit: usize,
        /// Rank the groups by bytes or by blocks (default: bytes; blocks with --temporary).
        #[arg(long, value_enum)]
        sort: Option<Sort>,
        #[command(flatten)]
        filters: Filters,
        /// Count everything allocated since tracing started, not only live memory.
        #[arg(long, conflicts_with_all = ["cumulative", "peak", "temporary"])]
        allocated: bool,
        /// What was live when the traced peak was reached.
        #[arg(long, conflicts_with = "temporary")]
        peak: bool,
        /// Temporary allocations: blocks freed by their thread before it allocated again.
        #[arg(long, conflicts_with = "cumulative")]
        temporary: bool,
        /// Count each frame of every traceback (what a function and its callees hold).
        #[arg(long)]
        cumulative: bool,
    },
    /// The report of what happened: the peak, allocation traffic, temporaries, what is still
    /// live, crates, sizes (as TRACEALLOC_REPORT prints at exit).
    Report {
        /// Snapshot file.
        file: PathBuf,
        /// How many lines per section.
        #[arg(short = 'n', long, default_value_t = 10)]
        limit: usize,
    },
    /// What grew and shrank from OLD to NEW, as tracemalloc's compare_to.
    Diff {
        /// The earlier snapshot file.
        old: PathBuf,
        /// The later snapshot file.
        new: PathBuf,
        /// How to group the traces.
        #[arg(long, value_enum, default_value = "line")]
        by: By,
        /// How many groups to print.
        #[arg(short = 'n', long, default_value_t = 10)]
        limit: usize,
        /// Rank by the change in bytes or in blocks.
        #[arg(long, value_enum, default_value = "size")]
        sort: Sort,
        /// The same filters applied to both snapshots.
        #[command(flatten)]
        filters: Filters,
    },
    /// Folded stacks (`root;caller;call site BYTES` a line) for flamegraph.pl, inferno,
    /// speedscope: live memory, or --allocated, --peak, --temporary.
    Folded {
        /// Snapshot file.
        file: PathBuf,
        /// Output file (default and `-`: stdout).
        #[arg(short = 'o', long, default_value = "-")]
        output: PathBuf,
        /// Everything allocated since tracing started instead of live memory.
        #[arg(long, conflicts_with_all = ["peak", "temporary"])]
        allocated: bool,
        /// What was live at the traced peak.
        #[arg(long, conflicts_with = "temporary")]
        peak: bool,
        /// Temporary allocations.
        #[arg(long)]
        temporary: bool,
        /// One frame per function instead of one per line: `function (file)`.
        #[arg(long)]
        merge_lines: bool,
    },
    /// An SVG flame graph of live memory (or, with --allocated, of all allocations).
    Flamegraph {
        /// Snapshot file.
        file: PathBuf,
        /// Output SVG file (`-` for stdout).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Show everything allocated since tracing started instead of live memory.
        #[arg(long, conflicts_with_all = ["peak", "temporary"])]
        allocated: bool,
        /// Show what was live at the traced peak.
        #[arg(long, conflicts_with = "temporary")]
        peak: bool,
        /// Show temporary allocations.
        #[arg(long)]
        temporary: bool,
        /// One box per function instead of one per line.
        #[arg(long)]
        merge_lines: bool,
    },
    /// A gzipped pprof profile (go tool pprof, Pyroscope, Parca, Grafana, speedscope).
    Pprof {
        /// Snapshot file.
        file: PathBuf,
        /// Output file, conventionally *.pb.gz (`-` for stdout).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The profile of what was live at the traced peak.
        #[arg(long)]
        peak: bool,
    },
    /// DHAT JSON for Valgrind's dh_view.html (allocation totals; --live for live memory).
    Dhat {
        /// Snapshot file.
        file: PathBuf,
        /// Output JSON file (`-` for stdout).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Show live memory instead of allocation totals.
        #[arg(long, conflicts_with_all = ["peak", "temporary"])]
        live: bool,
        /// Show what was live at the traced peak.
        #[arg(long, conflicts_with = "temporary")]
        peak: bool,
        /// Show temporary allocations.
        #[arg(long)]
        temporary: bool,
    },
}

/// The metric of the flags (at most one is set: clap refuses the others together).
fn metric(default: Metric, allocated: bool, peak: bool, temporary: bool) -> Metric {
    if allocated {
        Metric::Allocated
    } else if peak {
        Metric::Peak
    } else if temporary {
        Metric::Temporary
    } else {
        default
    }
}

/// The snapshot of what was live at the peak.
fn at_peak(snapshot: &Snapshot) -> Result<Snapshot, Error> {
    snapshot.at_peak().ok_or(Error::PeakNotKept)
}

fn run(cli: Cli) -> Result<(), Failure> {
    let attribution = cli.attribution.map(|a| match a {
        Attributed::Own => tracealloc::Attribution::OwnCode,
        Attributed::Innermost => tracealloc::Attribution::Innermost,
    });
    // Files keep the call sites of the process that wrote them; the flag re-attributes.
    let load = |path: &PathBuf| -> Result<Snapshot, Failure> {
        // Errors about a file's contents name the file (I/O errors already do).
        let snapshot = Snapshot::load(path).map_err(|e| match e {
            Error::Corrupt { .. } => Failure(format!("{}: {e}", path.display())),
            e => Failure::from(e),
        })?;
        Ok(match attribution {
            None => snapshot,
            Some(a) => snapshot.with_attribution(a),
        })
    };
    match cli.command {
        Command::Top {
            file,
            by,
            limit,
            sort,
            filters,
            allocated,
            peak,
            temporary,
            cumulative,
        } => {
            let snapshot = load(&file)?;
            let snapshot = if peak { at_peak(&snapshot)? } else { snapshot };
            let snapshot = filters.apply(snapshot, &file)?;
            let report = if temporary {
                let report = snapshot
                    .temporary_report(by.into(), limit)
                    .ok_or(Error::TemporariesUnknown)?;
                if report.top().is_empty() {
                    println!("no temporary allocations");
                    return Ok(());
                }
                report
            } else if allocated {
                snapshot
                    .allocation_report(by.into(), limit)
                    .ok_or(Error::AllocationTotalsUnknown)?
            } else if cumulative {
                snapshot.cumulative_report(by.into(), limit)
            } else {
                // tracemalloc's layout: notes, the top lines with their source, the rest, the
                // total.
                snapshot.report(by.into(), limit)
            };
            let report = match sort {
                None => report,
                Some(Sort::Size) => report.by_size(),
                Some(Sort::Count) => report.by_count(),
            };
            println!("{}", report.to_string().trim_end());
        }
        Command::Report { file, limit } => {
            print!("{}", load(&file)?.summary(limit));
        }
        Command::Diff {
            old: old_path,
            new: new_path,
            by,
            limit,
            sort,
            filters,
        } => {
            let old = filters.apply(load(&old_path)?, &old_path)?;
            let new = filters.apply(load(&new_path)?, &new_path)?;
            let report = new.compare_report(&old, by.into(), limit);
            let report = match sort {
                Sort::Size => report,
                Sort::Count => report.by_count(),
            };
            println!("{report}");
        }
        Command::Folded {
            file,
            output,
            allocated,
            peak,
            temporary,
            merge_lines,
        } => {
            refuse_overwrite(&output, &[&file])?;
            let snapshot = load(&file)?;
            let m = metric(Metric::Live, allocated, peak, temporary);
            let lines = if merge_lines {
                snapshot.folded_by_function(m)?
            } else {
                snapshot.folded(m)?
            };
            if lines.is_empty() {
                let what = match m {
                    Metric::Allocated => "allocated since tracing started",
                    Metric::Peak => "live at the peak",
                    Metric::Temporary => "of temporary allocations",
                    _ => "live at the snapshot",
                };
                return Err(Failure(format!("{}: no memory {what}", file.display())));
            }
            let mut text = lines.join("\n");
            text.push('\n');
            if is_stdout(&output) {
                write_stdout(text.as_bytes())?;
            } else {
                // Written beside the target and renamed: a failure never leaves half a file.
                let partial = output.with_extension(format!("partial-{}", std::process::id()));
                std::fs::write(&partial, text)
                    .and_then(|()| std::fs::rename(&partial, &output))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&partial);
                        Failure(format!("{}: {e}", output.display()))
                    })?;
                eprintln!("wrote {}", output.display());
            }
        }
        Command::Flamegraph {
            file,
            output,
            allocated,
            peak,
            temporary,
            merge_lines,
        } => {
            refuse_overwrite(&output, &[&file])?;
            let snapshot = load(&file)?;
            let m = metric(Metric::Live, allocated, peak, temporary);
            let options = tracealloc::FlameGraphOptions::default().merge_lines(merge_lines);
            if is_stdout(&output) {
                write_stdout(&snapshot.flamegraph_svg_with(m, &options)?)?;
            } else {
                snapshot.write_flamegraph_with(&output, m, &options)?;
                eprintln!("wrote {}", output.display());
            }
        }
        Command::Pprof { file, output, peak } => {
            refuse_overwrite(&output, &[&file])?;
            let snapshot = load(&file)?;
            let snapshot = if peak { at_peak(&snapshot)? } else { snapshot };
            if is_stdout(&output) {
                write_stdout(&snapshot.pprof_bytes()?)?;
            } else {
                snapshot.write_pprof(&output)?;
                eprintln!("wrote {}", output.display());
            }
        }
        Command::Dhat {
            file,
            output,
            live,
            peak,
            temporary,
        } => {
            refuse_overwrite(&output, &[&file])?;
            let m = metric(Metric::Allocated, false, peak, temporary);
            let m = if live { Metric::Live } else { m };
            let snapshot = load(&file)?;
            if is_stdout(&output) {
                write_stdout(snapshot.dhat_json(m)?.as_bytes())?;
            } else {
                snapshot.write_dhat(&output, m)?;
                eprintln!("wrote {}", output.display());
            }
            if m == Metric::Allocated && !snapshot.has_block_lifetimes() {
                eprintln!(
                    "note: no block lifetimes in this snapshot, so dh_view's \"At t-gmax\" and \
                     \"short-lived\" sorts stay disabled; record with TRACEALLOC_LIFETIMES=1 \
                     (or Tracer::new().block_lifetimes(true)) to have them"
                );
            }
        }
    }
    Ok(())
}

/// A failure, as the one line printed.
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure(e.to_string())
    }
}

/// `-o -`: the output goes to stdout.
fn is_stdout(output: &Path) -> bool {
    output.as_os_str() == "-"
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // `| head` closed the pipe: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| Failure(format!("stdout: {e}"))),
    }
}

/// Refuses an output path that names one of the inputs: the output would destroy it.
fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<(), Failure> {
    if is_stdout(output) {
        return Ok(());
    }
    // The output may not exist yet; an existing one is compared by what it resolves to.
    let Ok(target) = output.canonicalize() else {
        return Ok(());
    };
    for input in inputs {
        if input.canonicalize().is_ok_and(|i| i == target) {
            return Err(Failure(format!(
                "refusing to write the output over its input {} (choose another -o)",
                input.display()
            )));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error's own text holds.
            eprintln!("tracealloc: error: {}", e.0.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
