//! qforge-train: the training core shared by every recipe.
//!
//! So far: [`losses`] (completion log-probabilities, entropy, SFT, the DPO family, SimPO, ORPO,
//! Bradley-Terry) and [`policy`] (GRPO advantages, the clipped surrogate with clip-higher and
//! dual-clip, verl's aggregation modes, KL estimators) and [`optim`] (AdamW with f32 master
//! weights, global-norm clipping, gradient accumulation, transformers' LR schedules), [`data`]
//! (TRL's JSONL formats), [`trainer`] (the loop for SFT, reward models and pairwise objectives)
//! and [`pairwise`] (the objective interface recipes plug into). Every function is built from candle
//! ops with a backward, and parity with the reference formulas (values and gradients) is pinned
//! by `tests/parity.rs`.

pub mod answers;
pub mod copy_task;
pub mod data;
pub mod error;
pub mod losses;
pub mod optim;
pub mod pairwise;
pub mod plot;
pub mod policy;
pub mod recipe;
pub mod trainer;

pub use error::{Result, TrainError};
