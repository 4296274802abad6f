//! The `visit` tool (WebSailor, arXiv 2507.02592): `{"url": string | [string], "goal":
//! string}`. Each page is fetched (a [`PageSource`]: the offline corpus, or HTTP with HTML
//! turned into text, optionally through a reader service such as Jina's), cut to 150,000
//! characters, and handed with the goal to a [`Summarizer`] that returns the released JSON
//! fields `rational`, `evidence` and `summary`. The tool answers, per URL, "The useful information
//! in {url} for user goal {goal} as follows:" with `Evidence in page:` and `Summary:`; several
//! URLs are read three at a time and joined by `=======` in the order given.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use qforge_engine::ChatBackend;
use qforge_engine::chat::ChatRequest;
use serde_json::{Value, json};

use super::agent::Tool;
use super::html::html_to_text;
use super::index::{Bm25Index, tokenize};

/// Characters of a page the summary model sees (`WEBCONTENT_MAXLENGTH`).
pub const MAX_PAGE_CHARS: usize = 150_000;

/// Where pages come from. `Err` is a reason the model is shown.
#[async_trait]
pub trait PageSource: Send + Sync {
    async fn fetch(&self, url: &str) -> Result<String, String>;
}

/// Pages of the offline corpus, by the URLs its search results show.
pub struct CorpusPages(pub Arc<Bm25Index>);

/// The agent's offline tools: `search` over the corpus index (`results` per query) and `visit`
/// of its pages through `summarizer`.
pub fn offline_tools(
    index: Arc<Bm25Index>,
    summarizer: Arc<dyn Summarizer>,
    results: usize,
) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(super::agent::SearchTool {
            backend: index.clone(),
            results,
        }),
        Arc::new(VisitTool::new(Arc::new(CorpusPages(index)), summarizer)),
    ]
}

#[async_trait]
impl PageSource for CorpusPages {
    async fn fetch(&self, url: &str) -> Result<String, String> {
        let doc = self
            .0
            .by_url(url)
            .ok_or_else(|| format!("no page at {url} in the offline corpus"))?;
        Ok(format!("# {}\n\n{}", doc.title, doc.text))
    }
}

/// Pages over HTTP. HTML is turned into text, other text passes as it is, anything else (a
/// PDF, an image) is refused with its content type; bodies stop being read at `max_bytes`.
/// With a reader prefix (`https://r.jina.ai/`, as released) the URL is fetched through it.
pub struct HttpPages {
    client: reqwest::Client,
    reader: Option<(String, Option<String>)>,
    max_bytes: usize,
}

impl HttpPages {
    pub fn new(timeout: std::time::Duration, max_bytes: usize) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent("qforge-agent")
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            reader: None,
            max_bytes,
        })
    }

    /// Fetch `prefix + url` instead of `url`, with `key` as a bearer token.
    pub fn through_reader(mut self, prefix: &str, key: Option<String>) -> Self {
        self.reader = Some((prefix.to_string(), key));
        self
    }

    /// Direct HTTP, or Jina's reader when `JINA_API_KEY` is set.
    pub fn from_env() -> Result<Self, String> {
        let pages = Self::new(std::time::Duration::from_secs(30), 8 << 20)?;
        Ok(match std::env::var("JINA_API_KEY") {
            Ok(key) => pages.through_reader("https://r.jina.ai/", Some(key)),
            Err(_) => pages,
        })
    }
}

#[async_trait]
impl PageSource for HttpPages {
    async fn fetch(&self, url: &str) -> Result<String, String> {
        let mut request = match &self.reader {
            Some((prefix, _)) => self.client.get(format!("{prefix}{url}")),
            None => self.client.get(url),
        };
        if let Some((_, Some(key))) = &self.reader {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("{url} did not answer in time")
            } else {
                format!("{url} could not be fetched: {e}")
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let html = content_type.contains("html");
        if !(html || content_type.is_empty() || content_type.starts_with("text/")) {
            return Err(format!(
                "{url} is not an HTML or text page (content type {content_type})"
            ));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("{url}: the page broke off: {e}"))?;
            body.extend_from_slice(&chunk);
            if body.len() >= self.max_bytes {
                body.truncate(self.max_bytes);
                break;
            }
        }
        let text = String::from_utf8_lossy(&body);
        Ok(if html {
            html_to_text(&text)
        } else {
            text.into_owned()
        })
    }
}

/// What a summarizer extracts from a page for a goal (the released JSON fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    pub rational: String,
    pub evidence: String,
    pub summary: String,
}

/// Goal-directed extraction; `None` when the page could not be processed.
#[async_trait]
pub trait Summarizer: Send + Sync {
    async fn extract(&self, page: &str, goal: &str) -> Option<Extraction>;
}

