//! Live heap profiles over HTTP, at the paths Go's `net/http/pprof` serves them, for
//! `go tool pprof http://host:port/debug/pprof/heap`, Parca and Grafana Pyroscope.
//!
//! - [`Server`]: a small server of its own (feature `http`), on loopback unless told otherwise.
//!   `TRACEALLOC_HTTP=127.0.0.1:6060` (or just `6060`) starts one before `main` with no code.
//! - [`respond`]: the same routes as a function (method and path in; status, content type and
//!   body out), for programs that already run a server (axum, hyper, actix): mount it on
//!   `/debug/pprof/` and call it from a blocking task.
//!
//! Routes: `/debug/pprof/` (an index), `/debug/pprof/heap` (what is live, `inuse_space` by
//! default), `/debug/pprof/allocs` (the same profile, `alloc_space` by default),
//! `/debug/pprof/peak` (what was live at the traced peak, when the peak breakdown is on). Query
//! parameters as Go takes them: `seconds=N` (1 to 300) for the difference between now and N
//! seconds later (a delta profile, heap and allocs), `debug=1` (or 2) for the text report
//! instead of the profile; `gc` is accepted and ignored (there is no collector to run).
//!
//! Safe to leave on: requests are parsed by `httparse`, with at most 16 KiB of request head and
//! 64 headers (431 beyond), 5 seconds to send it (408 after); anything malformed gets a 400;
//! eight workers serve connections from a queue of 64 (a 503 beyond), so a silent client holds
//! one worker for 5 seconds at most (eight silent clients at once delay the others by that
//! much); one profile is built at a time (the others wait for it), and at most two delta
//! profiles wait at once (a 503 beyond). The server's threads never
//! trace their own allocations, and never take a tracer lock longer than a snapshot does.

use crate::error::Error;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of request line and headers a request may have.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Headers a request may have.
pub const MAX_HEADERS: usize = 64;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest delta profile (`?seconds=N`).
pub const MAX_SECONDS: u64 = 300;
const WORKERS: usize = 8;
const QUEUE: usize = 64;
const MAX_DELTAS: usize = 2;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines per section of the text reports (`?debug=1`).
const TEXT_LINES: usize = 25;

/// One profile at a time: a snapshot's copy of the tables is the big cost of a request.
static PROFILING: Mutex<()> = Mutex::new(());
/// Delta profiles waiting out their seconds.
static DELTAS: AtomicUsize = AtomicUsize::new(0);

/// An HTTP response: what [`respond`] answers and [`Server`] sends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code (200, 400, 404, 405, 503...).
    pub status: u16,
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// Further headers (`Content-Disposition` of profiles, `Allow` of a 405, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    fn profile(name: &str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type: "application/octet-stream",
            headers: vec![(
                "Content-Disposition",
                format!("attachment; filename=\"{name}\""),
            )],
            body,
        }
    }

    fn busy(reason: &str) -> Response {
        let mut response = Response::text(503, reason);
        response.headers.push(("Retry-After", "1".to_owned()));
        response
    }
}

/// The text of a status code's reason phrase.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Heap,
    Allocs,
    Peak,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Allocs => "allocs",
            Kind::Peak => "peak",
        }
    }
}

const INDEX: &str = "<html>
<head><title>/debug/pprof/</title></head>
<body>
<p>tracealloc: the program's heap, per stack, at its own lines.</p>
<table>
<tr><td><a href=\"heap?debug=1\">heap</a></td><td>what is live now: <code>go tool pprof http://HOST/debug/pprof/heap</code>; <code>?seconds=N</code> for what changed over the next N seconds</td></tr>
<tr><td><a href=\"allocs?debug=1\">allocs</a></td><td>what was allocated since tracing started (freed blocks included), the same profile with <code>alloc_space</code> as its default sample type</td></tr>
<tr><td><a href=\"peak?debug=1\">peak</a></td><td>what was live at the traced peak (needs the peak breakdown: <code>TRACEALLOC_PEAK=1</code>)</td></tr>
</table>
<p>Each link gives the text report; without <code>?debug=1</code> the path serves a pprof profile.</p>
</body>
</html>
";

