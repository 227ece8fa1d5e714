//! Heap measurements for tests that run in parallel: `measure`, `Measurement`, `Scope`, size
//! limits, and the support behind the assertion macros.

use crate::control;
use crate::error::Error;
use crate::format::format_size;
use crate::guard::Guard;
use crate::scope;
use crate::snapshot::{self, Frame, Traceback};
use crate::stack::origin;
use crate::stack::StackId;
use crate::tracer;
use std::collections::HashMap;
use std::fmt;

/// A measurement scope: allocations made while it is current (on any thread that entered it)
/// are counted in it, and in the scopes around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    id: u32,
}

impl Scope {
    /// The scope the current thread is measuring into, if any: one it entered or runs in, or
    /// of a measurement it opened. Not an all-threads measurement that another thread opened:
    /// this thread's blocks are counted in that one without it, and carried into other work
    /// that scope would hide them from the measurements beside it, whose left-out work they are.
    pub fn current() -> Option<Scope> {
        match scope::own_id() {
            0 => None,
            id => Some(Scope { id }),
        }
    }

    /// Makes this scope current on this thread (for threads a measured test spawns) until the
    /// guard is dropped.
    pub fn enter(&self) -> ScopeGuard {
        ScopeGuard {
            previous: scope::set_current(self.id),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Sets the scope's peak to its current bytes, to measure the peak of what follows.
    pub fn reset_peak(&self) {
        scope::reset_peak(self.id);
    }

    /// Runs `f` in this scope on the current thread: for work a measured closure hands to
    /// threads it does not spawn itself, such as a pool's. With rayon:
    ///
    /// ```no_run
    /// # #[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
    /// # fn work(x: &u32) -> usize { vec![0u8; *x as usize].len() }
    /// # let items = vec![1u32, 2, 3];
    /// let (sum, m) = tracealloc::measure(|| {
    ///     let scope = tracealloc::Scope::current().unwrap();
    ///     items.iter().map(|x| scope.run(|| work(x))).sum::<usize>() // or par_iter()
    /// });
    /// ```
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.enter();
        f()
    }

    /// `fut`, polled in this scope on whichever thread polls it: for tasks a measured future
    /// spawns (`tokio::spawn(scope.wrap_future(task))`).
    pub fn wrap_future<F: std::future::Future>(&self, fut: F) -> InScope<F> {
        InScope { scope: *self, fut }
    }
}

/// A future polled in a measurement scope (see [`Scope::wrap_future`]).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct InScope<F> {
    scope: Scope,
    fut: F,
}

impl<F: std::future::Future> std::future::Future for InScope<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        // SAFETY: `fut` is never moved out of the pinned struct (structural pinning; `InScope`
        // has no `Drop` and is `Unpin` only when `F` is).
        let this = unsafe { self.get_unchecked_mut() };
        let _guard = this.scope.enter();
        // SAFETY: as above, `fut` stays where it is.
        unsafe { std::pin::Pin::new_unchecked(&mut this.fut) }.poll(cx)
    }
}

/// Restores the previous scope of the thread when dropped (see [`Scope::enter`]).
#[derive(Debug)]
#[must_use = "the scope is left when the guard is dropped"]
pub struct ScopeGuard {
    previous: u32,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        scope::set_current(self.previous);
    }
}

/// `std::thread::spawn`, with the new thread measuring into the current scope (if any).
pub fn spawn<F, T>(f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let scope = Scope::current();
    std::thread::spawn(move || {
        let _guard = scope.map(|s| s.enter());
        f()
    })
}

/// Bytes and blocks of one call site, with its traceback.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SiteUsage {
    /// Bytes.
    pub size: usize,
    /// Blocks (for [`Measurement::top_allocating`]: allocations made).
    pub blocks: usize,
    /// Where: `traceback.call_site()` is the line in your code.
    pub traceback: Traceback,
}

/// What a measured piece of code did to the heap. Only its own allocations count (and those of
/// threads that entered its scope), whatever other threads do meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    peak: usize,
    allocated: u64,
    allocations: u64,
    retained: usize,
    at_peak: Vec<SiteUsage>,
    retained_sites: Vec<SiteUsage>,
    allocating: Vec<SiteUsage>,
    lost: u64,
    others_unscoped: u64,
    /// (stack, allocations, bytes) of other threads' unscoped allocations while it ran.
    others: Vec<(StackId, u64, u64)>,
    /// The measured closure or `async` block (`crate::module::test_name::{{closure}}`), "" if
    /// unknown.
    measured_in: &'static str,
    /// Every stack still live at the end (stack, bytes, blocks).
    retained_stacks: Vec<(StackId, usize, usize)>,
}

/// The name of a closure or `async` block of type `F` as symbols show it
/// (`my_crate::tests::parse_is_small::{{closure}}`); "" for a named function's type.
fn measured_in<F>() -> &'static str {
    let name = std::any::type_name::<F>();
    if name.ends_with("::{{closure}}") {
        name
    } else {
        ""
    }
}

/// Whether this process runs one test at a time, so that every other thread's work is the
/// measured test's: cargo nextest (a process per test) or `--test-threads=1`.
fn one_test_at_a_time() -> bool {
    std::env::var_os("NEXTEST_RUN_ID").is_some()
        || std::env::var("RUST_TEST_THREADS").is_ok_and(|n| n.trim() == "1")
        || std::env::args().any(|a| a == "--test-threads=1")
}

