//! SailorFog-QA-style synthesis (WebSailor, arXiv 2507.02592) over a structured
//! source: countries with their borders, languages, currencies, regions, capitals and areas
//! (npm's `world-countries` offline). As in the paper: a random walk from a rare seed builds a
//! dense subgraph (with some probability the walk moves to a new neighbour, otherwise it goes back
//! to an earlier node) until it has the wanted number of edges; the subgraph, rooted at the seed,
//! becomes a question whose answer is the seed, with every fact obfuscated (names to initials,
//! areas to ranges, currencies to a word of their name, border counts to "at least"). Unlike the
//! paper, every question is checked by a brute-force solver over the whole graph to have exactly
//! one answer; facts are added until it has, or the question is dropped.

use qforge_util::SplitMix;
use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::error::{AgentError, Result};

/// One country of the structured source.
#[derive(Debug, Clone, PartialEq)]
pub struct Country {
    pub code: String,
    pub name: String,
    pub capital: Option<String>,
    pub region: String,
    pub subregion: String,
    pub languages: Vec<String>,
    pub currencies: Vec<String>,
    pub borders: Vec<String>,
    pub area: f64,
    pub landlocked: bool,
    /// Year founded or independent, when the source has one (world-countries does not; a
    /// richer export can add a `founded` field).
    pub founded: Option<i32>,
}

/// Countries from `world-countries`' `countries.json` (an array of objects with `name.common`,
/// `cca3`, `capital`, `region`, `subregion`, `languages`, `currencies`, `borders`, `area`,
/// `landlocked`, and optionally `founded`, a year). Border codes that name no country are
/// dropped.
pub fn parse_world_countries(json: &Value) -> Result<Vec<Country>> {
    let items = json
        .as_array()
        .ok_or_else(|| AgentError::Invalid("countries.json is not an array".into()))?;
    let mut countries = items
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = |v: &Value| v.as_str().map(String::from);
            let name = s(&c["name"]["common"])
                .ok_or_else(|| AgentError::Invalid(format!("country {i}: no name.common")))?;
            let code = s(&c["cca3"])
                .ok_or_else(|| AgentError::Invalid(format!("{name}: no cca3 code")))?;
            let values = |v: &Value, field: Option<&str>| -> Vec<String> {
                let mut out: Vec<String> = match v {
                    Value::Object(m) => m
                        .values()
                        .filter_map(|x| match field {
                            Some(f) => s(&x[f]),
                            None => s(x),
                        })
                        .collect(),
                    Value::Array(a) => a.iter().filter_map(s).collect(),
                    _ => Vec::new(),
                };
                out.sort();
                out
            };
            Ok(Country {
                capital: values(&c["capital"], None).into_iter().next(),
                region: s(&c["region"]).unwrap_or_default(),
                subregion: s(&c["subregion"]).unwrap_or_default(),
                languages: values(&c["languages"], None),
                currencies: values(&c["currencies"], Some("name")),
                borders: values(&c["borders"], None),
                area: c["area"].as_f64().unwrap_or(0.0),
                landlocked: c["landlocked"].as_bool().unwrap_or(false),
                founded: c["founded"].as_i64().map(|y| y as i32),
                name,
                code,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let codes: BTreeSet<String> = countries.iter().map(|c| c.code.clone()).collect();
    for c in &mut countries {
        c.borders.retain(|b| codes.contains(b));
    }
    Ok(countries)
}

/// An obfuscated fact about one country.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    NameInitial {
        letter: char,
    },
    CapitalInitial {
        letter: char,
    },
    /// Area in [min, max) km².
    AreaRange {
        min: f64,
        max: f64,
    },
    Landlocked {
        yes: bool,
    },
    Region {
        region: String,
    },
    Subregion {
        subregion: String,
    },
    LanguageInitial {
        letter: char,
    },
    CurrencyWord {
        word: String,
    },
    BordersAtLeast {
        count: usize,
    },
    /// Founded in [start, end): a vague period, not the year.
    FoundedIn {
        start: i32,
        end: i32,
    },
}

/// The vague period a year is told as (the paper's "early 2010s", "mid-5th century"): a
/// third of a decade from the year 1000 on, a third of a century before; as [start, end).
pub fn year_period(year: i32) -> (i32, i32) {
    let (span, part) = if year >= 1000 { (10, 3) } else { (100, 30) };
    let base = year.div_euclid(span) * span;
    // early: the first 30%, mid: the next 40%, late: the last 30%.
    let (from, to) = match (year - base) * 10 / span {
        0..=2 => (0, part),
        3..=6 => (part, span - part),
        _ => (span - part, span),
    };
    (base + from, base + to)
}

