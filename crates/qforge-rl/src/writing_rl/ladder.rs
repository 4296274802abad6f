//! Dynamic reference scheduling: each prompt has references of rising quality; the reference a
//! response is judged against is `refs[min(wins, n − 1)]`, where `wins` counts the steps in
//! which the prompt's response strictly beat its reference (ties do not count). As in the
//! release, the count keeps rising past the top rung (the lookup clamps). Unlike the release's
//! shared JSON file, which every reward worker bumps (so a prompt with several rollouts in one
//! step could climb several rungs), a prompt climbs at most one rung per step, and the state is
//! saved atomically with the trainer's checkpoint under typed (string) ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use qforge_util::WithPath;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceLadder {
    /// Strict wins so far, per prompt id (absent: 0).
    wins: BTreeMap<String, usize>,
}

impl ReferenceLadder {
    /// The rung (0-based) `id` is on, given its number of references.
    pub fn rung(&self, id: &str, references: usize) -> usize {
        self.wins
            .get(id)
            .copied()
            .unwrap_or(0)
            .min(references.saturating_sub(1))
    }

    /// Strict wins recorded for `id` (the release's index).
    pub fn wins(&self, id: &str) -> usize {
        self.wins.get(id).copied().unwrap_or(0)
    }

    /// One step's strict winners: each id advances once, however many of its rollouts won.
    /// Returns how many ids advanced.
    pub fn advance<'a>(&mut self, winners: impl IntoIterator<Item = &'a str>) -> usize {
        let once: BTreeSet<&str> = winners.into_iter().collect();
        for &id in &once {
            *self.wins.entry(id.to_string()).or_default() += 1;
        }
        once.len()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let value = serde_json::to_value(self).expect("serialisable");
        Ok(qforge_util::write_json_atomic(path, &value)?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_path(path)?;
        serde_json::from_str(&text).map_err(|e| RlError::file(path, e))
    }
}
