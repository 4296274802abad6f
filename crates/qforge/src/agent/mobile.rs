//! `qforge agent mobile run|eval`: Mobile-Agent-v2 (arXiv 2406.01014), planning, decision and
//! reflection agents on a phone over adb or on the simulated phone.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use qforge_agent::websailor::settings::remote;
use qforge_engine::ChatBackend;

use super::websailor::progress;

#[derive(clap::Subcommand, Debug)]
pub enum MobileCommand {
    /// Carry out one instruction on a phone (adb) or on the simulated phone.
    Run(MobileRunArgs),
    /// Run the built-in task suite on the simulated phone: SR, CR, DA, RA in a JSON report and
    /// an HTML timeline per task.
    Eval(MobileEvalArgs),
}

/// The three agents' backends and the loop's switches.
#[derive(clap::Args, Debug)]
pub struct MobileAgentArgs {
    /// Base URL of an OpenAI-compatible vision model for the decision agent (e.g. vLLM serving
    /// Qwen2.5-VL or GUI-Owl).
    #[arg(long, required_unless_present = "local_model")]
    decision_url: Option<String>,
    /// Run the agents on a checkpoint in this process instead of a server (a vision-language
    /// model such as Qwen2.5-VL sees the screenshots; a text-only one needs --no-images). Every
    /// role without its own --*-url uses it, and with --caption-local it captions icons too.
    #[arg(long, conflicts_with = "decision_url")]
    local_model: Option<String>,
    /// Caption undescribed icons with --local-model.
    #[arg(long, requires = "local_model", conflicts_with = "caption_url")]
    caption_local: bool,
    #[arg(long, default_value = "default")]
    decision_model: String,
    /// The reflection agent's server (default: the decision agent's).
    #[arg(long)]
    reflection_url: Option<String>,
    #[arg(long)]
    reflection_model: Option<String>,
    /// The planning agent's server (text only; default: the decision agent's).
    #[arg(long)]
    planning_url: Option<String>,
    #[arg(long)]
    planning_model: Option<String>,
    /// Environment variable holding the servers' API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    key_env: String,
    /// Steps at most (the released loop has no limit).
    #[arg(long, default_value_t = 30)]
    max_steps: usize,
    /// Seconds for the whole run.
    #[arg(long)]
    time_budget_s: Option<u64>,
    #[arg(long)]
    no_reflection: bool,
    #[arg(long)]
    no_memory: bool,
    /// Do not send screenshots (for text-only models: the element list only).
    #[arg(long)]
    no_images: bool,
    /// Seconds to let the screen settle after each operation (released: 5).
    #[arg(long, default_value_t = 5.0)]
    settle_s: f64,
    /// Extra knowledge for the decision agent.
    #[arg(long)]
    hint: Option<String>,
    /// Base URL of a vision model that captions icons the accessibility tree leaves
    /// undescribed (released: Qwen-VL). Without it, such icons are left out.
    #[arg(long)]
    caption_url: Option<String>,
    #[arg(long, default_value = "default")]
    caption_model: String,
}

impl MobileAgentArgs {
    /// The in-process backend of --local-model, loaded once.
    fn local(&self) -> Result<Option<Arc<dyn ChatBackend>>> {
        let Some(model) = &self.local_model else {
            return Ok(None);
        };
        let args = crate::common::ModelArgs {
            model: Some(model.clone()),
            dtype: "f32".into(),
            adapter: None,
            device: "cpu".into(),
        };
        let (backend, _, _) = crate::common::in_process_backend(&args, "local")?;
        Ok(Some(Arc::new(backend)))
    }

    fn agents(
        &self,
        local: &Option<Arc<dyn ChatBackend>>,
    ) -> Result<qforge_agent::mobile::agent::Agents> {
        let decision: Arc<dyn ChatBackend> = match (local, &self.decision_url) {
            (Some(local), _) => local.clone(),
            (None, Some(url)) => Arc::new(remote(url, &self.decision_model, &self.key_env)?),
            (None, None) => anyhow::bail!("give --decision-url or --local-model"),
        };
        let other =
            |url: &Option<String>, model: &Option<String>| -> Result<Arc<dyn ChatBackend>> {
                Ok(match url {
                    Some(u) => Arc::new(remote(
                        u,
                        model.as_deref().unwrap_or(&self.decision_model),
                        &self.key_env,
                    )?),
                    None => decision.clone(),
                })
            };
        Ok(qforge_agent::mobile::agent::Agents {
            reflection: other(&self.reflection_url, &self.reflection_model)?,
            planning: other(&self.planning_url, &self.planning_model)?,
            decision: decision.clone(),
        })
    }

