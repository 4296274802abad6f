//! Synthetic compression tasks (QwenLong-CPRS, arXiv 2505.18092): RULER-style needles (single and
//! multi-key), key-value retrieval, variable tracking and two-hop supporting-fact QA, in a
//! haystack of RULER's noise line or of essay text, sized in tokens of the compressor's
//! tokenizer. Each [`Sample`] carries the gold facts as character ranges of its context (what
//! training labels and recall are computed from) and the reference answers.
//!
//! Instructions are the released README prompts where one exists (needle, QA, variable
//! tracking, upstream's "assigment" typo kept); key-value retrieval's is ours in their style.
//! Word lists are built in; keys and values are drawn from a seeded [`SplitMix`].

use crate::CompressError;
use qforge_util::WithPath;
use std::path::Path;

use qforge_model::Tokenizer;
use qforge_util::SplitMix;
use serde::{Deserialize, Serialize};

/// RULER's noise haystack line.
pub const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

pub const NIAH_INSTRUCTION: &str = "You are an expert for information extraction, your task is to extract the 'needles' in the format of 'One of the special magic {type_needle_v} for {key} is: {value}.' from the documents to answer user's question.\n## tagging rule:\n- tag the needles with 'needle'";
pub const QA_INSTRUCTION: &str = "You are an expert for information extraction, your task is to extract some sentences from the documents as the supporting facts of the user's question.\n## tagging rule:\n- tag the supporting facts with 'fact'";
pub const VT_INSTRUCTION: &str = "You are an expert for information extraction, your task is to extract the assigment chains like 'VAR XXX1 = XXX2' from the documents to answer user's question.\n## tagging rule:\n- tag the assignment chains with 'chain'";
pub const KV_INSTRUCTION: &str = "You are an expert for information extraction, your task is to extract the key-value pair in the format of '\"{key}\": \"{value}\"' whose key the user asks for from the JSON data.\n## tagging rule:\n- tag the key-value pair with 'pair'";

/// One example: the compressor's inputs, the gold facts and the answers a reader should give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    #[serde(default)]
    pub task: String,
    pub instruction: String,
    pub query: String,
    pub context: String,
    /// The tag word of the facts (the critic's label).
    pub tag: String,
    /// Gold facts as `[start, end)` character ranges of `context`.
    pub facts: Vec<[usize; 2]>,
    /// Reference answers (RULER's `outputs`).
    #[serde(default)]
    pub answers: Vec<String>,
}

impl Sample {
    pub fn fact_texts(&self) -> Vec<String> {
        let chars: Vec<char> = self.context.chars().collect();
        self.facts
            .iter()
            .map(|&[s, e]| {
                chars[s.min(chars.len())..e.min(chars.len())]
                    .iter()
                    .collect()
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One needle; the query asks for it.
    NiahSingle,
    /// Four needles with different keys; the query asks for one (the others are distractors).
    NiahMultikey,
    /// A `JSON data:` block of UUID pairs; the query asks for one key's value.
    Kv,
    /// Two assignment chains of 4 hops; the query asks for the variables of one value.
    Vt,
    /// Two-hop supporting facts among distractor facts about other people.
    Qa,
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::NiahSingle,
        Task::NiahMultikey,
        Task::Kv,
        Task::Vt,
        Task::Qa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::NiahSingle => "niah_single",
            Task::NiahMultikey => "niah_multikey",
            Task::Kv => "kv",
            Task::Vt => "vt",
            Task::Qa => "qa",
        }
    }

    pub fn parse(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Tasks by name; an unknown name is an error listing the known ones.
    pub fn parse_all(names: &[String]) -> Result<Vec<Task>, CompressError> {
        names
            .iter()
            .map(|n| Task::parse(n).ok_or_else(|| CompressError::UnknownTask(n.clone())))
            .collect()
    }
}

/// Where the filler text comes from.
#[derive(Debug, Clone)]
pub enum Haystack {
    /// RULER's repeated noise line.
    Noise,
    /// Sentences of essay text (e.g. the Paul Graham essays), taken in order from a seeded start.
    Essays(Vec<String>),
}

/// Which synthetic samples to make: `samples` of each task, contexts of `tokens` tokens of the
/// compressor's tokenizer, needles in `haystack` (`noise` or a directory of .txt essays).
#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub tasks: Vec<String>,
    pub samples: usize,
    pub tokens: usize,
    pub haystack: String,
    pub seed: u64,
}

impl SampleSpec {
    /// The samples, task after task, drawn from one stream seeded by `seed`.
    pub fn generate(&self, tok: &Tokenizer) -> Result<Vec<Sample>, CompressError> {
        let tasks = Task::parse_all(&self.tasks)?;
        let haystack = Haystack::named(&self.haystack)?;
        let mut rng = SplitMix(self.seed);
        let mut out = Vec::new();
        for task in tasks {
            for _ in 0..self.samples {
                out.push(generate(task, &haystack, tok, self.tokens, &mut rng));
            }
        }
        Ok(out)
    }
}

impl Haystack {
    /// `noise`, or the essays in the directory `name`.
    pub fn named(name: &str) -> Result<Self, CompressError> {
        if name == "noise" {
            Ok(Haystack::Noise)
        } else {
            Haystack::essays(Path::new(name))
        }
    }

