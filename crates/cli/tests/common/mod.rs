//! What the tests that start `splatforge` share: tiny models written by the real
//! binary, raw HTTP/1.1 requests over a socket (chunked answers decoded) and a served
//! process killed when dropped.

// Each test crate compiles its own copy of this module and uses only some of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `splatforge models ARGS… DIR/NAME` (e.g. `make-tiny`, or `make-random --family trellis
/// --size tiny`); fails the test when it fails. Returns the folder.
pub fn make_models(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let models = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .arg("models")
        .args(args)
        .arg(&models)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    models
}

pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response { status, head, body }
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post(addr: SocketAddr, content_type: &str, body: &[u8]) -> Response {
    post_to(addr, "/generate/", content_type, body)
}

pub fn post_to(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Response {
    post_with_headers(addr, path, content_type, &[], body)
}

/// [`post_to`] with extra request headers (`name`, `value`).
pub fn post_with_headers(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    request(addr, &[head.as_bytes(), body].concat())
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// `splatforge serve --host 127.0.0.1 --port 0 ARGS…`, once it has printed the address it
    /// listens on (≤ 120 s). `on_line` sees every line of its stderr, which is also echoed
    /// as `[serve] …`.
    pub fn start<I, S>(args: I, mut on_line: impl FnMut(&str) + Send + 'static) -> Server
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_splatforge"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
                on_line(&line);
                eprintln!("[serve] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server prints its address");
        Server {
            child,
            addr: addr.parse().unwrap(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `/health` to turn 200; until then it must answer 503 (loading, warming up).
pub fn wait_healthy(addr: SocketAddr) {
    let t0 = Instant::now();
    loop {
        let r = get(addr, "/health");
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.head);
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "never became healthy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `splatforge ARGS…`, run to completion.
pub fn splatforge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// A test's path as the `&str` an argument list takes.
pub fn path_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A process's output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The shared fixture `ghost_rgba.png` (`../shared/fixtures` beside the repository).
pub fn ghost_fixture() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/ghost_rgba.png");
    assert!(path.is_file(), "{} is missing", path.display());
    path
}