impl Measurement {
    /// Allocations other threads made outside every scope while this measurement ran that are
    /// this code's own work, handed to a thread pool (rayon's `par_iter`), a runtime
    /// (`tokio::spawn`) or a thread (`std::thread::spawn`) without the scope, and so missing
    /// from the figures above. The assertion macros fail when there is any. Up to 10 call
    /// sites, most allocations first (`blocks`: allocations, `size`: their bytes).
    ///
    /// An allocation of another thread is this code's work when its stack runs a closure written
    /// inside the measured closure (`my_test::{{closure}}::{{closure}}` on a pool's worker, for
    /// `measure(|| items.par_iter().map(|x| …))`), or a function of the program that the
    /// measured code itself called (seen in the measurement's own call sites). When the process runs one test at a time (cargo nextest,
    /// `--test-threads=1`), any stack that runs the program's own code on a thread that is not
    /// libtest's counts too. Threads running libtest's own code (other tests' bodies) never
    /// count, so neighbours in a parallel `cargo test` do not make a measurement fail.
    pub fn escaped_work(&self) -> Vec<SiteUsage> {
        if self.others.is_empty() {
            return Vec::new();
        }
        // The tracer's own work: untraced.
        let _quiet = Guard::enter();
        let ours = self.own_functions();
        let alone = one_test_at_a_time();
        let mut by_line: HashMap<Frame, SiteUsage> = HashMap::new();
        for &(stack, allocations, bytes) in &self.others {
            let tb = snapshot::traceback_of(stack, tracer::limit(), tracer::capture_cap());
            let frames = tb.all();
            if frames.iter().any(|f| f.function.starts_with("test::")) {
                continue;
            }
            let of_ours = frames.iter().any(|f| {
                // Closures as the measured closure's type name spells them.
                let function = origin::unnumbered_closures(&f.function);
                // Nested in the measured closure, or the measured closure's own name: that runs
                // on the measuring thread only, so on another thread the name is a closure the
                // compiler merged with one written inside it (identical closures become one
                // function, named after one of them) or one legacy symbols spell the same.
                let nested = !self.measured_in.is_empty()
                    && function
                        .strip_prefix(self.measured_in)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
                nested
                    || ours.iter().any(|name| {
                        function
                            .strip_prefix(name.as_str())
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
                    })
            });
            let own = || {
                frames
                    .iter()
                    .any(|f| origin::of_frame(f) == origin::Kind::Own)
            };
            if !(of_ours || alone && own()) {
                continue;
            }
            let key = Frame {
                inlined: false,
                ..tb.call_site().clone()
            };
            let entry = by_line.entry(key).or_insert(SiteUsage {
                size: 0,
                blocks: 0,
                traceback: tb,
            });
            entry.size += bytes as usize;
            entry.blocks += allocations as usize;
        }
        let mut sites: Vec<SiteUsage> = by_line.into_values().collect();
        sites.sort_by(|a, b| {
            (b.blocks, b.size)
                .cmp(&(a.blocks, a.size))
                .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
        });
        sites.truncate(10);
        sites
    }

    /// The program's functions the measured code called (the frames of its own call sites
    /// inside the measured closure), closure suffixes cut.
    fn own_functions(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let sites = self
            .at_peak
            .iter()
            .chain(&self.retained_sites)
            .chain(&self.allocating);
        for site in sites {
            let frames = site.traceback.all();
            // Innermost first: the frames called from inside the measured closure come before it.
            let inside = if self.measured_in.is_empty() {
                0
            } else {
                frames
                    .iter()
                    .position(|f| origin::unnumbered_closures(&f.function) == self.measured_in)
                    .unwrap_or(0)
            };
            for f in frames.iter().take(inside) {
                if origin::of_frame(f) != origin::Kind::Own {
                    continue;
                }
                let function = origin::unnumbered_closures(&f.function);
                let name = function
                    .find("::{{closure}}")
                    .map_or(&*function, |at| &function[..at]);
                let measured = self.measured_in.strip_suffix("::{{closure}}");
                if !name.is_empty() && Some(name) != measured && !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
        names
    }

    /// Allocations other threads made outside any measurement scope while this one ran. Not
    /// counted in the figures above: they may be neighbours (another test, a logger), or work
    /// this code handed to threads it did not carry its scope to (a pool's workers: use
    /// [`Scope::run`], [`measure_future`] and [`Scope::wrap_future`], or [`spawn`]).
    pub fn others_unscoped_allocations(&self) -> u64 {
        self.others_unscoped
    }

    /// Most bytes of the scope's blocks live at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Bytes allocated in all (reallocations count their new size).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Number of allocations (and reallocations).
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Bytes allocated in the scope and still live at its end (the closure's result included).
    pub fn retained(&self) -> usize {
        self.retained
    }

    /// Up to 10 call sites live at the peak, biggest first.
    pub fn top_at_peak(&self) -> &[SiteUsage] {
        &self.at_peak
    }

    /// Up to 10 call sites still live at the end, biggest first.
    pub fn top_retained(&self) -> &[SiteUsage] {
        &self.retained_sites
    }

    /// Up to 10 call sites by number of allocations made (`blocks`), most first.
    pub fn top_allocating(&self) -> &[SiteUsage] {
        &self.allocating
    }

    /// Every distinct call stack still holding memory at the end, largest first (not grouped by
    /// line, and not cut at 10): what a per-stack leak check
    /// ([`assert_leaks_below!`](crate::assert_leaks_below)) looks at.
    pub fn leaks(&self) -> Vec<SiteUsage> {
        let _quiet = Guard::enter();
        let mut leaks: Vec<SiteUsage> = self
            .retained_stacks
            .iter()
            .map(|&(stack, bytes, blocks)| SiteUsage {
                size: bytes,
                blocks,
                traceback: snapshot::traceback_of(stack, tracer::limit(), tracer::capture_cap()),
            })
            .collect();
        leaks.sort_by(|a, b| {
            (b.size, b.blocks)
                .cmp(&(a.size, a.blocks))
                .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
        });
        leaks
    }
}

/// A short report: the figures, then the sites live at the peak.
impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tracealloc: peak {}, {} allocated in {} allocation{}, {} retained",
            size(self.peak),
            size(self.allocated as usize),
            self.allocations,
            plural(self.allocations as usize),
            size(self.retained)
        )?;
        if self.lost > 0 {
            // Only when the tracer ran out of memory for its own site table, or a signal
            // handler's allocation could not wait for the scopes' lock.
            write!(
                f,
                " ({} site updates lost: out of memory, or in a signal handler)",
                self.lost
            )?;
        }
        if !self.at_peak.is_empty() {
            writeln!(f)?;
            write!(f, "  live at the peak:")?;
            write_sites(f, &self.at_peak, "block")?;
        }
        write_others(f, self.others_unscoped)
    }
}

