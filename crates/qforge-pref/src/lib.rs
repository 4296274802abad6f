//! qforge-pref: preference-optimisation recipes built on `qforge-train`
//! (Mutual-Taught, arXiv 2506.06292; SoLoPO, arXiv 2505.11166).
//!
//! - [`mutual_taught`]: Mutual-Taught's EM loop (E-step DPO with checkpoint selection and the
//!   stop rule, M-step reward-model refit on filtered pseudo-pairs), every stage persisted and
//!   resumable.
//! - [`solopo`]: SoLoPO's objective, the short-context DPO/SimPO/ORPO loss plus α times the
//!   short-to-long reward-alignment penalty on the chosen response, as a
//!   [`qforge_train::pairwise::PairObjective`] the shared trainer runs; and [`solopo_data`], which
//!   builds short/long contexts from QA data with supporting passages.

pub mod error;
pub mod mutual_taught;
pub mod quickstart;
pub mod solopo;
pub mod solopo_data;
pub mod verbose_copy;

pub use error::{PrefError, Result};
pub use solopo::{Penalty, SoloAlgorithm, SoloPo, SoloSettings};
