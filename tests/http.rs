//! The profile endpoint (`tracealloc::http`): Go's routes, profiles that parse and hold the
//! test's own lines, delta profiles, bad requests refused while the server keeps serving, a
//! stress of concurrent clients while the program allocates, and `TRACEALLOC_HTTP` in a child.
#![cfg(feature = "http")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracealloc::http::{respond, Server};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// The parts of profile.proto the checks read.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub(crate) sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub(crate) mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub(crate) location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub(crate) function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub(crate) string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub(crate) time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub(crate) duration_nanos: i64,
        #[prost(int64, tag = "12")]
        pub(crate) period: i64,
        #[prost(int64, tag = "14")]
        pub(crate) default_sample_type: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ValueType {
        #[prost(int64, tag = "1")]
        pub(crate) r#type: i64,
        #[prost(int64, tag = "2")]
        pub(crate) unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub(crate) location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub(crate) value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Mapping {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(int64, tag = "5")]
        pub(crate) filename: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Location {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(uint64, tag = "2")]
        pub(crate) mapping_id: u64,
        #[prost(message, repeated, tag = "4")]
        pub(crate) line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Line {
        #[prost(uint64, tag = "1")]
        pub(crate) function_id: u64,
        #[prost(int64, tag = "2")]
        pub(crate) line: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Function {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(int64, tag = "2")]
        pub(crate) name: i64,
        #[prost(int64, tag = "3")]
        pub(crate) system_name: i64,
        #[prost(int64, tag = "4")]
        pub(crate) filename: i64,
    }
}

fn decode(body: &[u8]) -> proto::Profile {
    use prost::Message;
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a profile is gzipped");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut raw)
        .expect("the gzip stream is whole");
    proto::Profile::decode(&raw[..]).expect("the profile decodes")
}

impl proto::Profile {
    fn s(&self, i: i64) -> &str {
        &self.string_table[i as usize]
    }

