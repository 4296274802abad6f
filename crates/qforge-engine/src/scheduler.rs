//! Continuous batching: one thread owns the [`Engine`] and steps every running sequence
//! together; new requests join the batch between steps, finished and cancelled ones leave it.
//!
//! Bounds: at most `max_seqs` sequences run at once, their reserved KV memory (prompt plus
//! maximum new tokens) stays under `max_kv_bytes`, and at most `max_queue` requests wait.
//! A full queue is refused at once (the server answers 429). A request whose receiver is
//! dropped (client gone) leaves the batch at the next step. Prompts that start like an earlier
//! one restore its keys and values from the [`PrefixCache`] (within `prefix_cache_bytes`)
//! and prefill only the rest.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::engine::{Engine, GenerationRequest, Sequence, TokenEvent};
use crate::error::EngineError;
use crate::prefix_cache::PrefixCache;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences decoded together at most.
    pub max_seqs: usize,
    /// Requests waiting at most; beyond, `submit` fails with `QueueFull`.
    pub max_queue: usize,
    /// KV-cache bytes reserved by running sequences at most.
    pub max_kv_bytes: usize,
    /// Keys and values of prompt prefixes kept for reuse, in bytes at most (0: no prefix cache).
    pub prefix_cache_bytes: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_seqs: 32,
            max_queue: 256,
            max_kv_bytes: 4 << 30,
            prefix_cache_bytes: 1 << 30,
        }
    }
}

/// What a submitted request receives.
#[derive(Debug)]
pub enum SeqEvent {
    /// The sequence joined the running batch (its prompt is being processed).
    Started,
    Token(TokenEvent),
    /// The request failed; no more events follow.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error("the request needs {needed} bytes of KV cache; the server allows {allowed}")]
    TooLarge { needed: usize, allowed: usize },
    #[error("the scheduler has shut down")]
    Closed,
    #[error(transparent)]
    Invalid(#[from] EngineError),
}

/// Latency histogram with fixed buckets (seconds), Prometheus style.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            out.push_str(&format!(
                "{name}_bucket{{le=\"{b}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {count}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const TOKEN_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// Counters the scheduler and the server update; rendered as Prometheus text.
#[derive(Debug)]
pub struct Metrics {
    pub requests_started: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found (vLLM's
    /// `prefix_cache_queries` / `prefix_cache_hits`; the hit rate is their ratio).
    pub prefix_cache_queries: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_bytes: AtomicUsize,
    pub generated_tokens: AtomicU64,
    pub queue_depth: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_reserved_bytes: AtomicUsize,
    pub kv_allocated_bytes: AtomicUsize,
    pub steps: AtomicU64,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub request_latency: Histogram,
    pub queue_time: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests_started: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            prefix_cache_queries: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            prefix_cache_bytes: AtomicUsize::new(0),
            generated_tokens: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_reserved_bytes: AtomicUsize::new(0),
            kv_allocated_bytes: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            time_to_first_token: Histogram::new(LATENCY_BUCKETS),
            time_per_output_token: Histogram::new(TOKEN_BUCKETS),
            request_latency: Histogram::new(LATENCY_BUCKETS),
            queue_time: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "qforge_requests_started_total",
            "Requests admitted into the running batch.",
            get(&self.requests_started),
        );
        counter(
            "qforge_requests_finished_total",
            "Requests that completed.",
            get(&self.requests_finished),
        );
        counter(
            "qforge_requests_cancelled_total",
            "Requests whose client went away before the end.",
            get(&self.requests_cancelled),
        );
        counter(
            "qforge_requests_rejected_total",
            "Requests refused (queue full or too large).",
            get(&self.requests_rejected),
        );
        counter(
            "qforge_requests_failed_total",
            "Requests that failed during generation.",
            get(&self.requests_failed),
        );
        counter(
            "qforge_prompt_tokens_total",
            "Prompt tokens processed.",
            get(&self.prompt_tokens),
        );
        counter(
            "qforge_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            get(&self.prefix_cache_queries),
        );
        counter(
            "qforge_prefix_cache_hits_total",
            "Prompt tokens whose keys and values came from the prefix cache.",
            get(&self.prefix_cache_hits),
        );
        counter(
            "qforge_generation_tokens_total",
            "Tokens generated.",
            get(&self.generated_tokens),
        );
        counter(
            "qforge_engine_steps_total",
            "Batched engine steps.",
            get(&self.steps),
        );
        let mut gauge = |name: &str, help: &str, v: usize| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        };
        let getu = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        gauge(
            "qforge_queue_depth",
            "Requests waiting to join the batch.",
            getu(&self.queue_depth),
        );
        gauge(
            "qforge_running_sequences",
            "Sequences in the running batch.",
            getu(&self.running),
        );
        gauge(
            "qforge_kv_reserved_bytes",
            "KV-cache bytes reserved by running sequences.",
            getu(&self.kv_reserved_bytes),
        );
        gauge(
            "qforge_kv_allocated_bytes",
            "KV-cache bytes allocated by running sequences.",
            getu(&self.kv_allocated_bytes),
        );
        gauge(
            "qforge_prefix_cache_bytes",
            "Key and value bytes held by the prefix cache.",
            getu(&self.prefix_cache_bytes),
        );
        let queries = get(&self.prefix_cache_queries);
        out.push_str(&format!(
            "# HELP qforge_prefix_cache_hit_rate Prompt tokens found in the prefix cache over \
             those looked up.\n# TYPE qforge_prefix_cache_hit_rate gauge\n\
             qforge_prefix_cache_hit_rate {}\n",
            if queries == 0 {
                0.0
            } else {
                get(&self.prefix_cache_hits) as f64 / queries as f64
            }
        ));
        self.time_to_first_token.render(
            "qforge_time_to_first_token_seconds",
            "Time from arrival to the first token.",
            &mut out,
        );
        self.time_per_output_token.render(
            "qforge_time_per_output_token_seconds",
            "Time between tokens of one sequence.",
            &mut out,
        );
        self.request_latency.render(
            "qforge_request_latency_seconds",
            "Time from arrival to the last token.",
            &mut out,
        );
        self.queue_time.render(
            "qforge_queue_time_seconds",
            "Time waiting before joining the batch.",
            &mut out,
        );
        out
    }
}