/// Answers one request to the profile routes, as [`Server`] does: `method` (`GET` or `HEAD`;
/// anything else gets a 405) and `target`, the path with its query
/// (`/debug/pprof/heap?seconds=5`). For a server of your own: route `/debug/pprof/*` here and
/// send what it answers. It blocks, for `?seconds=N` as long as that (call it from a blocking
/// task in an async server), and it makes its snapshots untraced.
pub fn respond(method: &str, target: &str) -> Response {
    let _quiet = crate::guard::Guard::enter();
    if method != "GET" && method != "HEAD" {
        let mut response = Response::text(405, format!("method {method} not allowed"));
        response.headers.push(("Allow", "GET, HEAD".to_owned()));
        return response;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let kind = match path {
        "/debug/pprof" | "/debug/pprof/" => {
            return Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                headers: Vec::new(),
                body: INDEX.as_bytes().to_vec(),
            }
        }
        "/debug/pprof/heap" => Kind::Heap,
        "/debug/pprof/allocs" => Kind::Allocs,
        "/debug/pprof/peak" => Kind::Peak,
        _ => {
            return Response::text(
                404,
                format!(
                    "no profile at {path}: tracealloc serves /debug/pprof/heap, \
                     /debug/pprof/allocs and /debug/pprof/peak (index: /debug/pprof/)"
                ),
            )
        }
    };
    let mut debug = 0u8;
    let mut seconds = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "debug" => match value.parse::<u8>() {
                Ok(n) => debug = n,
                Err(_) => {
                    return Response::text(
                        400,
                        format!("debug={value}: expected a number (0 for a profile, 1 for text)"),
                    )
                }
            },
            "seconds" => match value.parse::<u64>() {
                Ok(n) if (1..=MAX_SECONDS).contains(&n) => seconds = Some(n),
                _ => {
                    return Response::text(
                        400,
                        format!("seconds={value}: expected a whole number from 1 to {MAX_SECONDS}"),
                    )
                }
            },
            // Go runs its collector first; there is nothing to collect here.
            "gc" => {}
            // Go ignores parameters it does not know, and so do its clients' extras.
            _ => {}
        }
    }
    match seconds {
        Some(_) if kind == Kind::Peak => Response::text(
            400,
            "seconds=N: the peak has no delta profile (it is one moment)",
        ),
        Some(n) => delta(kind, Duration::from_secs(n), debug),
        None => now(kind, debug),
    }
}

fn failure(e: &Error) -> Response {
    match e {
        Error::NotInstalled | Error::NotTracing => Response::busy(&format!("tracealloc: {e}")),
        Error::PeakNotKept => Response::text(404, format!("tracealloc: {e}")),
        _ => Response::text(500, format!("tracealloc: {e}")),
    }
}

