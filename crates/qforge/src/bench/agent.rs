//! `qforge bench agent`: the WebSailor loop's own cost per turn, model time excluded. An
//! `InstantPolicy` (a stand-in that answers at once) alternates search calls (two queries) and
//! visit calls (extractive summary) over a 10k-document corpus for `--turns` turns per run; the
//! context budget is counted with a real tokenizer every turn, as the released loop does. The
//! baseline, measured in the same run, is the same tool calls made directly: the ratio shows what
//! the loop adds on top of the tools (prompt building, parsing, token counting).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use async_trait::async_trait;
use qforge_agent::websailor::agent::{AgentConfig, run};
use qforge_agent::websailor::index::Bm25Index;
use qforge_agent::websailor::visit::{ExtractiveSummarizer, offline_tools};
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{BackendError, ChatBackend, ChatStream};
use qforge_util::SplitMix;
use serde_json::{Value, json};

use crate::bench::search::{sample_queries, synthetic_corpus};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// A corpus JSONL (`qforge agent corpus`) instead of the synthetic 10k documents.
    #[arg(long)]
    corpus: Option<std::path::PathBuf>,
    /// Tool calls per run before the answer.
    #[arg(long, default_value_t = 20)]
    turns: usize,
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

/// Replays a fixed list of turns at no cost.
struct InstantPolicy {
    turns: Mutex<Vec<String>>,
}

#[async_trait]
impl ChatBackend for InstantPolicy {
    fn model_name(&self) -> &str {
        "instant-policy"
    }

    async fn chat_stream(&self, _: ChatRequest) -> Result<ChatStream, BackendError> {
        let turn = self.turns.lock().expect("lock").pop().unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx
            .send(Ok(ChatEvent::Delta(ChatDelta {
                content: Some(turn),
                finish_reason: Some("stop".into()),
                ..ChatDelta::default()
            })))
            .await;
        Ok(rx)
    }
}

pub fn run_bench(args: AgentArgs) -> Result<()> {
    let mut rng = SplitMix(11);
    let docs = match &args.corpus {
        Some(p) => qforge_agent::websailor::corpus::read_corpus(p)?,
        None => synthetic_corpus(&mut rng, 10_000, 100, 50_000),
    };
    let urls: Vec<String> = docs.iter().map(|d| d.url.clone()).collect();
    let queries = sample_queries(&mut rng, &docs, 4 * args.turns * args.runs);
    let index = Arc::new(Bm25Index::build(docs));
    let documents = index.len();
    let tools = offline_tools(index, Arc::new(ExtractiveSummarizer::default()), 10);
    let tokenizer = Arc::new(qforge_model::Tokenizer::from_dir(
        &crate::demo::demo_model_dir()?,
    )?);
    let count = crate::agent::token_counter(Some(tokenizer.clone()));
    // The released way: render and tokenize the whole conversation every turn.
    let count_whole = |messages: &[Value]| {
        let text = tokenizer
            .apply_chat_template(messages, &qforge_model::ChatOptions::default())
            .expect("renders");
        tokenizer.encode(&text, false).expect("encodes").len()
    };
    // Each run's calls: search (two queries) and visit (a page, a goal) in turn.
    let mut q = queries.iter();
    let calls: Vec<Vec<(String, Value)>> = (0..args.runs)
        .map(|_| {
            (0..args.turns)
                .map(|t| {
                    let a = q.next().expect("enough queries").clone();
                    let b = q.next().expect("enough queries").clone();
                    if t % 2 == 0 {
                        ("search".to_string(), json!({"query": [a, b]}))
                    } else {
                        let url = &urls[rng.below(urls.len())];
                        ("visit".to_string(), json!({"url": url, "goal": a}))
                    }
                })
                .collect()
        })
        .collect();
    let config = AgentConfig {
        max_llm_calls: args.turns + 1,
        max_context_tokens: usize::MAX,
        ..AgentConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "[agent] {} runs x {} tool calls, {} documents, token counting with the demo tokenizer",
        args.runs, args.turns, documents
    );

    // Baseline: the same tool calls, made directly.
    let t = Instant::now();
    for run_calls in &calls {
        for (name, arguments) in run_calls {
            let tool = tools.iter().find(|t| t.name() == name).expect("tool");
            std::hint::black_box(runtime.block_on(tool.call(arguments)));
        }
    }
    let tools_s = t.elapsed().as_secs_f64();

    // The loop: the same calls as policy turns, then an answer; timed with the cached context
    // count, and with the whole conversation tokenized every turn.
    let run_all = |count: &(dyn Fn(&[Value]) -> usize + Sync)| -> Result<(f64, usize)> {
        let mut context_tokens = 0;
        let t = Instant::now();
        for run_calls in &calls {
            let mut turns: Vec<String> = run_calls
                .iter()
                .map(|(name, arguments)| {
                    format!(
                        "<think>next</think>\n<tool_call>{}</tool_call>",
                        json!({"name": name, "arguments": arguments})
                    )
                })
                .collect();
            turns.push("<think>done</think>\n<answer>x</answer>".into());
            turns.reverse();
            let policy = InstantPolicy {
                turns: Mutex::new(turns),
            };
            let trajectory = runtime.block_on(run(&policy, &tools, "q", &config, count))?;
            context_tokens = context_tokens.max(count(&trajectory.messages));
        }
        Ok((t.elapsed().as_secs_f64(), context_tokens))
    };
    let (loop_s, context_tokens) = run_all(&count)?;
    let (whole_s, _) = run_all(&count_whole)?;

    let turns = (args.runs * args.turns) as f64;
    let per_turn_ms = loop_s / turns * 1e3;
    let tools_ms = tools_s / turns * 1e3;
    println!("tools alone: {tools_ms:.3} ms per call");
    println!(
        "agent loop: {per_turn_ms:.3} ms per turn, of which {:.3} ms is not the tools (prompting, parsing, token counting; contexts up to {context_tokens} tokens)",
        per_turn_ms - tools_ms
    );
    println!(
        "loop vs tools alone: {:.2}x time per turn",
        loop_s / tools_s
    );
    println!(
        "tokenizing the whole conversation every turn: {:.3} ms per turn; the per-turn cache is {:.1}x faster",
        whole_s / turns * 1e3,
        whole_s / loop_s
    );
    println!(
        "{}",
        json!({"bench": "agent", "turns": turns, "per_turn_ms": per_turn_ms,
               "tools_ms": tools_ms, "overhead_ms": per_turn_ms - tools_ms,
               "ratio_vs_tools": loop_s / tools_s, "whole_count_per_turn_ms": whole_s / turns * 1e3,
               "cache_speedup": whole_s / loop_s, "max_context_tokens": context_tokens})
    );
    Ok(())
}
