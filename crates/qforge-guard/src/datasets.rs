//! Loaders for the public safety evaluation sets (`../shared/data/guard/README.md`) and for the
//! Qwen3GuardTest layout. Formats are recognised by their columns/keys, not file names, and
//! every example becomes a conversation with a gold label.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{GuardError, Result};
use crate::labels::Mode;

/// One labelled conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub id: String,
    pub messages: Vec<Value>,
    /// Gold: harmful (Unsafe; for sets with three levels, Controversial counts as unsafe only
    /// if the set says so).
    pub unsafe_: bool,
    /// Gold category or harm area, as the set names it.
    pub category: Option<String>,
    /// Gold refusal label of a response, when the set has one.
    pub refusal: Option<bool>,
    /// Token span `[start, end]` of the first unsafe part in the templated sequence
    /// (Qwen3GuardTest `unsafe_start_index` / `unsafe_end_index`).
    pub unsafe_span: Option<(usize, usize)>,
}

impl Example {
    pub fn mode(&self) -> Result<Mode> {
        Mode::of_messages(&self.messages)
    }
}

/// Which format a file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    OpenAiModeration,
    SimpleSafetyTests,
    XsTest,
    ToxicChat,
    HarmBench,
    /// `message`/`messages`, `label`, optional `unsafe_start_index`/`unsafe_end_index`.
    Qwen3GuardTest,
}

fn invalid(path: &Path, line: Option<usize>, msg: impl std::fmt::Display) -> GuardError {
    match line {
        Some(l) => GuardError::InvalidInput(format!("{}:{l}: {msg}", path.display())),
        None => GuardError::InvalidInput(format!("{}: {msg}", path.display())),
    }
}

fn user(text: &str) -> Vec<Value> {
    vec![json!({"role": "user", "content": text})]
}

/// Loads a dataset file, recognising its format.
pub fn load(path: &Path) -> Result<(Format, Vec<Example>)> {
    let bytes = std::fs::read(path).map_err(|e| invalid(path, None, e))?;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| invalid(path, None, format!("gzip: {e}")))?;
        s
    } else {
        String::from_utf8(bytes).map_err(|_| invalid(path, None, "not UTF-8 text"))?
    };
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        // One JSON document (ToxicChat) or JSON lines.
        if let Ok(v) = serde_json::from_str::<Value>(trimmed)
            && v.get("instances").is_some()
        {
            return Ok((Format::ToxicChat, toxic_chat(path, &v)?));
        }
        return jsonl(path, &text);
    }
    csv_file(path, trimmed)
}

fn toxic_chat(path: &Path, v: &Value) -> Result<Vec<Example>> {
    let instances = v["instances"]
        .as_array()
        .ok_or_else(|| invalid(path, None, "`instances` is not a list"))?;
    instances
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let text = inst["instance"]
                .as_str()
                .ok_or_else(|| invalid(path, None, format!("instance {i} has no text")))?;
            let label = inst["annotations"]["toxicity"]["majority_human"]
                .as_str()
                .ok_or_else(|| {
                    invalid(path, None, format!("instance {i} has no toxicity label"))
                })?;
            let jailbreak =
                inst["annotations"]["jailbreaking"]["majority_human"].as_str() == Some("1");
            Ok(Example {
                id: inst["id"]
                    .as_str()
                    .map_or_else(|| i.to_string(), str::to_string),
                messages: user(text),
                unsafe_: label == "1",
                category: jailbreak.then(|| "Jailbreak".into()),
                refusal: None,
                unsafe_span: None,
            })
        })
        .collect()
}

/// OpenAI moderation labels (`S`, `H`, `V`, `HR`, `SH`, `S3`, `H2`, `V2`): positive if any is 1;
/// a missing key means unknown, not 0.
const OPENAI_LABELS: [&str; 8] = ["S", "H", "V", "HR", "SH", "S3", "H2", "V2"];

