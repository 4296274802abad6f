//! Running the agent over a question set: questions from JSONL, several rollouts each, runs
//! concurrent, every finished trajectory appended to a JSONL log at once (one line, flushed), so
//! a killed run loses nothing and a rerun skips what is done. Each line is a [`TrajectoryRow`]:
//! the conversation in the chat format the SFT and RL trainers read (their loaders learn the
//! assistant turns and leave the `<tool_response>` turns out of the loss) plus the run's record.

use qforge_util::WithPath;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use qforge_engine::ChatBackend;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::agent::{AgentConfig, Tool, Trajectory, run};
use crate::error::{Result, read_jsonl};

/// A question with its reference answer, if known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answer: Option<String>,
}

fn first_str(v: &Value, fields: &[&str]) -> Option<String> {
    fields.iter().find_map(|f| match &v[*f] {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first().and_then(Value::as_str).map(String::from),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Questions of a JSONL file: `question` (or `Question`, `problem`, `prompt`, `query`),
/// `answer` (or `Answer`, `gold`, `answers`' first), `id` (or `task_id`; else the line number).
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(line, v)| {
            let question = first_str(&v, &["question", "Question", "problem", "prompt", "query"])
                .filter(|q| !q.trim().is_empty())
                .ok_or_else(|| qforge_util::RowError::new(path, line, "no `question` text"))?;
            Ok(Question {
                id: first_str(&v, &["id", "task_id"]).unwrap_or_else(|| line.to_string()),
                question,
                answer: first_str(&v, &["answer", "Answer", "gold", "answers"]),
            })
        })
        .collect()
}

/// One line of the trajectory log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrajectoryRow {
    pub id: String,
    pub rollout: usize,
    pub gold: Option<String>,
    #[serde(flatten)]
    pub trajectory: Trajectory,
    /// Seconds the run took, model time included.
    pub seconds: f64,
}

/// Append-only JSONL of finished trajectories.
pub struct TrajectoryLog {
    path: PathBuf,
    done: HashSet<(String, usize)>,
    rows: Vec<TrajectoryRow>,
}

impl TrajectoryLog {
    /// Opens (or creates) the log. A last line cut short by a crash is dropped; any other bad
    /// line is an error naming it.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_path(dir)?;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(qforge_util::IoError::new(path, e).into()),
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        if complete.len() != text.len() {
            // A torn final write: keep the complete lines only.
            std::fs::write(path, complete).with_path(path)?;
        }
        let mut log = Self {
            path: path.to_path_buf(),
            done: HashSet::new(),
            rows: Vec::new(),
        };
        for (i, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: TrajectoryRow = serde_json::from_str(line).map_err(|e| {
                qforge_util::RowError::new(path, i + 1, format!("not a trajectory row: {e}"))
            })?;
            log.done.insert((row.id.clone(), row.rollout));
            log.rows.push(row);
        }
        Ok(log)
    }

    pub fn contains(&self, id: &str, rollout: usize) -> bool {
        self.done.contains(&(id.to_string(), rollout))
    }

    /// Every row, earlier runs' included, in the order written.
    pub fn rows(&self) -> &[TrajectoryRow] {
        &self.rows
    }

    /// Appends one row as one write, flushed to disk.
    pub fn append(&mut self, row: TrajectoryRow) -> Result<()> {
        let mut line = serde_json::to_string(&row).expect("serialisable");
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_path(&self.path)?;
        file.write_all(line.as_bytes()).with_path(&self.path)?;
        file.sync_data().with_path(&self.path)?;
        self.done.insert((row.id.clone(), row.rollout));
        self.rows.push(row);
        Ok(())
    }
}

/// How a batch of runs went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReport {
    pub ran: usize,
    pub skipped_done: usize,
    /// (question id, rollout, error) of runs the policy backend failed; a rerun retries them.
    pub failed: Vec<(String, usize, String)>,
}

/// Runs `rollouts` trajectories per question, `concurrency` at a time, appending each to the
/// log as it finishes; `on_done` hears every finished row (for progress).
#[allow(clippy::too_many_arguments)]
pub async fn run_questions(
    backend: &dyn ChatBackend,
    tools: &[Arc<dyn Tool>],
    questions: &[Question],
    rollouts: usize,
    config: &AgentConfig,
    count_tokens: &(dyn Fn(&[Value]) -> usize + Sync),
    log: &mut TrajectoryLog,
    concurrency: usize,
    mut on_done: impl FnMut(&TrajectoryRow),
) -> Result<BatchReport> {
    let mut report = BatchReport::default();
    let mut todo = Vec::new();
    for q in questions {
        for r in 0..rollouts {
            if log.contains(&q.id, r) {
                report.skipped_done += 1;
            } else {
                todo.push((q, r));
            }
        }
    }
    let runs: Vec<_> = todo
        .into_iter()
        .map(|(q, r)| async move {
            let started = std::time::Instant::now();
            let result = run(backend, tools, &q.question, config, count_tokens).await;
            (q, r, result, started.elapsed().as_secs_f64())
        })
        .collect();
    let mut finished = futures_util::stream::iter(runs).buffer_unordered(concurrency.max(1));
    while let Some((q, rollout, result, seconds)) = finished.next().await {
        match result {
            Ok(trajectory) => {
                let row = TrajectoryRow {
                    id: q.id.clone(),
                    rollout,
                    gold: q.answer.clone(),
                    trajectory,
                    seconds,
                };
                on_done(&row);
                log.append(row)?;
                report.ran += 1;
            }
            Err(e) => report.failed.push((q.id.clone(), rollout, e.to_string())),
        }
    }
    Ok(report)
}
