//! qforge-agent: tool-using agents on any `ChatBackend` (specs/websailor_writingrl.md §1,
//! specs/museg_mobileagent.md §2).
//!
//! - [`websailor`]: WebSailor's web-research agent: the ReAct loop, `search` and `visit` with
//!   offline and web backends, trajectory logs, evaluation, RFT data, SailorFog-style synthesis
//!   and the RL stage's environment and reward.
//! - [`mobile`]: Mobile-Agent-v2 (begun): operations, the adb device layer, perception.

pub mod error;
pub mod mobile;
pub mod websailor;

pub use error::{AgentError, Result};
