//! qforge-engine: generation on the embedded model.
//!
//! [`Engine`] runs batched generation with per-sequence KV caches (sequences of different
//! lengths share a batch), seeded sampling ([`SamplingParams`]), stop tokens and stop strings,
//! per-token streaming and log-probabilities.

pub mod detok;
pub mod engine;
pub mod error;
pub mod sampling;

pub use engine::{
    Engine, FinishReason, GeneratedToken, GenerationOutput, GenerationRequest, Sequence,
    StopConditions, TokenEvent,
};
pub use error::{EngineError, Result};
pub use sampling::{Sampler, SamplingParams};