    /// The sentences of every `.txt` file in `dir` (sorted by name).
    pub fn essays(dir: &Path) -> Result<Self, CompressError> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_path(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        let mut sentences = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).with_path(&f)?;
            sentences.extend(split_sentences(&text));
        }
        if sentences.is_empty() {
            return Err(CompressError::EmptyHaystack(dir.to_path_buf()));
        }
        Ok(Haystack::Essays(sentences))
    }
}

/// Sentences of prose: cut after `.`, `?` or `!` followed by whitespace; whitespace runs become
/// one space.
fn split_sentences(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for w in words {
        current.push(w);
        if w.ends_with(['.', '?', '!']) {
            out.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

const ADJECTIVES: &[&str] = &[
    "ancient", "bitter", "brave", "calm", "clever", "crooked", "curious", "damp", "eager",
    "elegant", "faint", "fierce", "fragile", "gentle", "gloomy", "hollow", "humble", "icy",
    "jolly", "keen", "lively", "lonely", "loud", "mellow", "misty", "noble", "odd", "pale",
    "proud", "quiet", "rapid", "rusty", "shy", "silent", "sleepy", "solemn", "sturdy", "swift",
    "tender", "vivid", "wary", "wild", "witty", "zealous",
];
const NOUNS: &[&str] = &[
    "anchor", "badger", "basket", "beacon", "canyon", "castle", "cedar", "comet", "crayon",
    "dragon", "falcon", "feather", "forest", "garden", "glacier", "harbor", "helmet", "island",
    "jacket", "kettle", "lantern", "meadow", "mirror", "nectar", "orchard", "otter", "pebble",
    "pepper", "planet", "quartz", "rabbit", "ribbon", "saddle", "signal", "spider", "thunder",
    "tunnel", "valley", "violin", "walnut", "willow", "window", "zebra",
];
const NAMES: &[&str] = &[
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas",
    "Kavya", "Liam", "Mina", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma",
    "Viktor", "Wen", "Yusuf", "Zara",
];
const CITIES: &[&str] = &[
    "Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi", "Dakar", "Lima", "Riga", "Perth",
    "Osaka", "Porto", "Accra", "Bergen", "Cusco", "Durban", "Gdansk", "Havana", "Izmir", "Kyoto",
];

fn pick<'a>(rng: &mut SplitMix, items: &'a [&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

/// `k` distinct items.
fn pick_distinct<'a>(rng: &mut SplitMix, items: &'a [&'a str], k: usize) -> Vec<&'a str> {
    let mut all: Vec<&str> = items.to_vec();
    rng.shuffle(&mut all);
    all.truncate(k);
    all
}

fn digits(rng: &mut SplitMix, n: usize) -> String {
    let first = 1 + rng.below(9);
    std::iter::once(first)
        .chain((1..n).map(|_| rng.below(10)))
        .map(|d| char::from(b'0' + d as u8))
        .collect()
}

fn uuid(rng: &mut SplitMix) -> String {
    let hex = |rng: &mut SplitMix, n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.below(16) as u32, 16).expect("hex digit"))
            .collect()
    };
    format!(
        "{}-{}-4{}-{}{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 3),
        ["8", "9", "a", "b"][rng.below(4)],
        hex(rng, 3),
        hex(rng, 12)
    )
}

fn upper_name(rng: &mut SplitMix) -> String {
    (0..5)
        .map(|_| char::from(b'A' + rng.below(26) as u8))
        .collect()
}

/// Filler sentences of about `tokens` tokens (counted per sentence with `tok`).
fn filler(haystack: &Haystack, tok: &Tokenizer, tokens: usize, rng: &mut SplitMix) -> Vec<String> {
    let noise: Vec<String>;
    let (sentences, start) = match haystack {
        Haystack::Noise => {
            noise = vec![NOISE.to_string()];
            (&noise, 0)
        }
        Haystack::Essays(s) => (s, rng.below(s.len())),
    };
    let mut out = Vec::new();
    let mut count = 0;
    let mut cache: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut i = start;
    while count < tokens {
        let s = &sentences[i % sentences.len()];
        let n = *cache.entry(i % sentences.len()).or_insert_with(|| {
            tok.encode(&format!(" {s}"), false)
                .map_or(1, |ids| ids.len())
        });
        count += n.max(1);
        out.push(s.clone());
        i += 1;
    }
    out
}

/// Inserts `needles` at seeded depths among `filler` and joins everything with spaces; returns
/// the text and each needle's character range.
fn assemble(
    filler: Vec<String>,
    needles: &[String],
    rng: &mut SplitMix,
) -> (String, Vec<[usize; 2]>) {
    let mut slots: Vec<usize> = (0..needles.len())
        .map(|_| rng.below(filler.len() + 1))
        .collect();
    slots.sort_unstable();
    let mut pieces: Vec<(String, Option<usize>)> = Vec::new();
    let mut next = 0;
    for (i, f) in filler.into_iter().enumerate() {
        while next < needles.len() && slots[next] == i {
            pieces.push((needles[next].clone(), Some(next)));
            next += 1;
        }
        pieces.push((f, None));
    }
    for (k, n) in needles.iter().enumerate().skip(next) {
        pieces.push((n.clone(), Some(k)));
    }
    let mut text = String::new();
    let mut chars = 0;
    let mut ranges = vec![[0, 0]; needles.len()];
    for (i, (piece, needle)) in pieces.iter().enumerate() {
        if i > 0 {
            text.push(' ');
            chars += 1;
        }
        let n = piece.chars().count();
        if let Some(k) = needle {
            ranges[*k] = [chars, chars + n];
        }
        text.push_str(piece);
        chars += n;
    }
    (text, ranges)
}

/// One sample of `task` with a context of about `tokens` tokens.
pub fn generate(
    task: Task,
    haystack: &Haystack,
    tok: &Tokenizer,
    tokens: usize,
    rng: &mut SplitMix,
) -> Sample {
    let key = |rng: &mut SplitMix| format!("{}-{}", pick(rng, ADJECTIVES), pick(rng, NOUNS));
    let needle = |k: &str, v: &str| format!("One of the special magic numbers for {k} is: {v}.");
    match task {
        Task::NiahSingle | Task::NiahMultikey => {
            let count = if task == Task::NiahSingle { 1 } else { 4 };
            let mut keys: Vec<String> = Vec::new();
            while keys.len() < count {
                let k = key(rng);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let values: Vec<String> = (0..count).map(|_| digits(rng, 7)).collect();
            let needles: Vec<String> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| needle(k, v))
                .collect();
            let body = tokens.saturating_sub(needles.len() * 24);
            let (context, ranges) = assemble(filler(haystack, tok, body, rng), &needles, rng);
            let asked = rng.below(count);
            Sample {
                task: task.name().into(),
                instruction: NIAH_INSTRUCTION.into(),
                query: format!(
                    "What is the special magic number for {} mentioned in the provided text?",
                    keys[asked]
                ),
                context,
                tag: "needle".into(),
                facts: vec![ranges[asked]],
                answers: vec![values[asked].clone()],
            }
        }
        Task::Vt => {
            let mut statements = Vec::new();
            let mut chains = Vec::new();
            for _ in 0..2 {
                let value = digits(rng, 5);
                let names: Vec<String> = (0..5).map(|_| upper_name(rng)).collect();
                let mut chain = vec![format!("VAR {} = {value}.", names[0])];
                for w in names.windows(2) {
                    chain.push(format!("VAR {} = VAR {}.", w[1], w[0]));
                }
                chains.push((
                    value,
                    names,
                    statements.len()..statements.len() + chain.len(),
                ));
                statements.extend(chain);
            }
            // Statements keep their order: each chain reads forward, one chain after the other.
            let body = tokens.saturating_sub(statements.len() * 12);
            let (context, ranges) = assemble(filler(haystack, tok, body, rng), &statements, rng);
            let asked = rng.below(2);
            let (value, names, idx) = &chains[asked];
            Sample {
                task: task.name().into(),
                instruction: VT_INSTRUCTION.into(),
                query: format!(
                    "Find all variables that are assigned the value {value} in the text above."
                ),
                context,
                tag: "chain".into(),
                facts: ranges[idx.clone()].to_vec(),
                answers: names.clone(),
            }
        }
        Task::Kv => {
            let mut pairs: Vec<(String, String)> = Vec::new();
            let mut text = String::from("JSON data:\n{");
            let mut used = 0;
            let mut ranges = Vec::new();
            while used < tokens.max(1) {
                let (k, v) = (uuid(rng), uuid(rng));
                let entry = format!("\"{k}\": \"{v}\"");
                if !pairs.is_empty() {
                    text.push_str(", ");
                }
                let start = text.chars().count();
                text.push_str(&entry);
                ranges.push([start, start + entry.chars().count()]);
                used += tok.encode(&entry, false).map_or(80, |ids| ids.len()) + 1;
                pairs.push((k, v));
            }
            text.push('}');
            let asked = rng.below(pairs.len());
            Sample {
                task: task.name().into(),
                instruction: KV_INSTRUCTION.into(),
                query: format!(
                    "Key: \"{}\"\nThe value associated with the specified key is: ",
                    pairs[asked].0
                ),
                context: text,
                tag: "pair".into(),
                facts: vec![ranges[asked]],
                answers: vec![pairs[asked].1.clone()],
            }
        }
        Task::Qa => {
            let people = pick_distinct(rng, NAMES, 6);
            let cities = pick_distinct(rng, CITIES, 6);
            // Three colleague pairs; each second person lives in a city.
            let mut statements = Vec::new();
            for p in 0..3 {
                statements.push(format!(
                    "{} works in the same office as {}.",
                    people[2 * p],
                    people[2 * p + 1]
                ));
                statements.push(format!("{} lives in {}.", people[2 * p + 1], cities[p]));
            }
            let body = tokens.saturating_sub(statements.len() * 12);
            let (context, ranges) = assemble(filler(haystack, tok, body, rng), &statements, rng);
            let asked = rng.below(3);
            Sample {
                task: task.name().into(),
                instruction: QA_INSTRUCTION.into(),
                query: format!(
                    "In which city does the person who works in the same office as {} live?",
                    people[2 * asked]
                ),
                context,
                tag: "fact".into(),
                facts: vec![ranges[2 * asked], ranges[2 * asked + 1]],
                answers: vec![cities[asked].to_string()],
            }
        }
    }
}

/// RULER's `string_match_all`: the share of `references` found in `text`, ignoring case.
pub fn string_match_all(text: &str, references: &[String]) -> f64 {
    if references.is_empty() {
        return 1.0;
    }
    let text = text.to_lowercase();
    references
        .iter()
        .filter(|r| text.contains(&r.to_lowercase()))
        .count() as f64
        / references.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_after_terminal_punctuation() {
        assert_eq!(
            split_sentences("One two.  Three?\nFour! five"),
            vec!["One two.", "Three?", "Four!", "five"]
        );
    }

    #[test]
    fn string_match_all_counts_references_found() {
        let refs = vec!["ABC".to_string(), "xyz".to_string()];
        assert_eq!(string_match_all("abc and more", &refs), 0.5);
        assert_eq!(string_match_all("ABC XYZ", &refs), 1.0);
    }
}
