//! Chat templates rendered with minijinja the way transformers renders them with jinja2:
//! `trim_blocks` and `lstrip_blocks`, Python string methods (pycompat), loop controls,
//! `raise_exception`, `strftime_now`, and a `tojson` that is `json.dumps(ensure_ascii=False)`
//! (minijinja's own escapes `<`, `&` and `'`, which would change the prompt).

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error as JError, ErrorKind};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Options of `apply_chat_template`.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub add_generation_prompt: bool,
    /// Tool schemas (OpenAI function format), passed as `tools`.
    pub tools: Option<Vec<Value>>,
    /// Extra template variables, e.g. `enable_thinking`.
    pub extra: serde_json::Map<String, Value>,
}

impl ChatOptions {
    pub fn generation() -> Self {
        Self {
            add_generation_prompt: true,
            ..Self::default()
        }
    }

    pub fn with_enable_thinking(mut self, enabled: bool) -> Self {
        self.extra
            .insert("enable_thinking".into(), Value::Bool(enabled));
        self
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    thinking_switch: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::Template(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<JValue, JError> {
                Err(JError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ModelError::Template(describe(&e)))?;
        Ok(Self {
            env,
            thinking_switch: source.contains("enable_thinking"),
        })
    }

    /// Whether the template reads Qwen3's `enable_thinking` (a hybrid thinking model).
    pub fn has_thinking_switch(&self) -> bool {
        self.thinking_switch
    }

    pub fn render(
        &self,
        messages: &[Value],
        options: &ChatOptions,
        special_tokens: &serde_json::Map<String, Value>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(ModelError::InvalidInput("no messages to render".into()));
        }
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Value::as_str).is_none() {
                return Err(ModelError::InvalidInput(format!(
                    "message {i} has no string `role`"
                )));
            }
        }
        let mut ctx = serde_json::Map::new();
        for (k, v) in special_tokens {
            ctx.insert(k.clone(), v.clone());
        }
        for (k, v) in &options.extra {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Value::Array(messages.to_vec()));
        ctx.insert(
            "tools".into(),
            options
                .tools
                .clone()
                .map(Value::Array)
                .unwrap_or(Value::Null),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(options.add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ModelError::Template(describe(&e)))?;
        tmpl.render(JValue::from(minijinja::value::Serde(Value::Object(ctx))))
            .map_err(|e| ModelError::Template(describe(&e)))
    }
}

fn describe(e: &JError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

fn strftime_now(format: String) -> String {
    // Templates use it for "Today's date"; UTC keeps renders reproducible across machines.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format
        .replace("%Y", &format!("{y:04}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = PyJson {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

/// Python's `json.dumps` layout.
struct PyJson {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    }

    fn write(&self, v: &Value, level: usize, out: &mut String) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => out.push_str(&i.to_string()),
                (_, Some(u), _) => out.push_str(&u.to_string()),
                (_, _, Some(f)) => out.push_str(&python_float_repr(f)),
                _ => out.push_str(&n.to_string()),
            },
            Value::String(s) => out.push_str(&serde_json::to_string(s).expect("strings serialise")),
            Value::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            Value::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    out.push_str(&serde_json::to_string(k).expect("strings serialise"));
                    out.push_str(&self.key_sep);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}"); // e.g. "1.5e-7", shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let x = json!({"b": "it's <a> & \"q\"\n", "a": [1, 2.5, 1e-05, 1e16, true, null], "é": {}});
        let mut opts = ChatOptions::default();
        opts.extra.insert("x".into(), x);
        let out = t
            .render(&[json!({"role": "user"})], &opts, &Default::default())
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": \"it's <a> & \\\"q\\\"\\n\", \"a\": [1, 2.5, 1e-05, 1e+16, true, null], \"é\": {}}|\
             {\n  \"b\": \"it's <a> & \\\"q\\\"\\n\",\n  \"a\": [\n    1,\n    2.5,\n    1e-05,\n    \
             1e+16,\n    true,\n    null\n  ],\n  \"é\": {}\n}"
        );
    }

    #[test]
    fn python_float_repr_cases() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (123456.0, "123456.0"),
            (1.5e300, "1.5e+300"),
            (0.0001, "0.0001"),
        ] {
            assert_eq!(python_float_repr(f), s);
        }
    }

    #[test]
    fn raise_exception_is_a_template_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let err = t.render(
            &[json!({"role": "user"})],
            &ChatOptions::default(),
            &Default::default(),
        );
        assert!(err.unwrap_err().to_string().contains("no system role"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }
}
