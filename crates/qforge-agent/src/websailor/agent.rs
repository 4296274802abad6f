//! WebSailor's ReAct loop (WebSailor, arXiv 2507.02592), on any `ChatBackend`: the
//! policy thinks in `<think>`, calls one tool per turn in `<tool_call>`, reads results as user
//! turns in `<tool_response>`, and ends with `<answer>`. Budgets: model calls, and context
//! tokens (past it, the last message becomes an order to answer now and one more call is made).
//! Prompts are ours, with the released prompt's structure and tags.

use std::sync::Arc;

use async_trait::async_trait;
use qforge_engine::chat::ChatRequest;
use qforge_engine::{BackendError, ChatBackend};
use qforge_rl::tools::first_tool_call;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A tool the agent can call.
#[async_trait]
pub trait Tool: Send + Sync {
    fn name(&self) -> &str;
    /// The JSON schema shown in the `<tools>` block.
    fn schema(&self) -> Value;
    /// The observation for `arguments`; failures are text for the model, never an abort.
    async fn call(&self, arguments: &Value) -> String;
}

/// The `search` tool over any backend: `{"query": [..]}` (a single string is accepted too).
pub struct SearchTool {
    pub backend: Arc<dyn super::search::SearchBackend>,
    /// Results per query (10, as Serper returns).
    pub results: usize,
}

#[async_trait]
impl Tool for SearchTool {
    fn name(&self) -> &str {
        "search"
    }

    fn schema(&self) -> Value {
        json!({"type": "function", "function": {"name": "search",
            "description": "Web search. Give one or more queries; each returns its top results.",
            "parameters": {"type": "object", "properties": {"query": {"type": "array",
                "items": {"type": "string"}, "minItems": 1,
                "description": "The queries, run in parallel."}}, "required": ["query"]}}})
    }

    async fn call(&self, arguments: &Value) -> String {
        let queries: Vec<String> = match &arguments["query"] {
            Value::String(q) => vec![q.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|q| q.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        if queries.is_empty() {
            return "[search] `query` must be a list of strings".into();
        }
        super::search::run_search(self.backend.as_ref(), &queries, self.results).await
    }
}

/// Budgets and decoding of a run (the released defaults).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `MAX_LLM_CALL_PER_RUN`.
    pub max_llm_calls: usize,
    /// Context budget in tokens, counted over the rendered messages (31·1024 − 500).
    pub max_context_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Tokens per model call.
    pub max_tokens: usize,
    /// `Current date:` in the system prompt (YYYY-MM-DD).
    pub date: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_llm_calls: 40,
            max_context_tokens: 31 * 1024 - 500,
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: 8192,
            date: "2025-07-01".into(),
        }
    }
}

/// How a run ended (the released labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Termination {
    #[serde(rename = "answer")]
    Answer,
    #[serde(rename = "exceed available llm calls")]
    ExceededCalls,
    #[serde(rename = "answer not found")]
    AnswerNotFound,
    #[serde(rename = "generate an answer as token limit reached")]
    TokenLimitAnswered,
    #[serde(rename = "format error: generate an answer as token limit reached")]
    TokenLimitFormatError,
}

/// One run: the whole conversation (what the RL and SFT trainers read), the answer, counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trajectory {
    pub question: String,
    pub messages: Vec<Value>,
    pub answer: Option<String>,
    pub termination: Termination,
    pub llm_calls: usize,
    pub tool_calls: usize,
}

const STOP: [&str; 2] = ["\n<tool_response>", "<tool_response>"];

fn system_prompt(date: &str) -> String {
    format!(
        "You are a master of web information seeking. Keep going through as many searches and \
         page visits as a question needs; check facts against several sources before you \
         trust them; prefer credible, authoritative sources.\nCurrent date: {date}"
    )
}

fn first_user_message(question: &str, tools: &[Arc<dyn Tool>]) -> String {
    let schemas: Vec<String> = tools.iter().map(|t| t.schema().to_string()).collect();
    format!(
        "Answer the question below by calling tools.\n\nYou can call these tools:\n<tools>\n{}\n</tools>\n\n\
         Work in cycles: think inside <think></think>, then make one call as \
         <tool_call>{{\"name\": <tool name>, \"arguments\": <JSON arguments>}}</tool_call>, then wait \
         for its <tool_response>. Repeat as often as needed. When you are sure, think once more and \
         give the final answer inside <answer></answer>.\n\nExample:\n<think>I should look this \
         up.</think>\n<tool_call>{{\"name\": \"search\", \"arguments\": {{\"query\": [\"...\"]}}}}</tool_call>\n\
         <tool_response>...</tool_response>\n<think>The results settle it.</think>\n<answer>...</answer>\n\n\
         User: {question}",
        schemas.join("\n")
    )
}

/// What replaces the last message once the context budget is spent.
const ANSWER_NOW: &str = "You have reached the context limit. Stop calling tools and give your \
    most likely answer now, as <think>your reasoning</think><answer>your answer</answer>.";

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(text[start..end].trim())
}

