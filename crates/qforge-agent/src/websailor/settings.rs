//! What a WebSailor run is wired to: where search and visit get their pages, how answers are
//! judged, and the RL recipe (`qforge train websailor`) with the paper's defaults. The CLI's
//! `qforge agent` flags and the recipe's `[agent]` / `[judge]` tables both fill these.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qforge_engine::{RemoteBackend, RemoteConfig};
use qforge_rl::grpo::{GroupFilter, GrpoConfig};
use qforge_rl::tools::ToolConfig;
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::websailor::agent::{SearchTool, Tool};
use crate::websailor::corpus::read_corpus;
use crate::websailor::eval::{Judge, JudgeStyle};
use crate::websailor::index::Bm25Index;
use crate::websailor::search::SerperBackend;
use crate::websailor::visit::{
    ExtractiveSummarizer, HttpPages, LlmSummarizer, Summarizer, VisitTool, offline_tools,
};

/// A client of an OpenAI-compatible server, its API key (if any) from the variable `key_env`.
pub fn remote(url: &str, model: &str, key_env: &str) -> Result<RemoteBackend> {
    let mut config = RemoteConfig::new(url, model);
    config.api_key = std::env::var(key_env).ok();
    Ok(RemoteBackend::new(config)?)
}

/// Where search and visit get their pages (the `[agent]` table of a WebSailor RL recipe).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolSettings {
    /// Offline corpus JSONL (default: the one `qforge agent corpus` writes).
    pub corpus: Option<PathBuf>,
    /// Serper search and HTTP visits (through Jina's reader with JINA_API_KEY) instead.
    pub web: bool,
    /// An OpenAI-compatible server for visit's summary model; without it, visit extracts the
    /// sentences that match the goal.
    pub summary_url: Option<String>,
    pub summary_model: String,
    pub summary_key_env: String,
    /// Search results per query.
    pub results: usize,
}

impl Default for ToolSettings {
    fn default() -> Self {
        Self {
            corpus: None,
            web: false,
            summary_url: None,
            summary_model: "default".into(),
            summary_key_env: "OPENAI_API_KEY".into(),
            results: 10,
        }
    }
}

impl ToolSettings {
    /// The search and visit tools; `default_corpus` is read when no corpus is named.
    pub fn tools(&self, default_corpus: &Path) -> Result<Vec<Arc<dyn Tool>>> {
        let summarizer: Arc<dyn Summarizer> = match &self.summary_url {
            Some(url) => Arc::new(LlmSummarizer::new(Arc::new(remote(
                url,
                &self.summary_model,
                &self.summary_key_env,
            )?))),
            None => Arc::new(ExtractiveSummarizer::default()),
        };
        if self.web {
            let search = SerperBackend::from_env().map_err(AgentError::Invalid)?;
            let pages = HttpPages::from_env().map_err(AgentError::Invalid)?;
            return Ok(vec![
                Arc::new(SearchTool {
                    backend: Arc::new(search),
                    results: self.results,
                }),
                Arc::new(VisitTool::new(Arc::new(pages), summarizer)),
            ]);
        }
        let path = self
            .corpus
            .clone()
            .unwrap_or_else(|| default_corpus.to_path_buf());
        if !path.is_file() {
            return Err(AgentError::Invalid(format!(
                "no corpus at {}: run `qforge agent corpus` first, or give --corpus FILE or --web",
                path.display()
            )));
        }
        let index = Arc::new(Bm25Index::build(read_corpus(&path)?));
        Ok(offline_tools(index, summarizer, self.results))
    }
}

/// How answers are judged (the `[judge]` table of a WebSailor RL recipe).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSettings {
    /// An OpenAI-compatible server for the judge; without it, normalised exact match.
    pub judge_url: Option<String>,
    pub judge_model: String,
    pub judge_key_env: String,
    /// `short` or `browsecomp`; default: browsecomp for BrowseComp sets, short otherwise.
    pub judge_style: Option<String>,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        Self {
            judge_url: None,
            judge_model: "default".into(),
            judge_key_env: "OPENAI_API_KEY".into(),
            judge_style: None,
        }
    }
}

impl JudgeSettings {
    /// The judge for the question set `set` (its name picks the default style).
    pub fn judge(&self, set: &Path) -> Result<Judge> {
        let Some(url) = &self.judge_url else {
            return Ok(Judge::ExactMatch);
        };
        let backend = remote(url, &self.judge_model, &self.judge_key_env)?;
        let style = match self.judge_style.as_deref() {
            Some("browsecomp") => JudgeStyle::BrowseComp,
            Some(_) => JudgeStyle::Short,
            None => JudgeStyle::for_set(set),
        };
        Ok(Judge::Llm {
            backend: Arc::new(backend),
            style,
            tries: 10,
        })
    }
}

/// A WebSailor RL recipe: question files, the agent's tools, the judge, the rollout limits and
/// the GRPO settings (the paper's defaults under the recipe's own).
pub struct RlRecipe {
    pub question_files: Vec<PathBuf>,
    pub agent: ToolSettings,
    pub judge: JudgeSettings,
    pub rollout: ToolConfig,
    pub config: GrpoConfig,
}

/// WebSailor's RL settings (§ RL of the paper: group 8, temperature 1, DUPO, clip 0.2/0.28, no
/// KL, lr 1e-6), which a recipe's own settings override.
pub fn paper_grpo_defaults() -> GrpoConfig {
    GrpoConfig {
        group_size: 8,
        temperature: 1.0,
        top_p: 1.0,
        lr: 1e-6,
        clip_low: 0.2,
        clip_high: 0.28,
        kl_coef: 0.0,
        filter: GroupFilter::Dupo,
        correct_threshold: crate::websailor::rl::CORRECT_THRESHOLD,
        ..GrpoConfig::default()
    }
}

impl RlRecipe {
    /// Reads the recipe (TOML) and applies `--set` overrides to its GRPO settings.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        use qforge_util::settings::{read_toml, table_into, take_paths, take_table, with_sets};
        let mut table: toml::Table = read_toml(path)?;
        let question_files = take_paths(&mut table, "questions", "JSONL files")?;
        let agent = take_table(&mut table, "agent")?;
        let judge = take_table(&mut table, "judge")?;
        let rollout = take_table(&mut table, "rollout")?;
        let mut merged =
            toml::Table::try_from(paper_grpo_defaults()).expect("GRPO settings are a TOML table");
        merged.extend(table);
        let config: GrpoConfig = table_into(merged, path)?;
        Ok(Self {
            question_files,
            agent,
            judge,
            rollout,
            config: with_sets(config, overrides)?,
        })
    }
}
