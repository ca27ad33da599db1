//! The service with the model-free **test generator** of `tests/common`
//! (a deterministic coloured shell of Gaussians per prompt), for trying the
//! HTTP API by hand without models:
//!
//! ```text
//! cargo run -p splatforge-server --example test_server -- 127.0.0.1:10006 [delay_ms] [queue_size]
//! curl -F prompt="a red chair" http://127.0.0.1:10006/generate/ -o chair.ply
//! ```
//! Stops on SIGINT/SIGTERM after finishing queued work.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use splatforge_server::ServerConfig;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10006".into());
    let delay_ms: u64 = args
        .next()
        .map(|a| a.parse().expect("delay in ms"))
        .unwrap_or(0);
    let queue_size: usize = args
        .next()
        .map(|a| a.parse().expect("queue size"))
        .unwrap_or(8);
    let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let config = ServerConfig {
        host: host.into(),
        port: port.parse().expect("a port"),
        queue_size,
        ..ServerConfig::default()
    };
    let spec = common::TestGeneratorSpec::default().delay(Duration::from_millis(delay_ms));
    if let Err(e) = splatforge_server::run(config, spec.factory()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