/// The observation for a parsed tool call: the tool's answer, or an `Error: …` text for a call
/// that did not parse or names no tool (the run goes on either way).
pub async fn call_tool(
    tools: &[Arc<dyn Tool>],
    parsed: Result<qforge_rl::tools::ToolInvocation, String>,
) -> String {
    match parsed {
        Ok(c) => match tools.iter().find(|t| t.name() == c.name) {
            Some(tool) => tool.call(&c.arguments).await,
            None => format!(
                "Error: there is no tool `{}`; the tools are {}.",
                c.name,
                tools
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Err(message) => format!("Error: {message}"),
    }
}

/// The system prompt and the first user message (tools, format, question) a run starts from.
pub fn opening_messages(
    question: &str,
    tools: &[Arc<dyn Tool>],
    config: &AgentConfig,
) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": system_prompt(&config.date)}),
        json!({"role": "user", "content": first_user_message(question, tools)}),
    ]
}

/// Runs the agent on `question`. `count_tokens` measures the rendered conversation with the
/// policy's tokenizer (the context budget). Errors are the backend's.
pub async fn run(
    backend: &dyn ChatBackend,
    tools: &[Arc<dyn Tool>],
    question: &str,
    config: &AgentConfig,
    count_tokens: &(dyn Fn(&[Value]) -> usize + Sync),
) -> Result<Trajectory, BackendError> {
    let mut messages = opening_messages(question, tools, config);
    let (mut llm_calls, mut tool_calls) = (0, 0);
    let call = |messages: Vec<Value>| async move {
        let request = ChatRequest {
            messages,
            max_tokens: Some(config.max_tokens),
            temperature: Some(config.temperature),
            top_p: Some(config.top_p),
            stop: STOP.iter().map(|s| s.to_string()).collect(),
            ..ChatRequest::default()
        };
        let response = backend.chat(request).await?;
        let mut content = response.text();
        // Anything after a hallucinated tool response is the model talking to itself.
        if let Some(i) = content.find("<tool_response>") {
            content.truncate(i);
        }
        Ok::<_, BackendError>(content)
    };
    let (termination, answer) = loop {
        if llm_calls == config.max_llm_calls {
            break (Termination::ExceededCalls, None);
        }
        llm_calls += 1;
        let content = call(messages.clone()).await?;
        messages.push(json!({"role": "assistant", "content": content}));
        if let Some(answer) = between(&content, "<answer>", "</answer>") {
            break (Termination::Answer, Some(answer.to_string()));
        }
        let Some(parsed) = first_tool_call(&content) else {
            if content.trim().is_empty() {
                break (Termination::AnswerNotFound, None);
            }
            continue;
        };
        tool_calls += 1;
        let observation = call_tool(tools, parsed).await;
        messages.push(json!({"role": "user",
            "content": format!("<tool_response>\n{observation}\n</tool_response>")}));
        if count_tokens(&messages) > config.max_context_tokens {
            *messages.last_mut().expect("just pushed") =
                json!({"role": "user", "content": ANSWER_NOW});
            llm_calls += 1;
            let content = call(messages.clone()).await?;
            messages.push(json!({"role": "assistant", "content": content}));
            break match between(&content, "<answer>", "</answer>") {
                Some(answer) => (Termination::TokenLimitAnswered, Some(answer.to_string())),
                None => (Termination::TokenLimitFormatError, None),
            };
        }
    };
    Ok(Trajectory {
        question: question.to_string(),
        messages,
        answer,
        termination,
        llm_calls,
        tool_calls,
    })
}

/// Counts a conversation's tokens as the released loop does (the chat template rendered, then
/// tokenized), caching per turn: the text is split before each `<|im_start|>`, a special token
/// the tokenizer never merges across, so the count is the sum of the pieces' counts and a turn
/// already seen costs a hash lookup. Without that token the whole text is tokenized every time.
pub struct ContextCounter {
    tokenizer: std::sync::Arc<qforge_model::Tokenizer>,
    splits: bool,
    cache: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl ContextCounter {
    pub fn new(tokenizer: std::sync::Arc<qforge_model::Tokenizer>) -> Self {
        let splits = tokenizer.token_to_id("<|im_start|>").is_some();
        Self {
            tokenizer,
            splits,
            cache: Default::default(),
        }
    }

    /// Tokens of the rendered conversation; `usize::MAX` when it cannot be rendered.
    pub fn count(&self, messages: &[Value]) -> usize {
        let options = qforge_model::ChatOptions::default();
        let Ok(text) = self.tokenizer.apply_chat_template(messages, &options) else {
            return usize::MAX;
        };
        let encode = |piece: &str| {
            self.tokenizer
                .encode(piece, false)
                .map_or(usize::MAX / 2, |ids| ids.len())
        };
        if !self.splits {
            return encode(&text);
        }
        let mut cache = self.cache.lock().expect("counter cache");
        let mut total = 0usize;
        let mut start = 0;
        let cuts = text
            .match_indices("<|im_start|>")
            .map(|(i, _)| i)
            .skip_while(|&i| i == 0);
        for end in cuts.chain([text.len()]) {
            let piece = &text[start..end];
            total = total.saturating_add(match cache.get(piece) {
                Some(&n) => n,
                None => {
                    let n = encode(piece);
                    cache.insert(piece.to_string(), n);
                    n
                }
            });
            start = end;
        }
        total
    }
}