    fn perception(
        &self,
        local: &Option<Arc<dyn ChatBackend>>,
    ) -> Result<Box<dyn qforge_agent::mobile::agent::Perception>> {
        use qforge_agent::mobile::agent::{AccessibilityPerception, CaptionedPerception};
        Ok(match (&self.caption_url, local) {
            (Some(url), _) => Box::new(CaptionedPerception {
                captioner: Arc::new(remote(url, &self.caption_model, &self.key_env)?),
            }),
            (None, Some(local)) if self.caption_local => Box::new(CaptionedPerception {
                captioner: local.clone(),
            }),
            _ => Box::new(AccessibilityPerception),
        })
    }

    fn config(&self, log_dir: PathBuf) -> qforge_agent::mobile::agent::MobileConfig {
        let mut config = qforge_agent::mobile::agent::MobileConfig {
            reflection: !self.no_reflection,
            memory: !self.no_memory,
            max_steps: Some(self.max_steps),
            time_budget: self.time_budget_s.map(std::time::Duration::from_secs),
            settle: std::time::Duration::from_secs_f64(self.settle_s.max(0.0)),
            log_dir: Some(log_dir),
            images: !self.no_images,
            ..Default::default()
        };
        if let Some(h) = &self.hint {
            config.hint = h.clone();
        }
        config
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Every step is logged (steps.jsonl, run.json, step-NNN.png, timeline.html in \
    --log-dir). Example:\n  qforge agent mobile run --instruction \"Turn on Wi-Fi\" --adb adb --serial \
    emulator-5554 --decision-url http://127.0.0.1:8000/v1 --decision-model Qwen2.5-VL-7B-Instruct"
)]
pub struct MobileRunArgs {
    #[arg(long)]
    instruction: String,
    /// The adb executable (Debian's `adb`). Without it, the simulated phone is used.
    #[arg(long)]
    adb: Option<PathBuf>,
    #[arg(long)]
    serial: Option<String>,
    #[arg(long, default_value = "runs/mobile/run")]
    log_dir: PathBuf,
    #[command(flatten)]
    agents: MobileAgentArgs,
}

pub(super) fn mobile_run(args: MobileRunArgs) -> Result<()> {
    use qforge_agent::mobile::adb::{AdbDevice, Device};
    use qforge_agent::mobile::agent::run;
    let local = args.agents.local()?;
    let agents = args.agents.agents(&local)?;
    let mut perception = args.agents.perception(&local)?;
    let config = args.agents.config(args.log_dir.clone());
    let mut sim = qforge_agent::mobile::sim::demo_phone();
    let mut adb;
    let device: &mut dyn Device = match &args.adb {
        Some(path) => {
            std::fs::create_dir_all(&args.log_dir)?;
            adb = AdbDevice::new(path, &args.log_dir);
            adb.serial = args.serial.clone();
            &mut adb
        }
        None => {
            eprintln!("note: no --adb: running on the simulated phone");
            &mut sim
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(
        device,
        perception.as_mut(),
        &agents,
        &args.instruction,
        &config,
    ));
    std::fs::write(
        args.log_dir.join("timeline.html"),
        qforge_agent::mobile::eval::timeline_html(&result, None),
    )?;
    eprintln!(
        "{} steps, stopped: {:?}; progress: {}; log in {}",
        result.steps.len(),
        result.stop,
        result.progress,
        args.log_dir.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct MobileEvalArgs {
    #[arg(long, default_value = "runs/mobile/eval")]
    out_dir: PathBuf,
    #[command(flatten)]
    agents: MobileAgentArgs,
}

pub(super) fn mobile_eval(args: MobileEvalArgs) -> Result<()> {
    use qforge_agent::mobile::agent::run;
    use qforge_agent::mobile::eval::{demo_suite, score, summarize, timeline_html};
    let local = args.agents.local()?;
    let agents = args.agents.agents(&local)?;
    let mut perception = args.agents.perception(&local)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let suite = demo_suite();
    let bar = progress(suite.len());
    let mut scores = Vec::new();
    for task in &suite {
        let dir = args.out_dir.join(&task.name);
        let mut phone = task.phone.clone();
        let result = runtime.block_on(run(
            &mut phone,
            perception.as_mut(),
            &agents,
            &task.instruction,
            &args.agents.config(dir.clone()),
        ));
        let s = score(task, &result, &phone);
        std::fs::write(dir.join("timeline.html"), timeline_html(&result, Some(&s)))?;
        bar.inc(1);
        bar.set_message(format!(
            "{}: {}",
            task.name,
            if s.success { "done" } else { "failed" }
        ));
        scores.push(s);
    }
    bar.finish_and_clear();
    let report = summarize(scores);
    let json = serde_json::to_value(&report)?;
    qforge_util::write_json_atomic(&args.out_dir.join("report.json"), &json)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
