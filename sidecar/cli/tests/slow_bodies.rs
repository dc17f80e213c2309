//! Slow and idle clients against the real `abmesh serve` binary (issue 9,
//! item 2): request bodies must not hold memory they did not receive, must
//! arrive within `--body-read-timeout`, and may not together hold more than
//! `--body-bytes-in-flight`; idle connections must cost little and be
//! closed after `--header-read-timeout`. Meanwhile normal requests are
//! served.

use std::path::Path;
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

use abmesh_testkit::raw::{addr_of, live_within, post, raise_fd_limit, rss_bytes, Conn, Read1};

const MIB: u64 = 1 << 20;

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let data = dir.join("data");
    let log = dir.join("serve.log");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--ingest-body-limit".as_ref(),
        "64MiB".as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let (child, urls) = abmesh_testkit::serve::spawn_serve(args, &log);
    let url = urls.data;
    Server { child, url }
}

fn events_head(declared: u64) -> Vec<u8> {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    .into_bytes()
}

/// A normal, small ingest request on a fresh connection must get its 200.
fn good_request(url: &str, n: usize) {
    let body = format!(r#"[{{"user":"u{n}","metric":"m","id":"good-{n}"}}]"#);
    match abmesh_testkit::raw::request(
        addr_of(url),
        &post("/v1/events", body.as_bytes()),
        Duration::from_secs(10),
    ) {
        Read1::Response(r) => assert_eq!(r.status, 200, "{:?}", r.error()),
        other => panic!("a normal request failed: {other:?}"),
    }
}

#[test]
fn slow_bodies_hold_no_memory_time_out_and_do_not_block_others() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["--body-read-timeout", "4"]);
    let addr = addr_of(&srv.url);
    let pid = srv.child.id();
    good_request(&srv.url, 0);
    let before = rss_bytes(pid);

    // 200 clients each declare a 64 MiB body and send 2 bytes of it, in
    // two chunks (the old reader reserved the declared length at the
    // second chunk).
    let declared = 64 * MIB;
    let started = Instant::now();
    let mut conns: Vec<Conn> = (0..200)
        .map(|_| {
            let mut c = Conn::open(addr).unwrap();
            assert!(c.send(&events_head(declared)));
            assert!(c.send(b"["));
            c
        })
        .collect();
    sleep(Duration::from_millis(300));
    for c in &mut conns {
        assert!(c.send(b" "));
    }
    sleep(Duration::from_millis(700));
    let during = rss_bytes(pid);
    eprintln!(
        "RSS before {} MB, with 200 slow bodies {} MB",
        before / MIB,
        during / MIB
    );
    assert!(
        during < before + 50 * MIB,
        "200 slow bodies of 2 bytes grew RSS from {} MB to {} MB",
        before / MIB,
        during / MIB
    );
    // Others are served meanwhile.
    good_request(&srv.url, 1);
    assert!(live_within(addr, Duration::from_secs(5)) < Duration::from_secs(2));

    // Every slow body gets a 408 JSON error within the deadline (4 s from
    // its headers, with some slack), and its connection is closed.
    for (i, c) in conns.iter_mut().enumerate() {
        let left = Duration::from_secs(12).saturating_sub(started.elapsed());
        match c.read_response(left) {
            Read1::Response(r) => {
                assert_eq!(r.status, 408, "connection {i}: {r:?}");
                let msg = r.error().unwrap_or_default();
                assert!(msg.contains("did not arrive within 4 s"), "{msg}");
                assert_eq!(r.header("connection"), Some("close"));
            }
            other => panic!("connection {i}: no 408 but {other:?}"),
        }
        assert!(
            c.closed_within(Duration::from_secs(2)),
            "connection {i} stays open"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(4));
    drop(conns);
    sleep(Duration::from_millis(500));
    let after = rss_bytes(pid);
    eprintln!("RSS after they timed out: {} MB", after / MIB);
    assert!(
        after < before + 50 * MIB,
        "RSS stayed at {} MB after the slow bodies closed (before: {} MB)",
        after / MIB,
        before / MIB
    );
    good_request(&srv.url, 2);
}

