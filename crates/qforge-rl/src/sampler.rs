//! Where evaluation samples come from: the embedded engine or an OpenAI-compatible server's
//! raw completions of the same prompt ids (SPELL's long-QA and Writing-RL's writing
//! evaluations share it).

use crate::error::{Result, RlError};

pub enum Sampler {
    Embedded(qforge_engine::Engine),
    Remote(qforge_engine::RemoteBackend),
}

/// How to sample: `n` completions at these settings, seeded per prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Sampler {
    /// The embedded engine's tokenizer (a server's is not known here).
    pub fn tokenizer(&self) -> Option<&std::sync::Arc<qforge_model::Tokenizer>> {
        match self {
            Sampler::Embedded(engine) => Some(engine.tokenizer()),
            Sampler::Remote(_) => None,
        }
    }

    /// `params.n` completions of prompt `ids` (sample k of the embedded engine is seeded
    /// `seed ^ k`; a server gets `seed`); `runtime` drives the remote client.
    pub fn sample(
        &self,
        runtime: &tokio::runtime::Runtime,
        ids: &[u32],
        params: SampleParams,
    ) -> Result<Vec<String>> {
        match self {
            Sampler::Embedded(engine) => {
                let requests = (0..params.n)
                    .map(|k| {
                        let mut r = engine.request(ids.to_vec(), params.max_new_tokens);
                        r.sampling = qforge_engine::SamplingParams {
                            temperature: params.temperature,
                            top_p: params.top_p,
                            seed: Some(params.seed ^ k as u64),
                            ..Default::default()
                        };
                        r
                    })
                    .collect();
                Ok(engine
                    .generate(requests, |_| {})
                    .map_err(|source| RlError::Engine {
                        context: "evaluation",
                        source,
                    })?
                    .into_iter()
                    .map(|o| o.text)
                    .collect())
            }
            Sampler::Remote(backend) => {
                let sampling = serde_json::json!({
                    "n": params.n,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "max_tokens": params.max_new_tokens,
                    "seed": params.seed,
                });
                let sampling = sampling.as_object().expect("object").clone();
                Ok(runtime
                    .block_on(backend.complete_ids(ids, &sampling))
                    .map_err(|source| RlError::Backend {
                        context: "evaluation",
                        source,
                    })?
                    .into_iter()
                    .map(|(text, _)| text)
                    .collect())
            }
        }
    }
}

/// A small runtime for remote evaluation clients.
pub fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RlError::Runtime {
            what: "the evaluation client's runtime",
            source,
        })
}

/// An evaluation's samples file: one JSON line per item, appended and flushed as each item is
/// done, so an interrupted run resumes after the last line written. Rows are keyed by `id`.
pub struct SamplesLog<T> {
    path: std::path::PathBuf,
    file: std::fs::File,
    done: std::collections::HashMap<String, T>,
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> SamplesLog<T> {
    /// Opens (or creates) the file; `id` names a row. A line that is not a row is an error
    /// naming the file and line.
    pub fn open(path: &std::path::Path, id: fn(&T) -> &str) -> Result<Self> {
        let mut done = std::collections::HashMap::new();
        if path.exists() {
            for (line, v) in qforge_util::read_jsonl(path).map_err(|e| RlError::file(path, e))? {
                let row: T = serde_json::from_value(v).map_err(|e| {
                    RlError::from(qforge_util::RowError::new(path, line, e.to_string()))
                })?;
                done.insert(id(&row).to_string(), row);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RlError::file(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    pub fn get(&self, id: &str) -> Option<&T> {
        self.done.get(id)
    }

    /// Writes `row` as the next line (flushed) and keeps it under `id`.
    pub fn append(&mut self, id: &str, row: T) -> Result<()> {
        use std::io::Write;
        writeln!(
            self.file,
            "{}",
            serde_json::to_string(&row).expect("serialisable")
        )
        .and_then(|()| self.file.flush())
        .map_err(|e| RlError::file(&self.path, e))?;
        self.done.insert(id.to_string(), row);
        Ok(())
    }
}