/// The note on other threads' unscoped allocations, when there were any.
fn write_others(f: &mut fmt::Formatter<'_>, n: u64) -> fmt::Result {
    if n == 0 {
        return Ok(());
    }
    write!(
        f,
        "\n  note: other threads made {n} allocation{} outside any measurement scope meanwhile, \
         not counted here: other tests or threads running beside this code, or work it handed \
         without its scope to threads it did not spawn (a thread pool, an async runtime's \
         workers); for such work, carry the scope there with Scope::run, Scope::wrap_future \
         or measure_future",
        plural(n as usize)
    )
}

/// A size as tracemalloc rounds it, with the exact count beside it once they differ
/// (`12.3 KiB (12,593 B)`).
fn size(bytes: usize) -> String {
    let rounded = format_size(bytes as f64, false);
    if rounded.ends_with(" B") {
        rounded
    } else {
        let digits = bytes.to_string();
        let mut exact = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                exact.push(',');
            }
            exact.push(c);
        }
        format!("{rounded} ({exact} B)")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn write_sites(f: &mut fmt::Formatter<'_>, sites: &[SiteUsage], unit: &str) -> fmt::Result {
    for site in sites {
        let head = format!(
            "{} in {} {unit}{}",
            size(site.size),
            site.blocks,
            plural(site.blocks)
        );
        write_site(f, &head, &site.traceback)?;
    }
    if sites
        .iter()
        .any(|s| origin::known_path(s.traceback.call_site()).is_none())
    {
        write!(
            f,
            "\n  note: some sites have no line information: the test binary was built without \
             debug info (a profile with `debug = false` or `strip`); `debug = \"line-tables-only\"` \
             is enough"
        )?;
    }
    Ok(())
}

/// `  {head} at file:line in function`, then up to two callers in the program's own code.
fn write_site(f: &mut fmt::Formatter<'_>, head: &str, traceback: &Traceback) -> fmt::Result {
    let at = traceback.call_site();
    write!(f, "\n  {head} at {at} in {}", at.function)?;
    let mut last = None;
    for caller in callers(traceback) {
        write!(f, "\n      {caller} in {}", caller.function)?;
        last = Some(caller);
    }
    // The outermost frame of the program's own code (the test), when deeper than that; not
    // the closure `#[test]` wraps the test function in, but the function.
    let own: Vec<&Frame> = traceback
        .shown()
        .iter()
        .skip(1)
        .filter(|f| origin::of_frame(f) == origin::Kind::Own)
        .collect();
    let outermost = match own.as_slice() {
        [.., inner, outer]
            if origin::unnumbered_closures(&outer.function).strip_suffix("::{{closure}}")
                == Some(&*origin::unnumbered_closures(&inner.function)) =>
        {
            Some(*inner)
        }
        [.., outer] => Some(*outer),
        [] => None,
    };
    if let (Some(last), Some(outer)) = (last, outermost) {
        if !std::ptr::eq(last, outer) {
            write!(f, "\n      ...\n      {outer} in {}", outer.function)?;
        }
    }
    Ok(())
}

/// Up to two callers of the call site in the program's own code.
fn callers(traceback: &Traceback) -> impl Iterator<Item = &Frame> {
    traceback
        .shown()
        .iter()
        .skip(1)
        .filter(|f| origin::of_frame(f) == origin::Kind::Own)
        .take(2)
}

/// Runs `f` in a new measurement scope and returns its result with what it did to the heap.
///
/// # Panics
/// When the tracer is not the global allocator or is stopped (see [`try_measure`]).
#[track_caller]
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Measurement) {
    match try_measure(f) {
        Ok(result) => result,
        Err(e) => panic!("tracealloc::measure: {e}"),
    }
}

/// [`measure`], returning an error instead of panicking when nothing can be measured
/// (`Error::NotInstalled`, `Error::NotTracing`, or `Error::Sampled`: heap assertions need every
/// allocation, and a sampling tracer records few).
pub fn try_measure<R, F: FnOnce() -> R>(f: F) -> Result<(R, Measurement), Error> {
    let open = Open::new(scope::own_id(), Some(measured_in::<F>()))?;
    let result = {
        let _inside = Inside::enter(open.id);
        f()
    };
    Ok((result, open.finish()?))
}