/// Offline and deterministic: the sentences sharing most words with the goal are the
/// evidence (in page order), the best of them the summary.
pub struct ExtractiveSummarizer {
    pub sentences: usize,
}

impl Default for ExtractiveSummarizer {
    fn default() -> Self {
        Self { sentences: 3 }
    }
}

/// Sentences and lines of `text`, in order.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        let boundary = match c {
            '\n' | '。' | '！' | '？' => true,
            '.' | '!' | '?' => text[end..].starts_with(char::is_whitespace) || end == text.len(),
            _ => false,
        };
        if boundary {
            out.push(text[start..end].trim());
            start = end;
        }
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty() && !s.starts_with('#'));
    out
}

#[async_trait]
impl Summarizer for ExtractiveSummarizer {
    async fn extract(&self, page: &str, goal: &str) -> Option<Extraction> {
        let goal_terms: std::collections::HashSet<String> = tokenize(goal).into_iter().collect();
        let all = sentences(page);
        if all.is_empty() {
            return None;
        }
        let score = |s: &str| {
            let words: std::collections::HashSet<String> = tokenize(s).into_iter().collect();
            words.intersection(&goal_terms).count()
        };
        let mut ranked: Vec<(usize, usize)> = all
            .iter()
            .enumerate()
            .map(|(i, s)| (score(s), i))
            .filter(|&(score, _)| score > 0)
            .collect();
        // Best first; ties to the earlier sentence.
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.truncate(self.sentences.max(1));
        let Some(&(_, best)) = ranked.first() else {
            return Some(Extraction {
                rational: "No sentence of the page shares a word with the goal.".into(),
                evidence: all
                    .iter()
                    .take(self.sentences)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                summary: "The page does not appear to address the goal.".into(),
            });
        };
        let mut chosen: Vec<usize> = ranked.iter().map(|&(_, i)| i).collect();
        chosen.sort_unstable();
        Some(Extraction {
            rational: format!(
                "The sentences sharing the most words with the goal ({} of {}).",
                chosen.len(),
                all.len()
            ),
            evidence: chosen.iter().map(|&i| all[i]).collect::<Vec<_>>().join(" "),
            summary: all[best].to_string(),
        })
    }
}

/// The released extractor: a summary model behind any `ChatBackend` (Qwen2.5-72B-Instruct at
/// temperature 0.7 upstream), prompted with the page and the goal, answering JSON.
/// Retries as released: a reply under 10 characters (the page was too long for the model)
/// re-asks with the page cut to 70%, up to three times, then to 25,000 characters; a reply that
/// is not the JSON asked for is re-asked up to three times; a failing backend is retried.
pub struct LlmSummarizer {
    pub backend: Arc<dyn ChatBackend>,
    pub temperature: f32,
    /// Reply length cap (none: the server's default).
    pub max_tokens: Option<usize>,
    /// Tries per request when the backend fails.
    pub backend_tries: usize,
}

impl LlmSummarizer {
    pub fn new(backend: Arc<dyn ChatBackend>) -> Self {
        Self {
            backend,
            temperature: 0.7,
            max_tokens: None,
            backend_tries: 10,
        }
    }

    async fn ask(&self, page: &str, goal: &str) -> String {
        let request = ChatRequest {
            messages: vec![json!({"role": "user", "content": extractor_prompt(page, goal)})],
            temperature: Some(self.temperature),
            max_tokens: self.max_tokens,
            ..ChatRequest::default()
        };
        for _ in 0..self.backend_tries.max(1) {
            let Ok(response) = self.backend.chat(request.clone()).await else {
                continue;
            };
            let content = response.text();
            if !content.is_empty() {
                return content;
            }
        }
        String::new()
    }
}

fn extractor_prompt(page: &str, goal: &str) -> String {
    format!(
        "Read the web page below and pull out what serves the user's goal.\n\n\
         ## Web page\n{page}\n\n## User goal\n{goal}\n\n## How to work\n\
         1. rational: point to the specific sections or figures of the page that bear on the goal.\n\
         2. evidence: copy the most relevant information in full, in the page's own words; \
         leave nothing important out, several paragraphs are fine.\n\
         3. summary: in one concise paragraph, say what the page contributes to the goal, \
         in a logical order.\n\n\
         Answer with a JSON object with the fields \"rational\", \"evidence\" and \"summary\" only."
    )
}

/// The JSON object in a reply (the text from its first `{` to its last `}` when the whole is
/// not JSON), with the fields the tool shows.
fn parse_extraction(reply: &str) -> Option<Extraction> {
    let value: Value = serde_json::from_str(reply).ok().or_else(|| {
        let (start, end) = (reply.find('{')?, reply.rfind('}')?);
        serde_json::from_str(reply.get(start..=end)?).ok()
    })?;
    let field = |name: &str| match &value[name] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    Some(Extraction {
        rational: field("rational").unwrap_or_default(),
        evidence: field("evidence")?,
        summary: field("summary")?,
    })
}

