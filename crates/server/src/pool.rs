//! Devices, their bounded queues and worker threads.
//!
//! Each device gets one loader thread that builds its generator through the
//! factory and warms it up, then `workers_per_device` worker threads that
//! share it. Workers pop jobs FIFO from the device's queue, skip jobs whose
//! token already fired, run the generator and the output encoding under
//! `catch_unwind`, and send exactly one reply per job; they share the
//! generator through [`Turns`]. A job whose client
//! left or timed out is withdrawn from its queue at once ([`Pool::withdraw`]),
//! so that its slot is free for the next request.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::generator::{
    BudgetedGeneration, CancelToken, Degradation, GenerationError, GenerationRequest, Generator,
    GeneratorFactory, Turns,
};
use crate::metrics::{DegradationLabels, DeviceLabels, Metrics, StageLabels};
use crate::output::{self, Encoded, OutputSpec};

/// One unit of work: a request, what to produce, its token and reply slot.
pub(crate) struct Job {
    /// Set by [`Pool::submit`]: what [`Pool::withdraw`] finds the job by.
    pub id: u64,
    pub request: GenerationRequest,
    pub output: OutputSpec,
    pub cancel: CancelToken,
    pub enqueued: Instant,
    /// When the client needs the answer (`X-Deadline-Ms`): the generator may degrade to
    /// meet it, and a job still queued then is not started.
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<JobResult>,
}

/// What a worker produced.
#[derive(Debug)]
pub(crate) struct JobOutput {
    pub encoded: Encoded,
    /// Queue wait, the generator's stages, then the server's own stages.
    pub timings: Vec<(String, Duration)>,
    pub gaussians: usize,
    pub device: u32,
    /// What the generator gave up to meet the deadline.
    pub degradations: Vec<Degradation>,
}

#[derive(Debug)]
pub(crate) enum JobFailure {
    Cancelled,
    OutOfMemory(String),
    BadInput(String),
    Failed(String),
    Panicked(String),
    /// The deadline passed while the job waited in the queue.
    DeadlineExceeded,
}

pub(crate) type JobResult = Result<JobOutput, JobFailure>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceState {
    Loading,
    Ready,
    Failed(String),
}

impl DeviceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceState::Loading => "loading",
            DeviceState::Ready => "ready",
            DeviceState::Failed(_) => "failed",
        }
    }
}

struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

pub(crate) struct Device {
    pub id: u32,
    pub workers: usize,
    pub capacity: usize,
    queue: Mutex<QueueState>,
    available: Condvar,
    running: AtomicUsize,
    state: Mutex<DeviceState>,
    generator: OnceLock<Arc<dyn Generator>>,
    /// Exponential moving average of job wall times, f64 seconds as bits (0 = none yet).
    avg_job_secs: AtomicU64,
}

impl Device {
    fn new(id: u32, workers: usize, capacity: usize) -> Self {
        Device {
            id,
            workers,
            capacity,
            queue: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            available: Condvar::new(),
            running: AtomicUsize::new(0),
            state: Mutex::new(DeviceState::Loading),
            generator: OnceLock::new(),
            avg_job_secs: AtomicU64::new(0),
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn depth(&self) -> usize {
        self.lock_queue().jobs.len()
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    pub fn state(&self) -> DeviceState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, s: DeviceState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn generator(&self) -> Option<&Arc<dyn Generator>> {
        self.generator.get()
    }

    /// Pushes unless full or closed; gives the job back otherwise.
    /// (Boxed: a job is too large to move back through every `Result` by value.)
    fn try_push(&self, job: Job) -> Result<(), Box<Job>> {
        let mut q = self.lock_queue();
        if q.closed || q.jobs.len() >= self.capacity {
            return Err(Box::new(job));
        }
        q.jobs.push_back(job);
        drop(q);
        self.available.notify_one();
        Ok(())
    }

    /// Takes a job out of the queue (`None` when a worker already took it).
    fn withdraw(&self, id: u64) -> Option<Job> {
        let mut q = self.lock_queue();
        let index = q.jobs.iter().position(|j| j.id == id)?;
        q.jobs.remove(index)
    }

    /// Blocks for the next job; `None` once closed and drained.
    fn pop(&self) -> Option<Job> {
        let mut q = self.lock_queue();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self.available.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        self.lock_queue().closed = true;
        self.available.notify_all();
    }

    fn record_job_time(&self, d: Duration) {
        let new = d.as_secs_f64();
        let old = f64::from_bits(self.avg_job_secs.load(Ordering::Relaxed));
        let avg = if old == 0.0 {
            new
        } else {
            0.7 * old + 0.3 * new
        };
        self.avg_job_secs
            .store(avg.max(1e-6).to_bits(), Ordering::Relaxed);
    }

    /// Seconds until a slot is likely to free up, for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        let avg = f64::from_bits(self.avg_job_secs.load(Ordering::Relaxed));
        if avg == 0.0 {
            return 5;
        }
        let ahead = (self.depth() + self.running()) as f64 / self.workers.max(1) as f64;
        (avg * ahead.max(1.0)).ceil().clamp(1.0, 60.0) as u64
    }
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    NotReady,
    QueueFull { retry_after_secs: u64 },
    ShuttingDown,
}

/// Where a submitted job waits: what [`Pool::withdraw`] takes.
pub(crate) struct Ticket {
    device: Arc<Device>,
    id: u64,
}

/// Loading progress as seen by `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoolStatus {
    Loading,
    Ready,
    Failed(String),
}

pub(crate) struct Pool {
    pub devices: Vec<Arc<Device>>,
    /// Parent of every job's token: cancelled at the shutdown deadline.
    pub root: CancelToken,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    next_job_id: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    status: watch::Sender<PoolStatus>,
}

impl Pool {
    /// Starts one loader thread per device; workers follow once loaded.
    pub fn start(
        devices: &[u32],
        workers_per_device: usize,
        queue_size: usize,
        factory: Arc<dyn GeneratorFactory>,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        let (status, _) = watch::channel(PoolStatus::Loading);
        let pool = Arc::new(Pool {
            devices: devices
                .iter()
                .map(|&id| Arc::new(Device::new(id, workers_per_device.max(1), queue_size)))
                .collect(),
            root: CancelToken::new(),
            metrics,
            draining: AtomicBool::new(false),
            next_job_id: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            status,
        });
        for device in &pool.devices {
            let (p, d, f) = (pool.clone(), device.clone(), factory.clone());
            let handle = std::thread::Builder::new()
                .name(format!("splatforge-load-{}", d.id))
                .spawn(move || load_device(p, d, f))
                .expect("spawning a loader thread");
            pool.push_thread(handle);
        }
        pool
    }