/// Runs `f` and counts what **every thread** allocates while it runs, as pytest-memray does:
/// for code whose work goes to threads it does not control (a global pool, a runtime, a
/// library's helper threads), where [`measure`] would count only the threads that carry its
/// scope. Threads in a measurement scope of their own (another `measure`) keep theirs.
///
/// Exact under `cargo nextest` (a process per test, the harness's main thread waiting); under
/// plain `cargo test` the other tests running at the same time count too: run such a test
/// with `--test-threads=1` or under nextest. One all-threads measurement runs at a time: a
/// second one, on another thread, waits for the first to end.
///
/// # Panics
/// Where [`try_measure_all_threads`] returns an error.
#[track_caller]
pub fn measure_all_threads<R>(f: impl FnOnce() -> R) -> (R, Measurement) {
    match try_measure_all_threads(f) {
        Ok(result) => result,
        Err(e) => panic!("tracealloc::measure_all_threads: {e}"),
    }
}

/// [`measure_all_threads`], returning an error instead of panicking: those of
/// [`try_measure`], and [`Error::AllThreadsNested`] inside another all-threads measurement on
/// the same thread.
pub fn try_measure_all_threads<R>(f: impl FnOnce() -> R) -> Result<(R, Measurement), Error> {
    use std::cell::Cell;
    use std::sync::Mutex;
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    thread_local! {
        static INSIDE: Cell<bool> = const { Cell::new(false) };
    }
    if INSIDE.with(Cell::get) {
        return Err(Error::AllThreadsNested);
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let open = Open::new(scope::own_id(), None)?;
    /// Ends the all-threads routing, also when `f` panics.
    struct Routing;
    impl Drop for Routing {
        fn drop(&mut self) {
            scope::set_all_threads(0);
            INSIDE.with(|c| c.set(false));
        }
    }
    let result = {
        INSIDE.with(|c| c.set(true));
        scope::set_all_threads(open.id);
        let _routing = Routing;
        let _inside = Inside::enter(open.id);
        f()
    };
    let mut m = open.finish()?;
    // Every thread in no scope of its own allocated into this measurement: none worked outside
    // it. (The blocks it took count as unscoped work for the other measurements open meanwhile.)
    m.others_unscoped = 0;
    Ok((result, m))
}

/// An open measurement scope and what the process looked like when it opened; closed when
/// dropped (also when the measured code panics).
struct Open {
    id: u32,
    /// The function the measured closure or future was written in ("" when not watching).
    measured_in: &'static str,
    skipped_before: u64,
    clears_before: u64,
    unscoped_before: u64,
}

impl Open {
    /// A new scope in `parent`. With `watch` (the function the measured code was written in),
    /// it keeps the stacks of other threads' allocations made outside every scope while it is
    /// open.
    fn new(parent: u32, watch: Option<&'static str>) -> Result<Open, Error> {
        control::ensure_tracing()?;
        if let Some(mean) = control::sampling() {
            return Err(Error::Sampled { mean });
        }
        // Before the scope opens: what other threads allocate meanwhile falls in the figure.
        let unscoped_before = unscoped_allocations(Reading::Opening);
        let id = scope::open_watching(parent, watch.is_some()).ok_or(Error::ScopeUnavailable)?;
        Ok(Open {
            id,
            measured_in: watch.unwrap_or(""),
            skipped_before: scope::skipped_updates(),
            clears_before: crate::counters::clears(),
            unscoped_before,
        })
    }

    /// The figures, or the reason they are wrong.
    fn finish(self) -> Result<Measurement, Error> {
        let _guard = Guard::enter();
        if crate::counters::clears() != self.clears_before {
            // The table's records of this scope's blocks are gone: their frees will not be
            // seen, so the figures would be wrong.
            return Err(Error::MeasurementDisturbed);
        }
        let mut figures = scope::figures(self.id).unwrap_or_default();
        let routed = figures.routed;
        // Updates a signal handler had to skip (any scope's: they cannot be told apart).
        figures.lost += scope::skipped_updates() - self.skipped_before;
        let mut m = Measurement::from_figures(figures);
        m.measured_in = self.measured_in;
        // The blocks this scope saw other threads allocate outside every scope are a floor
        // (the totals are read shard by shard while other threads allocate).
        let seen: u64 = m
            .others
            .iter()
            .map(|&(_, allocations, _)| allocations)
            .sum();
        // Blocks an all-threads measurement inside this one took are in the unscoped total
        // and in this scope's figures: not left out.
        m.others_unscoped = unscoped_allocations(Reading::Closing)
            .saturating_sub(self.unscoped_before)
            .saturating_sub(routed)
            .max(seen);
        Ok(m)
    }
}

/// When [`unscoped_allocations`] is read: the order of its two reads makes a block another
/// thread allocates in a scope during the reads err towards more unscoped blocks in the
/// measurement (one whose two counts straddle the opening reads can still make it one fewer:
/// the blocks seen are a floor).
#[derive(Clone, Copy)]
enum Reading {
    Opening,
    Closing,
}

/// Blocks recorded outside every scope since the totals were last reset. A block allocated in a
/// scope enters the table's totals, then the scoped count: at opening the totals are read
/// first, at closing the scoped count.
fn unscoped_allocations(when: Reading) -> u64 {
    let (total, scoped) = match when {
        Reading::Opening => {
            let total = crate::table::totals().1;
            (total, scope::scoped_allocations())
        }
        Reading::Closing => {
            let scoped = scope::scoped_allocations();
            (crate::table::totals().1, scoped)
        }
    };
    total.saturating_sub(scoped)
}

impl Drop for Open {
    fn drop(&mut self) {
        scope::close(self.id);
    }
}

/// The current thread inside a scope until dropped.
struct Inside {
    previous: u32,
}

impl Inside {
    fn enter(id: u32) -> Inside {
        Inside {
            previous: scope::set_current(id),
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        scope::set_current(self.previous);
    }
}

/// Measures `fut` as [`measure`] measures a closure: what it allocates while it is polled, on
/// whichever thread polls it (a multi-threaded runtime moves tasks between workers), counts;
/// other tasks on the same workers do not. Tasks it spawns count when they carry its scope
/// ([`Scope::wrap_future`]):
///
/// ```no_run
/// # #[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
/// # async fn handle() -> usize { vec![0u8; 100].len() }
/// # async fn test() {
/// let (n, m) = tracealloc::measure_future(async { handle().await }).await;
/// assert!(m.allocated() >= 100);
/// # }
/// ```
///
/// The scope opens at the first poll, inside the scope current where the future was made.
/// Polling panics where [`measure`] would ([`try_measure_future`] gives the error instead).
pub fn measure_future<F: std::future::Future>(fut: F) -> MeasureFuture<F> {
    MeasureFuture {
        inner: try_measure_future(fut),
    }
}

/// [`measure_future`], answering an error instead of panicking.
pub fn try_measure_future<F: std::future::Future>(fut: F) -> TryMeasureFuture<F> {
    TryMeasureFuture {
        parent: scope::own_id(),
        open: None,
        fut,
    }
}

/// The future of [`measure_future`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct MeasureFuture<F> {
    inner: TryMeasureFuture<F>,
}

impl<F: std::future::Future> std::future::Future for MeasureFuture<F> {
    type Output = (F::Output, Measurement);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // SAFETY: structural pinning of `inner`, never moved.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        match inner.poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(done)) => std::task::Poll::Ready(done),
            std::task::Poll::Ready(Err(e)) => panic!("tracealloc::measure_future: {e}"),
        }
    }
}

