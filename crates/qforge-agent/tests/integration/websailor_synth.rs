//! SailorFog-style synthesis on a fictional countries graph (hand-made, in world-countries'
//! layout, with founding years): every emitted question is verified unique by the brute-force solver, does not name
//! its answer, and replays from its seed.

use qforge_agent::websailor::sailorfog::{
    CountryGraph, SynthConfig, Topology, parse_world_countries, synthesize,
};

fn graph() -> CountryGraph {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fictional_countries.json"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    CountryGraph::new(parse_world_countries(&json).unwrap())
}

#[test]
fn every_question_has_exactly_one_answer_and_hides_it() {
    let g = graph();
    assert!(
        !g.countries[0].borders.contains(&"ZZZ".to_string()),
        "unknown border codes are dropped"
    );
    let mut topologies = std::collections::BTreeSet::new();
    let mut dated = 0;
    for edges in [1, 2, 3, 4] {
        let config = SynthConfig {
            edges,
            ..SynthConfig::default()
        };
        let questions = synthesize(&g, 8, &config, 42);
        assert!(
            questions.len() >= 4,
            "{edges} edges: only {} questions",
            questions.len()
        );
        for q in &questions {
            let solutions = g.solve(&q.description);
            let answer = g
                .countries
                .iter()
                .position(|c| c.code == q.answer_code)
                .unwrap();
            assert_eq!(solutions, [answer], "{}", q.question);
            assert_eq!(g.countries[answer].name, q.answer);
            assert!(!q.question.contains(&q.answer), "{}", q.question);
            assert!(
                q.question.starts_with("Name the country "),
                "{}",
                q.question
            );
            topologies.insert(q.topology);
            dated += usize::from(q.question.contains("founded in the "));
        }
    }
    assert!(
        topologies.contains(&Topology::Chain) && topologies.len() >= 2,
        "{topologies:?}"
    );
    assert!(dated > 0, "founding years appear as vague periods");
}

#[test]
fn synthesis_replays_from_its_seed() {
    let g = graph();
    let config = SynthConfig {
        edges: 3,
        ..SynthConfig::default()
    };
    let a: Vec<String> = synthesize(&g, 5, &config, 7)
        .into_iter()
        .map(|q| q.question)
        .collect();
    let b: Vec<String> = synthesize(&g, 5, &config, 7)
        .into_iter()
        .map(|q| q.question)
        .collect();
    assert_eq!(a, b);
    let c: Vec<String> = synthesize(&g, 5, &config, 8)
        .into_iter()
        .map(|q| q.question)
        .collect();
    assert_ne!(a, c);
}
