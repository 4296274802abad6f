//! qforge-agent: tool-using agents on any `ChatBackend` (WebSailor, arXiv 2507.02592,
//! Mobile-Agent-v2, arXiv 2406.01014).
//!
//! - [`websailor`]: WebSailor's web-research agent: the ReAct loop, `search` and `visit` with
//!   offline and web backends, trajectory logs, evaluation, RFT data, SailorFog-style synthesis
//!   and the RL stage's environment and reward.
//! - [`mobile`]: Mobile-Agent-v2 (begun): operations, the adb device layer, perception.

pub mod error;
pub mod mobile;
pub mod websailor;

pub use error::{AgentError, Result};
