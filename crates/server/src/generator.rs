//! The seam between the service and whatever turns a prompt into Gaussians.
//!
//! The server owns queues, worker threads, timeouts, cancellation and HTTP;
//! a [`Generator`] only generates. One generator is built per device by a
//! [`GeneratorFactory`] (so models load once per device, at startup) and is
//! shared by that device's worker threads, which call it synchronously:
//! generation never runs on the async runtime's threads.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use splatforge_cuda::DeviceMemory;
use splatforge_splat::Gaussians;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRequest {
    /// The text prompt: non-empty, at most [`crate::MAX_PROMPT_CHARS`] characters; empty
    /// on an image server ([`crate::RequestInput::Image`]).
    pub prompt: String,
    /// Seed for reproducible results; `None` lets the generator choose.
    pub seed: Option<u64>,
    /// The image file's bytes (PNG, GIF, …, as sent) on an image server; `None` on a text
    /// server. Shared, so that a queued job stays small and clones do not copy the image.
    pub image: Option<Arc<Vec<u8>>>,
    /// The client needs the object's up along +Y (404's competition API, whose miners'
    /// files must show upright in SuperSplat). `false` leaves the generator's own frame: Y-up
    /// for the text pipeline, `save_ply`'s Y-down for TRELLIS (what the older subnet's
    /// TRELLIS miners sent on `/generate/`).
    pub y_up: bool,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub gaussians: Gaussians,
    /// Wall time of each stage, in order (e.g. `("diffusion", 1.2 s)`).
    /// Names should be short identifiers (`[A-Za-z0-9_-]`); others are
    /// sanitised in headers and metrics.
    pub stage_timings: Vec<(String, Duration)>,
}

/// One change a generator made to answer by a request's deadline: `change` is a short
/// identifier (the `splatforge_degraded_total{change}` label, e.g. `trellis_steps`),
/// `detail` what it became (e.g. `25+25->12+12`); both go into `X-Degraded`, so they are
/// visible ASCII without `,` or `;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degradation {
    pub change: &'static str,
    pub detail: String,
}

/// A generation made for a deadline, with what was given up to meet it (empty: nothing).
#[derive(Debug, Clone)]
pub struct BudgetedGeneration {
    pub generation: Generation,
    pub degradations: Vec<Degradation>,
}

/// Why a generation did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerationError {
    /// The job's [`CancelToken`] fired (client gone, timeout, shutdown).
    #[error("cancelled")]
    Cancelled,
    /// The device ran out of memory; the worker keeps serving.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The request's input cannot be turned into 3D (e.g. an image that does not decode,
    /// or shows no object); answered 400 with the message.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// The generator of one device. Implementations must be thread-safe: with
/// `--workers-per-device N > 1`, N threads call [`Generator::generate`]
/// concurrently on the same instance, unless [`Generator::concurrent`] says
/// no.
pub trait Generator: Send + Sync + 'static {
    /// Generates one splat. Long-running implementations should call
    /// [`CancelToken::check`] between stages and iterations and return
    /// [`GenerationError::Cancelled`] promptly once it fires. A panic is
    /// caught by the worker and answered with a 500; the worker continues.
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError>;

    /// [`Generator::generate`] for a request that should be answered by `deadline`. A
    /// generator that can estimate its time may do less (fewer sampler steps, a cheaper
    /// model) to finish by then, and says what it changed. The default ignores the deadline.
    fn generate_by(
        &self,
        request: &GenerationRequest,
        deadline: Instant,
        cancel: &CancelToken,
    ) -> Result<BudgetedGeneration, GenerationError> {
        let _ = deadline;
        Ok(BudgetedGeneration {
            generation: self.generate(request, cancel)?,
            degradations: Vec::new(),
        })
    }

    /// Runs once after construction, before the server reports ready (e.g. a
    /// tiny generation to compile kernels and allocate pools).
    fn warm_up(&self) -> Result<(), GenerationError>;

    /// A short name for `/version` and `/health` (e.g. `"pipeline:speed"`).
    fn name(&self) -> &str;

    /// Whether several workers may run [`Generator::generate`] on this instance at
    /// once. When not, the device's workers take turns for the generation itself and
    /// overlap only the rest (encoding, replies). The default, yes, suits generators
    /// whose work is thread-safe (CPU models, remote front ends).
    fn concurrent(&self) -> bool {
        true
    }

    /// The memory of the generator's device when it can tell (exported as
    /// `splatforge_device_memory_bytes` and
    /// `splatforge_device_memory_total_bytes`). Called at every scrape of
    /// `/metrics`, off the async runtime, so it may ask a driver.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
}

