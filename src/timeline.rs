//! Timelines, like memory_profiler's `mprof`: traced and resident memory sampled over time on a
//! background thread.

use crate::error::Error;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One point of a [`Timeline`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimelineSample {
    /// Time since [`Timeline::start`].
    pub at: Duration,
    /// Traced bytes live at that moment.
    pub current: usize,
    /// Peak traced bytes so far (since tracing started or the last `reset_peak`): a peak that
    /// came and went between two samples still shows here.
    pub peak: usize,
    /// Resident bytes of the process (Linux); `None` where it cannot be read.
    pub resident: Option<usize>,
    /// Bytes of the tracer's own tables at that moment ([`tracer_memory`](crate::tracer_memory)):
    /// what tracing costs in memory, beside what it explains.
    pub tracer: usize,
}

/// A running sampler: traced memory (current and peak) and resident memory, every
/// `interval`, on its own thread, until [`stop`](Timeline::stop).
///
/// ```no_run
/// # fn run_workload() {}
/// let timeline = tracealloc::Timeline::start(std::time::Duration::from_millis(10))?;
/// run_workload();
/// let series = timeline.stop();
/// series.write_csv("memory.csv")?;
/// # Ok::<(), tracealloc::Error>(())
/// ```
#[derive(Debug)]
pub struct Timeline {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<TimelineSample>>,
    interval: Duration,
}

impl Timeline {
    /// Starts sampling every `interval` (at least 1 ms). The sampler's own allocations are
    /// not traced. Fails with [`Error::NotInstalled`] when the tracer is not the global
    /// allocator (traced memory would read 0 and mean nothing) and with
    /// [`Error::InvalidInterval`] for an interval under 1 ms.
    pub fn start(interval: Duration) -> Result<Timeline, Error> {
        if interval < Duration::from_millis(1) {
            return Err(Error::InvalidInterval { interval });
        }
        crate::control::ensure_installed()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let handle = std::thread::Builder::new()
            .name("tracealloc-timeline".into())
            .spawn(move || {
                // Held for the thread's life: nothing this thread allocates is traced.
                let _quiet = crate::guard::Guard::enter();
                let mut samples = Vec::with_capacity(1024);
                loop {
                    let memory = crate::control::traced_memory();
                    samples.push(TimelineSample {
                        at: started.elapsed(),
                        current: memory.current,
                        peak: memory.peak,
                        resident: crate::environment::process_memory().map(|m| m.resident),
                        tracer: crate::control::tracer_memory(),
                    });
                    if flag.load(Ordering::Acquire) {
                        return samples;
                    }
                    std::thread::park_timeout(interval);
                }
            })
            .map_err(|source| Error::Io {
                path: "tracealloc-timeline thread".into(),
                source,
            })?;
        Ok(Timeline {
            stop,
            handle,
            interval,
        })
    }

    /// Takes a last sample, stops the thread and returns the series.
    pub fn stop(self) -> TimelineSeries {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        let samples = self.handle.join().unwrap_or_default();
        TimelineSeries {
            samples,
            interval: self.interval,
        }
    }
}

/// The samples of a stopped [`Timeline`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimelineSeries {
    /// The samples, oldest first; the last one was taken by `stop`.
    pub samples: Vec<TimelineSample>,
    /// The sampling interval asked for.
    pub interval: Duration,
}

impl TimelineSeries {
    /// The sample with the most traced memory live (the first such).
    pub fn highest(&self) -> Option<&TimelineSample> {
        self.samples
            .iter()
            .reduce(|best, s| if s.current > best.current { s } else { best })
    }

    /// CSV: a header, then `seconds,current_bytes,peak_bytes,resident_bytes,tracer_bytes` a
    /// sample (resident empty where unknown).
    pub fn to_csv(&self) -> String {
        let mut out =
            String::from("seconds,current_bytes,peak_bytes,resident_bytes,tracer_bytes\n");
        for s in &self.samples {
            let resident = s.resident.map(|r| r.to_string()).unwrap_or_default();
            out.push_str(&format!(
                "{:.6},{},{},{},{}\n",
                s.at.as_secs_f64(),
                s.current,
                s.peak,
                resident,
                s.tracer
            ));
        }
        out
    }