struct Job {
    request: GenerationRequest,
    events: UnboundedSender<SeqEvent>,
    arrived: Instant,
    reserved: usize,
}

struct Running {
    seq: Sequence,
    events: UnboundedSender<SeqEvent>,
    arrived: Instant,
    last_token: Option<Instant>,
    reserved: usize,
    /// Its prompt's blocks are in the prefix cache (done after its first step).
    prefix_stored: bool,
}

/// A handle to the scheduler thread; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    tx: Sender<Job>,
    /// Requests submitted and not yet admitted (or cancelled): the queue `max_queue` bounds.
    /// Counted here, not by the channel, because the scheduler thread drains the channel into
    /// its own waiting list at every step.
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    config: SchedulerConfig,
    kv_bytes_per_token: usize,
    engine: Engine,
}

impl Scheduler {
    pub fn spawn(engine: Engine, config: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let c = engine.model().config();
        let kv_bytes_per_token = 2
            * c.num_hidden_layers
            * c.num_key_value_heads
            * c.head_dim
            * engine.model().dtype().size_in_bytes();
        {
            // The thread ends once every handle (and so the sender) is gone and its work is done.
            let (engine, config, metrics) = (engine.clone(), config.clone(), metrics.clone());
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name("qforge-scheduler".into())
                .spawn(move || run(engine, config, metrics, waiting, rx))
                .expect("spawning the scheduler thread");
        }
        Self {
            tx,
            waiting,
            metrics,
            config,
            kv_bytes_per_token,
            engine,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues a request. Events arrive on the returned receiver; dropping it cancels.
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<UnboundedReceiver<SeqEvent>, SubmitError> {
        // Validate here so bad requests fail before queueing.
        self.engine.start(0, request.clone())?;
        let max_ctx = self.engine.model().config().max_position_embeddings;
        let tokens = (request.prompt_ids.len() + request.stop.max_new_tokens).min(max_ctx);
        let reserved = tokens * self.kv_bytes_per_token;
        let reject = |error| {
            self.metrics
                .requests_rejected
                .fetch_add(1, Ordering::Relaxed);
            Err(error)
        };
        if reserved > self.config.max_kv_bytes {
            return reject(SubmitError::TooLarge {
                needed: reserved,
                allowed: self.config.max_kv_bytes,
            });
        }
        let (events, rx) = unbounded_channel();
        let job = Job {
            request,
            events,
            arrived: Instant::now(),
            reserved,
        };
        let max_queue = self.config.max_queue.max(1);
        if self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_queue).then_some(n + 1)
            })
            .is_err()
        {
            return reject(SubmitError::QueueFull(self.config.max_queue));
        }
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.send(job) {
            Ok(()) => Ok(rx),
            Err(_) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                reject(SubmitError::Closed)
            }
        }
    }
}

