//! qforge-engine: generation on the embedded model.
//!
//! [`Engine`] runs batched generation with per-sequence KV caches (sequences of different
//! lengths share a batch), seeded sampling ([`SamplingParams`]), stop tokens and stop strings,
//! per-token streaming and log-probabilities. [`Scheduler`] batches a server's requests
//! continuously and reuses the keys and values of repeated prompt prefixes ([`prefix_cache`]).

pub mod backend;
pub mod chat;
pub mod detok;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod prefix_cache;
pub mod remote;
pub mod sampling;
pub mod scheduler;
pub mod vision;

pub use backend::{BackendError, ChatBackend, ChatStream};
pub use chat::{ChatEvent, ChatRequest, ChatResponse};
pub use embedded::EmbeddedBackend;
pub use engine::{
    Engine, FinishReason, GeneratedToken, GenerationOutput, GenerationRequest, Sequence,
    StopConditions, TokenEvent,
};
pub use error::{EngineError, Result};
pub use remote::{RemoteBackend, RemoteConfig};
pub use sampling::{Sampler, SamplingFields, SamplingParams};
pub use scheduler::{Metrics, Scheduler, SchedulerConfig};
