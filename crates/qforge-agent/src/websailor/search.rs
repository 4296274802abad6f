//! The `search` tool (WebSailor, arXiv 2507.02592): `{"query": [q1, q2, …]}`, queries run
//! in parallel, each answered as a numbered markdown list, the blocks joined by `=======`.

use async_trait::async_trait;

use super::index::{Bm25Index, tokenize};

/// One search result as the tool shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    pub title: String,
    pub url: String,
    pub date: Option<String>,
    pub source: Option<String>,
    pub snippet: String,
}

/// Where results come from: the offline index, or a web search API.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    /// Up to `k` results for `query`, best first; `Err` carries a message for the model.
    async fn search(&self, query: &str, k: usize) -> Result<Vec<SearchResult>, String>;
}

/// Characters of text around the first query word shown as the snippet.
const SNIPPET_CHARS: usize = 240;

/// `text` around the first occurrence of a query word (its start when none occurs), cut on
/// character boundaries, with `...` where text was left out.
pub fn snippet(text: &str, query: &str) -> String {
    let lower = text.to_lowercase();
    // Lowercasing can change byte lengths; positions are taken in `lower` only when it is
    // byte-aligned with `text`, else the snippet starts at the beginning.
    let at = if lower.len() == text.len() {
        tokenize(query)
            .iter()
            .filter_map(|w| lower.find(w.as_str()))
            .min()
            .unwrap_or(0)
    } else {
        0
    };
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let first = chars.iter().position(|&(i, _)| i >= at).unwrap_or(0);
    let start = first.saturating_sub(SNIPPET_CHARS / 4);
    let end = (start + SNIPPET_CHARS).min(chars.len());
    let body: String = chars[start..end].iter().map(|&(_, c)| c).collect();
    format!(
        "{}{}{}",
        if start > 0 { "..." } else { "" },
        body.trim(),
        if end < chars.len() { "..." } else { "" }
    )
}

#[async_trait]
impl SearchBackend for Bm25Index {
    async fn search(&self, query: &str, k: usize) -> Result<Vec<SearchResult>, String> {
        Ok(Bm25Index::search(self, query, k)
            .into_iter()
            .map(|hit| {
                let d = self.document(hit.doc);
                SearchResult {
                    title: d.title.clone(),
                    url: d.url.clone(),
                    date: d.date.clone(),
                    source: d.source.clone(),
                    snippet: snippet(&d.text, query),
                }
            })
            .collect())
    }
}

/// One query's block: a header naming the query and the count, then the numbered results
/// (`[title](url)`, optional `Date published:` and `Source:` lines, the snippet).
pub fn format_results(query: &str, results: &[SearchResult]) -> String {
    if results.is_empty() {
        return format!(
            "No results found for '{query}'. Try with a more general query, or remove the year filter."
        );
    }
    let items: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut item = format!("{}. [{}]({})", i + 1, r.title, r.url);
            if let Some(d) = &r.date {
                item.push_str(&format!("\nDate published: {d}"));
            }
            if let Some(s) = &r.source {
                item.push_str(&format!("\nSource: {s}"));
            }
            // The released tool puts a blank line before the snippet.
            item.push('\n');
            if !r.snippet.is_empty() {
                item.push('\n');
                item.push_str(&r.snippet.replace("Your browser can't play this video.", ""));
            }
            item
        })
        .collect();
    format!(
        "A Google search for '{query}' found {} results:\n\n## Web Results\n{}",
        results.len(),
        items.join("\n\n")
    )
}

/// Google results through Serper's API (`https://google.serper.dev/search`), as the released
/// tool uses it: the key in `SERPER_API_KEY` (or the released name `GOOGLE_SEARCH_KEY`), the
/// `organic` results, up to 5 tries.
pub struct SerperBackend {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl SerperBackend {
    pub const URL: &'static str = "https://google.serper.dev/search";

    /// `url` is Serper's endpoint or a compatible one; each request times out after `timeout`.
    pub fn new(url: &str, key: &str, timeout: std::time::Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            url: url.to_string(),
            key: key.to_string(),
        })
    }

    /// Serper with the key from the environment; an error names the variables to set.
    pub fn from_env() -> Result<Self, String> {
        let key = std::env::var("SERPER_API_KEY")
            .or_else(|_| std::env::var("GOOGLE_SEARCH_KEY"))
            .map_err(|_| {
                "web search needs a Serper key in SERPER_API_KEY (or GOOGLE_SEARCH_KEY)".to_string()
            })?;
        Self::new(Self::URL, &key, std::time::Duration::from_secs(20))
    }
}