    fn index_of(&self, kind: &str) -> usize {
        self.sample_type
            .iter()
            .position(|t| self.s(t.r#type) == kind)
            .unwrap_or_else(|| panic!("no sample type {kind}"))
    }

    /// The sum of `kind` over the samples whose stack has a line `file:line` (any frame).
    fn at_line(&self, kind: &str, file: &str, line: u32) -> i64 {
        let k = self.index_of(kind);
        let has = |location_id: u64| {
            let location = &self.location[location_id as usize - 1];
            location.line.iter().any(|l| {
                let f = &self.function[l.function_id as usize - 1];
                l.line == i64::from(line) && self.s(f.filename).ends_with(file)
            })
        };
        self.sample
            .iter()
            .filter(|s| s.location_id.iter().any(|&l| has(l)))
            .map(|s| s.value[k])
            .sum()
    }

    fn total(&self, kind: &str) -> i64 {
        let k = self.index_of(kind);
        self.sample.iter().map(|s| s.value[k]).sum()
    }
}

/// One request on a fresh connection: (status, headers, body).
fn request(address: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(raw).expect("sends");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reads the answer");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(answer[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, answer[end + 4..].to_vec())
}

fn get(address: SocketAddr, target: &str) -> (u16, String, Vec<u8>) {
    request(
        address,
        format!("GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
}

#[test]
fn profiles_hold_the_programs_lines_and_bad_requests_are_refused() {
    let server = Server::start("127.0.0.1:0").expect("starts on loopback");
    let address = server.local_addr();
    let line = line!() + 1;
    let kept: Vec<Vec<u8>> = (0..64).map(|_| vec![3u8; 40_000]).collect();
    std::hint::black_box(&kept);

    // The live profile: the test's line, with at least its 64 × 40,000 bytes.
    let (status, head, body) = get(address, "/debug/pprof/heap");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: application/octet-stream"),
        "{head}"
    );
    assert!(head.contains("filename=\"heap\""), "{head}");
    let heap = decode(&body);
    assert_eq!(heap.s(heap.default_sample_type), "inuse_space");
    assert!(
        heap.at_line("inuse_space", "tests/http.rs", line) >= 64 * 40_000,
        "the kept blocks are at tests/http.rs:{line}"
    );
    assert!(heap.total("inuse_space") >= heap.at_line("inuse_space", "tests/http.rs", line));
    // The 64 blocks and the vector holding them.
    assert_eq!(heap.at_line("inuse_objects", "tests/http.rs", line), 65);
    // Named after the binary, taken now, with names pprof will not demangle again.
    let program = heap.s(heap.mapping[0].filename);
    assert!(
        program.contains("http"),
        "the mapping names the test binary: {program}"
    );
    assert!(heap.location.iter().all(|l| l.mapping_id == 1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (now - heap.time_nanos).abs() < 60_000_000_000,
        "Time is the snapshot's"
    );
    assert!(heap.function.iter().all(|f| f.system_name == 0));
    assert_eq!(heap.period, 1, "every allocation traced");

    // The allocation profile: the same data, alloc_space by default.
    let (status, head, body) = get(address, "/debug/pprof/allocs");
    assert_eq!(status, 200, "{head}");
    let allocs = decode(&body);
    assert_eq!(allocs.s(allocs.default_sample_type), "alloc_space");
    assert!(allocs.at_line("alloc_space", "tests/http.rs", line) >= 64 * 40_000);

    // A delta: what a thread keeps during the window is in it, what was kept before is not.
    let (started, window_line) = (Arc::new(AtomicBool::new(false)), line!() + 6);
    let flag = Arc::clone(&started);
    let during = std::thread::spawn(move || {
        // Well after the window's first snapshot, which symbolizes this thread's new
        // addresses: 300 ms was too short once in CI, on a loaded machine in a debug build.
        std::thread::sleep(Duration::from_millis(1000));
        let grown: Vec<Vec<u8>> = (0..10).map(|_| vec![5u8; 100_000]).collect();
        flag.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(3));
        grown
    });
    let (status, head, body) = get(address, "/debug/pprof/heap?seconds=2");
    assert_eq!(status, 200, "{head}");
    assert!(started.load(Ordering::SeqCst));
    let delta = decode(&body);
    assert_eq!(
        delta.at_line("inuse_space", "tests/http.rs", window_line),
        // Ten blocks, and the vector of their ten 24-byte headers.
        10 * 100_000 + 10 * 24,
        "the window's growth, exactly"
    );
    assert_eq!(
        delta.at_line("inuse_space", "tests/http.rs", line),
        0,
        "what was live before the window nets out"
    );
    assert_eq!(delta.duration_nanos, 2_000_000_000);
    drop(during.join().unwrap());

    // The text forms and the index.
    let (status, _, body) = get(address, "/debug/pprof/heap?debug=1");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains(&format!("tests/http.rs:{line}")), "{text}");
    let (status, head, body) = get(address, "/debug/pprof/");
    assert_eq!(status, 200);
    assert!(head.contains("text/html"));
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("href=\"heap?debug=1\""));

    // Refusals, each precise, none stopping the server.
    let (status, _, body) = get(address, "/debug/pprof/profile");
    assert_eq!(status, 404);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("/debug/pprof/heap"));
    let (status, _, body) = get(address, "/debug/pprof/heap?seconds=0");
    assert_eq!(
        (status, String::from_utf8(body).unwrap().trim()),
        (400, "seconds=0: expected a whole number from 1 to 300")
    );
    let (status, _, _) = get(address, "/debug/pprof/heap?debug=x");
    assert_eq!(status, 400);
    let (status, _, _) = get(address, "/debug/pprof/peak?seconds=2");
    assert_eq!(status, 400);
    let (status, head, _) = request(address, b"POST /debug/pprof/heap HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, _, _) = request(address, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400);
    let (status, _, _) = request(address, b"GET /debug/pprof/heap HTTP/9\r\n\r\n");
    assert_eq!(status, 400);
    let big = format!(
        "GET /debug/pprof/heap HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, _, _) = request(address, big.as_bytes());
    assert_eq!(status, 431, "an oversized header");
    let many: String = (0..80).map(|i| format!("X-{i}: v\r\n")).collect();
    let (status, _, _) = request(
        address,
        format!("GET /debug/pprof/heap HTTP/1.1\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(status, 431, "too many headers");
    let (status, head, body) = request(address, b"HEAD /debug/pprof/heap HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        body.is_empty() && head.contains("Content-Length: "),
        "{head}"
    );

    // Still serving.
    let (status, _, body) = get(address, "/debug/pprof/heap");
    assert_eq!(status, 200);
    decode(&body);
    server.stop();
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "a stopped server accepts nothing"
    );
}

#[test]
fn silent_clients_and_a_stress_of_clients_do_not_stop_it() {
    let server = Server::start("127.0.0.1:0").expect("starts");
    let address = server.local_addr();
    // Three clients that connect and say nothing, and one that sends half a request.
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    let mut half = TcpStream::connect(address).unwrap();
    half.write_all(b"GET /debug/pprof/heap HTTP/1.1\r\nHost:")
        .unwrap();
    silent.push(half);
    std::thread::sleep(Duration::from_millis(200));

    // A worker is left: requests are answered at once, not after the silent clients' timeout.
    let t = Instant::now();
    let (status, _, body) = get(address, "/debug/pprof/heap");
    assert_eq!(status, 200);
    decode(&body);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "answered while four clients are silent ({:?})",
        t.elapsed()
    );

    // The stress: four clients, 60 requests each, while a thread allocates and frees.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut kept: Vec<Vec<u8>> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                kept.push(vec![1u8; 64 + i % 4096]);
                if kept.len() > 2_000 {
                    kept.drain(..1_000);
                }
                i += 1;
            }
        })
    };
    let targets = [
        "/debug/pprof/heap",
        "/debug/pprof/allocs",
        "/debug/pprof/heap?debug=1",
        "/debug/pprof/",
        "/nothing",
        "/debug/pprof/heap?seconds=-1",
    ];
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut parsed = 0;
                for i in 0..60 {
                    let target = targets[(c + i) % targets.len()];
                    let (status, head, body) = get(address, target);
                    match target {
                        "/nothing" => assert_eq!(status, 404),
                        t if t.ends_with("=-1") => assert_eq!(status, 400),
                        t if t.contains('?') || t.ends_with('/') => assert_eq!(status, 200),
                        _ => {
                            assert_eq!(status, 200, "{head}");
                            decode(&body);
                            parsed += 1;
                        }
                    }
                }
                parsed
            })
        })
        .collect();
    let parsed: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert_eq!(parsed, 80, "every profile of the 240 requests parsed");

    // The silent clients were cut off with a 408 once their time was up.
    for mut client in silent {
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
}