/// The future of [`try_measure_future`].
#[must_use = "futures do nothing unless polled"]
pub struct TryMeasureFuture<F> {
    parent: u32,
    open: Option<Open>,
    fut: F,
}

impl<F> fmt::Debug for TryMeasureFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryMeasureFuture")
            .field("scope", &self.open.as_ref().map(|o| o.id))
            .finish_non_exhaustive()
    }
}

impl<F: std::future::Future> std::future::Future for TryMeasureFuture<F> {
    type Output = Result<(F::Output, Measurement), Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned and never moved; `open` is not pinned (it is
        // `Unpin` and only replaced, never borrowed across a poll).
        let this = unsafe { self.get_unchecked_mut() };
        let id = match &this.open {
            Some(open) => open.id,
            None => match Open::new(this.parent, Some(measured_in::<F>())) {
                Ok(open) => this.open.insert(open).id,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            },
        };
        let polled = {
            let _inside = Inside::enter(id);
            // SAFETY: as above.
            unsafe { std::pin::Pin::new_unchecked(&mut this.fut) }.poll(cx)
        };
        match polled {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(value) => {
                let open = this.open.take().expect("opened above");
                std::task::Poll::Ready(open.finish().map(|m| (value, m)))
            }
        }
    }
}

impl Measurement {
    fn from_figures(mut figures: scope::Figures) -> Measurement {
        let mut tracebacks: HashMap<StackId, Traceback> = HashMap::new();
        let mut traceback = |stack: StackId| {
            tracebacks
                .entry(stack)
                .or_insert_with(|| {
                    snapshot::traceback_of(stack, tracer::limit(), tracer::capture_cap())
                })
                .clone()
        };
        // libtest's output capture: under plain `cargo test`, `println!` appends to a buffer of
        // the harness's (not under `--nocapture` or nextest, where it goes to the terminal).
        // Those blocks are the harness's, not the code's: leaving them out gives the same
        // verdict in every harness.
        let capture: Vec<StackId> = figures
            .allocation_sites
            .iter()
            .map(|s| s.0)
            .chain(figures.retained_sites.iter().map(|s| s.0))
            .chain(figures.at_peak.iter().map(|s| s.0))
            .filter(|&stack| {
                traceback(stack)
                    .all()
                    .iter()
                    .any(|f| f.function.ends_with("print_to_buffer_if_capture_used"))
            })
            .collect();
        if !capture.is_empty() {
            let of_capture = |stack: &StackId| capture.contains(stack);
            for &(stack, n, bytes) in &figures.allocation_sites {
                if of_capture(&stack) {
                    figures.allocations = figures.allocations.saturating_sub(n);
                    figures.allocated = figures.allocated.saturating_sub(bytes);
                }
            }
            for &(stack, bytes, _) in &figures.retained_sites {
                if of_capture(&stack) {
                    figures.retained = figures.retained.saturating_sub(bytes);
                }
            }
            for &(stack, bytes, _) in &figures.at_peak {
                if of_capture(&stack) {
                    figures.peak = figures.peak.saturating_sub(bytes);
                }
            }
            figures.allocation_sites.retain(|s| !of_capture(&s.0));
            figures.retained_sites.retain(|s| !of_capture(&s.0));
            figures.at_peak.retain(|s| !of_capture(&s.0));
        }
        let mut group = |sites: Vec<(StackId, usize, usize)>| -> Vec<SiteUsage> {
            // Several stacks can share a call site line: report per line.
            let mut by_line: HashMap<Frame, SiteUsage> = HashMap::new();
            for (stack, bytes, blocks) in sites {
                let tb = traceback(stack);
                let key = Frame {
                    function: tb.call_site().function.clone(),
                    inlined: false,
                    ..tb.call_site().clone()
                };
                let entry = by_line.entry(key).or_insert(SiteUsage {
                    size: 0,
                    blocks: 0,
                    traceback: tb,
                });
                entry.size += bytes;
                entry.blocks += blocks;
            }
            let mut sites: Vec<SiteUsage> = by_line.into_values().collect();
            sites.sort_by(|a, b| {
                (b.size, b.blocks)
                    .cmp(&(a.size, a.blocks))
                    .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
            });
            sites.truncate(10);
            sites
        };
        let at_peak = group(figures.at_peak);
        let retained_stacks = figures.retained_sites.clone();
        let retained_sites = group(figures.retained_sites);
        let mut allocating = group(
            figures
                .allocation_sites
                .into_iter()
                .map(|(stack, n, _)| (stack, 0, n as usize))
                .collect(),
        );
        allocating.sort_by_key(|s| std::cmp::Reverse(s.blocks));
        Measurement {
            peak: figures.peak,
            allocated: figures.allocated,
            allocations: figures.allocations,
            retained: figures.retained,
            at_peak,
            retained_sites,
            allocating,
            lost: figures.lost,
            others_unscoped: 0,
            others: figures.others,
            measured_in: "",
            retained_stacks,
        }
    }
}

