//! The report of what happened, in the spirit of heaptrack_print and `memray stats`: the peak,
//! the allocation traffic, temporaries, leaks, sizes and resident memory, each section only
//! when it has something to say. `TRACEALLOC_REPORT=N` prints it at exit; `tracealloc report`
//! prints it for a dump.

use super::statistics::Report;
use super::{GroupBy, Snapshot, Statistic};
use crate::format::format_size;
use std::fmt;

/// The report of a snapshot (see [`Snapshot::summary`]); print it with `Display`.
#[derive(Clone, Debug)]
pub struct Summary {
    text: String,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the process itself can add to a snapshot's report: memory the snapshot does not know.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProcessFigures {
    pub(crate) resident: Option<crate::ProcessMemory>,
    pub(crate) tracer_tables: Option<usize>,
    /// The traced peak and its time, for a snapshot that has no breakdown of it.
    pub(crate) traced_peak: Option<(u64, Option<std::time::Duration>)>,
}

fn size(bytes: u64) -> String {
    format_size(bytes as f64, false)
}

fn seconds(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One section: a title and the top `limit` groups, the rest summed.
fn section(out: &mut String, title: &str, stats: Vec<Statistic>, limit: usize) {
    if stats.is_empty() {
        return;
    }
    let report = Report {
        notes: Vec::new(),
        stats,
        limit,
        totals: super::statistics::Totals::Rest,
    };
    out.push_str(title);
    out.push('\n');
    out.push_str(report.to_string().trim_end());
    out.push('\n');
}

impl Snapshot {
    /// The report of what happened, top `limit` lines per section: the peak (its size, when,
    /// and the lines live at it), the most allocated bytes and the most allocation calls
    /// (freed blocks included), temporary allocations, what is still live (at exit: leaks), by
    /// crate, and the size histogram. Each section appears only when the snapshot knows it
    /// and it has something. The same text as `TRACEALLOC_REPORT` at exit and `tracealloc
    /// report FILE`, less the process's resident memory, which only the process knows.
    pub fn summary(&self, limit: usize) -> Summary {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        self.summary_with(limit, "at the snapshot", ProcessFigures::default())
    }

    pub(crate) fn summary_with(
        &self,
        limit: usize,
        when: &str,
        process: ProcessFigures,
    ) -> Summary {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let limit = limit.max(1);
        let mut out = String::new();
        let t = super::statistics::approx(self.sampled().is_some());
        for note in self.notes() {
            out.push_str(&format!("note: {note}\n"));
        }

        // The headline: peak, live, traffic.
        let live = self.total_size() as u64;
        let mut head = String::from("tracealloc:");
        let traced_peak = match self.peak_size() {
            Some(peak) => Some((peak as u64, self.peak_time())),
            None => process.traced_peak,
        };
        if let Some((peak, at)) = traced_peak {
            head += &format!(" peak {t}{}", size(peak));
            if let Some(at) = at {
                head += &format!(" at {}", seconds(at));
            }
            if let Some(d) = self.duration() {
                head += &format!(" of {}", seconds(d));
            }
            head += ";";
        }
        head += &format!(
            " live {when} {t}{} in {t}{} blocks",
            size(live),
            self.per_stack().map(|(_, _, n)| n).sum::<usize>()
        );
        if let Some((bytes, blocks)) = self.allocated_total() {
            head += &format!("; allocated {t}{} in {t}{blocks} blocks", size(bytes));
        }
        out.push_str(&head);
        out.push('\n');

        // The peak.
        match self.at_peak() {
            Some(peak) => section(
                &mut out,
                &format!(
                    "tracealloc: top {limit} lines at the peak ({})",
                    size(self.peak_size().unwrap_or(0) as u64)
                ),
                peak.statistics(GroupBy::Line),
                limit,
            ),
            None if self.sampled().is_some() => out.push_str(
                "tracealloc: no breakdown of the peak: it is kept while tracing every \
                 allocation, not while sampling\n",
            ),
            None if self.peak_switched_off => out.push_str(
                "tracealloc: no breakdown of the peak: it was switched off (TRACEALLOC_PEAK=1 \
                 or tracealloc::set_peak_breakdown(true) keeps it)\n",
            ),
            None => {}
        }

        // Traffic: only when something was freed (otherwise it is the live section again).
        let freed = self
            .released
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r.blocks > 0));
        if let Some(allocated) = self.allocation_statistics(GroupBy::Line).filter(|_| freed) {
            let mut by_count = allocated.clone();
            section(
                &mut out,
                &format!(
                    "tracealloc: top {limit} lines by bytes allocated (freed blocks included)"
                ),
                allocated,
                limit,
            );
            by_count.sort_by(|a, b| b.count.cmp(&a.count).then(b.size.cmp(&a.size)));
            section(
                &mut out,
                &format!("tracealloc: top {limit} lines by allocation calls"),
                by_count,
                limit,
            );
        }

        // Temporaries.
        if let (Some(temporary), Some((_, blocks))) = (
            self.temporary_statistics(GroupBy::Line),
            self.allocated_total(),
        ) {
            let n: usize = temporary.iter().map(|s| s.count).sum();
            if n > 0 {
                section(
                    &mut out,
                    &format!(
                        "tracealloc: temporary allocations (freed before their thread allocated \
                         again): {t}{n} of {t}{blocks} blocks ({:.1}%), top {limit} lines",
                        100.0 * n as f64 / blocks.max(1) as f64
                    ),
                    temporary,
                    limit,
                );
            }
        }

        // Live now (leaks, at exit).
        section(
            &mut out,
            &format!("tracealloc: top {limit} lines live {when}"),
            self.statistics(GroupBy::Line),
            limit,
        );

        // Crates, where the memory was at its highest.
        let (crates, crates_when) = match self.at_peak() {
            Some(peak) => (peak.statistics(GroupBy::Crate), "at the peak"),
            None => (self.statistics(GroupBy::Crate), when),
        };
        if crates.len() > 1 {
            section(
                &mut out,
                &format!("tracealloc: by crate {crates_when}"),
                crates,
                limit.min(5),
            );
        }

        // Sizes.
        if let Some(buckets) = self.size_histogram() {
            let total: u64 = buckets.iter().map(|b| b.blocks).sum();
            if total > 0 {
                out.push_str("tracealloc: allocation sizes (blocks requested)\n");
                let widest = buckets.iter().map(|b| b.blocks).max().unwrap_or(1).max(1);
                for b in buckets.iter().filter(|b| b.blocks > 0) {
                    let range = if b.min == b.max {
                        size(b.min)
                    } else {
                        format!("{} - {}", size(b.min), size(b.max))
                    };
                    let bar = "#".repeat(((b.blocks * 30).div_ceil(widest)) as usize);
                    out.push_str(&format!(
                        "  {range:>19}  {:>12}  {:>5.1}%  {bar}\n",
                        b.blocks,
                        100.0 * b.blocks as f64 / total as f64
                    ));
                }
            }
        }

        // The process.
        let mut tail = Vec::new();
        if let Some(memory) = process.resident {
            let mut s = format!(
                "process resident {}, peak resident {}",
                size(memory.resident as u64),
                size(memory.peak_resident as u64)
            );
            if let Some(peak) = self.peak_size() {
                s += &format!(
                    " (the traced peak is {:.0}% of it)",
                    100.0 * peak as f64 / memory.peak_resident.max(1) as f64
                );
            }
            tail.push(s);
        }
        if let Some(tables) = process.tracer_tables {
            tail.push(format!("tracer tables {}", size(tables as u64)));
        }
        if !tail.is_empty() {
            out.push_str(&format!("tracealloc: {}\n", tail.join("; ")));
        }
        Summary { text: out }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Peak, PeakGroup, Released, Trace, Traceback};
    use super::*;
    use crate::snapshot::Frame;

    fn at(line: u32) -> Traceback {
        let frames = vec![
            Frame::new("src/app.rs".into(), line, "app::work".into()),
            Frame::new("src/main.rs".into(), 3, "app::main".into()),
        ];
        Traceback::new(frames, 0, 16, false)
    }

    /// Every section, from a snapshot made by hand: a 48 MiB peak at line 10 freed since, a
    /// `format!` loop of temporaries at line 20, 64 B still live at line 30.
    #[test]
    fn every_section_reads_as_written() {
        let mut snapshot = Snapshot::from_traces(
            vec![Trace {
                size: 64,
                traceback: at(30),
            }],
            16,
            crate::CaptureMode::FramePointers,
        );
        snapshot.released = Some(vec![
            Released {
                bytes: 48 << 20,
                blocks: 1,
                temporary_bytes: 0,
                temporary_blocks: 0,
                traceback: at(10),
            },
            Released {
                bytes: 64_000,
                blocks: 1000,
                temporary_bytes: 64_000,
                temporary_blocks: 1000,
                traceback: at(20),
            },
        ]);
        snapshot.peak = Some(Peak {
            bytes: (48 << 20) + 64,
            at: Some(std::time::Duration::from_millis(1500)),
            groups: vec![
                PeakGroup {
                    bytes: 48 << 20,
                    blocks: 1,
                    traceback: at(10),
                },
                PeakGroup {
                    bytes: 64,
                    blocks: 1,
                    traceback: at(30),
                },
            ],
        });
        let mut sizes = vec![0u64; 27];
        sizes[7] = 1001;
        sizes[26] = 1;
        snapshot.sizes = Some(sizes);
        snapshot.duration = Some(std::time::Duration::from_secs(2));
        let text = snapshot
            .summary_with(
                2,
                "at exit",
                ProcessFigures {
                    resident: Some(crate::ProcessMemory {
                        resident: 10 << 20,
                        peak_resident: 60 << 20,
                    }),
                    tracer_tables: Some(1 << 20),
                    traced_peak: None,
                },
            )
            .to_string();
        let expected = "\
tracealloc: peak 48.0 MiB at 1.50 s of 2.00 s; live at exit 64 B in 1 blocks; allocated 48.1 MiB in 1002 blocks
tracealloc: top 2 lines at the peak (48.0 MiB)
#1: src/app.rs:10: size=48.0 MiB, count=1, average=48.0 MiB
#2: src/app.rs:30: size=64 B, count=1, average=64 B
tracealloc: top 2 lines by bytes allocated (freed blocks included)
#1: src/app.rs:10: size=48.0 MiB, count=1, average=48.0 MiB
#2: src/app.rs:20: size=62.5 KiB, count=1000, average=64 B
1 other: 64 B in 1 blocks
tracealloc: top 2 lines by allocation calls
#1: src/app.rs:20: size=62.5 KiB, count=1000, average=64 B
#2: src/app.rs:10: size=48.0 MiB, count=1, average=48.0 MiB
1 other: 64 B in 1 blocks
tracealloc: temporary allocations (freed before their thread allocated again): 1000 of 1002 blocks (99.8%), top 2 lines
#1: src/app.rs:20: size=62.5 KiB, count=1000, average=64 B
tracealloc: top 2 lines live at exit
#1: src/app.rs:30: size=64 B, count=1, average=64 B
tracealloc: allocation sizes (blocks requested)
         64 B - 127 B          1001   99.9%  ##############################
  32.0 MiB - 64.0 MiB             1    0.1%  #
tracealloc: process resident 10.0 MiB, peak resident 60.0 MiB (the traced peak is 80% of it); tracer tables 1024 KiB
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn sections_without_figures_are_left_out() {
        let snapshot = Snapshot::from_traces(
            vec![Trace {
                size: 64,
                traceback: at(30),
            }],
            16,
            crate::CaptureMode::FramePointers,
        );
        let text = snapshot.summary(5).to_string();
        assert_eq!(
            text,
            "tracealloc: live at the snapshot 64 B in 1 blocks; allocated 64 B in 1 blocks\n\
             tracealloc: top 5 lines live at the snapshot\n\
             #1: src/app.rs:30: size=64 B, count=1, average=64 B\n"
        );
    }
}