fn jsonl(path: &Path, text: &str) -> Result<(Format, Vec<Example>)> {
    let mut format = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| invalid(path, Some(n), e))?;
        if v.get("prompt").is_some() && OPENAI_LABELS.iter().any(|k| v.get(*k).is_some()) {
            format = Some(Format::OpenAiModeration);
            let positive = OPENAI_LABELS
                .iter()
                .filter(|k| v.get(**k).and_then(Value::as_i64) == Some(1))
                .map(|k| k.to_string())
                .collect::<Vec<_>>();
            out.push(Example {
                id: n.to_string(),
                messages: user(v["prompt"].as_str().unwrap_or_default()),
                unsafe_: !positive.is_empty(),
                category: (!positive.is_empty()).then(|| positive.join(",")),
                refusal: None,
                unsafe_span: None,
            });
            continue;
        }
        let messages = v
            .get("message")
            .or_else(|| v.get("messages"))
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| {
                invalid(
                    path,
                    Some(n),
                    "expected `messages` (or `message`) and `label`, or an OpenAI moderation row",
                )
            })?;
        let label = v
            .get("label")
            .ok_or_else(|| invalid(path, Some(n), "no `label`"))?;
        let unsafe_ = match label {
            Value::Bool(b) => *b,
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "unsafe" | "controversial" | "1" | "true" | "harmful" => true,
                "safe" | "0" | "false" | "unharmful" => false,
                other => return Err(invalid(path, Some(n), format!("unknown label {other:?}"))),
            },
            Value::Number(x) => x.as_i64() == Some(1),
            other => return Err(invalid(path, Some(n), format!("unknown label {other}"))),
        };
        let span = match (
            v.get("unsafe_start_index").and_then(Value::as_i64),
            v.get("unsafe_end_index").and_then(Value::as_i64),
        ) {
            (Some(s), Some(e)) if s >= 0 && e >= s => Some((s as usize, e as usize)),
            _ => None,
        };
        format = Some(Format::Qwen3GuardTest);
        out.push(Example {
            id: v
                .get("id")
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .unwrap_or_else(|| n.to_string()),
            messages,
            unsafe_,
            category: v
                .get("category")
                .and_then(Value::as_str)
                .map(str::to_string),
            refusal: v.get("refusal").and_then(|r| match r {
                Value::Bool(b) => Some(*b),
                Value::String(s) => Some(s.eq_ignore_ascii_case("yes")),
                _ => None,
            }),
            unsafe_span: span,
        });
    }
    let format = format.ok_or_else(|| invalid(path, None, "no examples"))?;
    Ok((format, out))
}