fn chars_prefix(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(i, _)| &text[..i])
}

#[async_trait]
impl Summarizer for LlmSummarizer {
    async fn extract(&self, page: &str, goal: &str) -> Option<Extraction> {
        let mut page = page;
        let mut reply = self.ask(page, goal).await;
        for shrink in (0..4).rev() {
            if reply.chars().count() >= 10 {
                break;
            }
            let keep = if shrink > 0 {
                page.chars().count() * 7 / 10
            } else {
                25_000
            };
            page = chars_prefix(page, keep);
            reply = self.ask(page, goal).await;
        }
        for _ in 0..3 {
            if let Some(e) = parse_extraction(&reply) {
                return Some(e);
            }
            reply = self.ask(page, goal).await;
        }
        parse_extraction(&reply)
    }
}

/// The `visit` tool.
pub struct VisitTool {
    pub pages: Arc<dyn PageSource>,
    pub summarizer: Arc<dyn Summarizer>,
    pub max_page_chars: usize,
}

impl VisitTool {
    pub fn new(pages: Arc<dyn PageSource>, summarizer: Arc<dyn Summarizer>) -> Self {
        Self {
            pages,
            summarizer,
            max_page_chars: MAX_PAGE_CHARS,
        }
    }

    async fn read(&self, url: &str, goal: &str) -> String {
        let header =
            format!("The useful information in {url} for user goal {goal} as follows: \n\n");
        let extraction = match self.pages.fetch(url).await {
            Ok(page) if page.trim().is_empty() => Err(format!("{url} has no text")),
            Ok(page) => {
                let page = chars_prefix(&page, self.max_page_chars);
                self.summarizer
                    .extract(page, goal)
                    .await
                    .ok_or_else(|| "the summary model gave no usable answer".to_string())
            }
            Err(reason) => Err(reason),
        };
        match extraction {
            Ok(e) => format!(
                "{header}Evidence in page: \n{}\n\nSummary: \n{}\n\n",
                e.evidence, e.summary
            ),
            Err(reason) => format!(
                "{header}Evidence in page: \nThe provided webpage content could not be accessed \
                 ({reason}). Please check the URL or file format.\n\nSummary: \nThe webpage \
                 content could not be processed, and therefore, no information is available.\n\n"
            ),
        }
    }
}

#[async_trait]
impl Tool for VisitTool {
    fn name(&self) -> &str {
        "visit"
    }

    fn schema(&self) -> Value {
        json!({"type": "function", "function": {"name": "visit",
            "description": "Visit web pages and return what they say about a goal.",
            "parameters": {"type": "object", "properties": {
                "url": {"type": ["string", "array"], "items": {"type": "string"}, "minItems": 1,
                        "description": "The URL, or a list of URLs, to visit."},
                "goal": {"type": "string", "description": "What to look for on the pages."}},
            "required": ["url", "goal"]}}})
    }

    async fn call(&self, arguments: &Value) -> String {
        let urls: Vec<String> = match &arguments["url"] {
            Value::String(u) => vec![u.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let Some(goal) = arguments["goal"].as_str().filter(|g| !g.trim().is_empty()) else {
            return "[visit] Invalid request format: Input must be a JSON object containing \
                    'url' and 'goal' fields"
                .into();
        };
        if urls.is_empty() {
            return "[visit] Invalid request format: Input must be a JSON object containing \
                    'url' and 'goal' fields"
                .into();
        }
        let reads: Vec<_> = urls.iter().map(|u| self.read(u, goal)).collect();
        let pages: Vec<String> = futures_util::stream::iter(reads)
            .buffered(3)
            .collect()
            .await;
        pages.join("\n=======\n").trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_with_prose_around_the_json_still_parse() {
        let e = parse_extraction(
            "Sure! {\"rational\": \"r\", \"evidence\": [\"a\", \"b\"], \"summary\": \"s\"} done",
        )
        .unwrap();
        assert_eq!(e.evidence, "[\"a\",\"b\"]");
        assert_eq!(e.summary, "s");
        assert!(parse_extraction("{\"evidence\": \"only\"}").is_none());
        assert!(parse_extraction("{").is_none());
    }

    #[test]
    fn sentences_split_on_stops_lines_and_cjk_marks() {
        assert_eq!(
            sentences("# Title\nOne. Two is 3.5 long! 京都。大阪\nlast"),
            ["One.", "Two is 3.5 long!", "京都。", "大阪", "last"]
        );
    }

    #[test]
    fn char_prefixes_respect_multibyte_text() {
        assert_eq!(chars_prefix("ééé", 2), "éé");
        assert_eq!(chars_prefix("ab", 5), "ab");
    }
}
