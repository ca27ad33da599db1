//! A real `redis-server` for tests: a free loopback port, a temporary
//! directory, append-only file on (`appendfsync always`, so that a restart
//! loses nothing), stopped when dropped, restartable on the same port and
//! data.
//!
//! Tests call [`TestRedis::start_or_skip`]: without a `redis-server` binary
//! it prints why the test is skipped and returns `None`, except under CI
//! (`CI` set), where `.ci/run` installs Redis and a missing binary fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary: `$REDIS_SERVER` or `redis-server` on the `PATH`.
pub fn redis_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    })
}

pub struct TestRedis {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts a server, or explains the skip (see the module docs).
    pub fn start_or_skip(test: &str) -> Option<TestRedis> {
        match redis_server_binary() {
            Some(binary) => Some(TestRedis::start(binary)),
            None if std::env::var_os("CI").is_some() => {
                panic!("{test}: no redis-server binary under CI (.ci/run installs Debian's redis-server)")
            }
            None => {
                eprintln!("SKIPPED {test}: no redis-server binary (apt-get install redis-server, or set REDIS_SERVER)");
                None
            }
        }
    }

    fn start(binary: PathBuf) -> TestRedis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = TestRedis {
            binary,
            dir,
            port,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (SIGKILL: only what the append-only file holds
    /// survives) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
