//! The released prompts (`verl/utils/dataset/prompts.py`, Apache-2.0), kept verbatim in
//! `prompts/*.txt` and filled the way the released code fills them (`str.replace` for the
//! questioner and responder, `str.format` for the verifier). A recipe may replace any of them
//! from a directory with the same file names (other languages, shorter prompts for small
//! models); each replacement must keep its template's placeholders.

use std::path::Path;

use super::SpellTask;
use crate::{Result, RlError};

/// (file name, released text, placeholders it must keep) per template, in [`PromptSet`] order.
const RELEASED: [(&str, &str, &[&str]); 10] = [
    (
        "questioner_docmath_qa.txt",
        include_str!("prompts/questioner_docmath_qa.txt"),
        &["{context}"],
    ),
    (
        "questioner_doc_general_qa.txt",
        include_str!("prompts/questioner_doc_general_qa.txt"),
        &["{context}"],
    ),
    (
        "questioner_doc_mc.txt",
        include_str!("prompts/questioner_doc_mc.txt"),
        &["{context}"],
    ),
    (
        "questioner_docmath_qa_history.txt",
        include_str!("prompts/questioner_docmath_qa_history.txt"),
        &["{context}", "{examples}"],
    ),
    (
        "questioner_doc_general_qa_history.txt",
        include_str!("prompts/questioner_doc_general_qa_history.txt"),
        &["{context}", "{examples}"],
    ),
    (
        "questioner_doc_mc_history.txt",
        include_str!("prompts/questioner_doc_mc_history.txt"),
        &["{context}", "{examples}"],
    ),
    (
        "responder_docmath_qa.txt",
        include_str!("prompts/responder_docmath_qa.txt"),
        &["{content}", "{question}"],
    ),
    (
        "responder_doc_general_qa.txt",
        include_str!("prompts/responder_doc_general_qa.txt"),
        &["{content}", "{question}"],
    ),
    (
        "responder_doc_mc.txt",
        include_str!("prompts/responder_doc_mc.txt"),
        &["{content}", "{question}"],
    ),
    (
        "verifier.txt",
        include_str!("prompts/verifier.txt"),
        &["{problem}", "{answer_1}", "{answer_2}"],
    ),
];

fn task_slot(task: SpellTask) -> usize {
    match task {
        SpellTask::DocmathQa => 0,
        SpellTask::DocGeneralQa => 1,
        SpellTask::DocMc => 2,
    }
}

/// The ten templates a run uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSet {
    templates: Vec<String>,
}

impl Default for PromptSet {
    fn default() -> Self {
        Self::released()
    }
}

impl PromptSet {
    /// The released prompts.
    pub fn released() -> Self {
        Self {
            templates: RELEASED.iter().map(|(_, t, _)| t.to_string()).collect(),
        }
    }

    /// The released prompts with any of `dir`'s files of the same names in their place.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(RlError::file(dir, "not a directory of prompt templates"));
        }
        let mut set = Self::released();
        for (slot, (name, _, fields)) in RELEASED.iter().enumerate() {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| RlError::file(&path, e))?;
            if let Some(missing) = fields.iter().find(|f| !text.contains(*f)) {
                return Err(RlError::file(
                    &path,
                    format!("the template lacks {missing}"),
                ));
            }
            set.templates[slot] = text;
        }
        Ok(set)
    }

    /// The questioner's user message: the evidence paragraphs and, with history, the previous
    /// examples. `target_letter` fills the multiple-choice template's `<correct_answer>`; the
    /// released dataset fills it only for a task named `docmath_mc`, so for `doc_mc` the
    /// placeholder stays as written unless a letter is given (`balance_mc_letters`).
    pub fn questioner(
        &self,
        task: SpellTask,
        context: &str,
        examples: Option<&str>,
        target_letter: Option<char>,
    ) -> String {
        let slot = task_slot(task) + if examples.is_some() { 3 } else { 0 };
        let mut prompt = self.templates[slot].replace("{context}", context);
        if let Some(examples) = examples {
            prompt = prompt.replace("{examples}", examples);
        }
        if let Some(letter) = target_letter {
            prompt = prompt.replace("<correct_answer>", &letter.to_string());
        }
        prompt
    }

    /// The responder's user message: the whole cluster (or "Empty" for the grounding check)
    /// and the question.
    pub fn responder(&self, task: SpellTask, content: &str, question: &str) -> String {
        self.templates[6 + task_slot(task)]
            .replace("{question}", question)
            .replace("{content}", content)
    }

    /// The verifier's user message comparing a responder's parsed answer with the gold.
    pub fn verifier(&self, problem: &str, answer_1: &str, answer_2: &str) -> String {
        // `str.format`: each field is filled where it stands; inserted text is not re-read.
        let template = &self.templates[9];
        let fields = [
            ("{problem}", problem),
            ("{answer_1}", answer_1),
            ("{answer_2}", answer_2),
        ];
        let mut out = String::with_capacity(template.len() + problem.len() + 64);
        let mut rest = template.as_str();
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            match fields.iter().find(|(f, _)| rest.starts_with(f)) {
                Some((f, value)) => {
                    out.push_str(value);
                    rest = &rest[f.len()..];
                }
                None => {
                    out.push('{');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}