    fn push_thread(&self, h: JoinHandle<()>) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h);
    }

    pub fn subscribe(&self) -> watch::Receiver<PoolStatus> {
        self.status.subscribe()
    }

    fn update_status(&self) {
        let states: Vec<DeviceState> = self.devices.iter().map(|d| d.state()).collect();
        let status = if let Some(e) = states.iter().find_map(|s| match s {
            DeviceState::Failed(e) => Some(e.clone()),
            _ => None,
        }) {
            PoolStatus::Failed(e)
        } else if states.iter().all(|s| *s == DeviceState::Ready) {
            PoolStatus::Ready
        } else {
            PoolStatus::Loading
        };
        self.status.send_replace(status);
    }

    pub fn is_ready(&self) -> bool {
        self.devices.iter().all(|d| d.state() == DeviceState::Ready)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The generator name of the first loaded device.
    pub fn generator_name(&self) -> Option<String> {
        self.devices
            .iter()
            .find_map(|d| d.generator().map(|g| g.name().to_string()))
    }

    /// Queues a job on the least loaded ready device with room; a rejected job is dropped
    /// (its requester answers from the [`Rejection`]).
    pub fn submit(&self, mut job: Job) -> Result<Ticket, Rejection> {
        if self.is_draining() {
            return Err(Rejection::ShuttingDown);
        }
        if !self.is_ready() {
            return Err(Rejection::NotReady);
        }
        let mut order: Vec<&Arc<Device>> = self.devices.iter().collect();
        order.sort_by(|a, b| {
            let load = |d: &Device| (d.depth() + d.running()) as f64 / d.workers as f64;
            load(a).total_cmp(&load(b))
        });
        let id = self.next_job_id.fetch_add(1, Ordering::Relaxed);
        job.id = id;
        for d in &order {
            match d.try_push(job) {
                Ok(()) => {
                    return Ok(Ticket {
                        device: Arc::clone(d),
                        id,
                    })
                }
                Err(j) => job = *j,
            }
        }
        let retry_after_secs = order
            .iter()
            .map(|d| d.retry_after_secs())
            .min()
            .unwrap_or(5);
        Err(Rejection::QueueFull { retry_after_secs })
    }

    /// Takes a job that no one waits for any more out of its queue, freeing
    /// its slot at once; a job a worker already took is left to its token.
    pub fn withdraw(&self, ticket: &Ticket) {
        if ticket.device.withdraw(ticket.id).is_some() {
            self.metrics.count_job(ticket.device.id, "withdrawn");
        }
    }

    /// Closes every queue: workers finish what is queued, then exit.
    pub fn close(&self) {
        for d in &self.devices {
            d.close();
        }
    }

    /// Joins every thread (call after [`Pool::close`]); blocking.
    pub fn join(&self) {
        loop {
            let handles: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if handles.is_empty() {
                return;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn load_device(pool: Arc<Pool>, device: Arc<Device>, factory: Arc<dyn GeneratorFactory>) {
    let id = device.id;
    let loaded = catch_unwind(AssertUnwindSafe(
        || -> Result<Arc<dyn Generator>, String> {
            let g: Arc<dyn Generator> = Arc::new(Turns::new(Arc::from(
                factory
                    .build(id)
                    .map_err(|e| format!("device {id}: loading: {e}"))?,
            )));
            g.warm_up()
                .map_err(|e| format!("device {id}: warm-up: {e}"))?;
            Ok(g)
        },
    ))
    .unwrap_or_else(|p| {
        Err(format!(
            "device {id}: panic while loading: {}",
            panic_message(&*p)
        ))
    });
    match loaded {
        Ok(g) => {
            let _ = device.generator.set(g);
            for w in 0..device.workers {
                let (p, d) = (pool.clone(), device.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("splatforge-worker-{id}.{w}"))
                    .spawn(move || worker_loop(p, d))
                    .expect("spawning a worker thread");
                pool.push_thread(handle);
            }
            device.set_state(DeviceState::Ready);
        }
        Err(e) => {
            device.set_state(DeviceState::Failed(e));
            // Nobody will serve this queue: fail whatever got in.
            device.close();
            while let Some(job) = device.pop() {
                let _ = job
                    .reply
                    .send(Err(JobFailure::Failed("the device failed to load".into())));
            }
        }
    }
    pool.update_status();
}

fn worker_loop(pool: Arc<Pool>, device: Arc<Device>) {
    let generator = device
        .generator()
        .expect("workers start after loading")
        .clone();
    let dev = DeviceLabels { device: device.id };
    while let Some(job) = device.pop() {
        let metrics = &pool.metrics;
        let waited = job.enqueued.elapsed();
        if job.cancel.is_cancelled() {
            metrics.count_job(device.id, "skipped");
            let _ = job.reply.send(Err(JobFailure::Cancelled));
            continue;
        }
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            metrics.count_job(device.id, "deadline_exceeded");
            let _ = job.reply.send(Err(JobFailure::DeadlineExceeded));
            continue;
        }
        device.running.fetch_add(1, Ordering::AcqRel);
        metrics
            .queue_wait
            .get_or_create(&dev)
            .observe(waited.as_secs_f64());
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let t = Instant::now();
            let generation = match job.deadline {
                Some(deadline) => generator.generate_by(&job.request, deadline, &job.cancel),
                None => generator
                    .generate(&job.request, &job.cancel)
                    .map(|generation| BudgetedGeneration {
                        generation,
                        degradations: Vec::new(),
                    }),
            };
            let generate_time = t.elapsed();
            metrics
                .generation
                .get_or_create(&dev)
                .observe(generate_time.as_secs_f64());
            let BudgetedGeneration {
                generation,
                degradations,
            } = generation?;
            job.cancel.check()?;
            let mut timings = vec![("queue".to_string(), waited)];
            timings.extend(generation.stage_timings.iter().cloned());
            let encoded = output::encode(&generation.gaussians, &job.output, &job.cancel)?;
            timings.extend(encoded.timings.iter().cloned());
            Ok::<_, GenerationError>(JobOutput {
                gaussians: generation.gaussians.len(),
                encoded,
                timings,
                device: device.id,
                degradations,
            })
        }));
        let (outcome, reply) = match result {
            Ok(Ok(out)) => {
                for (stage, d) in &out.timings {
                    let stage = StageLabels {
                        stage: crate::generate::sanitize_stage(stage),
                    };
                    metrics.stage.get_or_create(&stage).observe(d.as_secs_f64());
                }
                for d in &out.degradations {
                    metrics
                        .degraded
                        .get_or_create(&DegradationLabels { change: d.change })
                        .inc();
                }
                ("ok", Ok(out))
            }
            Ok(Err(GenerationError::Cancelled)) => ("cancelled", Err(JobFailure::Cancelled)),
            Ok(Err(GenerationError::OutOfMemory(m))) => {
                ("out_of_memory", Err(JobFailure::OutOfMemory(m)))
            }
            Ok(Err(GenerationError::BadInput(m))) => ("bad_input", Err(JobFailure::BadInput(m))),
            Ok(Err(GenerationError::Failed(m))) => ("failed", Err(JobFailure::Failed(m))),
            Err(p) => ("panicked", Err(JobFailure::Panicked(panic_message(&*p)))),
        };
        device.record_job_time(started.elapsed());
        device.running.fetch_sub(1, Ordering::AcqRel);
        metrics.count_job(device.id, outcome);
        // The receiver is gone when the client left or timed out: nothing to do.
        let _ = job.reply.send(reply);
    }
}