fn ordinal(n: i32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// "the early 2010s", "the mid-5th century".
pub fn period_words(start: i32, end: i32) -> String {
    let span = if end - start <= 10 { 10 } else { 100 };
    let base = start.div_euclid(span) * span;
    let part = match (start - base) * 10 / span {
        0..=2 => "early",
        3..=6 => "mid",
        _ => "late",
    };
    if span == 10 {
        format!("the {part} {base}s")
    } else {
        format!("the {part}-{} century", ordinal(base / 100 + 1))
    }
}

/// The area buckets facts use (km²).
const AREA_EDGES: [f64; 7] = [
    0.0,
    1_000.0,
    10_000.0,
    100_000.0,
    500_000.0,
    1_000_000.0,
    f64::INFINITY,
];

fn initial(text: &str) -> Option<char> {
    text.chars()
        .find(|c| c.is_alphabetic())
        .map(|c| c.to_ascii_uppercase())
}

impl Fact {
    pub fn holds(&self, c: &Country) -> bool {
        match self {
            Fact::NameInitial { letter } => initial(&c.name) == Some(*letter),
            Fact::CapitalInitial { letter } => {
                c.capital.as_deref().and_then(initial) == Some(*letter)
            }
            Fact::AreaRange { min, max } => c.area >= *min && c.area < *max,
            Fact::Landlocked { yes } => c.landlocked == *yes,
            Fact::Region { region } => &c.region == region,
            Fact::Subregion { subregion } => &c.subregion == subregion,
            Fact::LanguageInitial { letter } => {
                c.languages.iter().any(|l| initial(l) == Some(*letter))
            }
            Fact::CurrencyWord { word } => c
                .currencies
                .iter()
                .any(|cur| cur.split_whitespace().any(|w| w.eq_ignore_ascii_case(word))),
            Fact::BordersAtLeast { count } => c.borders.len() >= *count,
            Fact::FoundedIn { start, end } => c.founded.is_some_and(|y| y >= *start && y < *end),
        }
    }

    /// The fact as a clause: "whose capital's name begins with V".
    pub fn clause(&self) -> String {
        let fmt = |x: f64| {
            let n = x as u64;
            let s = n.to_string();
            let mut out = String::new();
            for (i, ch) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(ch);
            }
            out
        };
        match self {
            Fact::NameInitial { letter } => format!("whose name begins with \"{letter}\""),
            Fact::CapitalInitial { letter } => {
                format!("whose capital's name begins with \"{letter}\"")
            }
            Fact::AreaRange { min, max } if *min == 0.0 => {
                format!("with an area under {} km²", fmt(*max))
            }
            Fact::AreaRange { min, max } if max.is_infinite() => {
                format!("with an area over {} km²", fmt(*min))
            }
            Fact::AreaRange { min, max } => {
                format!("with an area between {} and {} km²", fmt(*min), fmt(*max))
            }
            Fact::Landlocked { yes: true } => "that has no coastline".into(),
            Fact::Landlocked { yes: false } => "that has a coastline".into(),
            Fact::Region { region } => format!("in {region}"),
            Fact::Subregion { subregion } => format!("in the {subregion} subregion"),
            Fact::LanguageInitial { letter } => {
                format!("with an official language whose name begins with \"{letter}\"")
            }
            Fact::CurrencyWord { word } => {
                format!("whose currency's name contains the word \"{word}\"")
            }
            Fact::BordersAtLeast { count } => format!("that borders at least {count} countries"),
            Fact::FoundedIn { start, end } => {
                format!("founded in {}", period_words(*start, *end))
            }
        }
    }
}

