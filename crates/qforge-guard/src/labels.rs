//! Qwen3Guard's label sets and the strict parser of Gen's output grammar
//! (Qwen3Guard, arXiv 2510.14276):
//!
//! ```text
//! Safety: Safe|Unsafe|Controversial
//! Categories: <one or more category names, comma-separated> | None
//! Refusal: Yes|No            (response moderation only)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};

/// Severity of a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Safety {
    Safe,
    Unsafe,
    Controversial,
}

impl Safety {
    pub const ALL: [Safety; 3] = [Safety::Safe, Safety::Unsafe, Safety::Controversial];

    pub fn as_str(self) -> &'static str {
        match self {
            Safety::Safe => "Safe",
            Safety::Unsafe => "Unsafe",
            Safety::Controversial => "Controversial",
        }
    }

    pub fn from_label(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Whether this verdict counts as harmful under `policy`.
    pub fn is_flagged(self, policy: Policy) -> bool {
        match self {
            Safety::Safe => false,
            Safety::Unsafe => true,
            Safety::Controversial => policy == Policy::Strict,
        }
    }
}

/// How Controversial is read (paper §2): strict counts it as Unsafe, loose as Safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Strict,
    Loose,
}

/// Harm categories, with the exact strings the models emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    Violent,
    NonViolentIllegalActs,
    SexualContent,
    Pii,
    SuicideSelfHarm,
    UnethicalActs,
    PoliticallySensitive,
    CopyrightViolation,
    /// Prompt moderation only.
    Jailbreak,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::Violent,
        Category::NonViolentIllegalActs,
        Category::SexualContent,
        Category::Pii,
        Category::SuicideSelfHarm,
        Category::UnethicalActs,
        Category::PoliticallySensitive,
        Category::CopyrightViolation,
        Category::Jailbreak,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Violent => "Violent",
            Category::NonViolentIllegalActs => "Non-violent Illegal Acts",
            Category::SexualContent => "Sexual Content or Sexual Acts",
            Category::Pii => "PII",
            Category::SuicideSelfHarm => "Suicide & Self-Harm",
            Category::UnethicalActs => "Unethical Acts",
            Category::PoliticallySensitive => "Politically Sensitive Topics",
            Category::CopyrightViolation => "Copyright Violation",
            Category::Jailbreak => "Jailbreak",
        }
    }

    pub fn from_label(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What is being moderated: the last user turn or the last assistant turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Prompt,
    Response,
}

impl Mode {
    /// Chosen by the role of the last message, as the Gen chat template does.
    pub fn of_messages(messages: &[serde_json::Value]) -> Result<Self> {
        let role = messages
            .last()
            .and_then(|m| m.get("role"))
            .and_then(|r| r.as_str())
            .ok_or_else(|| GuardError::InvalidInput("no messages to moderate".into()))?;
        match role {
            "user" => Ok(Mode::Prompt),
            "assistant" => Ok(Mode::Response),
            other => Err(GuardError::InvalidInput(format!(
                "the last message must be from `user` (prompt moderation) or `assistant` \
                 (response moderation), not `{other}`"
            ))),
        }
    }
}

/// A parsed Gen verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub safety: Safety,
    /// Empty for `Categories: None`.
    pub categories: Vec<Category>,
    /// Response moderation only.
    pub refusal: Option<bool>,
}

impl Verdict {
    pub fn is_flagged(&self, policy: Policy) -> bool {
        self.safety.is_flagged(policy)
    }
}

