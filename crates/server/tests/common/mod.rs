//! Test harness: a model-free **test generator** and a real server on an
//! ephemeral loopback port.
//!
//! `TestGenerator` builds a valid splat deterministically from the prompt
//! and seed (a coloured shell of Gaussians whose colour, size and jitter come
//! from a hash of both), and follows a script of behaviours, one per
//! `generate` call, so that tests can make it sleep, fail, report out of
//! memory or panic. Once the script is used up every call is `Ok` after the
//! default delay. It records what it saw, including cancelled tokens.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use splatforge_server::{
    bind, CancelToken, DeviceMemory, Generation, GenerationError, GenerationRequest, Generator,
    ServerConfig, ServerError,
};
use splatforge_splat::{logit, Gaussians, SH_C0};

/// What one `generate` call does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Succeed after the default delay.
    Ok,
    /// Succeed after this long, checking the token every few ms.
    Sleep(Duration),
    Fail,
    OutOfMemory,
    Panic,
}

/// What the generators of one server saw (shared by all its devices).
#[derive(Default)]
pub struct Stats {
    pub calls: AtomicUsize,
    pub completed: AtomicUsize,
    /// Calls that noticed their token fired and returned `Cancelled`.
    pub cancelled: AtomicUsize,
    pub active: AtomicUsize,
    pub max_active: AtomicUsize,
    pub warm_ups: AtomicUsize,
    pub prompts: Mutex<Vec<String>>,
}

impl Stats {
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// Knobs shared by every device's generator of one server.
#[derive(Clone)]
pub struct TestGeneratorSpec {
    pub gaussians: usize,
    pub delay: Duration,
    pub warm_up: Duration,
    pub script: Arc<Mutex<VecDeque<Behaviour>>>,
    pub stats: Arc<Stats>,
    /// The factory fails for this device.
    pub fail_to_load: Option<u32>,
    /// What [`Generator::concurrent`] answers.
    pub concurrent: bool,
}

impl Default for TestGeneratorSpec {
    fn default() -> Self {
        TestGeneratorSpec {
            gaussians: 800,
            delay: Duration::ZERO,
            warm_up: Duration::ZERO,
            script: Arc::default(),
            stats: Arc::default(),
            fail_to_load: None,
            concurrent: true,
        }
    }
}

impl TestGeneratorSpec {
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn warm_up(mut self, d: Duration) -> Self {
        self.warm_up = d;
        self
    }
    /// Appends behaviours for the next calls, in order.
    pub fn then(self, b: Behaviour) -> Self {
        self.script.lock().unwrap().push_back(b);
        self
    }
    /// Generators that ask their workers to take turns.
    pub fn not_concurrent(mut self) -> Self {
        self.concurrent = false;
        self
    }
    pub fn fail_to_load(mut self, device: u32) -> Self {
        self.fail_to_load = Some(device);
        self
    }

    /// The factory the server gets.
    pub fn factory(
        &self,
    ) -> impl Fn(u32) -> Result<TestGenerator, GenerationError> + Send + Sync + 'static {
        let spec = self.clone();
        move |device| {
            if spec.fail_to_load == Some(device) {
                return Err(GenerationError::Failed(format!(
                    "test: device {device} has no models"
                )));
            }
            Ok(TestGenerator {
                spec: spec.clone(),
                device,
            })
        }
    }
}

