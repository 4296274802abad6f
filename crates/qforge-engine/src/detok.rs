//! Incremental detokenization with stop strings.
//!
//! Byte-level BPE tokens can end inside a UTF-8 character, and a token's text can depend on
//! its left neighbour, so text is produced by decoding a short window and emitting only what
//! became stable. Text that could still turn into a stop string is held back, so a stop
//! string never reaches a stream consumer.

use qforge_model::Tokenizer;

use crate::error::Result;

#[derive(Debug, Clone, Default)]
pub struct TextStream {
    /// Generated ids (not the prompt).
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// All text decoded so far (stop string cut off once found).
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stop_strings: Vec<String>,
    skip_special_tokens: bool,
}

impl TextStream {
    pub fn new(stop_strings: Vec<String>, skip_special_tokens: bool) -> Self {
        Self {
            stop_strings: stop_strings.into_iter().filter(|s| !s.is_empty()).collect(),
            skip_special_tokens,
            ..Self::default()
        }
    }

    /// Adds a token. Returns the stop string if the text now contains one (the text is cut
    /// before it).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let before = self.text.len();
            self.text.push_str(&full[prefix.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            // A stop string may straddle the old end of the text.
            let longest = self.stop_strings.iter().map(String::len).max().unwrap_or(0);
            let mut from = before.saturating_sub(longest);
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            let found = self
                .stop_strings
                .iter()
                .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| (from + i, s)))
                .min_by_key(|(i, _)| *i);
            if let Some((at, stop)) = found {
                let stop = stop.clone();
                self.text.truncate(at);
                self.emitted = self.emitted.min(at);
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    /// Decodes tokens still pending because they ended inside a character (at the end of
    /// generation such bytes become U+FFFD, as in transformers' decode).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<()> {
        if self.read_offset == self.ids.len() {
            return Ok(());
        }
        let prefix = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            self.text.push_str(&full[prefix.len()..]);
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(())
    }

    /// Text that is safe to show now: not a possible start of a stop string.
    pub fn take_ready(&mut self) -> String {
        let hold = self
            .stop_strings
            .iter()
            .map(|s| longest_suffix_prefix(&self.text[self.emitted..], s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Everything not yet handed out (at the end of generation).
    pub fn take_rest(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_prefix_overlap() {
        assert_eq!(longest_suffix_prefix("hello wor", "world"), 3);
        assert_eq!(longest_suffix_prefix("hello", "xyz"), 0);
        assert_eq!(longest_suffix_prefix("ab", "abc"), 2);
        assert_eq!(longest_suffix_prefix("café", "é!"), 2);
    }
}
