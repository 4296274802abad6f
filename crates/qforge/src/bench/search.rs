//! `qforge bench search`: the offline search backend (BM25 inverted index) on a synthetic
//! 10k-document corpus: index build time, queries/s and p50/p99 latency, against a linear scan
//! that scores every pre-tokenized document with the same formula (no inverted index), measured
//! in the same run.

use std::time::Instant;

use anyhow::{Result, bail};
use qforge_agent::websailor::index::{Bm25Index, Document, tokenize};
use qforge_util::SplitMix;
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// A corpus JSONL (e.g. `qforge agent corpus`'s 10,033 Wikipedia summaries) instead of
    /// the synthetic one.
    #[arg(long)]
    corpus: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// Words per document (about the length of a Wikipedia summary).
    #[arg(long, default_value_t = 100)]
    words: usize,
    #[arg(long, default_value_t = 2_000)]
    queries: usize,
}

/// Word `i` of a Zipf-like vocabulary: common words are short and frequent.
fn word(rng: &mut SplitMix, vocab: usize) -> String {
    let u = (rng.below(1 << 30) as f64 + 0.5) / (1u64 << 30) as f64;
    format!("w{}", (vocab as f64 * u.powi(3)) as usize)
}

/// Documents of Zipf-like words (ids `doc://N`).
pub fn synthetic_corpus(
    rng: &mut SplitMix,
    docs: usize,
    words: usize,
    vocab: usize,
) -> Vec<Document> {
    (0..docs)
        .map(|i| Document {
            url: format!("doc://{i}"),
            title: format!("{} {}", word(rng, vocab), word(rng, vocab)),
            text: (0..words)
                .map(|_| word(rng, vocab))
                .collect::<Vec<_>>()
                .join(" "),
            date: None,
            source: None,
        })
        .collect()
}

/// `n` queries of three words each from random documents' text.
pub fn sample_queries(rng: &mut SplitMix, docs: &[Document], n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let d = &docs[rng.below(docs.len())];
            let words: Vec<&str> = d.text.split_whitespace().collect();
            (0..3)
                .map(|_| words[rng.below(words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: SearchArgs) -> Result<()> {
    if args.docs == 0 || args.words == 0 || args.queries == 0 {
        bail!("--docs, --words and --queries must be >= 1");
    }
    let mut rng = SplitMix(7);
    let vocab = 50_000;
    let docs: Vec<Document> = match &args.corpus {
        Some(path) => qforge_agent::websailor::corpus::read_corpus(path)?,
        None => synthetic_corpus(&mut rng, args.docs, args.words, vocab),
    };
    // Queries: three words of a random document (so each has at least one match).
    let queries = sample_queries(&mut rng, &docs, args.queries);
    eprintln!(
        "[search] {} documents ({}), {} three-word queries",
        docs.len(),
        args.corpus
            .as_ref()
            .map_or(format!("synthetic, {} words each", args.words), |p| p
                .display()
                .to_string()),
        args.queries
    );

    let t = Instant::now();
    let index = Bm25Index::build(docs.clone());
    let build_s = t.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(queries.len());
    let t = Instant::now();
    for q in &queries {
        let s = Instant::now();
        std::hint::black_box(index.search(q, 10));
        latencies.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let index_qps = queries.len() as f64 / t.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);

    // Baseline: score every document per query (pre-tokenized, same BM25), a tenth of the
    // queries (it is slow).
    let tokens: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            tokenize(&d.title)
                .into_iter()
                .chain(tokenize(&d.text))
                .collect()
        })
        .collect();
    let avg = tokens.iter().map(Vec::len).sum::<usize>() as f64 / tokens.len() as f64;
    let scan_queries = &queries[..(queries.len() / 10).max(1)];
    let t = Instant::now();
    for q in scan_queries {
        let terms = tokenize(q);
        let n = tokens.len() as f64;
        let df: Vec<f64> = terms
            .iter()
            .map(|w| tokens.iter().filter(|d| d.contains(w)).count() as f64)
            .collect();
        let mut scores: Vec<(f64, usize)> = tokens
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let s = terms
                    .iter()
                    .zip(&df)
                    .map(|(w, &df)| {
                        let tf = d.iter().filter(|x| *x == w).count() as f64;
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        let norm = 0.25 + 0.75 * d.len() as f64 / avg;
                        idf * tf * 2.2 / (tf + 1.2 * norm)
                    })
                    .sum::<f64>();
                (s, i)
            })
            .collect();
        scores.sort_by(|a, b| b.0.total_cmp(&a.0));
        std::hint::black_box(&scores[..10.min(scores.len())]);
    }
    let scan_qps = scan_queries.len() as f64 / t.elapsed().as_secs_f64();

    println!("index build: {:.0} ms", build_s * 1e3);
    println!(
        "BM25 index: {index_qps:.0} queries/s, p50 {:.3} ms, p99 {:.3} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!("linear scan: {scan_qps:.1} queries/s");
    println!(
        "index vs linear scan: {:.0}x queries/s",
        index_qps / scan_qps
    );
    println!(
        "{}",
        json!({"bench": "search", "docs": docs.len(), "build_ms": build_s * 1e3,
               "index_qps": index_qps, "p50_ms": percentile(&latencies, 0.5),
               "p99_ms": percentile(&latencies, 0.99), "scan_qps": scan_qps,
               "ratio_vs_scan": index_qps / scan_qps})
    );
    Ok(())
}
