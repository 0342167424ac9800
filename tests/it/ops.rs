//! The ops HTTP server under slow and idle connections, its connection limit, and a bad
//! `ops_addr` being fatal at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use akwatch::telemetry::{Metrics, OpsLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// File descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soft limit on open files (`ulimit -n`), from /proc.
fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn start(limits: OpsLimits) -> (std::net::SocketAddr, Arc<Metrics>) {
    let metrics = Metrics::new().unwrap();
    let listener = akwatch::telemetry::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(akwatch::telemetry::serve(listener, metrics.clone(), limits));
    (addr, metrics)
}

/// One GET on a new connection; the status line and body, or why it failed.
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Err("closed without a response".into());
    }
    Ok(out)
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// 1,100 connections that send nothing or half a request, then `/healthz`: it answers at once
/// (within 2 s), the connections past the limit are closed at once and the header timeout (1 s
/// here) closes the others. Before the limits, with `ulimit -n` 1024 the same flood took every
/// descriptor and `/healthz` did not answer at all (37 s, until the server was stopped).
#[test]
fn slow_connections_do_not_silence_healthz() {
    let mut n = 1100;
    if let Some(limit) = fd_limit()
        && limit < 2 * n + 200
    {
        n = (limit.saturating_sub(200)) / 2;
        eprintln!("notice: ulimit -n is {limit}: probing with {n} slow connections");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limits = OpsLimits {
            header_read_timeout: Duration::from_secs(1),
            ..OpsLimits::default()
        };
        let (addr, metrics) = start(limits).await;
        let before = open_fds();
        let t = Instant::now();
        let mut slow = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                // Half a request, never finished.
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await;
            }
            slow.push(s);
        }
        let opened = t.elapsed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = metrics.ops_connections.get();
        let fds = open_fds() - before;
        // The server holds at most its limit; the oldest were closed at once.
        assert!(held <= 256, "{held} connections held");
        let rejected = metrics.ops_connections_rejected.get();
        assert!(rejected as usize >= n - 256, "{rejected} rejected of {n}");

        // At the limit, the new connection is admitted and the oldest closed: the first try
        // answers.
        let t = Instant::now();
        let answer = get(addr, "/healthz").await.unwrap();
        let healthz = t.elapsed();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(healthz <= Duration::from_secs(2), "/healthz after {healthz:?}");

        // Every stalled connection is closed by the server (rejected at once or timed out).
        let t = Instant::now();
        for s in &mut slow {
            assert!(closed_within(s, Duration::from_secs(3)).await);
        }
        let all_closed = t.elapsed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(metrics.ops_connections.get(), 0);
        eprintln!(
            "slow-connection probe: {n} opened in {opened:?}; server held {held} (others rejected: {rejected}); \
             fds of this process +{fds} ({n} of them the client's); \
             /healthz answered after {healthz:?}; all stalled connections closed {all_closed:?} later; \
             ulimit -n {:?}",
            fd_limit()
        );
        drop(slow);
    });
}

/// A kept-alive connection that goes idle after a response is closed after the header timeout;
/// a request within it is served.
#[test]
fn idle_keep_alive_connections_are_closed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let limits = OpsLimits {
            header_read_timeout: Duration::from_millis(500),
            ..OpsLimits::default()
        };
        let (addr, metrics) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let t = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // /readyz answers, unready and saying why; /metrics carries the ops metrics.
        let r = get(addr, "/readyz").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains("unready: starting: the consumer is not subscribed yet"),
            "{r}"
        );
        metrics
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        metrics.heartbeat();
        metrics.set_broker(Ok(()));
        let r = get(addr, "/readyz").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ready"), "{r}");
        let m = get(addr, "/metrics").await.unwrap();
        assert!(
            m.contains("akwatch_ops_connections_rejected_total 0"),
            "{m}"
        );
        assert!(m.contains("akwatch_broker_up 1"), "{m}");
    });
}

/// Past the connection limit, the oldest connection is closed at once and counted, and the new
/// one served.
#[test]
fn connections_past_the_limit_are_closed_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let limits = OpsLimits {
            max_connections: 2,
            ..OpsLimits::default()
        };
        let (addr, metrics) = start(limits).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = get(addr, "/healthz").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            closed_within(&mut a, Duration::from_secs(1)).await,
            "the oldest is closed"
        );
        assert!(!closed_within(&mut b, Duration::from_millis(300)).await);
        assert_eq!(metrics.ops_connections_rejected.get(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.ops_connections.get(), 1, "b remains");
    });
}

#[test]
fn an_address_that_cannot_be_bound_is_an_error_naming_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = akwatch::telemetry::bind(&addr)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("ops_addr {addr:?}: cannot listen: ")),
            "{e}"
        );
        assert!(e.to_lowercase().contains("in use"), "{e}");
        let e = akwatch::telemetry::bind("no-such-host.invalid:9464")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ops_addr \"no-such-host.invalid:9464\": cannot listen: "),
            "{e}"
        );
    });
}

/// `akwatch run` with an `ops_addr` it cannot bind stops at start with the address and the cause
/// (no broker needed: it fails before consuming).
#[test]
fn run_with_an_unbindable_ops_addr_fails_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("akwatch.yaml");
    let rules = crate::repo().join("rules");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: 127.0.0.1:1\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\nrules: {}\nops_addr: {addr}\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("akwatch run still running after 30 s with an unbindable ops_addr");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("ops_addr {addr:?}: cannot listen: ")),
        "{stderr}"
    );
}
