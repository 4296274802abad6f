//! The offline search backend: a BM25 inverted index (Lucene's formula and defaults,
//! k1 = 1.2, b = 0.75) over a local corpus, with documents reachable by URL for `visit`.
//! Hand-written rather than tantivy: 10k documents index in milliseconds and the build stays
//! light on 2 cores (WebSailor, arXiv 2507.02592).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One page of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub url: String,
    pub title: String,
    pub text: String,
    #[serde(default)]
    pub date: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// A ranked document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub doc: usize,
    pub score: f64,
}

/// Lowercased words: runs of letters and digits, with every CJK ideograph a word of its own
/// (Chinese has no spaces; single characters are the usual unit for BM25 over it).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if is_cjk(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

pub struct Bm25Index {
    docs: Vec<Document>,
    /// Term → (document, term frequency), documents ascending.
    postings: HashMap<String, Vec<(u32, u32)>>,
    doc_len: Vec<u32>,
    avg_len: f64,
    by_url: HashMap<String, usize>,
    k1: f64,
    b: f64,
}

impl Bm25Index {
    /// Indexes title and text of every document (a later duplicate URL replaces the earlier
    /// one for `by_url`; both stay searchable).
    pub fn build(docs: Vec<Document>) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut doc_len = Vec::with_capacity(docs.len());
        let mut by_url = HashMap::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let mut tf: HashMap<String, u32> = HashMap::new();
            let tokens = tokenize(&d.title)
                .into_iter()
                .chain(tokenize(&d.text))
                .collect::<Vec<_>>();
            doc_len.push(tokens.len() as u32);
            for t in tokens {
                *tf.entry(t).or_default() += 1;
            }
            for (t, n) in tf {
                postings.entry(t).or_default().push((i as u32, n));
            }
            by_url.insert(d.url.clone(), i);
        }
        let avg_len = doc_len.iter().map(|&l| l as f64).sum::<f64>() / docs.len().max(1) as f64;
        Self {
            docs,
            postings,
            doc_len,
            avg_len,
            by_url,
            k1: 1.2,
            b: 0.75,
        }
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn document(&self, doc: usize) -> &Document {
        &self.docs[doc]
    }

    /// The document at `url` (for `visit`).
    pub fn by_url(&self, url: &str) -> Option<&Document> {
        self.by_url.get(url).map(|&i| &self.docs[i])
    }

    /// The `k` best documents for `query` by BM25, best first (ties: corpus order). Documents
    /// sharing no term with the query are not returned.
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        let n = self.docs.len() as f64;
        let mut scores: HashMap<u32, f64> = HashMap::new();
        for term in tokenize(query) {
            let Some(list) = self.postings.get(&term) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(doc, tf) in list {
                let tf = tf as f64;
                let norm = 1.0 - self.b + self.b * self.doc_len[doc as usize] as f64 / self.avg_len;
                *scores.entry(doc).or_default() +=
                    idf * tf * (self.k1 + 1.0) / (tf + self.k1 * norm);
            }
        }
        let mut hits: Vec<Hit> = scores
            .into_iter()
            .map(|(doc, score)| Hit {
                doc: doc as usize,
                score,
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
        hits.truncate(k);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(url: &str, title: &str, text: &str) -> Document {
        Document {
            url: url.into(),
            title: title.into(),
            text: text.into(),
            date: None,
            source: None,
        }
    }

    #[test]
    fn words_are_lowercased_and_ideographs_stand_alone() {
        assert_eq!(tokenize("Hello, World-42!"), ["hello", "world", "42"]);
        assert_eq!(tokenize("北京abc大学"), ["北", "京", "abc", "大", "学"]);
        assert_eq!(tokenize("Ünïcode ß"), ["ünïcode", "ß"]);
    }

    #[test]
    fn bm25_matches_lucenes_formula_by_hand() {
        let index = Bm25Index::build(vec![
            doc("a", "", "apple apple banana"),
            doc("b", "", "banana cherry"),
            doc("c", "", "cherry cherry cherry durian"),
        ]);
        // avgdl = (3 + 2 + 4) / 3 = 3; "apple": df 1 of N 3.
        let idf = (1.0f64 + (3.0 - 1.0 + 0.5) / (1.0 + 0.5)).ln();
        let want = idf * 2.0 * 2.2 / (2.0 + 1.2 * (0.25 + 0.75 * 3.0 / 3.0));
        let hits = index.search("apple", 10);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].doc, 0);
        assert!((hits[0].score - want).abs() < 1e-12);
        // Two terms add; the document with more cherries and the rarer term ranks first.
        let hits = index.search("cherry durian", 10);
        assert_eq!(hits.iter().map(|h| h.doc).collect::<Vec<_>>(), [2, 1]);
        assert!(index.search("zebra", 10).is_empty());
        assert_eq!(index.search("banana", 1).len(), 1);
    }

    #[test]
    fn titles_count_and_urls_find_their_document() {
        let index = Bm25Index::build(vec![
            doc("https://x/1", "Kyoto", "a former capital"),
            doc("https://x/2", "Osaka", "a port city, not Kyoto's rival"),
        ]);
        assert_eq!(index.search("kyoto", 2)[0].doc, 0);
        assert_eq!(index.by_url("https://x/2").unwrap().title, "Osaka");
        assert!(index.by_url("https://x/3").is_none());
    }
}