/// A size limit: a byte count, or a string such as `"64 KiB"`, `"1.5 MB"`, `"24 MiB"`,
/// `"512 B"` (KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024).
pub trait Limit {
    /// The limit in bytes.
    fn to_bytes(&self) -> Result<usize, Error>;
}

impl Limit for &str {
    fn to_bytes(&self) -> Result<usize, Error> {
        parse_size(self)
    }
}

impl Limit for String {
    fn to_bytes(&self) -> Result<usize, Error> {
        parse_size(self)
    }
}

macro_rules! integer_limit {
    ($($t:ty),*) => {$(
        impl Limit for $t {
            fn to_bytes(&self) -> Result<usize, Error> {
                usize::try_from(*self).map_err(|_| Error::InvalidLimit {
                    limit: self.to_string(),
                    reason: "a limit must be a number of bytes from 0 to usize::MAX".into(),
                })
            }
        }
    )*};
}
integer_limit!(usize, u64, u32, i32, i64);

/// Parses a size: `"1024"`, `"512 B"`, `"64 KiB"`, `"1.5 MB"`, `"24 MiB"`, `"2GiB"`. KB, MB, GB
/// and TB are powers of 1000; KiB, MiB, GiB and TiB powers of 1024. Anything else is an
/// [`Error::InvalidLimit`] that names the string.
pub fn parse_size(text: &str) -> Result<usize, Error> {
    let invalid = |reason: String| Error::InvalidLimit {
        limit: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(invalid("a size cannot be negative".into()));
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim_start();
    let multiplier: u128 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(invalid(format!(
                "unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)"
            )))
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(invalid("expected a number such as 64 or 1.5".into()));
    }
    if whole.len() > 30 || fraction.len() > 18 {
        return Err(invalid("too many digits".into()));
    }
    let parse = |s: &str| -> u128 { s.parse().unwrap_or(0) };
    let scale = 10u128.pow(fraction.len() as u32);
    let exact = parse(whole) * scale * multiplier + parse(fraction) * multiplier;
    if exact % scale != 0 {
        return Err(invalid("not a whole number of bytes".into()));
    }
    usize::try_from(exact / scale).map_err(|_| invalid("larger than usize::MAX bytes".into()))
}