fn run(
    engine: Engine,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    rx: Receiver<Job>,
) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut reserved = 0usize;
    let mut disconnected = false;
    let mut prefixes = PrefixCache::new(config.prefix_cache_bytes);
    loop {
        // Pull everything queued; block only when there is nothing to do.
        loop {
            let job = if running.is_empty() && waiting.is_empty() {
                if disconnected {
                    return;
                }
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => Some(j),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        disconnected = true;
                        None
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(std::sync::mpsc::TryRecvError::Empty) => None,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        disconnected = true;
                        None
                    }
                }
            };
            match job {
                Some(j) => waiting.push_back(j),
                None => break,
            }
        }
        // Clients that left while waiting.
        waiting.retain(|j| {
            let gone = j.events.is_closed();
            if gone {
                queued.fetch_sub(1, Ordering::AcqRel);
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        // Admit in arrival order while there is room.
        while let Some(job) = waiting.front() {
            if running.len() >= config.max_seqs || reserved + job.reserved > config.max_kv_bytes {
                break;
            }
            let job = waiting.pop_front().expect("front exists");
            queued.fetch_sub(1, Ordering::AcqRel);
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            metrics
                .queue_time
                .observe(job.arrived.elapsed().as_secs_f64());
            let started = engine.start(0, job.request).and_then(|mut seq| {
                if prefixes.is_enabled() && !seq.has_visual() {
                    let version = engine.model().weights_version();
                    metrics
                        .prefix_cache_queries
                        .fetch_add(seq.prompt_len() as u64, Ordering::Relaxed);
                    if let Some(prefix) = prefixes.lookup(seq.prompt(), version)? {
                        metrics
                            .prefix_cache_hits
                            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
                        seq.reuse_prefix(prefix)?;
                    }
                }
                Ok(seq)
            });
            match started {
                Ok(seq) => {
                    metrics.requests_started.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .prompt_tokens
                        .fetch_add(seq.prompt_len() as u64, Ordering::Relaxed);
                    let _ = job.events.send(SeqEvent::Started);
                    reserved += job.reserved;
                    running.push(Running {
                        seq,
                        events: job.events,
                        arrived: job.arrived,
                        last_token: None,
                        reserved: job.reserved,
                        prefix_stored: false,
                    });
                }
                Err(e) => {
                    metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
                    let _ = job.events.send(SeqEvent::Error(e.to_string()));
                }
            }
        }
        // Cancel sequences whose client is gone: they leave the batch now.
        running.retain(|r| {
            let gone = r.events.is_closed();
            if gone {
                metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                reserved -= r.reserved;
            }
            !gone
        });
        metrics.running.store(running.len(), Ordering::Relaxed);
        metrics.kv_reserved_bytes.store(reserved, Ordering::Relaxed);
        if running.is_empty() {
            continue;
        }
        let result = {
            let mut refs: Vec<&mut Sequence> = running.iter_mut().map(|r| &mut r.seq).collect();
            engine.step(&mut refs)
        };
        metrics.steps.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(events) => {
                let now = Instant::now();
                for event in events {
                    let r = &mut running[event.index];
                    match r.last_token {
                        None => metrics
                            .time_to_first_token
                            .observe((now - r.arrived).as_secs_f64()),
                        Some(t) => metrics
                            .time_per_output_token
                            .observe((now - t).as_secs_f64()),
                    }
                    r.last_token = Some(now);
                    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    if event.finish.is_some() {
                        metrics.requests_finished.fetch_add(1, Ordering::Relaxed);
                        metrics
                            .request_latency
                            .observe((now - r.arrived).as_secs_f64());
                    }
                    let _ = r.events.send(SeqEvent::Token(event));
                }
            }
            Err(e) => {
                // A failed step leaves the caches in an unknown state: fail the whole batch.
                let message = e.to_string();
                for r in running.drain(..) {
                    metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
                    let _ = r.events.send(SeqEvent::Error(message.clone()));
                }
                reserved = 0;
            }
        }
        metrics.kv_allocated_bytes.store(
            running.iter().map(|r| r.seq.cache_bytes()).sum(),
            Ordering::Relaxed,
        );
        // The prompts prefilled by this step go into the prefix cache. A failure to copy only
        // loses the reuse.
        let version = engine.model().weights_version();
        for r in running
            .iter_mut()
            .filter(|r| !r.prefix_stored && !r.seq.has_visual())
        {
            r.prefix_stored = true;
            if r.seq.cache().len() >= r.seq.prompt_len() {
                let _ = prefixes.insert(r.seq.prompt(), r.seq.cache(), version);
            }
        }
        metrics
            .prefix_cache_bytes
            .store(prefixes.bytes(), Ordering::Relaxed);
        running.retain(|r| {
            if r.seq.is_finished() {
                reserved -= r.reserved;
            }
            !r.seq.is_finished()
        });
        metrics.running.store(running.len(), Ordering::Relaxed);
        metrics.kv_reserved_bytes.store(reserved, Ordering::Relaxed);
    }
}