#[test]
fn only_loopback_unless_asked_and_respond_needs_no_server() {
    let refused = Server::start("0.0.0.0:0").expect_err("not loopback");
    let message = refused.to_string();
    assert!(message.contains("not a loopback address"), "{message}");
    assert!(message.contains("start_public"), "{message}");
    let public = Server::start_public("0.0.0.0:0").expect("explicitly public");
    let mut local = public.local_addr();
    local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    assert_eq!(get(local, "/debug/pprof/").0, 200);
    drop(public);

    let r = respond("GET", "/debug/pprof/heap");
    assert_eq!(
        (r.status, r.content_type),
        (200, "application/octet-stream")
    );
    decode(&r.body);
    assert_eq!(respond("DELETE", "/debug/pprof/heap").status, 405);
    assert_eq!(respond("GET", "/debug/pprof/heap?seconds=301").status, 400);
    assert_eq!(respond("GET", "/elsewhere").status, 404);
    // The peak breakdown is off by default: the peak route says how to turn it on.
    let peak = respond("GET", "/debug/pprof/peak");
    assert_eq!(peak.status, 404);
    assert!(String::from_utf8_lossy(&peak.body).contains("TRACEALLOC_PEAK=1"));
}

/// Runs only in the child: keeps a known block until told to go.
#[test]
fn child_service() {
    match std::env::var("HTTP_CHILD").as_deref() {
        Ok("keep") => {}
        // Long enough for the server's thread to say what it thinks of the address.
        Ok("linger") => return std::thread::sleep(Duration::from_secs(2)),
        _ => return,
    }
    let (kept, line) = (vec![9u8; 7_777_777], line!());
    println!("kept at line {line}");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    drop(kept);
}

#[test]
fn the_environment_starts_it_with_no_code() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_service",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HTTP_CHILD", "keep")
        .env("TRACEALLOC_HTTP", "127.0.0.1:0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut announced = String::new();
    stderr.read_line(&mut announced).unwrap();
    let address: SocketAddr = announced
        .trim()
        .strip_prefix("tracealloc: serving heap profiles at http://")
        .and_then(|a| a.strip_suffix("/debug/pprof/"))
        .unwrap_or_else(|| panic!("announces its address: {announced:?}"))
        .parse()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // libtest prints the test's name first, on the same line.
    let mut kept = String::new();
    while !kept.contains("kept at line ") {
        kept.clear();
        if stdout.read_line(&mut kept).unwrap() == 0 {
            let _ = child.kill();
            panic!("the child never said where it kept its block");
        }
    }
    let at = kept.find("kept at line ").unwrap() + "kept at line ".len();
    let line: u32 = kept[at..].trim().parse().unwrap();
    let (status, _, body) = get(address, "/debug/pprof/heap");
    assert_eq!(status, 200);
    let heap = decode(&body);
    assert_eq!(
        heap.at_line("inuse_space", "tests/http.rs", line),
        7_777_777
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());

    // A bad value: one line, and the program runs on.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_service", "--test-threads=1"])
        .env("HTTP_CHILD", "linger")
        .env("TRACEALLOC_HTTP", "10.1.2.3:6060")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "TRACEALLOC_HTTP: cannot serve heap profiles at 10.1.2.3:6060: not a loopback address"
        ),
        "{stderr}"
    );
}