/// What the assertion macros call; not a public API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// The frame-pointer walk, for benchmarks: like [`unwind_tables`].
    #[inline(never)]
    pub fn capture_frame_pointers(buf: &mut [usize]) -> usize {
        // SAFETY: MaybeUninit<usize> has usize's layout; the walk only writes to it.
        let slots = unsafe { &mut *(buf as *mut [usize] as *mut [std::mem::MaybeUninit<usize>]) };
        let n = crate::stack::capture::fp_walk(slots);
        std::hint::black_box(n)
    }

    /// `backtrace::trace_unsynchronized`, for benchmarks: like [`unwind_tables`].
    #[inline(never)]
    pub fn capture_backtrace(buf: &mut [usize]) -> usize {
        // SAFETY: MaybeUninit<usize> has usize's layout; the unwinder only writes to it.
        let slots = unsafe { &mut *(buf as *mut [usize] as *mut [std::mem::MaybeUninit<usize>]) };
        let n = crate::stack::capture::unwind_for_benches(slots);
        std::hint::black_box(n)
    }

    /// Sets how stacks are captured from now on, skipping the self-test: for benchmarks that
    /// compare the ways in one process. `Undecided` is ignored. Only use a way that works in
    /// this build.
    pub fn force_capture_mode(mode: crate::CaptureMode) {
        crate::stack::capture::force(mode);
    }

    /// The unwind-rule cache, for the test comparing it with `backtrace::trace`: fills `buf`
    /// with return addresses, innermost first (the first is the return into the caller), and
    /// says whether the stack ended cleanly. `None` where the cache does not exist (it is
    /// x86_64 Linux only). Allocation-free.
    #[inline(never)]
    pub fn unwind_tables(buf: &mut [usize]) -> Option<(usize, bool)> {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // SAFETY: MaybeUninit<usize> has usize's layout; the unwinder only writes to it.
            let slots =
                unsafe { &mut *(buf as *mut [usize] as *mut [std::mem::MaybeUninit<usize>]) };
            let top = crate::stack::capture::current_stack_top();
            let result = crate::stack::cfi::unwind(slots, top);
            std::hint::black_box(&result);
            Some(result)
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            let _ = buf;
            None
        }
    }

    #[track_caller]
    fn fail(message: Option<String>, report: String) -> ! {
        // The first failing assertion of a process built without optimizing tracealloc says so
        // (why the tests ran slowly), once.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let unoptimized =
            crate::build::UNOPTIMIZED && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed);
        let report = if unoptimized {
            format!("{report}\n  note: {}", crate::build::UNOPTIMIZED_NOTE)
        } else {
            report
        };
        match message {
            Some(m) => panic!("{m}\n{report}"),
            None => panic!("{report}"),
        }
    }

    #[track_caller]
    fn limit_bytes(limit: impl Limit) -> usize {
        // A `match`, not `unwrap_or_else`: a closure would lose the caller's location.
        match limit.to_bytes() {
            Ok(bytes) => bytes,
            Err(e) => panic!("tracealloc: {e}"),
        }
    }

    /// `measure`, failing at the caller's line.
    #[track_caller]
    fn measured<R>(f: impl FnOnce() -> R) -> (R, Measurement) {
        match try_measure(f) {
            Ok(done) => done,
            Err(e) => panic!("tracealloc: {e}"),
        }
    }

    /// An allocation count limit from any integer type, refusing negative ones (a cast would
    /// make `-1` the largest count and the assertion could never fail).
    #[track_caller]
    pub fn count_limit<T>(max: T) -> u64
    where
        T: TryInto<u64> + Copy + fmt::Display,
    {
        match max.try_into() {
            Ok(n) => n,
            Err(_) => panic!("tracealloc: the allocation limit {max} is not a count (0 or more)"),
        }
    }

    #[track_caller]
    pub fn peak_below<R>(limit: impl Limit, f: impl FnOnce() -> R, message: Option<String>) -> R {
        let limit = limit_bytes(limit);
        let (result, m) = measured(f);
        if m.peak >= limit {
            fail(message, PeakReport { m: &m, limit }.to_string());
        }
        no_escaped_work(&m, message);
        result
    }

    #[track_caller]
    pub fn no_leaks<R>(f: impl FnOnce() -> R, message: Option<String>) -> R {
        let (result, m) = measured(f);
        if m.retained > 0 {
            fail(message, LeakReport(&m).to_string());
        }
        no_escaped_work(&m, message);
        result
    }

    #[track_caller]
    pub fn allocations_at_most<R>(max: u64, f: impl FnOnce() -> R, message: Option<String>) -> R {
        let (result, m) = measured(f);
        if m.allocations > max {
            fail(message, AllocationReport { m: &m, max }.to_string());
        }
        no_escaped_work(&m, message);
        result
    }

    impl Measurement {
        /// Fails when a call stack made in the scope still holds `limit` bytes or more at the
        /// end (per distinct stack, as pytest-memray's `limit_leaks`), as
        /// [`assert_leaks_below!`](crate::assert_leaks_below) does (escaped work included).
        #[track_caller]
        pub fn assert_leaks_below(&self, limit: impl Limit) {
            let limit = limit_bytes(limit);
            check_leaks(self, limit, &|_| true, None);
        }

        /// [`assert_leaks_below`](Self::assert_leaks_below) for the stacks `consider` keeps:
        /// leave out known stacks (a runtime's lazy thread-local, a pool's teardown) with
        /// `|tb| !tb.mentions("tokio::runtime")`.
        #[track_caller]
        pub fn assert_leaks_below_where(
            &self,
            limit: impl Limit,
            consider: impl Fn(&Traceback) -> bool,
        ) {
            let limit = limit_bytes(limit);
            check_leaks(self, limit, &consider, None);
        }

        /// Fails (panics at the caller's line, with the sites at the peak) unless the peak stayed
        /// strictly below `limit` (bytes, or a string such as `"64 KiB"`), as
        /// [`assert_peak_below!`](crate::assert_peak_below) does: the form for a measurement
        /// taken otherwise, such as `measure_future(…).await`. It also fails when other threads
        /// ran this code's work outside the scope meanwhile ([`Measurement::escaped_work`]).
        #[track_caller]
        pub fn assert_peak_below(&self, limit: impl Limit) {
            let limit = limit_bytes(limit);
            if self.peak >= limit {
                fail(None, PeakReport { m: self, limit }.to_string());
            }
            no_escaped_work(self, None);
        }

        /// Fails unless nothing made in the scope is still live, as
        /// [`assert_no_leaks!`](crate::assert_no_leaks) does (escaped work included).
        #[track_caller]
        pub fn assert_no_leaks(&self) {
            if self.retained > 0 {
                fail(None, LeakReport(self).to_string());
            }
            no_escaped_work(self, None);
        }

        /// Fails when the scope made more than `max` allocations, as
        /// [`assert_allocations!`](crate::assert_allocations) does (a negative `max` is refused;
        /// escaped work included). `assert_allocations_at_most(0)` is `assert_no_alloc!`'s check.
        #[track_caller]
        pub fn assert_allocations_at_most<T>(&self, max: T)
        where
            T: TryInto<u64> + Copy + fmt::Display,
        {
            let max = count_limit(max);
            if self.allocations > max {
                fail(None, AllocationReport { m: self, max }.to_string());
            }
            no_escaped_work(self, None);
        }
    }

    #[track_caller]
    pub fn leaks_below<R>(
        limit: impl Limit,
        consider: &dyn Fn(&Traceback) -> bool,
        f: impl FnOnce() -> R,
        message: Option<String>,
    ) -> R {
        let limit = limit_bytes(limit);
        let (result, m) = measured(f);
        check_leaks(&m, limit, consider, message);
        result
    }

    /// Every stack `consider` keeps stays below `limit` live bytes at the end.
    #[track_caller]
    fn check_leaks(
        m: &Measurement,
        limit: usize,
        consider: &dyn Fn(&Traceback) -> bool,
        message: Option<String>,
    ) {
        if m.retained >= limit.max(1) {
            let over: Vec<SiteUsage> = m
                .leaks()
                .into_iter()
                .filter(|s| s.size >= limit && consider(&s.traceback))
                .collect();
            if !over.is_empty() {
                fail(
                    message,
                    LeakLimitReport {
                        m,
                        over: &over,
                        limit,
                    }
                    .to_string(),
                );
            }
        }
        no_escaped_work(m, message);
    }

    struct LeakLimitReport<'a> {
        m: &'a Measurement,
        over: &'a [SiteUsage],
        limit: usize,
    }

    impl fmt::Display for LeakLimitReport<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let n = self.over.len();
            write!(
                f,
                "tracealloc: {n} call stack{} still hold{} {} or more at the end of the measured \
                 code (the limit per stack{}; {} retained in all)",
                plural(n),
                if n == 1 { "s" } else { "" },
                size(self.limit),
                if size(self.limit) == format!("{} B", self.limit) {
                    String::new()
                } else {
                    format!(": {} B", self.limit)
                },
                size(self.m.retained)
            )?;
            write_sites(f, &self.over[..n.min(10)], "block")?;
            if n > 10 {
                write!(f, "\n  and {} more stacks", n - 10)?;
            }
            write_others(f, self.m.others_unscoped)
        }
    }

    /// A verdict that held for the scope is no pass when other threads ran the program's code
    /// outside any scope meanwhile: that work is missing from the figures.
    #[track_caller]
    fn no_escaped_work(m: &Measurement, message: Option<String>) {
        if m.others_unscoped == 0 {
            return;
        }
        let escaped = m.escaped_work();
        if !escaped.is_empty() {
            fail(message, EscapedReport(&escaped).to_string());
        }
    }

    struct EscapedReport<'a>(&'a [SiteUsage]);

    impl fmt::Display for EscapedReport<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let n: usize = self.0.iter().map(|s| s.blocks).sum();
            let bytes: usize = self.0.iter().map(|s| s.size).sum();
            write!(
                f,
                "tracealloc: cannot pass: other threads ran this program's code outside any \
                 measurement scope while the measured code ran, and allocated {n} block{} ({}) \
                 that the figures leave out",
                plural(n),
                size(bytes)
            )?;
            for site in self.0 {
                let head = format!(
                    "{} allocation{} ({})",
                    site.blocks,
                    plural(site.blocks),
                    size(site.size)
                );
                write_site(f, &head, &site.traceback)?;
            }
            write!(
                f,
                "\n  if the measured code hands this work to a thread pool or a runtime \
                 (rayon's par_iter, tokio::spawn, std::thread::spawn), carry the scope there \
                 (Scope::run, Scope::wrap_future, tracealloc::spawn) or count every thread \
                 (measure_all_threads); if it is another test's work, run the tests one at a \
                 time (--test-threads=1) or under cargo nextest"
            )
        }
    }

    struct PeakReport<'a> {
        m: &'a Measurement,
        limit: usize,
    }

    impl fmt::Display for PeakReport<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "tracealloc: peak {} reached the limit {}",
                size(self.m.peak),
                size(self.limit)
            )?;
            write_sites(f, &self.m.at_peak, "block")?;
            write_others(f, self.m.others_unscoped)
        }
    }

    struct LeakReport<'a>(&'a Measurement);

    impl fmt::Display for LeakReport<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let blocks: usize = self.0.retained_sites.iter().map(|s| s.blocks).sum();
            write!(
                f,
                "tracealloc: {} leaked: still live at the end of the measured code",
                size(self.0.retained)
            )?;
            if blocks > 0 {
                write!(
                    f,
                    " ({} block{} at the sites below)",
                    blocks,
                    plural(blocks)
                )?;
            }
            write_sites(f, &self.0.retained_sites, "block")?;
            write_others(f, self.0.others_unscoped)
        }
    }

    struct AllocationReport<'a> {
        m: &'a Measurement,
        max: u64,
    }

    impl fmt::Display for AllocationReport<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.max == 0 {
                write!(
                    f,
                    "tracealloc: {} allocation{} where none were allowed",
                    self.m.allocations,
                    plural(self.m.allocations as usize)
                )?;
            } else {
                write!(
                    f,
                    "tracealloc: {} allocations, more than the limit of {}",
                    self.m.allocations, self.max
                )?;
            }
            for site in &self.m.allocating {
                let head = format!("{} allocation{}", site.blocks, plural(site.blocks));
                write_site(f, &head, &site.traceback)?;
            }
            write_others(f, self.m.others_unscoped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;
    use crate::Error;

    #[test]
    fn sizes_parse_exactly() {
        let cases = [
            ("1024", 1024),
            ("512 B", 512),
            ("64 KiB", 65536),
            ("64KiB", 65536),
            ("1.5 MB", 1_500_000),
            ("24 MiB", 24 << 20),
            ("1 GB", 1_000_000_000),
            ("0.5 KiB", 512),
            (" 2 GiB ", 2 << 30),
            ("1 TiB", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_errors_naming_the_string() {
        for text in [
            "12 parsecs",
            "",
            "MB",
            "1.5.2 MB",
            "0.3 B",
            "1.5",
            "-3 KB",
            "24 mib",
            "1e3",
        ] {
            let err = parse_size(text).unwrap_err();
            assert!(matches!(err, Error::InvalidLimit { .. }), "{text}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
        assert!(parse_size("-5 MB")
            .unwrap_err()
            .to_string()
            .contains("cannot be negative"));
    }
}
