//! `compare_to`: what changed between two snapshots.

use super::statistics::{approx, write_average, write_key, GroupBy};
use super::{ByShown, Snapshot, Traceback};
use crate::format::format_size;
use std::collections::HashMap;
use std::fmt;

/// How one group changed between an old snapshot and a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatisticDiff {
    /// The group's key (see [`Statistic::traceback`](super::Statistic::traceback)).
    pub traceback: Traceback,
    /// Bytes in the new snapshot (0 for a group that vanished).
    pub size: usize,
    /// New size minus old size.
    pub size_diff: i64,
    /// Blocks in the new snapshot.
    pub count: usize,
    /// New count minus old count.
    pub count_diff: i64,
    /// The grouping that made this diff.
    pub group_by: GroupBy,
    /// Whether the figures are estimates (either snapshot was sampled); printed with `~`.
    pub estimated: bool,
}

/// tracemalloc's format: `src/parse.rs:6: size=45.6 KiB (+45.6 KiB), count=744 (+744), average=63 B`;
/// a vanished group: `src/parse.rs:7: size=0 B (-3898 KiB), count=0 (-99745)`.
impl fmt::Display for StatisticDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(f, &self.traceback, self.group_by)?;
        let t = approx(self.estimated);
        write!(
            f,
            ": size={t}{} ({t}{}), count={t}{} ({t}{:+})",
            format_size(self.size as f64, false),
            format_size(self.size_diff as f64, true),
            self.count,
            self.count_diff
        )?;
        write_average(f, self.size, self.count, self.estimated)
    }
}

impl Snapshot {
    /// Differences from `old` to `self`, grouped by `group_by`, as tracemalloc's
    /// `compare_to`: a group only in `self` has `size_diff == size`; a group only in `old` has
    /// size 0 and a negative diff. Sorted by |size_diff|, size, |count_diff|, count, all
    /// descending.
    pub fn compare_to(&self, old: &Snapshot, group_by: GroupBy) -> Vec<StatisticDiff> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        diff(
            self.statistics(group_by),
            old.statistics(group_by),
            group_by,
            self.sampled().is_some() || old.sampled().is_some(),
        )
    }

    /// [`compare_to`](Self::compare_to) as a printable top-`limit` report: the header
    /// "[ Top N differences ]", each group with its source line (its whole traceback for
    /// `GroupBy::Traceback`), then the net change of the groups not shown and of all.
    pub fn compare_report(&self, old: &Snapshot, group_by: GroupBy, limit: usize) -> DiffReport {
        DiffReport {
            diffs: self.compare_to(old, group_by),
            limit,
        }
    }

    /// As [`compare_to`](Self::compare_to), on cumulative statistics.
    pub fn compare_to_cumulative(&self, old: &Snapshot, group_by: GroupBy) -> Vec<StatisticDiff> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        diff(
            self.cumulative_statistics(group_by),
            old.cumulative_statistics(group_by),
            group_by,
            self.sampled().is_some() || old.sampled().is_some(),
        )
    }
}

/// The top of a comparison, printable (see [`Snapshot::compare_report`]).
#[derive(Clone, Debug)]
pub struct DiffReport {
    diffs: Vec<StatisticDiff>,
    limit: usize,
}

impl DiffReport {
    /// The differences shown (at most the limit).
    pub fn top(&self) -> &[StatisticDiff] {
        &self.diffs[..self.limit.min(self.diffs.len())]
    }

    /// The same report ranked by the change in block count (then in size) instead of size.
    pub fn by_count(mut self) -> DiffReport {
        self.diffs.sort_by(|a, b| {
            let key = |d: &StatisticDiff| {
                (
                    d.count_diff.unsigned_abs(),
                    d.count,
                    d.size_diff.unsigned_abs(),
                    d.size,
                )
            };
            key(b)
                .cmp(&key(a))
                .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
        });
        self
    }
}

impl fmt::Display for DiffReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = self.top();
        writeln!(f, "[ Top {} differences ]", top.len())?;
        for diff in top {
            writeln!(f, "{diff}")?;
            if diff.group_by == GroupBy::Traceback {
                super::statistics::write_traceback(f, &diff.traceback)?;
            } else {
                super::statistics::write_source(f, &diff.traceback)?;
            }
        }
        let t = approx(self.diffs.iter().any(|d| d.estimated));
        let sum = |diffs: &[StatisticDiff]| -> (i64, i64) {
            diffs.iter().fold((0i64, 0i64), |(s, c), d| {
                (
                    s.saturating_add(d.size_diff),
                    c.saturating_add(d.count_diff),
                )
            })
        };
        let rest = &self.diffs[top.len()..];
        if !rest.is_empty() {
            let (size, count) = sum(rest);
            writeln!(
                f,
                "{} other: {t}{} ({t}{count:+} blocks)",
                rest.len(),
                format_size(size as f64, true)
            )?;
        }
        let (size, count) = sum(&self.diffs);
        write!(
            f,
            "Total change: {t}{} ({t}{count:+} blocks)",
            format_size(size as f64, true)
        )
    }
}