/// Every obfuscated fact true of a country, in a fixed order (the candidates a question adds).
pub fn facts_of(c: &Country) -> Vec<Fact> {
    let mut facts = Vec::new();
    if let Some(letter) = initial(&c.name) {
        facts.push(Fact::NameInitial { letter });
    }
    if let Some(letter) = c.capital.as_deref().and_then(initial) {
        facts.push(Fact::CapitalInitial { letter });
    }
    if let Some(w) = AREA_EDGES
        .windows(2)
        .find(|w| c.area >= w[0] && c.area < w[1])
    {
        facts.push(Fact::AreaRange {
            min: w[0],
            max: w[1],
        });
    }
    facts.push(Fact::Landlocked { yes: c.landlocked });
    if !c.subregion.is_empty() {
        facts.push(Fact::Subregion {
            subregion: c.subregion.clone(),
        });
    }
    if !c.region.is_empty() {
        facts.push(Fact::Region {
            region: c.region.clone(),
        });
    }
    for l in &c.languages {
        if let Some(letter) = initial(l) {
            let f = Fact::LanguageInitial { letter };
            if !facts.contains(&f) {
                facts.push(f);
            }
        }
    }
    for cur in &c.currencies {
        // The currency's last word ("franc", "dollar", "euro") obfuscates its full name.
        if let Some(word) = cur.split_whitespace().last() {
            let f = Fact::CurrencyWord {
                word: word.to_lowercase(),
            };
            if !facts.contains(&f) {
                facts.push(f);
            }
        }
    }
    if c.borders.len() >= 2 {
        facts.push(Fact::BordersAtLeast {
            count: c.borders.len(),
        });
    }
    if let Some(year) = c.founded {
        let (start, end) = year_period(year);
        facts.push(Fact::FoundedIn { start, end });
    }
    facts
}

/// A description of a country: facts about it, and countries it borders (each described in
/// turn, all distinct). A question asks which country fits the root description.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Description {
    pub facts: Vec<Fact>,
    pub borders: Vec<Description>,
}

/// The countries graph with lookup by code.
pub struct CountryGraph {
    pub countries: Vec<Country>,
    by_code: HashMap<String, usize>,
}

impl CountryGraph {
    pub fn new(countries: Vec<Country>) -> Self {
        let by_code = countries
            .iter()
            .enumerate()
            .map(|(i, c)| (c.code.clone(), i))
            .collect();
        Self { countries, by_code }
    }

    pub fn neighbours(&self, i: usize) -> Vec<usize> {
        self.countries[i]
            .borders
            .iter()
            .filter_map(|b| self.by_code.get(b).copied())
            .collect()
    }

    /// Whether country `i` fits `d` (children matched to distinct neighbours, none of them an
    /// ancestor on the path: `used`).
    fn fits(&self, i: usize, d: &Description, used: &mut Vec<usize>) -> bool {
        if !d.facts.iter().all(|f| f.holds(&self.countries[i])) {
            return false;
        }
        used.push(i);
        let ok = self.assign(&self.neighbours(i), &d.borders, used);
        used.pop();
        ok
    }

    /// Whether `children` can be matched to distinct `candidates` (backtracking; a question has
    /// a handful of children).
    fn assign(
        &self,
        candidates: &[usize],
        children: &[Description],
        used: &mut Vec<usize>,
    ) -> bool {
        let Some((first, rest)) = children.split_first() else {
            return true;
        };
        for &n in candidates {
            if used.contains(&n) {
                continue;
            }
            if self.fits(n, first, used) {
                used.push(n);
                let ok = self.assign(candidates, rest, used);
                used.pop();
                if ok {
                    return true;
                }
            }
        }
        false
    }

    /// Every country that fits `d`: the brute-force solver.
    pub fn solve(&self, d: &Description) -> Vec<usize> {
        (0..self.countries.len())
            .filter(|&i| self.fits(i, d, &mut Vec::new()))
            .collect()
    }
}

/// Shape of the question's subgraph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// One path from the answer.
    Chain,
    /// Several countries bordering the answer directly.
    Star,
    /// Branches at more than one level.
    Tree,
}

/// A synthesized, verified question.
#[derive(Debug, Clone, Serialize)]
pub struct SynthQuestion {
    pub question: String,
    pub answer: String,
    pub answer_code: String,
    pub topology: Topology,
    pub edges: usize,
    pub description: Description,
    /// Countries that fit the description (always exactly one: the answer).
    pub solutions: usize,
}

/// Settings of the walk and the questions.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Border edges the walk collects.
    pub edges: usize,
    /// Probability that the walk moves to a new neighbour (else it goes back to an earlier node).
    pub forward: f64,
    /// Facts drawn per country before the solver asks for more.
    pub facts_per_country: usize,
    /// Seeds are drawn from countries with at most this many borders ("rare" entities).
    pub max_seed_borders: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            edges: 3,
            forward: 0.7,
            facts_per_country: 1,
            max_seed_borders: 4,
        }
    }
}

/// Seeded (runs replay).

fn chance(rng: &mut SplitMix, p: f64) -> bool {
    ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
}