#[async_trait]
impl SearchBackend for SerperBackend {
    async fn search(&self, query: &str, k: usize) -> Result<Vec<SearchResult>, String> {
        const TRIES: usize = 5;
        let mut last_error = String::new();
        for _ in 0..TRIES {
            let sent = self
                .client
                .post(&self.url)
                .header("X-API-KEY", &self.key)
                .json(&serde_json::json!({"q": query, "num": k}))
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last_error = if e.is_timeout() {
                        "the search API timed out".into()
                    } else {
                        e.to_string()
                    };
                    continue;
                }
            };
            let status = response.status();
            let body: serde_json::Value = match response.json().await {
                Ok(b) => b,
                Err(e) => {
                    last_error = format!("unreadable reply ({status}): {e}");
                    continue;
                }
            };
            if !status.is_success() {
                return Err(format!("the search API answered {status}: {body}"));
            }
            let text = |page: &serde_json::Value, field: &str| {
                page.get(field).and_then(|v| v.as_str()).map(String::from)
            };
            return Ok(body["organic"]
                .as_array()
                .into_iter()
                .flatten()
                .take(k)
                .map(|page| SearchResult {
                    title: text(page, "title").unwrap_or_default(),
                    url: text(page, "link").unwrap_or_default(),
                    date: text(page, "date"),
                    source: text(page, "source"),
                    snippet: text(page, "snippet").unwrap_or_default(),
                })
                .collect());
        }
        Err(format!("{last_error} (after {TRIES} tries)"))
    }
}

/// The tool's answer to several queries, run concurrently, in query order.
pub async fn run_search(backend: &dyn SearchBackend, queries: &[String], k: usize) -> String {
    let blocks = futures_util::future::join_all(queries.iter().map(|q| async move {
        match backend.search(q, k).await {
            Ok(results) => format_results(q, &results),
            Err(e) => format!("[search] '{q}' failed: {e}"),
        }
    }))
    .await;
    blocks.join("\n=======\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websailor::index::Document;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn corpus() -> Bm25Index {
        Bm25Index::build(vec![
            Document {
                url: "wiki://Kyoto".into(),
                title: "Kyoto".into(),
                text: "Kyoto was the imperial capital of Japan for more than a thousand years."
                    .into(),
                date: Some("2024-01-02".into()),
                source: Some("Wikipedia".into()),
            },
            Document {
                url: "wiki://Osaka".into(),
                title: "Osaka".into(),
                text: "Osaka is a port city.".into(),
                date: None,
                source: None,
            },
        ])
    }

    #[test]
    fn results_follow_websailors_layout() {
        let out = block_on(run_search(
            &corpus(),
            &["imperial capital".into(), "zebra".into()],
            10,
        ));
        let (first, second) = out.split_once("\n=======\n").unwrap();
        assert_eq!(
            first,
            "A Google search for 'imperial capital' found 1 results:\n\n## Web Results\n\
             1. [Kyoto](wiki://Kyoto)\nDate published: 2024-01-02\nSource: Wikipedia\n\n\
             Kyoto was the imperial capital of Japan for more than a thousand years."
        );
        assert_eq!(
            second,
            "No results found for 'zebra'. Try with a more general query, or remove the year filter."
        );
    }

    #[test]
    fn snippets_centre_on_the_first_query_word_on_char_boundaries() {
        let text = format!("{}needle here{}", "é".repeat(300), "x".repeat(300));
        let s = snippet(&text, "needle");
        assert!(s.starts_with("...") && s.ends_with("..."), "{s}");
        assert!(s.contains("needle here"));
        assert_eq!(snippet("short text", "absent"), "short text");
    }

    struct Down;

    #[async_trait]
    impl SearchBackend for Down {
        async fn search(&self, _: &str, _: usize) -> Result<Vec<SearchResult>, String> {
            Err("timed out after 10 s".into())
        }
    }

    #[test]
    fn a_failing_backend_is_reported_to_the_model() {
        assert_eq!(
            block_on(run_search(&Down, &["q".into()], 3)),
            "[search] 'q' failed: timed out after 10 s"
        );
    }
}