/// Boxed and shared generators are generators too (factories return
/// `Box<dyn Generator>`; an `Arc` shares one between owners).
macro_rules! delegate_generator {
    ($($pointer:ident),+) => {$(
        impl<G: Generator + ?Sized> Generator for $pointer<G> {
            fn generate(&self, request: &GenerationRequest, cancel: &CancelToken) -> Result<Generation, GenerationError> {
                (**self).generate(request, cancel)
            }
            fn generate_by(&self, request: &GenerationRequest, deadline: Instant, cancel: &CancelToken) -> Result<BudgetedGeneration, GenerationError> {
                (**self).generate_by(request, deadline, cancel)
            }
            fn warm_up(&self) -> Result<(), GenerationError> {
                (**self).warm_up()
            }
            fn name(&self) -> &str {
                (**self).name()
            }
            fn concurrent(&self) -> bool {
                (**self).concurrent()
            }
            fn device_memory(&self) -> Option<DeviceMemory> {
                (**self).device_memory()
            }
        }
    )+};
}

delegate_generator!(Box, Arc);

/// A device's generator shared by several workers: when the generator is not
/// [`Generator::concurrent`], one call runs at a time and the others wait for their
/// turn, which the generation reports as its first stage, `device_turn`. The one way
/// the server's workers and the fleet's slots share a generator.
pub struct Turns {
    inner: Arc<dyn Generator>,
    turn: Mutex<()>,
}

impl Turns {
    pub fn new(inner: Arc<dyn Generator>) -> Self {
        Turns {
            inner,
            turn: Mutex::new(()),
        }
    }

    /// Runs `f`, after waiting for the turn if the generator needs one; the wait, if any.
    fn in_turn<T>(&self, f: impl FnOnce() -> T) -> (T, Option<Duration>) {
        if self.inner.concurrent() {
            return (f(), None);
        }
        let asked = Instant::now();
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let waited = asked.elapsed();
        (f(), Some(waited))
    }
}

fn with_turn(mut generation: Generation, waited: Option<Duration>) -> Generation {
    if let Some(waited) = waited {
        generation
            .stage_timings
            .insert(0, ("device_turn".to_string(), waited));
    }
    generation
}

impl Generator for Turns {
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        // A request given up while it waited (client gone, timeout) does not take the device.
        let (generation, waited) = self.in_turn(|| {
            cancel.check()?;
            self.inner.generate(request, cancel)
        });
        Ok(with_turn(generation?, waited))
    }

    fn generate_by(
        &self,
        request: &GenerationRequest,
        deadline: Instant,
        cancel: &CancelToken,
    ) -> Result<BudgetedGeneration, GenerationError> {
        let (budgeted, waited) = self.in_turn(|| {
            cancel.check()?;
            self.inner.generate_by(request, deadline, cancel)
        });
        let BudgetedGeneration {
            generation,
            degradations,
        } = budgeted?;
        Ok(BudgetedGeneration {
            generation: with_turn(generation, waited),
            degradations,
        })
    }

    fn warm_up(&self) -> Result<(), GenerationError> {
        self.in_turn(|| self.inner.warm_up()).0
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        self.inner.device_memory()
    }
}

/// Builds the generator of one device (called once per device, on a
/// dedicated thread, at startup). Any `Fn(u32) -> Result<G, GenerationError>`
/// closure is a factory.
pub trait GeneratorFactory: Send + Sync + 'static {
    fn build(&self, device: u32) -> Result<Box<dyn Generator>, GenerationError>;
}

impl<F, G> GeneratorFactory for F
where
    F: Fn(u32) -> Result<G, GenerationError> + Send + Sync + 'static,
    G: Generator,
{
    fn build(&self, device: u32) -> Result<Box<dyn Generator>, GenerationError> {
        self(device).map(|g| Box::new(g) as Box<dyn Generator>)
    }
}