    /// Writes [`to_csv`](Self::to_csv) to `path`.
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        crate::snapshot::write_atomically(path.as_ref(), self.to_csv().as_bytes())
    }

    /// An SVG line chart: traced memory, resident memory and the tracer's own tables (MiB)
    /// over time (seconds), the highest traced sample marked and labelled.
    #[cfg(feature = "timeline")]
    pub fn svg(&self) -> Result<String, Error> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        use plotters::prelude::*;
        let fail = |e: &dyn std::fmt::Display| Error::Output {
            format: "timeline chart",
            reason: e.to_string(),
        };
        let Some(highest) = self.highest() else {
            return Err(Error::Empty {
                what: "the timeline has no samples".into(),
            });
        };
        const MIB: f64 = 1024.0 * 1024.0;
        let end = self.samples.last().map_or(0.0, |s| s.at.as_secs_f64());
        let top = self
            .samples
            .iter()
            .map(|s| s.current.max(s.resident.unwrap_or(0)).max(s.tracer))
            .max()
            .unwrap_or(0) as f64
            / MIB;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| fail(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .caption("tracealloc timeline", ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..end.max(1e-3) * 1.02, 0f64..top.max(1e-3) * 1.1)
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc("MiB")
                .draw()
                .map_err(|e| fail(&e))?;
            let traced = self
                .samples
                .iter()
                .map(|s| (s.at.as_secs_f64(), s.current as f64 / MIB));
            chart
                .draw_series(LineSeries::new(traced, BLUE.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label("traced heap")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
            if self.samples.iter().all(|s| s.resident.is_some()) {
                let resident = self
                    .samples
                    .iter()
                    .map(|s| (s.at.as_secs_f64(), s.resident.unwrap_or(0) as f64 / MIB));
                chart
                    .draw_series(LineSeries::new(resident, GREEN.stroke_width(2)))
                    .map_err(|e| fail(&e))?
                    .label("resident (RSS)")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
            }
            let tracer = self
                .samples
                .iter()
                .map(|s| (s.at.as_secs_f64(), s.tracer as f64 / MIB));
            let orange = RGBColor(230, 120, 0);
            chart
                .draw_series(LineSeries::new(tracer, orange.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label("tracer's tables")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
            let point = (highest.at.as_secs_f64(), highest.current as f64 / MIB);
            let label = format!(
                "peak {} at {:.2} s",
                crate::format::format_size(highest.current as f64, false),
                point.0
            );
            chart
                .draw_series([Circle::new(point, 5, RED.filled())])
                .map_err(|e| fail(&e))?;
            chart
                .draw_series([Text::new(label, point, ("sans-serif", 15).into_font())])
                .map_err(|e| fail(&e))?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| fail(&e))?;
            root.present().map_err(|e| fail(&e))?;
        }
        Ok(svg)
    }

    /// Writes [`svg`](Self::svg) to `path`.
    #[cfg(feature = "timeline")]
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        crate::snapshot::write_atomically(path.as_ref(), self.svg()?.as_bytes())
    }
}

/// `TRACEALLOC_TIMELINE=path` (`.csv`, or `.svg` with the feature `timeline`): a timeline
/// from the start of the program to its exit, with no code. `TRACEALLOC_TIMELINE_INTERVAL=ms`
/// sets the interval (default 10 ms, at least 1).
#[cfg(target_os = "linux")]
mod from_environment {
    use super::Timeline;
    use crate::stack::capture::say;
    use std::sync::Mutex;
    use std::time::Duration;

    /// The running timeline and where it goes at exit.
    static RUNNING: Mutex<Option<(Timeline, String)>> = Mutex::new(None);

    #[used]
    #[link_section = ".init_array"]
    static START: extern "C" fn() = start;

    extern "C" fn start() {
        crate::environment::start_thread_if_set(
            "TRACEALLOC_TIMELINE",
            run,
            "tracealloc: TRACEALLOC_TIMELINE: could not start the sampler's thread\n",
        );
    }

    /// The interval `TRACEALLOC_TIMELINE_INTERVAL` asks for, or why it is refused.
    pub(super) fn interval(value: Option<&str>) -> Result<Duration, String> {
        let Some(value) = value else {
            return Ok(Duration::from_millis(10));
        };
        match value.trim().parse::<u64>() {
            Ok(ms) if (1..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "TRACEALLOC_TIMELINE_INTERVAL: expected milliseconds from 1 to 3600000, got {value:?}"
            )),
        }
    }

    fn run() {
        let _quiet = crate::guard::Guard::enter();
        let path = std::env::var("TRACEALLOC_TIMELINE").unwrap_or_default();
        let interval = match interval(
            std::env::var("TRACEALLOC_TIMELINE_INTERVAL")
                .ok()
                .as_deref(),
        ) {
            Ok(interval) => interval,
            Err(e) => {
                eprintln!("tracealloc: ignoring TRACEALLOC_TIMELINE: {e}");
                return;
            }
        };
        if path.ends_with(".svg") && !cfg!(feature = "timeline") {
            eprintln!(
                "tracealloc: ignoring TRACEALLOC_TIMELINE={path}: an SVG chart needs tracealloc's \
                 feature `timeline` (or write a .csv)"
            );
            return;
        }
        let timeline = match Timeline::start(interval) {
            Ok(timeline) => timeline,
            Err(e) => {
                eprintln!("tracealloc: ignoring TRACEALLOC_TIMELINE: {e}");
                return;
            }
        };
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some((timeline, path));
        // SAFETY: registers a function with the C signature atexit expects; it never unwinds.
        if unsafe { libc::atexit(at_exit) } != 0 {
            say("tracealloc: TRACEALLOC_TIMELINE: could not register the exit handler\n");
        }
    }

    extern "C" fn at_exit() {
        // Never unwind into C.
        let _ = std::panic::catch_unwind(finish);
    }

    fn finish() {
        let _quiet = crate::guard::Guard::enter();
        let Some((timeline, path)) = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        let series = timeline.stop();
        let written = if path.ends_with(".svg") {
            #[cfg(feature = "timeline")]
            {
                series.write_svg(&path)
            }
            #[cfg(not(feature = "timeline"))]
            {
                Ok(())
            }
        } else {
            series.write_csv(&path)
        };
        if let Err(e) = written {
            eprintln!("tracealloc: TRACEALLOC_TIMELINE: {e}");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_interval_switch() {
        use super::from_environment::interval;
        assert_eq!(interval(None), Ok(Duration::from_millis(10)));
        assert_eq!(interval(Some("250")), Ok(Duration::from_millis(250)));
        for bad in ["0", "-5", "fast", "3600001", ""] {
            let e = interval(Some(bad)).unwrap_err();
            assert!(e.contains(&format!("got {bad:?}")), "{e}");
        }
    }
}