/// The random walk from `seed`: a tree of border edges (parent of each reached country).
pub fn walk(
    graph: &CountryGraph,
    seed: usize,
    config: &SynthConfig,
    rng: &mut SplitMix,
) -> Vec<(usize, usize)> {
    let mut visited = vec![seed];
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut at = seed;
    let mut stuck = 0;
    while edges.len() < config.edges && stuck < 50 {
        let fresh: Vec<usize> = graph
            .neighbours(at)
            .into_iter()
            .filter(|n| !visited.contains(n))
            .collect();
        if !fresh.is_empty() && (chance(rng, config.forward) || visited.len() == 1) {
            let next = fresh[rng.below(fresh.len())];
            edges.push((at, next));
            visited.push(next);
            at = next;
        } else {
            // Back to an earlier node: paths overlap instead of running off as a chain.
            at = visited[rng.below(visited.len())];
            stuck += 1;
        }
    }
    edges
}

fn describe(
    graph: &CountryGraph,
    node: usize,
    edges: &[(usize, usize)],
    config: &SynthConfig,
    rng: &mut SplitMix,
) -> Description {
    let candidates = facts_of(&graph.countries[node]);
    let mut facts = Vec::new();
    let mut pool = candidates;
    for _ in 0..config.facts_per_country.min(pool.len()) {
        facts.push(pool.remove(rng.below(pool.len())));
    }
    let borders = edges
        .iter()
        .filter(|(from, _)| *from == node)
        .map(|&(_, to)| describe(graph, to, edges, config, rng))
        .collect();
    Description { facts, borders }
}

fn branches(d: &Description) -> bool {
    d.borders.len() > 1 || d.borders.iter().any(branches)
}

fn topology(d: &Description) -> Topology {
    fn branching(d: &Description) -> usize {
        usize::from(d.borders.len() > 1) + d.borders.iter().map(branching).sum::<usize>()
    }
    match (d.borders.len(), branching(d)) {
        (_, 0) => Topology::Chain,
        (n, 1) if n > 1 => Topology::Star,
        _ => Topology::Tree,
    }
}

/// The question's text: "Name the country <facts>, and that borders a country <facts> ...".
pub fn render(d: &Description) -> String {
    fn clauses(d: &Description) -> String {
        let mut parts: Vec<String> = d.facts.iter().map(Fact::clause).collect();
        for child in &d.borders {
            // Brackets keep nesting unambiguous: what is said inside is said of the neighbour.
            let inner = clauses(child);
            let one = child.facts.len() + child.borders.len() == 1;
            parts.push(if one {
                format!("that borders a country {inner}")
            } else {
                format!("that borders a country ({inner})")
            });
        }
        match parts.len() {
            0 => String::new(),
            1 => parts.remove(0),
            _ => {
                let last = parts.pop().expect("two or more");
                format!("{}, and {last}", parts.join(", "))
            }
        }
    }
    let mut q = format!("Name the country {}.", clauses(d));
    if branches(d) {
        q.push_str(" Different neighbours mentioned for one country are different countries.");
    }
    q
}

/// One question from a seed country, or `None` when no set of its facts makes the answer
/// unique. Facts are added to the answer's description (then to the others') until the solver
/// finds exactly one country.
pub fn question_from(
    graph: &CountryGraph,
    seed: usize,
    config: &SynthConfig,
    rng: &mut SplitMix,
) -> Option<SynthQuestion> {
    let edges = walk(graph, seed, config, rng);
    let mut d = describe(graph, seed, &edges, config, rng);
    let mut spare: Vec<Fact> = facts_of(&graph.countries[seed])
        .into_iter()
        .filter(|f| !d.facts.contains(f))
        .collect();
    loop {
        let solutions = graph.solve(&d);
        debug_assert!(
            solutions.contains(&seed),
            "the seed always fits its own description"
        );
        if solutions.len() == 1 {
            let c = &graph.countries[seed];
            return Some(SynthQuestion {
                question: render(&d),
                answer: c.name.clone(),
                answer_code: c.code.clone(),
                topology: topology(&d),
                edges: edges.len(),
                description: d,
                solutions: 1,
            });
        }
        if spare.is_empty() {
            return None;
        }
        d.facts.push(spare.remove(rng.below(spare.len())));
    }
}

