//! Without `#[global_allocator]`, every entry point says so instead of returning empty results.

use tracealloc::Error;

#[test]
fn calls_without_the_tracer_installed_return_not_installed() {
    let err = tracealloc::take_snapshot().unwrap_err();
    assert!(matches!(err, Error::NotInstalled), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(
            "#[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();"
        ),
        "the message names the one-line fix: {message}"
    );
    assert!(matches!(tracealloc::start(16), Err(Error::NotInstalled)));
    assert!(!tracealloc::is_tracing());
    assert_eq!(
        tracealloc::capture_mode(),
        tracealloc::CaptureMode::Undecided
    );
    let v = Box::new([1u8; 100]);
    assert!(tracealloc::object_traceback(v.as_ptr()).is_none());
    assert!(matches!(
        tracealloc::Timeline::start(std::time::Duration::from_millis(5)),
        Err(Error::NotInstalled)
    ));
    assert_eq!(tracealloc::traced_memory().current, 0);
    assert!(matches!(
        tracealloc::try_measure(|| vec![0u8; 10]),
        Err(Error::NotInstalled)
    ));
    let panicked = std::panic::catch_unwind(|| tracealloc::assert_no_alloc!(1 + 1)).unwrap_err();
    let message = panicked.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("tracealloc::Tracer is not the global allocator"),
        "{message}"
    );
}