#[test]
fn bodies_in_flight_are_capped_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(
        dir.path(),
        &[
            "--body-read-timeout",
            "30",
            "--body-bytes-in-flight",
            "64MiB",
        ],
    );
    let addr = addr_of(&srv.url);
    // Two clients each send 40 MiB of a 60 MiB body and stall: the second
    // would take the bodies in flight past 64 MiB.
    let chunk = vec![b' '; 40 << 20];
    let mut a = Conn::open(addr).unwrap();
    assert!(a.send(&events_head(60 * MIB)));
    assert!(a.send(b"["));
    assert!(a.send(&chunk));
    sleep(Duration::from_millis(500));
    let mut b = Conn::open(addr).unwrap();
    assert!(b.send(&events_head(60 * MIB)));
    assert!(b.send(b"["));
    // The server may close while this is still being written.
    let _ = b.send(&chunk);
    match b.read_response(Duration::from_secs(10)) {
        Read1::Response(r) => {
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(r.header("retry-after"), Some("1"));
            let msg = r.error().unwrap_or_default();
            assert!(msg.contains("--body-bytes-in-flight"), "{msg}");
        }
        other => panic!("no 503: {other:?}"),
    }
    // Small bodies still fit beside the first one.
    good_request(&srv.url, 1);
    // The first client gives up: its 40 MiB are released, and a body as
    // large as the second one goes through.
    drop(a);
    sleep(Duration::from_millis(300));
    let mut body = Vec::with_capacity(50 << 20);
    body.push(b'[');
    body.resize(50 << 20, b' ');
    body.extend_from_slice(br#"{"user":"big","metric":"m"}]"#);
    match abmesh_testkit::raw::request(addr, &post("/v1/events", &body), Duration::from_secs(30)) {
        Read1::Response(r) => assert_eq!(r.status, 200, "{:?}", r.error()),
        other => panic!("the large body after the release failed: {other:?}"),
    }
}

#[test]
fn idle_connections_cost_little_and_are_closed_after_the_header_timeout() {
    let fds = raise_fd_limit();
    assert!(
        fds > 4200,
        "the test needs 4200 open files, the limit is {fds}"
    );
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["--header-read-timeout", "5"]);
    let addr = addr_of(&srv.url);
    let pid = srv.child.id();
    good_request(&srv.url, 0);
    let before = rss_bytes(pid);
    // 2000 connections that send nothing, plus one that made a request
    // and stays open (keep-alive) without sending the next one.
    let mut idle = abmesh_testkit::raw::open_idle(addr, pid, 2000);
    let started = Instant::now();
    let mut kept = Conn::open(addr).unwrap();
    assert!(kept.send(&abmesh_testkit::raw::get("/v2/health/live")));
    assert!(
        matches!(kept.read_response(Duration::from_secs(5)), Read1::Response(r) if r.status == 200)
    );
    sleep(Duration::from_millis(500));
    let during = rss_bytes(pid);
    eprintln!(
        "RSS before {} MB, with 2000 idle connections {} MB",
        before / MIB,
        during / MIB
    );
    assert!(
        during < before + 50 * MIB,
        "2000 idle connections grew RSS from {} MB to {} MB",
        before / MIB,
        during / MIB
    );
    let t = live_within(addr, Duration::from_secs(5));
    assert!(t < Duration::from_secs(2), "a new request took {t:?}");
    good_request(&srv.url, 1);
    // hyper's header read timeout covers the wait for a first request and
    // for the next request on a kept-alive connection: both are closed.
    assert!(
        kept.closed_within(Duration::from_secs(10)),
        "an idle keep-alive connection stayed open"
    );
    for (i, c) in idle.iter_mut().enumerate() {
        let left = Duration::from_secs(15).saturating_sub(started.elapsed());
        assert!(c.closed_within(left), "idle connection {i} stayed open");
    }
    assert!(started.elapsed() >= Duration::from_secs(4));
    good_request(&srv.url, 2);
}
