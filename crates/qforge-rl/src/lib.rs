//! qforge-rl: the reinforcement-learning core the RL recipes share (QwenLong-L1, arXiv 2505.17667).
//!
//! - [`reward`]: the reward-function interface and rule rewards (answer extraction, sub-EM,
//!   exact match, DAPO's soft overlong penalty).
//! - [`curriculum`]: QwenLong-L1's phases, middle truncation and retrospective sampling.
//! - [`groups`]: group statistics and the batch logic of DAPO's dynamic sampling and DUPO's
//!   duplicate-filling.
//! - [`judge`]: the LLM-judge equivalence reward through any `ChatBackend` (cached,
//!   concurrent, counted failures) and the hybrid rule+judge reward.
//! - [`tasks`]: the DocQA prompt format, synthetic key-value retrieval (single and
//!   multi-hop), and L-Eval / lost-in-the-middle loaders.
//! - [`qwenlong_l1`]: the QwenLong-L1 recipe (warm-up SFT, phased curriculum with
//!   retrospective sampling, GRPO/DAPO per phase).
//! - [`tools`]: multi-turn tool rollouts: the environment trait, ChatML observations,
//!   tool-call parsing, budgets.
//! - [`grpo`]: the GRPO trainer loop: group rollouts with the embedded engine (sharing the
//!   policy's weights; single-turn, or multi-turn with observation tokens masked out of the
//!   loss) or a server, rewards, advantages, the clipped surrogate over mini-batches and epochs.

pub mod curriculum;
pub mod error;
pub mod groups;
pub mod grpo;
pub mod judge;
pub mod museg;
pub mod ppo;
pub mod qwenlong_l1;
pub mod reward;
pub mod sampler;
pub mod spell;
pub mod tasks;
pub mod tools;
pub mod visual;
pub mod writing_rl;

pub use error::{Result, RlError};