fn now(kind: Kind, debug: u8) -> Response {
    let _one = PROFILING.lock().unwrap_or_else(|p| p.into_inner());
    let snapshot = match kind {
        Kind::Peak => crate::peak_snapshot(),
        Kind::Heap | Kind::Allocs => crate::take_snapshot(),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    if debug > 0 {
        let text = match kind {
            Kind::Peak => snapshot
                .report(crate::GroupBy::Line, TEXT_LINES)
                .to_string(),
            Kind::Heap | Kind::Allocs => snapshot
                .summary_with(TEXT_LINES, "now", crate::control::process_figures())
                .to_string(),
        };
        return Response::text(200, text);
    }
    let default = match kind {
        Kind::Allocs => crate::snapshot::PprofDefault::Alloc,
        Kind::Heap | Kind::Peak => crate::snapshot::PprofDefault::Inuse,
    };
    match crate::snapshot::encode_pprof(&[(&snapshot, 1)], default, None) {
        Ok(body) => Response::profile(kind.name(), body),
        Err(e) => failure(&e),
    }
}

/// Releases a delta slot on every way out.
struct DeltaSlot;

impl Drop for DeltaSlot {
    fn drop(&mut self) {
        DELTAS.fetch_sub(1, Ordering::AcqRel);
    }
}

fn delta(kind: Kind, seconds: Duration, debug: u8) -> Response {
    if DELTAS.fetch_add(1, Ordering::AcqRel) >= MAX_DELTAS {
        DELTAS.fetch_sub(1, Ordering::AcqRel);
        return Response::busy(&format!(
            "tracealloc: {MAX_DELTAS} delta profiles are already being taken; try again later"
        ));
    }
    let _slot = DeltaSlot;
    let take = || {
        let _one = PROFILING.lock().unwrap_or_else(|p| p.into_inner());
        crate::take_snapshot()
    };
    let before = match take() {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    std::thread::sleep(seconds);
    let _one = PROFILING.lock().unwrap_or_else(|p| p.into_inner());
    let after = match crate::take_snapshot() {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    if debug > 0 {
        let mut text = format!(
            "What changed over {} s, by line (size and count now, then the change):\n",
            seconds.as_secs()
        );
        let diffs = after.compare_to(&before, crate::GroupBy::Line);
        for d in diffs.iter().take(TEXT_LINES) {
            text.push_str(&d.to_string());
            text.push('\n');
        }
        if diffs.is_empty() {
            text.push_str("nothing\n");
        }
        return Response::text(200, text);
    }
    let default = match kind {
        Kind::Allocs => crate::snapshot::PprofDefault::Alloc,
        Kind::Heap | Kind::Peak => crate::snapshot::PprofDefault::Inuse,
    };
    match crate::snapshot::encode_pprof(&[(&before, -1), (&after, 1)], default, Some(seconds)) {
        Ok(body) => Response::profile(kind.name(), body),
        Err(e) => failure(&e),
    }
}

/// A running profile server; dropping it (or [`stop`](Self::stop)) stops it,
/// [`detach`](Self::detach) keeps it for the life of the process.
#[derive(Debug)]
pub struct Server {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves the profile routes at `address` (`"127.0.0.1:6060"`; port 0 picks a free port,
    /// see [`local_addr`](Self::local_addr)). Loopback addresses only: heap profiles show
    /// the program's code paths and sizes; [`start_public`](Self::start_public) is the
    /// explicit way to serve them on other interfaces.
    pub fn start(address: impl ToSocketAddrs) -> Result<Server, Error> {
        Server::bind(address, false)
    }

    /// As [`start`](Self::start), on any address, `0.0.0.0:6060` included: for a profiler
    /// scraping from another machine, on a network you trust (there is no authentication).
    pub fn start_public(address: impl ToSocketAddrs) -> Result<Server, Error> {
        Server::bind(address, true)
    }

    fn bind(address: impl ToSocketAddrs, public: bool) -> Result<Server, Error> {
        let _quiet = crate::guard::Guard::enter();
        crate::control::ensure_installed()?;
        let fail = |shown: String, reason: String| Error::Http {
            address: shown,
            reason,
        };
        let addresses: Vec<SocketAddr> = address
            .to_socket_addrs()
            .map_err(|e| fail("the address given".to_owned(), e.to_string()))?
            .collect();
        let Some(&first) = addresses.first() else {
            return Err(fail(
                "the address given".to_owned(),
                "it resolves to no address".to_owned(),
            ));
        };
        if !public {
            if let Some(open) = addresses.iter().find(|a| !a.ip().is_loopback()) {
                return Err(fail(
                    open.to_string(),
                    "not a loopback address: heap profiles show the program's code and data \
                     sizes, so tracealloc serves them on other interfaces only when told to \
                     (Server::start_public, or TRACEALLOC_HTTP_PUBLIC=1)"
                        .to_owned(),
                ));
            }
        }
        let listener = TcpListener::bind(&addresses[..])
            .map_err(|e| fail(first.to_string(), e.to_string()))?;
        let address = listener
            .local_addr()
            .map_err(|e| fail(first.to_string(), e.to_string()))?;
        let (queue, work) = mpsc::sync_channel::<TcpStream>(QUEUE);
        let work = Arc::new(Mutex::new(work));
        for i in 0..WORKERS {
            let work = Arc::clone(&work);
            std::thread::Builder::new()
                .name(format!("tracealloc-http-{i}"))
                .spawn(move || worker(&work))
                .map_err(|e| fail(address.to_string(), e.to_string()))?;
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let listener = std::thread::Builder::new()
            .name("tracealloc-http".to_owned())
            .spawn(move || accept(&listener, &queue, &flag))
            .map_err(|e| fail(address.to_string(), e.to_string()))?;
        Ok(Server {
            address,
            stopping,
            listener: Some(listener),
        })
    }

    /// The address served (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting connections; requests already accepted are answered.
    pub fn stop(mut self) {
        self.shut();
    }

    /// Keeps serving until the process exits.
    pub fn detach(mut self) {
        self.listener = None;
    }

    fn shut(&mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let _quiet = crate::guard::Guard::enter();
        self.stopping.store(true, Ordering::Release);
        // Wake the blocking accept.
        let mut wake = self.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = listener.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut();
    }
}

fn accept(listener: &TcpListener, queue: &SyncSender<TcpStream>, stopping: &AtomicBool) {
    let _quiet = crate::guard::Guard::enter();
    for stream in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else {
            // A connection reset before it was accepted, or out of descriptors: go on.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        match queue.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(mut stream)) => {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                send(
                    &mut stream,
                    &Response::busy("tracealloc: too many connections at once"),
                    false,
                );
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

fn worker(work: &Mutex<Receiver<TcpStream>>) {
    let _quiet = crate::guard::Guard::enter();
    loop {
        let next = work.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(mut stream) = next else {
            return;
        };
        // A panic in one request (there should be none) must not take the worker with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(&mut stream);
        }));
    }
}

/// Reads one request from `stream` and answers it; the connection is then closed.
fn serve(stream: &mut TcpStream) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = vec![0u8; MAX_REQUEST_HEAD];
    let mut filled = 0;
    loop {
        if filled == head.len() {
            let response =
                Response::text(431, format!("request head over {MAX_REQUEST_HEAD} bytes"));
            return send(stream, &response, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            let response = Response::text(408, "the request was not sent in time");
            return send(stream, &response, false);
        }
        match stream.read(&mut head[filled..]) {
            Ok(0) => return,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let response = Response::text(408, "the request was not sent in time");
                return send(stream, &response, false);
            }
            Err(_) => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("GET");
                let target = request.path.unwrap_or("/");
                let response = respond(method, target);
                return send(stream, &response, method == "HEAD");
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => {
                let response =
                    Response::text(431, format!("more than {MAX_HEADERS} request headers"));
                return send(stream, &response, false);
            }
            Err(e) => {
                let response = Response::text(400, format!("malformed request: {e}"));
                return send(stream, &response, false);
            }
        }
    }
}

fn send(stream: &mut TcpStream, response: &Response, head_only: bool) {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         X-Content-Type-Options: nosniff\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    if !head_only {
        let _ = stream.write_all(&response.body);
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read the answer before the close resets the connection: drain what it
    // still sends (a body we did not read), briefly.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

/// `TRACEALLOC_HTTP`: starts a server before `main`, from a thread of its own (an ELF
/// constructor; Linux only). `port` or `host:port`; a non-loopback host needs
/// `TRACEALLOC_HTTP_PUBLIC=1`. A bad value costs one line on stderr.
#[cfg(target_os = "linux")]
mod from_environment {
    #[used]
    #[link_section = ".init_array"]
    static START: extern "C" fn() = start;

    extern "C" fn start() {
        crate::environment::start_thread_if_set(
            "TRACEALLOC_HTTP",
            run,
            "tracealloc: TRACEALLOC_HTTP: could not start the server's thread\n",
        );
    }

    fn run() {
        let _quiet = crate::guard::Guard::enter();
        let value = std::env::var("TRACEALLOC_HTTP").unwrap_or_default();
        let value = value.trim();
        let address = if value.bytes().all(|b| b.is_ascii_digit()) {
            format!("127.0.0.1:{value}")
        } else {
            value.to_owned()
        };
        let public = std::env::var("TRACEALLOC_HTTP_PUBLIC").is_ok_and(|v| v == "1");
        let started = if public {
            super::Server::start_public(address.as_str())
        } else {
            super::Server::start(address.as_str())
        };
        match started {
            Ok(server) => {
                eprintln!(
                    "tracealloc: serving heap profiles at http://{}/debug/pprof/",
                    server.local_addr()
                );
                server.detach();
            }
            Err(e) => eprintln!("tracealloc: TRACEALLOC_HTTP: {e}"),
        }
    }
}