/// `new - old`, saturated to `i64` (estimates from a sampled snapshot can be huge).
fn signed_difference(new: usize, old: usize) -> i64 {
    (new as i128 - old as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

// The slices a loaded traceback makes on demand are its only interior mutability; hashing and
// equality never read them.
#[allow(clippy::mutable_key_type)]
fn diff(
    new: Vec<super::Statistic>,
    old: Vec<super::Statistic>,
    group_by: GroupBy,
    estimated: bool,
) -> Vec<StatisticDiff> {
    // Keyed by the frames shown, as groups are (see `statistics`).
    let mut old: HashMap<ByShown, (Traceback, usize, usize)> = old
        .into_iter()
        .map(|s| (ByShown(s.traceback.clone()), (s.traceback, s.size, s.count)))
        .collect();
    let mut diffs: Vec<StatisticDiff> = new
        .into_iter()
        .map(|s| {
            let (old_size, old_count) = old
                .remove(&ByShown(s.traceback.clone()))
                .map_or((0, 0), |(_, size, count)| (size, count));
            StatisticDiff {
                size_diff: signed_difference(s.size, old_size),
                count_diff: signed_difference(s.count, old_count),
                traceback: s.traceback,
                size: s.size,
                count: s.count,
                group_by,
                estimated,
            }
        })
        .collect();
    diffs.extend(
        old.into_values()
            .map(|(traceback, size, count)| StatisticDiff {
                traceback,
                size: 0,
                size_diff: signed_difference(0, size),
                count: 0,
                count_diff: signed_difference(0, count),
                group_by,
                estimated,
            }),
    );
    diffs.sort_by(|a, b| {
        let key = |d: &StatisticDiff| {
            (
                d.size_diff.unsigned_abs(),
                d.size,
                d.count_diff.unsigned_abs(),
                d.count,
            )
        };
        key(b)
            .cmp(&key(a))
            .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
    });
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Frame, Trace};
    use crate::stack::CaptureMode;

    fn at(line: u32) -> Traceback {
        Traceback::from_frames(vec![Frame::new(
            "src/parse.rs".into(),
            line,
            "app::parse".into(),
        )])
    }

    fn snapshot(traces: &[(u32, usize)]) -> Snapshot {
        Snapshot::from_traces(
            traces
                .iter()
                .map(|&(line, size)| Trace {
                    size,
                    traceback: at(line),
                })
                .collect(),
            16,
            CaptureMode::FramePointers,
        )
    }

    /// `str(tracemalloc.StatisticDiff(...))` from CPython 3.11.7.
    #[test]
    fn display_matches_python() {
        let cases: &[(usize, i64, usize, i64, &str)] = &[
            (
                46694,
                46694,
                744,
                744,
                "src/parse.rs:6: size=45.6 KiB (+45.6 KiB), count=744 (+744), average=63 B",
            ),
            (
                0,
                -3991832,
                0,
                -99745,
                "src/parse.rs:6: size=0 B (-3898 KiB), count=0 (-99745)",
            ),
            (
                688,
                368,
                5,
                3,
                "src/parse.rs:6: size=688 B (+368 B), count=5 (+3), average=138 B",
            ),
            (
                1024,
                -2048,
                1,
                -2,
                "src/parse.rs:6: size=1024 B (-2048 B), count=1 (-2), average=1024 B",
            ),
        ];
        for &(size, size_diff, count, count_diff, expected) in cases {
            let d = StatisticDiff {
                traceback: at(6),
                size,
                size_diff,
                count,
                count_diff,
                group_by: GroupBy::Line,
                estimated: false,
            };
            assert_eq!(d.to_string(), expected);
        }
    }

    #[test]
    fn new_vanished_grown_and_shrunk_groups() {
        // old: line 1 (2 × 100 B), line 2 (1 × 5000 B), line 3 (4 × 10 B)
        // new: line 1 (3 × 100 B, grown), line 3 (1 × 10 B, shrunk), line 4 (1 × 700 B, new)
        let old = snapshot(&[
            (1, 100),
            (1, 100),
            (2, 5000),
            (3, 10),
            (3, 10),
            (3, 10),
            (3, 10),
        ]);
        let new = snapshot(&[(1, 100), (1, 100), (1, 100), (3, 10), (4, 700)]);
        let diffs = new.compare_to(&old, GroupBy::Line);
        let lines: Vec<String> = diffs.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "src/parse.rs:2: size=0 B (-5000 B), count=0 (-1)",
                "src/parse.rs:4: size=700 B (+700 B), count=1 (+1), average=700 B",
                "src/parse.rs:1: size=300 B (+100 B), count=3 (+1), average=100 B",
                "src/parse.rs:3: size=10 B (-30 B), count=1 (-3), average=10 B",
            ]
        );
        let vanished = &diffs[0];
        assert_eq!(
            (
                vanished.size,
                vanished.size_diff,
                vanished.count,
                vanished.count_diff
            ),
            (0, -5000, 0, -1)
        );
        let appeared = &diffs[1];
        assert_eq!(appeared.size_diff, appeared.size as i64);
        assert_eq!(appeared.count_diff, appeared.count as i64);
    }

    #[test]
    fn ties_sort_by_size_then_count() {
        let old = snapshot(&[(1, 50), (2, 50)]);
        let new = snapshot(&[(1, 100), (2, 150), (2, 50)]);
        let diffs = new.compare_to(&old, GroupBy::Line);
        // Line 2 grew by 150 B, line 1 by 50 B.
        assert_eq!(diffs[0].traceback.call_site().lineno, 2);
        assert_eq!(diffs[0].size_diff, 150);
        let old = snapshot(&[(1, 50), (2, 150)]);
        let new = snapshot(&[(1, 100), (2, 200)]);
        let diffs = new.compare_to(&old, GroupBy::Line);
        assert_eq!(
            diffs
                .iter()
                .map(|d| d.traceback.call_site().lineno)
                .collect::<Vec<_>>(),
            [2, 1],
            "equal |size_diff|: the bigger size first"
        );
    }
}
