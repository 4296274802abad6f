//! Loads long-context evaluation files and prints task counts and prompt sizes:
//!
//!     cargo run --release -p qforge-rl --example longctx_stats -- ../shared/data/longctx/*.jsonl*

fn main() {
    for path in std::env::args().skip(1) {
        match qforge_rl::tasks::load_tasks(std::path::Path::new(&path)) {
            Ok(tasks) => {
                let chars: Vec<usize> = tasks
                    .iter()
                    .map(|t| t.messages[0]["content"].as_str().unwrap_or("").len())
                    .collect();
                let mean = chars.iter().sum::<usize>() as f64 / chars.len().max(1) as f64;
                println!(
                    "{path}: {} tasks, prompts {mean:.0} characters on average",
                    tasks.len()
                );
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
}
