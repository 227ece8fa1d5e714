//! `tracealloc`: look at snapshot files written by `Snapshot::dump` or `TRACEALLOC_DUMP`.
//!
//! ```text
//! tracealloc top FILE [--by line|file|function|traceback|crate] [-n 10] [--include GLOB] [--exclude GLOB]
//!                     [--allocated | --peak | --temporary | --cumulative]
//! tracealloc report FILE [-n 10]
//! tracealloc diff OLD NEW [--by ...] [-n 10]
//! tracealloc flamegraph FILE -o out.svg [--allocated | --peak | --temporary]
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
        /// Keep only traces with a frame in files matching this glob (repeatable).
        #[arg(long)]
        include: Vec<String>,
        /// Drop traces with a frame in files matching this glob (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
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
            include,
            exclude,
            allocated,
            peak,
            temporary,
            cumulative,
        } => {
            let snapshot = load(&file)?;
            let snapshot = if peak { at_peak(&snapshot)? } else { snapshot };
            let filters = include
                .iter()
                .map(|p| Filter::include(p))
                .chain(exclude.iter().map(|p| Filter::exclude(p)))
                .collect::<Result<Vec<_>, _>>()?;
            let snapshot = snapshot.filter_traces(&filters);
            if temporary {
                let report = snapshot
                    .temporary_report(by.into(), limit)
                    .ok_or(Error::TemporariesUnknown)?;
                if report.top().is_empty() {
                    println!("no temporary allocations");
                } else {
                    println!("{}", report.to_string().trim_end());
                }
                return Ok(());
            }
            if !allocated && !cumulative {
                // tracemalloc's layout: notes, the top lines with their source, the rest, the
                // total.
                println!("{}", snapshot.report(by.into(), limit));
                return Ok(());
            }
            for note in snapshot.notes() {
                println!("note: {note}");
            }
            let stats = if allocated {
                snapshot
                    .allocation_statistics(by.into())
                    .ok_or(Error::AllocationTotalsUnknown)?
            } else {
                snapshot.cumulative_statistics(by.into())
            };
            for (i, stat) in stats.iter().take(limit).enumerate() {
                println!("#{}: {stat}", i + 1);
                if matches!(by, By::Traceback) {
                    for line in stat.traceback.format(None, true) {
                        println!("{line}");
                    }
                }
            }
            if allocated {
                // Groups of allocation totals are disjoint, so the rest and the total add up
                // (cumulative groups overlap, so they would not).
                let rest = stats.get(limit..).unwrap_or_default();
                if !rest.is_empty() {
                    let size: usize = rest.iter().map(|s| s.size).sum();
                    println!(
                        "{} other: {}",
                        rest.len(),
                        tracealloc::format_size(size as f64, false)
                    );
                }
                let total: usize = stats.iter().map(|s| s.size).sum();
                println!(
                    "Total allocated since tracing started: {}",
                    tracealloc::format_size(total as f64, false)
                );
            }
        }
        Command::Report { file, limit } => {
            print!("{}", load(&file)?.summary(limit));
        }
        Command::Diff {
            old,
            new,
            by,
            limit,
        } => {
            let old = load(&old)?;
            let new = load(&new)?;
            let diffs = new.compare_to(&old, by.into());
            println!("[ Top {} differences ]", limit.min(diffs.len()));
            for diff in diffs.iter().take(limit) {
                println!("{diff}");
            }
        }
        Command::Flamegraph {
            file,
            output,
            allocated,
            peak,
            temporary,
        } => {
            refuse_overwrite(&output, &[&file])?;
            let snapshot = load(&file)?;
            let m = metric(Metric::Live, allocated, peak, temporary);
            if is_stdout(&output) {
                write_stdout(&snapshot.flamegraph_svg(m)?)?;
            } else {
                snapshot.write_flamegraph(&output, m)?;
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
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure(format!("stdout: {e}")))
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