/// The test generator (see the module docs).
pub struct TestGenerator {
    spec: TestGeneratorSpec,
    device: u32,
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// The deterministic splat for a prompt and seed: `n` Gaussians on a
/// Fibonacci shell of radius ~0.5, one hue per prompt, random rotations.
pub fn test_splat(prompt: &str, seed: Option<u64>, n: usize) -> Gaussians {
    let h = fnv1a(
        prompt.as_bytes(),
        0xcbf2_9ce4_8422_2325 ^ seed.unwrap_or(0).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut rng = Rng(h | 1);
    let base = [rng.next(), rng.next(), rng.next()];
    let size = 0.02 + 0.03 * rng.next();
    let mut g = Gaussians::with_capacity(n, 0);
    let golden = std::f32::consts::PI * (3.0 - 5f32.sqrt());
    for i in 0..n {
        let y = 1.0 - 2.0 * (i as f32 + 0.5) / n as f32;
        let r = (1.0 - y * y).sqrt();
        let phi = golden * i as f32;
        let radius = 0.5 * (0.95 + 0.1 * rng.next());
        g.means
            .push([radius * r * phi.cos(), radius * y, radius * r * phi.sin()]);
        g.log_scales.push([
            (size * (0.8 + 0.4 * rng.next())).ln(),
            size.ln(),
            (size * 0.5).ln(),
        ]);
        let q = [
            rng.next() + 0.1,
            rng.next() - 0.5,
            rng.next() - 0.5,
            rng.next() - 0.5,
        ];
        g.rotations.push(q);
        g.opacity_logits.push(logit(0.6 + 0.3 * rng.next()));
        let shade = 0.7 + 0.3 * (y * 0.5 + 0.5);
        g.sh_dc
            .push(base.map(|c| ((c * shade).clamp(0.02, 0.98) - 0.5) / SH_C0));
    }
    g
}

impl TestGenerator {
    fn wait(&self, d: Duration, cancel: &CancelToken) -> Result<(), GenerationError> {
        let end = Instant::now() + d;
        loop {
            if cancel.is_cancelled() {
                self.spec.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                return Err(GenerationError::Cancelled);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(5)));
        }
    }

    fn run(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let behaviour = self
            .spec
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Behaviour::Ok);
        let t = Instant::now();
        match behaviour {
            Behaviour::Ok => self.wait(self.spec.delay, cancel)?,
            Behaviour::Sleep(d) => self.wait(d, cancel)?,
            Behaviour::Fail => {
                return Err(GenerationError::Failed("test: scripted failure".into()))
            }
            Behaviour::OutOfMemory => {
                return Err(GenerationError::OutOfMemory(
                    "test: CUDA_ERROR_OUT_OF_MEMORY (scripted)".into(),
                ))
            }
            Behaviour::Panic => panic!("test: scripted panic"),
        }
        let waited = t.elapsed();
        let t = Instant::now();
        let gaussians = test_splat(&request.prompt, request.seed, self.spec.gaussians);
        Ok(Generation {
            gaussians,
            stage_timings: vec![("think".into(), waited), ("layout".into(), t.elapsed())],
        })
    }
}

impl Generator for TestGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let s = &self.spec.stats;
        s.calls.fetch_add(1, Ordering::SeqCst);
        s.prompts.lock().unwrap().push(request.prompt.clone());
        let active = s.active.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_active.fetch_max(active, Ordering::SeqCst);
        struct Leave<'a>(&'a Stats);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(s);
        let r = self.run(request, cancel);
        if r.is_ok() {
            s.completed.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn warm_up(&self) -> Result<(), GenerationError> {
        std::thread::sleep(self.spec.warm_up);
        self.spec.stats.warm_ups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn name(&self) -> &str {
        "test-generator"
    }

    fn concurrent(&self) -> bool {
        self.spec.concurrent
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        Some(DeviceMemory {
            used_bytes: 1_000_000 + self.device as u64,
            total_bytes: 8_000_000,
        })
    }
}

/// A server running on 127.0.0.1:<ephemeral> inside the test's runtime.
pub struct TestServer {
    pub base: String,
    pub spec: TestGeneratorSpec,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

/// A loopback config with test-sized defaults (queue 4, timeout 10 s,
/// shutdown deadline 10 s).
pub fn test_config() -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        queue_size: 4,
        timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

impl TestServer {
    /// Binds, starts serving, and returns at once (not necessarily ready).
    pub async fn start(config: ServerConfig, spec: TestGeneratorSpec) -> TestServer {
        let bound = bind(config).expect("binding a loopback port");
        let base = format!("http://{}", bound.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(bound.serve(spec.factory(), async move {
            let _ = rx.await;
        }));
        TestServer {
            base,
            spec,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A handle on a running server's address, for tasks (cannot stop it).
    pub fn handle_for(base: String, spec: TestGeneratorSpec) -> TestServer {
        TestServer {
            base,
            spec,
            shutdown: None,
            handle: None,
        }
    }

    /// Starts and waits for `/health` to say 200.
    pub async fn ready(config: ServerConfig, spec: TestGeneratorSpec) -> TestServer {
        let s = Self::start(config, spec).await;
        s.wait_ready().await;
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stats(&self) -> &Stats {
        &self.spec.stats
    }

    pub async fn wait_ready(&self) {
        let c = client();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = c.get(self.url("/health")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < end, "server not ready after 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fires the shutdown future (without waiting).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.trigger_shutdown();
        self.join().await
    }

    /// Waits for `serve` to return (after a shutdown or a failed start).
    pub async fn join(&mut self) -> Result<(), ServerError> {
        let h = self.handle.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("serve returned within 20 s")
            .expect("serve task")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Reads one sample's value from Prometheus text; 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// POSTs a multipart form to `/generate/`.
pub async fn post_generate(
    c: &reqwest::Client,
    s: &TestServer,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    c.post(s.url("/generate/"))
        .multipart(form)
        .send()
        .await
        .expect("request sent")
}
