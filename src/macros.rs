//! The assertion macros. Each measures its expression in a new scope (so parallel tests do not
//! disturb it), panics with a report naming the lines responsible when the condition fails,
//! and otherwise evaluates to the expression's value. An optional message with format
//! arguments may follow, as with `assert!`.

/// Fails unless the peak of the bytes live at once while `expr` runs stays **strictly below**
/// `limit` (a byte count, or `"64 KiB"`, `"1.5 MB"`, `"24 MiB"`…: MB = 10⁶ bytes,
/// MiB = 2²⁰). The failure lists up to 10 sites live at the peak.
///
/// ```no_run
/// # #[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
/// let table = tracealloc::assert_peak_below!("64 KiB", vec![0u8; 1000]);
/// ```
#[macro_export]
macro_rules! assert_peak_below {
    ($limit:expr, $expr:expr $(,)?) => {
        $crate::__private::peak_below($limit, || $expr, ::core::option::Option::None)
    };
    ($limit:expr, $expr:expr, $($arg:tt)+) => {
        $crate::__private::peak_below(
            $limit,
            || $expr,
            ::core::option::Option::Some(::std::format!($($arg)+)),
        )
    };
}

/// Fails if anything `expr` allocated is still live when it finishes (its value included:
/// write `assert_no_leaks!({ work(); })` to check code whose result you do not keep). The
/// failure lists up to 10 sites still holding memory.
#[macro_export]
macro_rules! assert_no_leaks {
    ($expr:expr $(,)?) => {
        $crate::__private::no_leaks(|| $expr, ::core::option::Option::None)
    };
    ($expr:expr, $($arg:tt)+) => {
        $crate::__private::no_leaks(|| $expr, ::core::option::Option::Some(::std::format!($($arg)+)))
    };
}

/// Fails if a call stack of `expr`'s still holds `limit` bytes or more when it finishes, as
/// pytest-memray's `limit_leaks`: per distinct stack, so a cache that keeps a few small blocks
/// passes while a growing leak fails. With `filter = |tb| …`, only the stacks the filter keeps
/// count (leave out known ones: a runtime's lazy thread-local, a pool's teardown). The failure
/// lists the stacks over the limit.
///
/// ```no_run
/// # #[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
/// # fn handle() {}
/// tracealloc::assert_leaks_below!("1 KiB", { handle(); });
/// tracealloc::assert_leaks_below!("1 KiB", { handle(); }, filter = |tb| !tb.mentions("tokio::runtime"));
/// ```
#[macro_export]
macro_rules! assert_leaks_below {
    ($limit:expr, $expr:expr, filter = $filter:expr $(,)?) => {
        $crate::__private::leaks_below($limit, &$filter, || $expr, ::core::option::Option::None)
    };
    ($limit:expr, $expr:expr, filter = $filter:expr, $($arg:tt)+) => {
        $crate::__private::leaks_below(
            $limit,
            &$filter,
            || $expr,
            ::core::option::Option::Some(::std::format!($($arg)+)),
        )
    };
    ($limit:expr, $expr:expr $(,)?) => {
        $crate::__private::leaks_below($limit, &|_| true, || $expr, ::core::option::Option::None)
    };
    ($limit:expr, $expr:expr, $($arg:tt)+) => {
        $crate::__private::leaks_below(
            $limit,
            &|_| true,
            || $expr,
            ::core::option::Option::Some(::std::format!($($arg)+)),
        )
    };
}

/// Fails if `expr` makes more than `max` allocations (reallocations count). The failure lists
/// the sites that allocated most often.
#[macro_export]
macro_rules! assert_allocations {
    ($max:expr, $expr:expr $(,)?) => {
        $crate::__private::allocations_at_most(
            $crate::__private::count_limit($max),
            || $expr,
            ::core::option::Option::None,
        )
    };
    ($max:expr, $expr:expr, $($arg:tt)+) => {
        $crate::__private::allocations_at_most(
            $crate::__private::count_limit($max),
            || $expr,
            ::core::option::Option::Some(::std::format!($($arg)+)),
        )
    };
}

/// Fails if `expr` allocates at all (a hot loop that must not allocate).
#[macro_export]
macro_rules! assert_no_alloc {
    ($expr:expr $(,)?) => {
        $crate::assert_allocations!(0, $expr)
    };
    ($expr:expr, $($arg:tt)+) => {
        $crate::assert_allocations!(0, $expr, $($arg)+)
    };
}