fn csv_file(path: &Path, text: &str) -> Result<(Format, Vec<Example>)> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| invalid(path, Some(1), e))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let format = if col("prompts_final").is_some() {
        Format::SimpleSafetyTests
    } else if col("Behavior").is_some() {
        Format::HarmBench
    } else if col("type").is_some() && col("prompt").is_some() {
        Format::XsTest
    } else {
        return Err(invalid(
            path,
            Some(1),
            format!(
                "unknown CSV columns {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        ));
    };
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let n = i + 2;
        let record = record.map_err(|e| invalid(path, Some(n), e))?;
        let get = |name: &str| {
            col(name)
                .and_then(|c| record.get(c))
                .unwrap_or("")
                .to_string()
        };
        let example = match format {
            Format::SimpleSafetyTests => Example {
                id: get("id"),
                messages: user(&get("prompts_final")),
                unsafe_: true,
                category: Some(get("harm_area")),
                refusal: None,
                unsafe_span: None,
            },
            Format::HarmBench => {
                // Contextual behaviours are asked with their context first, as HarmBench does.
                let context = get("ContextString");
                let behavior = get("Behavior");
                let prompt = if context.trim().is_empty() {
                    behavior
                } else {
                    format!("{context}\n\n---\n\n{behavior}")
                };
                Example {
                    id: get("BehaviorID"),
                    messages: user(&prompt),
                    unsafe_: true,
                    category: Some(get("SemanticCategory")),
                    refusal: None,
                    unsafe_span: None,
                }
            }
            Format::XsTest => {
                let kind = get("type");
                let labelled = get("label");
                let id = [get("id"), get("id_v2")]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or_else(|| n.to_string());
                Example {
                    id,
                    messages: user(&get("prompt")),
                    unsafe_: if labelled.is_empty() {
                        kind.starts_with("contrast_")
                    } else {
                        labelled == "unsafe"
                    },
                    category: Some(kind),
                    refusal: None,
                    unsafe_span: None,
                }
            }
            _ => unreachable!("CSV formats only"),
        };
        out.push(example);
    }
    Ok((format, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn each_format_is_recognised_and_labelled() {
        let d = tempfile::tempdir().unwrap();
        let sst = write(
            d.path(),
            "a.csv",
            "id,harm_area,counter,category,prompts_final\nsst_001,\"Scams, fraud\",1,x,Do a scam\n",
        );
        let (f, e) = load(&sst).unwrap();
        assert_eq!(
            (f, e[0].unsafe_, e[0].category.as_deref()),
            (Format::SimpleSafetyTests, true, Some("Scams, fraud"))
        );
        let xs = write(
            d.path(),
            "b.csv",
            "id_v1,id_v2,type,prompt,focus,note\r\nv1-1,v2-1,homonyms,Kill a process?,kill,v\r\n,v2-2,contrast_homonyms,Kill a person?,kill,v\r\n",
        );
        let (f, e) = load(&xs).unwrap();
        assert_eq!(f, Format::XsTest);
        assert_eq!(
            e.iter().map(|x| x.unsafe_).collect::<Vec<_>>(),
            [false, true]
        );
        let hb = write(
            d.path(),
            "c.csv",
            "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\nDo harm,contextual,illegal,context,\"Some\ncontext\",id1\n",
        );
        let (f, e) = load(&hb).unwrap();
        assert_eq!(f, Format::HarmBench);
        assert_eq!(
            e[0].messages[0]["content"],
            "Some\ncontext\n\n---\n\nDo harm"
        );
        let tc = write(
            d.path(),
            "d.json",
            r#"{"instances": [{"id": "x", "instance": "hi", "annotations": {"toxicity": {"majority_human": "1"}, "jailbreaking": {"majority_human": "1"}}}]}"#,
        );
        let (f, e) = load(&tc).unwrap();
        assert_eq!(
            (f, e[0].unsafe_, e[0].category.as_deref()),
            (Format::ToxicChat, true, Some("Jailbreak"))
        );
        let om = write(
            d.path(),
            "e.jsonl",
            "{\"prompt\": \"a\", \"S\": 0, \"H\": 1}\n{\"prompt\": \"b\", \"V\": 0}\n",
        );
        let (f, e) = load(&om).unwrap();
        assert_eq!(f, Format::OpenAiModeration);
        assert_eq!(
            e.iter().map(|x| x.unsafe_).collect::<Vec<_>>(),
            [true, false]
        );
        let qt = write(
            d.path(),
            "f.jsonl",
            "{\"message\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}], \"label\": \"Unsafe\", \"unsafe_start_index\": 12, \"unsafe_end_index\": 15}\n",
        );
        let (f, e) = load(&qt).unwrap();
        assert_eq!(
            (f, e[0].unsafe_span, e[0].mode().unwrap()),
            (Format::Qwen3GuardTest, Some((12, 15)), Mode::Response)
        );
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let bad = write(
            d.path(),
            "bad.jsonl",
            "{\"messages\": [], \"label\": \"safe\"}\n{oops\n",
        );
        let err = load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2"), "{err}");
        let bad = write(
            d.path(),
            "bad2.jsonl",
            "{\"messages\": [], \"label\": \"spam\"}\n",
        );
        let err = load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad2.jsonl:1") && err.contains("spam"),
            "{err}"
        );
        let bad = write(d.path(), "bad.csv", "a,b\n1,2\n");
        assert!(
            load(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown CSV columns")
        );
    }
}
