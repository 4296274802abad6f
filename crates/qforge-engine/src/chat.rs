//! Chat requests and responses in OpenAI's wire format, shared by the server (which parses
//! requests and writes responses) and the remote client (which does the reverse), and the
//! parser that turns Qwen output into `reasoning_content`, `content` and `tool_calls` the way
//! vLLM's Qwen3 reasoning parser and Hermes tool parser do (streaming too).

use rand::Rng;
use serde_json::{Map, Value, json};

/// A chat completion request, independent of the backend that serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    pub tools: Option<Vec<Value>>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// OpenAI's `logit_bias` (token id -> bias), in the request's order.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub logprobs: bool,
    pub top_logprobs: usize,
    /// Extra chat-template variables (vLLM's `chat_template_kwargs`, e.g. enable_thinking).
    pub chat_template_kwargs: Map<String, Value>,
    /// `None`: the field was absent (OpenAI's default is `auto` with tools, `none` without).
    pub tool_choice: Option<ToolChoice>,
    /// `Some(false)`: keep only the first tool call of a reply (vLLM does the same).
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}` as given.
    pub response_format: Option<Value>,
    /// Every other top-level field (`user`, `metadata`, `max_completion_tokens`, vendor fields):
    /// not read by qforge's own engine, forwarded unchanged by the proxies.
    pub extra: Map<String, Value>,
    /// The numeric fields as the client wrote them (`1` vs `1.0`), so that a value nobody
    /// changed is forwarded as written.
    pub written: Map<String, Value>,
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

impl ToolChoice {
    fn from_openai(v: &Value) -> Result<Self, FieldError> {
        let bad = || {
            field_err(
                "tool_choice",
                "`tool_choice` must be \"none\", \"auto\", \"required\" or \
                 {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )
        };
        match v {
            Value::String(s) => match s.as_str() {
                "none" => Ok(Self::None),
                "auto" => Ok(Self::Auto),
                "required" => Ok(Self::Required),
                _ => Err(bad()),
            },
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(|name| Self::Function(name.to_string()))
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    fn to_openai(&self) -> Value {
        match self {
            Self::None => json!("none"),
            Self::Auto => json!("auto"),
            Self::Required => json!("required"),
            Self::Function(name) => json!({"type": "function", "function": {"name": name}}),
        }
    }
}

impl Default for ChatRequest {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            tools: None,
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: Vec::new(),
            seed: None,
            stop: Vec::new(),
            n: 1,
            logprobs: false,
            top_logprobs: 0,
            chat_template_kwargs: Map::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            response_format: None,
            extra: Map::new(),
            written: Map::new(),
        }
    }
}

impl ChatRequest {
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            messages: vec![json!({"role": "user", "content": text.into()})],
            ..Self::default()
        }
    }
}

/// A request field that is present but wrong. `param` is the JSON field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
}

fn field_err(param: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        param: param.to_string(),
        message: message.into(),
    }
}

fn opt_f32(v: &Value, key: &str) -> Result<Option<f32>, FieldError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| field_err(key, format!("`{key}` must be a number"))),
    }
}

fn opt_usize(v: &Value, key: &str) -> Result<Option<usize>, FieldError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|u| Some(u as usize))
            .ok_or_else(|| field_err(key, format!("`{key}` must be a non-negative integer"))),
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>, FieldError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| field_err(key, format!("`{key}` must be true or false"))),
    }
}

/// `stop`: a string or a list of strings.
pub fn parse_stop(v: &Value) -> Result<Vec<String>, FieldError> {
    match v.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| field_err("stop", "`stop` entries must be strings"))
            })
            .collect(),
        Some(_) => Err(field_err(
            "stop",
            "`stop` must be a string or a list of strings",
        )),
    }
}

/// `logit_bias`: an object from token ids (as strings, or numbers) to numbers.
fn parse_logit_bias(v: &Value) -> Result<Vec<(u32, f32)>, FieldError> {
    let entries = match v.get("logit_bias") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(field_err(
                "logit_bias",
                "`logit_bias` must be an object from token ids to numbers",
            ));
        }
    };
    entries
        .iter()
        .map(|(k, b)| {
            let id = k.trim().parse::<u32>().map_err(|_| {
                field_err(
                    "logit_bias",
                    format!("`logit_bias` key {k:?} is not a token id"),
                )
            })?;
            let bias = b.as_f64().ok_or_else(|| {
                field_err(
                    "logit_bias",
                    format!("`logit_bias[{k:?}]` must be a number"),
                )
            })?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// The sampling fields shared by chat and text completions.
pub fn parse_sampling(v: &Value, req: &mut ChatRequest) -> Result<(), FieldError> {
    req.max_tokens = match opt_usize(v, "max_completion_tokens")? {
        Some(m) => Some(m),
        None => opt_usize(v, "max_tokens")?,
    };
    req.temperature = opt_f32(v, "temperature")?;
    req.top_p = opt_f32(v, "top_p")?;
    req.top_k = match v.get("top_k") {
        // vLLM uses -1 for "off".
        Some(Value::Number(n)) if n.as_i64() == Some(-1) => Some(0),
        _ => opt_usize(v, "top_k")?,
    };
    req.min_p = opt_f32(v, "min_p")?;
    req.repetition_penalty = opt_f32(v, "repetition_penalty")?;
    req.presence_penalty = opt_f32(v, "presence_penalty")?;
    req.frequency_penalty = opt_f32(v, "frequency_penalty")?;
    req.logit_bias = parse_logit_bias(v)?;
    req.seed = match v.get("seed") {
        None | Some(Value::Null) => None,
        Some(x) => Some(
            x.as_u64()
                .or_else(|| x.as_i64().map(|i| i as u64))
                .ok_or_else(|| field_err("seed", "`seed` must be an integer"))?,
        ),
    };
    req.stop = parse_stop(v)?;
    req.n = opt_usize(v, "n")?.unwrap_or(1);
    if req.n == 0 {
        return Err(field_err("n", "`n` must be at least 1"));
    }
    Ok(())
}

impl ChatRequest {
    /// Parses the body of `POST /v1/chat/completions`.
    pub fn from_openai(v: &Value) -> Result<Self, FieldError> {
        if !v.is_object() {
            return Err(field_err("", "the request body must be a JSON object"));
        }
        let messages = match v.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m.clone(),
            Some(Value::Array(_)) => {
                return Err(field_err("messages", "`messages` must not be empty"));
            }
            None => return Err(field_err("messages", "`messages` is required")),
            Some(_) => return Err(field_err("messages", "`messages` must be a list")),
        };
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str);
            if role.is_none() {
                return Err(field_err(
                    "messages",
                    format!("messages[{i}] has no string `role`"),
                ));
            }
            if let Some(Value::Array(parts)) = m.get("content") {
                for (j, p) in parts.iter().enumerate() {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") | Some("image_url") | Some("image") => {}
                        Some(kind @ ("video_url" | "video")) => {
                            return Err(field_err(
                                "messages",
                                format!(
                                    "messages[{i}].content[{j}]: `{kind}` parts are not supported \
                                     (decoding video files is not built in); send frames as images"
                                ),
                            ));
                        }
                        other => {
                            return Err(field_err(
                                "messages",
                                format!(
                                    "messages[{i}].content[{j}]: content parts of type {} are not \
                                     supported (text and image_url are)",
                                    other.map_or("<none>".into(), |t| format!("`{t}`"))
                                ),
                            ));
                        }
                    }
                }
            }
        }
        // Text-only content parts are joined, as vLLM does for text-only models; parts with
        // images stay a list for the vision-language chat template.
        let messages = messages
            .into_iter()
            .map(|mut m| {
                if let Some(Value::Array(parts)) = m.get("content")
                    && parts
                        .iter()
                        .all(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                {
                    let text: String = parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n");
                    m["content"] = Value::String(text);
                }
                m
            })
            .collect();
        let tools = match v.get("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(t)) if t.is_empty() => None,
            Some(Value::Array(t)) => Some(t.clone()),
            Some(_) => return Err(field_err("tools", "`tools` must be a list")),
        };
        let mut req = Self {
            messages,
            tools,
            ..Self::default()
        };
        parse_sampling(v, &mut req)?;
        req.logprobs = opt_bool(v, "logprobs")?.unwrap_or(false);
        req.top_logprobs = opt_usize(v, "top_logprobs")?.unwrap_or(0);
        if req.top_logprobs > 20 {
            return Err(field_err(
                "top_logprobs",
                "`top_logprobs` must be at most 20",
            ));
        }
        if let Some(Value::Object(kw)) = v.get("chat_template_kwargs") {
            req.chat_template_kwargs = kw.clone();
        }
        req.tool_choice = match v.get("tool_choice") {
            None | Some(Value::Null) => None,
            Some(c) => Some(ToolChoice::from_openai(c)?),
        };
        if let Some(ToolChoice::Required | ToolChoice::Function(_)) = &req.tool_choice
            && req.tools.is_none()
        {
            return Err(field_err(
                "tool_choice",
                "`tool_choice` names a tool call but the request has no `tools`",
            ));
        }
        if let Some(ToolChoice::Function(name)) = &req.tool_choice
            && !req
                .tools
                .iter()
                .flatten()
                .any(|t| t["function"]["name"] == name.as_str())
        {
            return Err(field_err(
                "tool_choice",
                format!("`tool_choice` names the function {name:?}, which is not in `tools`"),
            ));
        }
        req.parallel_tool_calls = opt_bool(v, "parallel_tool_calls")?;
        req.response_format = match v.get("response_format") {
            None | Some(Value::Null) => None,
            Some(f) if f.get("type").is_some_and(Value::is_string) => Some(f.clone()),
            Some(_) => {
                return Err(field_err(
                    "response_format",
                    "`response_format` must be an object with a string `type`",
                ));
            }
        };
        let fields = v.as_object().expect("checked above");
        req.extra = fields
            .iter()
            .filter(|(k, _)| !OWNED_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        req.written = fields
            .iter()
            .filter(|(k, _)| WRITTEN_AS_GIVEN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(req)
    }

    /// The OpenAI JSON body for this request: the fields it read, written back with the values
    /// it holds, and every other field of the original request unchanged.
    pub fn to_openai(&self, model: &str, stream: bool) -> Value {
        let mut body = Value::Object(self.extra.clone());
        let o = body.as_object_mut().expect("object");
        o.insert("model".into(), json!(model));
        o.insert("messages".into(), json!(self.messages));
        o.insert("n".into(), json!(self.n));
        o.insert("stream".into(), json!(stream));
        if let Some(t) = &self.tools {
            o.insert("tools".into(), json!(t));
        }
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                o.insert(k.into(), v);
            }
        };
        // A client that said `max_completion_tokens` (OpenAI's reasoning models refuse
        // `max_tokens`) gets the same name forwarded.
        let max_tokens_key = if self.extra.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        put(max_tokens_key, json!(self.max_tokens));
        // A number nobody changed goes out as the client wrote it.
        let as_written = |key: &str, ours: Option<f32>| match self.written.get(key) {
            Some(w) if w.as_f64().map(|x| x as f32) == ours => w.clone(),
            _ => decimal(ours),
        };
        put("temperature", as_written("temperature", self.temperature));
        put("top_p", as_written("top_p", self.top_p));
        put("top_k", json!(self.top_k));
        put("min_p", as_written("min_p", self.min_p));
        put(
            "repetition_penalty",
            as_written("repetition_penalty", self.repetition_penalty),
        );
        put(
            "presence_penalty",
            as_written("presence_penalty", self.presence_penalty),
        );
        put(
            "frequency_penalty",
            as_written("frequency_penalty", self.frequency_penalty),
        );
        if !self.logit_bias.is_empty() {
            let written = self.written.get("logit_bias").filter(|w| {
                parse_logit_bias(&json!({"logit_bias": w})).ok().as_ref() == Some(&self.logit_bias)
            });
            put(
                "logit_bias",
                written.cloned().unwrap_or_else(|| {
                    Value::Object(
                        self.logit_bias
                            .iter()
                            .map(|(id, b)| (id.to_string(), decimal(Some(*b))))
                            .collect(),
                    )
                }),
            );
        }
        put(
            "tool_choice",
            json!(self.tool_choice.as_ref().map(ToolChoice::to_openai)),
        );
        put("parallel_tool_calls", json!(self.parallel_tool_calls));
        put("response_format", json!(self.response_format));
        put("seed", json!(self.seed));
        if !self.stop.is_empty() {
            put("stop", json!(self.stop));
        }
        if self.logprobs {
            put("logprobs", json!(true));
            put("top_logprobs", json!(self.top_logprobs));
        }
        if !self.chat_template_kwargs.is_empty() {
            put(
                "chat_template_kwargs",
                Value::Object(self.chat_template_kwargs.clone()),
            );
        }
        if stream {
            put("stream_options", json!({"include_usage": true}));
        }
        body
    }
}

/// The top-level request fields [`ChatRequest`] reads into its own fields; the rest go to
/// `extra`. (`max_completion_tokens` is read and also kept, so a proxy forwards the same name.)
const OWNED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "tools",
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "logprobs",
    "top_logprobs",
    "chat_template_kwargs",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
];

/// Numeric fields kept as written, see `ChatRequest::written`.
const WRITTEN_AS_GIVEN: &[&str] = &[
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
];

/// An f32 request value as the decimal the client wrote (0.7, not 0.699999988079071): f32's
/// shortest representation read back as f64.
fn decimal(x: Option<f32>) -> Value {
    x.and_then(|x| x.to_string().parse::<f64>().ok())
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments.
    pub arguments: String,
}

impl ToolCall {
    pub fn to_openai(&self, index: usize) -> Value {
        json!({"index": index, "id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}})
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top_logprobs: Vec<TopLogprob>,
}

impl TokenLogprob {
    pub fn to_openai(&self) -> Value {
        let entry = |t: &str, lp: f32| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
        let mut v = entry(&self.token, self.logprob);
        v["top_logprobs"] = Value::Array(
            self.top_logprobs
                .iter()
                .map(|t| entry(&t.token, t.logprob))
                .collect(),
        );
        v
    }

    pub fn from_openai(v: &Value) -> Self {
        Self {
            token: v["token"].as_str().unwrap_or_default().to_string(),
            logprob: v["logprob"].as_f64().unwrap_or(f64::NAN) as f32,
            top_logprobs: v["top_logprobs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| TopLogprob {
                            token: t["token"].as_str().unwrap_or_default().to_string(),
                            logprob: t["logprob"].as_f64().unwrap_or(f64::NAN) as f32,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatMessage {
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    pub finish_reason: String,
    pub logprobs: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn to_openai(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.prompt_tokens + self.completion_tokens})
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

impl ChatResponse {
    /// The first choice's content ("" when there is none): what a one-answer caller reads.
    pub fn text(&self) -> String {
        self.choices
            .first()
            .and_then(|c| c.message.content.clone())
            .unwrap_or_default()
    }

    pub fn to_openai(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|c| {
                let mut message = json!({"role": "assistant", "content": c.message.content});
                if let Some(r) = &c.message.reasoning_content {
                    message["reasoning_content"] = json!(r);
                }
                if !c.message.tool_calls.is_empty() {
                    message["tool_calls"] = Value::Array(
                        c.message.tool_calls.iter().enumerate().map(|(i, t)| {
                            let mut v = t.to_openai(i);
                            v.as_object_mut().expect("object").remove("index");
                            v
                        }).collect(),
                    );
                }
                json!({
                    "index": c.index,
                    "message": message,
                    "finish_reason": c.finish_reason,
                    "logprobs": c.logprobs.as_ref().map(|l| json!({"content": l.iter().map(TokenLogprob::to_openai).collect::<Vec<_>>()})),
                })
            })
            .collect();
        json!({"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
               "choices": choices, "usage": self.usage.to_openai()})
    }

    pub fn from_openai(v: &Value) -> Option<Self> {
        let choices = v["choices"]
            .as_array()?
            .iter()
            .map(|c| {
                let m = &c["message"];
                ChatChoice {
                    index: c["index"].as_u64().unwrap_or(0) as usize,
                    message: ChatMessage {
                        content: m["content"].as_str().map(str::to_string),
                        reasoning_content: m["reasoning_content"].as_str().map(str::to_string),
                        tool_calls: m["tool_calls"]
                            .as_array()
                            .map(|a| a.iter().map(tool_call_from_openai).collect())
                            .unwrap_or_default(),
                    },
                    finish_reason: c["finish_reason"].as_str().unwrap_or("stop").to_string(),
                    logprobs: c["logprobs"]["content"]
                        .as_array()
                        .map(|a| a.iter().map(TokenLogprob::from_openai).collect()),
                }
            })
            .collect();
        Some(Self {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            model: v["model"].as_str().unwrap_or_default().to_string(),
            created: v["created"].as_u64().unwrap_or(0),
            choices,
            usage: Usage {
                prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
            },
        })
    }
}

fn tool_call_from_openai(t: &Value) -> ToolCall {
    ToolCall {
        id: t["id"].as_str().unwrap_or_default().to_string(),
        name: t["function"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        arguments: t["function"]["arguments"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// One piece of a streamed choice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatDelta {
    pub index: usize,
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub finish_reason: Option<String>,
}

/// What a streaming chat yields.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Delta(ChatDelta),
    /// Sent once, after every choice finished.
    Usage(Usage),
}

/// Folds streamed events into a response (used by non-streaming calls of both backends).
pub fn collect_response(
    id: String,
    model: String,
    n: usize,
    events: Vec<ChatEvent>,
) -> ChatResponse {
    let mut choices: Vec<ChatChoice> = (0..n)
        .map(|index| ChatChoice {
            index,
            message: ChatMessage::default(),
            finish_reason: "stop".into(),
            logprobs: None,
        })
        .collect();
    let mut usage = Usage::default();
    let append = |slot: &mut Option<String>, s: &Option<String>| {
        if let Some(s) = s {
            slot.get_or_insert_with(String::new).push_str(s);
        }
    };
    for e in events {
        match e {
            ChatEvent::Usage(u) => usage = u,
            ChatEvent::Delta(d) => {
                let Some(c) = choices.get_mut(d.index) else {
                    continue;
                };
                append(&mut c.message.content, &d.content);
                append(&mut c.message.reasoning_content, &d.reasoning_content);
                c.message.tool_calls.extend(d.tool_calls);
                if let Some(l) = d.logprobs {
                    c.logprobs.get_or_insert_with(Vec::new).extend(l);
                }
                if let Some(f) = d.finish_reason {
                    c.finish_reason = f;
                }
            }
        }
    }
    ChatResponse {
        id,
        model,
        created: unix_now(),
        choices,
        usage,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `prefix` followed by 24 random alphanumerics (OpenAI-style ids).
pub fn random_id(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";
const TOOL_START: &str = "<tool_call>";
const TOOL_END: &str = "</tool_call>";

/// `<tool_call>` ends reasoning without `</think>` only when `<function` and then `=` or
/// whitespace follow (Qwen3.5's XML tool format), as vLLM's parser checks.
const FUNCTION_OPEN: &str = "<function";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reasoning,
    Content,
    ToolCall,
}

/// Where reasoning stops in the buffered text.
enum Boundary {
    /// `</think>` at this byte.
    End(usize),
    /// A `<think>` tag to drop.
    Open(usize),
    /// A `<tool_call>` that opens a call: content starts here.
    ToolCall(usize),
    /// A `<tool_call>` whose next bytes are not here yet.
    Undecided(usize),
}

/// Parsed pieces of output text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Incremental Qwen output parser, streamed and whole alike.
///
/// Reasoning follows vLLM's `qwen3` reasoning parser (the cases of its test file are
/// `tools/fixtures/reasoning/vllm_qwen3_cases.json`): with thinking on, everything before
/// `</think>` is reasoning whether or not the output opens with `<think>` (templates from
/// Qwen3-2507 on put `<think>` in the prompt); a `<think>` tag is dropped; output that never
/// closes the block was cut off and is all reasoning; `<tool_call>` followed by `<function`
/// ends reasoning implicitly. With thinking off (the prompt already closed the block) all is
/// content. Where vLLM's whole-output and streaming paths differ (text before a `<think>` that
/// is not at the start: dropped whole, kept streamed) this parser keeps it in both.
///
/// With tools in the request each `<tool_call>{"name":..., "arguments":...}</tool_call>` in the
/// content becomes a tool call (vLLM's Hermes parser). Text that may still turn into a tag is
/// held back.
#[derive(Debug, Clone)]
pub struct OutputParser {
    mode: Mode,
    /// Nothing but whitespace seen yet: a `<think>` here drops that whitespace too.
    at_start: bool,
    buf: String,
    tools: bool,
    saw_tool_call: bool,
}

impl OutputParser {
    /// `thinking`: the output opens inside a think block (see [`thinking_expected`]).
    pub fn new(thinking: bool, parse_tools: bool) -> Self {
        Self {
            mode: if thinking {
                Mode::Reasoning
            } else {
                Mode::Content
            },
            at_start: true,
            buf: String::new(),
            tools: parse_tools,
            saw_tool_call: false,
        }
    }

    pub fn saw_tool_call(&self) -> bool {
        self.saw_tool_call
    }

    /// The first place in the buffer where reasoning text stops.
    fn reasoning_boundary(&self) -> Option<Boundary> {
        let end = self.buf.find(THINK_END).map(Boundary::End);
        let open = self.buf.find(THINK_START).map(Boundary::Open);
        let mut tool = None;
        for (i, _) in self.buf.match_indices(TOOL_START) {
            let after = self.buf[i + TOOL_START.len()..].trim_start();
            if let Some(next) = after.strip_prefix(FUNCTION_OPEN)
                && let Some(c) = next.chars().next()
            {
                if c == '=' || c.is_whitespace() {
                    tool = Some(Boundary::ToolCall(i));
                    break;
                }
            } else if FUNCTION_OPEN.starts_with(after) {
                tool = Some(Boundary::Undecided(i));
                break;
            }
        }
        let at = |b: &Boundary| match b {
            Boundary::End(i)
            | Boundary::Open(i)
            | Boundary::ToolCall(i)
            | Boundary::Undecided(i) => *i,
        };
        [end, open, tool].into_iter().flatten().min_by_key(at)
    }

    pub fn push(&mut self, text: &str) -> Parsed {
        self.buf.push_str(text);
        let mut out = Parsed::default();
        loop {
            match self.mode {
                Mode::Reasoning => {
                    if self.at_start {
                        let trimmed = self.buf.trim_start();
                        if let Some(rest) = trimmed.strip_prefix(THINK_START) {
                            self.buf = rest.to_string();
                            self.at_start = false;
                            continue;
                        }
                        if THINK_START.starts_with(trimmed) {
                            return out; // could still become `<think>`
                        }
                        self.at_start = false;
                    }
                    match self.reasoning_boundary() {
                        Some(Boundary::End(i)) => {
                            out.reasoning.push_str(&self.buf[..i]);
                            self.buf.drain(..i + THINK_END.len());
                            self.mode = Mode::Content;
                        }
                        Some(Boundary::Open(i)) => {
                            out.reasoning.push_str(&self.buf[..i]);
                            self.buf.drain(..i + THINK_START.len());
                        }
                        Some(Boundary::ToolCall(i)) => {
                            out.reasoning.push_str(&self.buf[..i]);
                            self.buf.drain(..i);
                            self.mode = Mode::Content;
                        }
                        Some(Boundary::Undecided(i)) => {
                            out.reasoning.push_str(&self.buf[..i]);
                            self.buf.drain(..i);
                            return out;
                        }
                        None => {
                            let keep = [THINK_END, THINK_START, TOOL_START]
                                .iter()
                                .map(|tag| held_back(&self.buf, tag))
                                .max()
                                .unwrap_or(0);
                            out.reasoning.push_str(&self.buf[..self.buf.len() - keep]);
                            self.buf.drain(..self.buf.len() - keep);
                            return out;
                        }
                    }
                }
                Mode::Content => {
                    if !self.tools {
                        out.content.push_str(&self.buf);
                        self.buf.clear();
                        return out;
                    }
                    match self.buf.find(TOOL_START) {
                        Some(i) => {
                            let before = self.buf[..i].to_string();
                            self.emit_content(&before, &mut out);
                            self.buf.drain(..i + TOOL_START.len());
                            self.mode = Mode::ToolCall;
                        }
                        None => {
                            let keep = held_back(&self.buf, TOOL_START);
                            let ready = self.buf[..self.buf.len() - keep].to_string();
                            self.emit_content(&ready, &mut out);
                            self.buf.drain(..self.buf.len() - keep);
                            return out;
                        }
                    }
                }
                Mode::ToolCall => match self.buf.find(TOOL_END) {
                    Some(i) => {
                        let body = self.buf[..i].to_string();
                        self.buf.drain(..i + TOOL_END.len());
                        self.mode = Mode::Content;
                        match parse_tool_call(&body) {
                            Some(call) => {
                                self.saw_tool_call = true;
                                out.tool_calls.push(call);
                            }
                            None => out
                                .content
                                .push_str(&format!("{TOOL_START}{body}{TOOL_END}")),
                        }
                    }
                    None => return out,
                },
            }
        }
    }

    /// After a tool call, vLLM's Hermes parser drops the text between calls; whitespace there is
    /// only layout, other text is kept so nothing the model said is lost.
    fn emit_content(&self, text: &str, out: &mut Parsed) {
        if self.saw_tool_call && text.trim().is_empty() {
            return;
        }
        out.content.push_str(text);
    }

    /// Flushes what was held back at the end of the output.
    pub fn finish(&mut self) -> Parsed {
        let mut out = Parsed::default();
        let rest = std::mem::take(&mut self.buf);
        match self.mode {
            Mode::Content => self.emit_content(&rest, &mut out),
            Mode::Reasoning => out.reasoning.push_str(&rest),
            Mode::ToolCall => match parse_tool_call(&rest) {
                Some(call) => {
                    self.saw_tool_call = true;
                    out.tool_calls.push(call);
                }
                None => out.content.push_str(&format!("{TOOL_START}{rest}")),
            },
        }
        self.mode = Mode::Content;
        out
    }
}

/// Whether a reply to `prompt` (the rendered chat prompt) opens inside a think block, so that
/// the reasoning parser applies. vLLM applies its qwen3 parser to whatever model it is told to;
/// qforge turns it on by itself, so it asks the template: off when the request disables
/// thinking or the prompt already closed the block (vLLM's `prompt_is_reasoning_end`); on when
/// the prompt opened the block (Qwen3-2507 Thinking, Qwen3.5) or the template has Qwen3's
/// `enable_thinking` switch (the model opens the block itself); off for templates without
/// thinking (Qwen2.5, Qwen3-2507 Instruct), whose replies are all content.
pub fn thinking_expected(prompt: &str, thinking_switch: bool, kwargs: &Map<String, Value>) -> bool {
    if kwargs.get("enable_thinking") == Some(&Value::Bool(false)) {
        return false;
    }
    let tail = prompt.trim_end();
    if tail.ends_with(THINK_END) {
        return false;
    }
    tail.ends_with(THINK_START) || thinking_switch
}

/// Bytes at the end of `text` that are a proper prefix of `tag`.
fn held_back(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// The JSON body of one `<tool_call>` block (Hermes format, as Qwen models write it): its
/// `name` and its `arguments` as written (`None` when absent). The error says what is wrong in
/// words a model can act on (agents show it as the tool's response). The one parser of tool
/// calls: the server's output parser and the RL tool rollouts both use it.
pub fn parse_tool_call_body(body: &str) -> Result<(String, Option<Value>), String> {
    let v: Value = serde_json::from_str(body.trim()).map_err(|e| {
        format!("the tool call is not valid JSON ({e}); give `name` and `arguments`")
    })?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the tool call has no string `name`")?
        .to_string();
    Ok((name, v.get("arguments").cloned()))
}

/// `{"name": ..., "arguments": {...}}` -> a tool call with the arguments as JSON text
/// (`json.dumps(arguments, ensure_ascii=False)`, as vLLM writes them).
fn parse_tool_call(body: &str) -> Option<ToolCall> {
    let (name, arguments) = parse_tool_call_body(body).ok()?;
    let arguments = match arguments {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s,
        Some(a) => python_json(&a),
    };
    Some(ToolCall {
        id: random_id("chatcmpl-tool-"),
        name,
        arguments,
    })
}

/// `json.dumps(v, ensure_ascii=False)`: `", "` and `": "` separators.
fn python_json(v: &Value) -> String {
    match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parser: &mut OutputParser, pieces: &[&str]) -> Parsed {
        let mut parts: Vec<Parsed> = pieces.iter().map(|p| parser.push(p)).collect();
        parts.push(parser.finish());
        let mut all = Parsed::default();
        for p in parts {
            all.content += &p.content;
            all.reasoning += &p.reasoning;
            all.tool_calls.extend(p.tool_calls);
        }
        all
    }

    fn chars(s: &str) -> Vec<String> {
        s.chars().map(|c| c.to_string()).collect()
    }

    #[test]
    fn reasoning_and_content_split_the_same_streamed_or_whole() {
        let text = "<think>\nLet me think.\n</think>\n\nThe answer is 4.";
        let whole = run(&mut OutputParser::new(true, false), &[text]);
        assert_eq!(whole.reasoning, "\nLet me think.\n");
        assert_eq!(whole.content, "\n\nThe answer is 4.");
        let pieces = chars(text);
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(run(&mut OutputParser::new(true, false), &refs), whole);
    }

    #[test]
    fn output_without_think_tags_is_reasoning_when_thinking_and_content_when_not() {
        let pieces = ["Hello ", "<thin", "king> world"];
        let p = run(&mut OutputParser::new(true, true), &pieces);
        assert_eq!(
            (p.reasoning.as_str(), p.content.as_str()),
            ("Hello <thinking> world", "")
        );
        let p = run(&mut OutputParser::new(false, true), &pieces);
        assert_eq!(
            (p.reasoning.as_str(), p.content.as_str()),
            ("", "Hello <thinking> world")
        );
    }

    /// Each case of vLLM's qwen3 reasoning-parser test file, whole, one character at a time,
    /// and in the deltas vLLM's multi-token cases use.
    #[test]
    fn reasoning_matches_vllm_qwen3_parser_cases() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/fixtures/reasoning/vllm_qwen3_cases.json"
        );
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let expect = |case: &Value, thinking: bool, pieces: Vec<String>| {
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let p = run(&mut OutputParser::new(thinking, false), &refs);
            let some = |s: String| (!s.is_empty()).then_some(s);
            assert_eq!(
                (some(p.reasoning), some(p.content)),
                (
                    case["reasoning"].as_str().map(str::to_string),
                    case["content"].as_str().map(str::to_string)
                ),
                "{} in {} pieces",
                case["id"],
                refs.len()
            );
        };
        let mut count = 0;
        for (group, thinking) in [("thinking_enabled", true), ("thinking_disabled", false)] {
            for case in cases[group].as_array().unwrap() {
                let output = case["output"].as_str().unwrap();
                expect(case, thinking, vec![output.to_string()]);
                expect(case, thinking, chars(output));
                count += 1;
            }
        }
        for case in cases["multi_token_deltas"].as_array().unwrap() {
            let deltas = case["deltas"].as_array().unwrap();
            expect(
                case,
                true,
                deltas
                    .iter()
                    .map(|d| d.as_str().unwrap().to_string())
                    .collect(),
            );
            count += 1;
        }
        assert_eq!(count, 18);
    }

    #[test]
    fn a_tool_call_tag_in_reasoning_without_a_function_tag_stays_reasoning() {
        // Qwen3's Hermes calls (`<tool_call>\n{...}`) do not end reasoning; only Qwen3.5's
        // `<function=` form does, as in vLLM.
        let text = "plan: <tool_call>\n{\"name\": \"a\"}</tool_call> then</think>done";
        for pieces in [vec![text.to_string()], chars(text)] {
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let p = run(&mut OutputParser::new(true, true), &refs);
            assert_eq!(
                p.reasoning,
                "plan: <tool_call>\n{\"name\": \"a\"}</tool_call> then"
            );
            assert_eq!(p.content, "done");
        }
        let p = run(
            &mut OutputParser::new(true, false),
            &["x <tool_call>\n <funct"],
        );
        assert_eq!(
            p.reasoning, "x <tool_call>\n <funct",
            "cut off while undecided"
        );
    }

    #[test]
    fn thinking_is_expected_from_the_prompt_and_the_template() {
        let none = Map::new();
        let mut off = Map::new();
        off.insert("enable_thinking".into(), Value::Bool(false));
        let open = "<|im_start|>assistant\n<think>\n";
        let closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
        let plain = "<|im_start|>assistant\n";
        assert!(
            thinking_expected(open, false, &none),
            "Thinking-2507, Qwen3.5"
        );
        assert!(
            thinking_expected(plain, true, &none),
            "Qwen3 hybrid: the model opens it"
        );
        assert!(
            !thinking_expected(closed, true, &none),
            "enable_thinking=False rendered"
        );
        assert!(!thinking_expected(plain, true, &off));
        assert!(
            !thinking_expected(plain, false, &none),
            "a template without thinking"
        );
    }

    #[test]
    fn tool_calls_are_parsed_streamed_and_whole() {
        let text = "I'll check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"noop\", \"arguments\": {}}\n</tool_call>";
        for pieces in [vec![text.to_string()], chars(text)] {
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let mut parser = OutputParser::new(false, true);
            let p = run(&mut parser, &refs);
            assert!(parser.saw_tool_call());
            assert_eq!(p.content, "I'll check.");
            assert_eq!(p.tool_calls.len(), 2);
            assert_eq!(p.tool_calls[0].name, "get_weather");
            assert_eq!(
                p.tool_calls[0].arguments,
                r#"{"city": "Zürich", "days": 2}"#
            );
            assert_eq!(p.tool_calls[1].arguments, "{}");
        }
    }

    #[test]
    fn malformed_tool_call_stays_content() {
        let p = run(
            &mut OutputParser::new(false, true),
            &["<tool_call>{not json}</tool_call> ok"],
        );
        assert!(p.tool_calls.is_empty());
        assert_eq!(p.content, "<tool_call>{not json}</tool_call> ok");
        let p = run(
            &mut OutputParser::new(false, true),
            &["x <tool_call>{\"name\": \"a\"", ", \"arguments\": {}}"],
        );
        assert_eq!(
            p.tool_calls.len(),
            1,
            "an unclosed but complete call at the end still counts"
        );
    }

    #[test]
    fn tools_are_not_parsed_without_tools_in_the_request() {
        let p = run(
            &mut OutputParser::new(false, false),
            &["<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>"],
        );
        assert!(p.tool_calls.is_empty());
        assert!(p.content.contains("<tool_call>"));
    }

    #[test]
    fn request_parsing_names_the_bad_field() {
        let bad = [
            (json!({"messages": []}), "messages"),
            (json!({"model": "m"}), "messages"),
            (json!({"messages": [{"content": "x"}]}), "messages"),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": 3}),
                "stop",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
                "n",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "presence_penalty": "a"}),
                "presence_penalty",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"x": 1}}),
                "logit_bias",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": "a"}}),
                "logit_bias",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": [1]}),
                "logit_bias",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "function", "function": {"name": "a"}}],
                       "tool_choice": {"type": "function", "function": {"name": "b"}}}),
                "tool_choice",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": "yes"}),
                "parallel_tool_calls",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "response_format": "json"}),
                "response_format",
            ),
        ];
        for (body, param) in bad {
            assert_eq!(
                ChatRequest::from_openai(&body).unwrap_err().param,
                param,
                "{body}"
            );
        }
        let ok = ChatRequest::from_openai(&json!({
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "stop": "x", "max_completion_tokens": 5, "seed": 3, "logprobs": true, "top_logprobs": 2,
            "chat_template_kwargs": {"enable_thinking": false}
        }))
        .unwrap();
        assert_eq!(ok.messages[0]["content"], "a\nb");
        assert_eq!(
            (ok.stop.clone(), ok.max_tokens, ok.seed, ok.top_logprobs),
            (vec!["x".to_string()], Some(5), Some(3), 2)
        );
        // And back through the wire format.
        assert_eq!(
            ChatRequest::from_openai(&ok.to_openai("m", false)).unwrap(),
            ok
        );
    }

    /// Proxies rebuild the body with `to_openai`: a field the official client (or a vendor)
    /// sends must reach the upstream with the same value, written the same way.
    #[test]
    fn every_field_of_a_request_survives_the_round_trip_as_written() {
        let body = json!({
            "model": "client-model", "stream": false,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "presence_penalty": 0.3, "frequency_penalty": -0.7, "temperature": 0.7, "top_p": 0.95,
            "logit_bias": {"42": -100, "7": 2.5},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "max_completion_tokens": 64, "seed": 3, "n": 2, "stop": ["\n\n"],
            "user": "u-1", "metadata": {"run": "a"}, "store": false,
            "reasoning_effort": "low", "service_tier": "auto", "vendor_field": [1, {"x": null}],
        });
        let request = ChatRequest::from_openai(&body).unwrap();
        let forwarded = request.to_openai("upstream-model", false);
        for (key, value) in body.as_object().unwrap() {
            if key == "model" {
                continue;
            }
            assert_eq!(forwarded[key].to_string(), value.to_string(), "{key}");
        }
        assert_eq!(forwarded["model"], "upstream-model");
        assert!(
            forwarded.get("max_tokens").is_none(),
            "one name for the limit"
        );
        assert_eq!(request.extra.len(), 7, "{:?}", request.extra.keys());
    }
}