/// A cheap, cloneable cancellation flag. Clones share the flag; a
/// [`CancelToken::child`] is also cancelled when its parent is (the server
/// gives every job a child of its shutdown token).
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    parent: Option<CancelToken>,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled by its own [`cancel`](Self::cancel) or its parent's.
    pub fn child(&self) -> Self {
        CancelToken {
            inner: Arc::new(Inner {
                cancelled: AtomicBool::new(false),
                parent: Some(self.clone()),
            }),
        }
    }

    /// Fires the token (idempotent). Does not affect the parent.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        let mut t = self;
        loop {
            if t.inner.cancelled.load(Ordering::Acquire) {
                return true;
            }
            match &t.inner.parent {
                Some(p) => t = p,
                None => return false,
            }
        }
    }

    /// `Break` once the token fired, else `Continue`: the answer of a progress
    /// callback that stops a run on cancellation.
    pub fn control_flow(&self) -> ControlFlow<()> {
        if self.is_cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// `Err(GenerationError::Cancelled)` once the token fired: use with `?`
    /// between stages and iterations.
    pub fn check(&self) -> Result<(), GenerationError> {
        if self.is_cancelled() {
            Err(GenerationError::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_and_children_follow_parents() {
        let root = CancelToken::new();
        let a = root.child();
        let b = a.clone();
        let c = a.child();
        assert!(!b.is_cancelled() && b.check().is_ok());
        b.cancel();
        assert!(a.is_cancelled() && c.is_cancelled());
        assert_eq!(c.check(), Err(GenerationError::Cancelled));
        assert!(!root.is_cancelled(), "a child does not cancel its parent");
        let d = root.child();
        root.cancel();
        assert!(d.is_cancelled());
    }

    /// Counts the calls inside `generate_by` at once; says whether it is concurrent.
    struct Overlaps {
        concurrent: bool,
        inside: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl Generator for Overlaps {
        fn generate(
            &self,
            _: &GenerationRequest,
            _: &CancelToken,
        ) -> Result<Generation, GenerationError> {
            Err(GenerationError::Failed("only generate_by".into()))
        }

        fn generate_by(
            &self,
            _: &GenerationRequest,
            _: Instant,
            _: &CancelToken,
        ) -> Result<BudgetedGeneration, GenerationError> {
            let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            self.inside.fetch_sub(1, Ordering::SeqCst);
            Ok(BudgetedGeneration {
                generation: Generation {
                    gaussians: Gaussians::default(),
                    stage_timings: vec![("work".into(), Duration::from_millis(100))],
                },
                degradations: vec![Degradation {
                    change: "steps",
                    detail: "2->1".into(),
                }],
            })
        }

        fn warm_up(&self) -> Result<(), GenerationError> {
            Ok(())
        }

        fn name(&self) -> &str {
            "overlaps"
        }

        fn concurrent(&self) -> bool {
            self.concurrent
        }
    }

    /// Three threads through `Turns::generate_by`: the most calls inside at once, and each
    /// answer's stage names and degradations.
    fn three_at_once(concurrent: bool) -> (usize, Vec<(Vec<String>, usize)>) {
        let inner = Arc::new(Overlaps {
            concurrent,
            inside: Default::default(),
            most: Default::default(),
        });
        let turns = Arc::new(Turns::new(inner.clone()));
        let request = GenerationRequest {
            prompt: "a lamp".into(),
            seed: None,
            image: None,
            y_up: false,
        };
        let answers = std::thread::scope(|s| {
            let runs: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let deadline = Instant::now() + Duration::from_secs(5);
                        let b = turns
                            .generate_by(&request, deadline, &CancelToken::new())
                            .unwrap();
                        let names = b.generation.stage_timings.into_iter().map(|(n, _)| n);
                        (names.collect(), b.degradations.len())
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        (inner.most.load(Ordering::SeqCst), answers)
    }

    #[test]
    fn a_request_cancelled_before_its_turn_does_not_reach_the_generator() {
        let inner = Arc::new(Overlaps {
            concurrent: false,
            inside: Default::default(),
            most: Default::default(),
        });
        let turns = Turns::new(inner.clone());
        let request = GenerationRequest {
            prompt: "a lamp".into(),
            seed: None,
            image: None,
            y_up: false,
        };
        let cancel = CancelToken::new();
        cancel.cancel();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            turns.generate_by(&request, deadline, &cancel).unwrap_err(),
            GenerationError::Cancelled
        );
        assert_eq!(inner.most.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn turns_run_a_generator_that_is_not_concurrent_one_call_at_a_time() {
        let (most, answers) = three_at_once(false);
        assert_eq!(most, 1);
        for (stages, degradations) in answers {
            assert_eq!(stages, ["device_turn", "work"]);
            assert_eq!(degradations, 1);
        }
        let (most, answers) = three_at_once(true);
        assert!(most > 1, "a concurrent generator is not held back: {most}");
        assert!(answers.iter().all(|(stages, _)| stages == &["work"]));
    }
}