/// `n` verified questions (fewer if the graph runs out of seeds that give unique answers).
pub fn synthesize(
    graph: &CountryGraph,
    n: usize,
    config: &SynthConfig,
    seed: u64,
) -> Vec<SynthQuestion> {
    let mut rng = SplitMix(seed);
    let seeds: Vec<usize> = (0..graph.countries.len())
        .filter(|&i| {
            let b = graph.neighbours(i).len();
            b >= 1 && b <= config.max_seed_borders
        })
        .collect();
    let mut out = Vec::new();
    let mut answers = BTreeSet::new();
    for _ in 0..n * 20 {
        if out.len() == n || seeds.is_empty() {
            break;
        }
        let s = seeds[rng.below(seeds.len())];
        if answers.contains(&s) {
            continue;
        }
        if let Some(q) = question_from(graph, s, config, &mut rng) {
            answers.insert(s);
            out.push(q);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn country(code: &str, name: &str, capital: &str, area: f64, borders: &[&str]) -> Country {
        Country {
            code: code.into(),
            name: name.into(),
            capital: Some(capital.into()),
            region: "Europe".into(),
            subregion: "Western Europe".into(),
            languages: vec!["French".into()],
            currencies: vec!["Euro".into()],
            borders: borders.iter().map(|b| b.to_string()).collect(),
            area,
            landlocked: false,
            founded: None,
        }
    }

    #[test]
    fn years_become_vague_periods() {
        let words = |y| {
            let (a, b) = year_period(y);
            period_words(a, b)
        };
        assert_eq!(year_period(2012), (2010, 2013));
        assert_eq!(words(2012), "the early 2010s");
        assert_eq!(words(1865), "the mid 1860s");
        assert_eq!(words(1999), "the late 1990s");
        assert_eq!(year_period(450), (430, 470));
        assert_eq!(words(450), "the mid-5th century");
        assert_eq!(words(21), "the early-1st century");
        let mut c = country("AAA", "Avalon", "Vell", 1.0, &[]);
        c.founded = Some(1291);
        let f = facts_of(&c).pop().unwrap();
        assert_eq!(f.clause(), "founded in the early 1290s");
        assert!(f.holds(&c));
        c.founded = Some(1295);
        assert!(!f.holds(&c));
    }

    #[test]
    fn obfuscated_facts_read_as_clauses() {
        let c = country("AAA", "Avalon", "Vell", 250_000.0, &["BBB", "CCC"]);
        let facts = facts_of(&c);
        let clauses: Vec<String> = facts.iter().map(Fact::clause).collect();
        assert!(clauses.contains(&"with an area between 100,000 and 500,000 km²".to_string()));
        assert!(clauses.contains(&"whose capital's name begins with \"V\"".to_string()));
        assert!(clauses.contains(&"whose currency's name contains the word \"euro\"".to_string()));
        assert!(clauses.contains(&"that borders at least 2 countries".to_string()));
        assert!(
            facts.iter().all(|f| f.holds(&c)),
            "every fact of a country holds for it"
        );
        assert!(
            !Fact::AreaRange {
                min: 0.0,
                max: 1_000.0
            }
            .holds(&c)
        );
        assert_eq!(
            Fact::AreaRange {
                min: 0.0,
                max: 1_000.0
            }
            .clause(),
            "with an area under 1,000 km²"
        );
    }

    #[test]
    fn the_solver_matches_children_to_distinct_neighbours() {
        let graph = CountryGraph::new(vec![
            country("AAA", "Avalon", "Vell", 250_000.0, &["BBB"]),
            country("BBB", "Brill", "Bex", 50_000.0, &["AAA", "CCC"]),
            country("CCC", "Corin", "Cal", 50_000.0, &["BBB"]),
        ]);
        let small = || Description {
            facts: vec![Fact::AreaRange {
                min: 10_000.0,
                max: 100_000.0,
            }],
            borders: vec![],
        };
        // Two different small neighbours: Brill has only one (Corin), so nobody fits.
        let two = Description {
            facts: vec![],
            borders: vec![small(), small()],
        };
        assert!(graph.solve(&two).is_empty());
        // Borders one small country: Avalon (via Brill) and Brill (via Corin), and Corin (via Brill).
        let one = Description {
            facts: vec![],
            borders: vec![small()],
        };
        assert_eq!(graph.solve(&one), [0, 1, 2]);
        let large = Description {
            facts: vec![Fact::AreaRange {
                min: 100_000.0,
                max: 500_000.0,
            }],
            borders: vec![small()],
        };
        assert_eq!(graph.solve(&large), [0]);
    }
}