/// Parses Gen's output strictly: the `Safety:` line first, then `Categories:`, then (response
/// mode) `Refusal:`. Surrounding whitespace and a leading empty think block are tolerated;
/// anything else (unknown labels, `Jailbreak` in a response verdict, missing lines) is an
/// [`GuardError::Unparsable`], never a silent Safe.
pub fn parse_verdict(output: &str, mode: Mode) -> Result<Verdict> {
    let bad = |reason: String| GuardError::Unparsable {
        output: output.to_string(),
        reason,
    };
    let body = match output.rfind("</think>") {
        Some(i) => &output[i + "</think>".len()..],
        None => output,
    };
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut field = |name: &str| -> Result<&str> {
        let line = lines
            .next()
            .ok_or_else(|| bad(format!("no `{name}:` line")))?;
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| bad(format!("expected `{name}:`, found {line:?}")))
    };
    let safety_text = field("Safety")?;
    let safety = Safety::from_label(safety_text)
        .ok_or_else(|| bad(format!("unknown safety label {safety_text:?}")))?;
    let categories_text = field("Categories")?;
    let categories = if categories_text == "None" {
        Vec::new()
    } else {
        categories_text
            .split(',')
            .map(str::trim)
            .map(|c| match Category::from_label(c) {
                Some(Category::Jailbreak) if mode == Mode::Response => {
                    Err(bad("`Jailbreak` is a prompt-only category".into()))
                }
                Some(c) => Ok(c),
                None => Err(bad(format!("unknown category {c:?}"))),
            })
            .collect::<Result<Vec<_>>>()?
    };
    let refusal = match mode {
        Mode::Prompt => None,
        Mode::Response => Some(match field("Refusal")? {
            "Yes" => true,
            "No" => false,
            other => return Err(bad(format!("unknown refusal label {other:?}"))),
        }),
    };
    if let Some(extra) = lines.next() {
        return Err(bad(format!("unexpected line {extra:?}")));
    }
    Ok(Verdict {
        safety,
        categories,
        refusal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_parses_in_both_modes() {
        for safety in Safety::ALL {
            for category in Category::ALL {
                let prompt = format!(
                    "Safety: {}\nCategories: {}",
                    safety.as_str(),
                    category.as_str()
                );
                let v = parse_verdict(&prompt, Mode::Prompt).unwrap();
                assert_eq!(
                    (v.safety, v.categories.as_slice()),
                    (safety, &[category][..])
                );
                assert_eq!(v.refusal, None);
                for (refusal, flag) in [("Yes", true), ("No", false)] {
                    let text = format!("{prompt}\nRefusal: {refusal}");
                    let r = parse_verdict(&text, Mode::Response);
                    if category == Category::Jailbreak {
                        assert!(r.is_err(), "Jailbreak is prompt-only");
                    } else {
                        assert_eq!(r.unwrap().refusal, Some(flag));
                    }
                }
            }
        }
        let none = parse_verdict("Safety: Safe\nCategories: None", Mode::Prompt).unwrap();
        assert!(none.categories.is_empty());
    }

    #[test]
    fn whitespace_think_blocks_and_several_categories_are_accepted() {
        let v = parse_verdict(
            "<think>\n\n</think>\n\n  Safety:   Unsafe \r\n\nCategories: Violent,  PII\n",
            Mode::Prompt,
        )
        .unwrap();
        assert_eq!(v.safety, Safety::Unsafe);
        assert_eq!(v.categories, vec![Category::Violent, Category::Pii]);
    }

    #[test]
    fn malformed_output_is_an_error_never_safe() {
        for text in [
            "",
            "Safety: safe\nCategories: None",
            "Safety: Unsafe\nCategories: Personally Identifiable Information",
            "Safety: Unsafe",
            "Categories: None\nSafety: Safe",
            "Safety: Safe\nCategories: None\nRefusal: Maybe",
            "Safety: Safe\nCategories: None\nextra",
            "I cannot help with that.",
        ] {
            let err = parse_verdict(text, Mode::Prompt)
                .err()
                .or_else(|| parse_verdict(text, Mode::Response).err());
            assert!(
                matches!(err, Some(GuardError::Unparsable { .. })),
                "{text:?} must not parse in some mode"
            );
        }
        // Response mode needs the refusal line.
        assert!(parse_verdict("Safety: Safe\nCategories: None", Mode::Response).is_err());
    }

    #[test]
    fn strict_and_loose_differ_only_on_controversial() {
        assert!(Safety::Controversial.is_flagged(Policy::Strict));
        assert!(!Safety::Controversial.is_flagged(Policy::Loose));
        for p in [Policy::Strict, Policy::Loose] {
            assert!(Safety::Unsafe.is_flagged(p));
            assert!(!Safety::Safe.is_flagged(p));
        }
    }
}
