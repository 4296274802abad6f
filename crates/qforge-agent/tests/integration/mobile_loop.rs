//! Mobile-Agent-v2's loop on the simulated phone, with named simulator backends standing in for
//! the models: an `ElementReadingPolicySimulator` (the decision agent: it reads the element list
//! in its prompt and turns a scripted plan such as "tap Wi-Fi" into coordinates), a
//! `ScreenDiffReflectionSimulator` (A, B when the new screen is a known wrong page, C when
//! nothing changed) and a planning simulator that counts steps.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qforge_agent::mobile::agent::{AccessibilityPerception, Agents, MobileConfig, StopReason, run};
use qforge_agent::mobile::sim::{SimPhone, demo_phone};
use qforge_engine::chat::{ChatDelta, ChatEvent, ChatRequest};
use qforge_engine::{BackendError, ChatBackend, ChatStream};
use serde_json::Value;

fn reply(text: String) -> ChatStream {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.try_send(Ok(ChatEvent::Delta(ChatDelta {
        content: Some(text),
        finish_reason: Some("stop".into()),
        ..ChatDelta::default()
    })))
    .unwrap();
    rx
}

/// The text parts of a request's last message.
fn last_text(request: &ChatRequest) -> String {
    match &request.messages.last().unwrap()["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The centre of the element labelled `label` in a prompt's screen lines.
fn find(prompt: &str, label: &str) -> Option<(i64, i64)> {
    prompt.lines().find_map(|l| {
        let (coords, rest) = l.split_once("; ")?;
        let name = rest
            .strip_prefix("text: ")
            .or_else(|| rest.strip_prefix("icon: "))?;
        (name == label).then(|| {
            let nums: Vec<i64> = coords
                .trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .filter_map(|n| n.parse().ok())
                .collect();
            (nums[0], nums[1])
        })
    })
}

/// The decision agent: each plan step is "open NAME", "tap LABEL", "type TEXT", "raw ACTION" or
/// "stop"; memory turns answer from `memories` (by step) or None.
struct ElementReadingPolicySimulator {
    plan: Mutex<Vec<String>>,
    memories: Vec<(usize, String)>,
    prompts: Mutex<Vec<String>>,
}

impl ElementReadingPolicySimulator {
    fn new(plan: &[&str]) -> Self {
        Self {
            plan: Mutex::new(plan.iter().rev().map(|s| s.to_string()).collect()),
            memories: Vec::new(),
            prompts: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl ChatBackend for ElementReadingPolicySimulator {
    fn model_name(&self) -> &str {
        "element-reading-policy-simulator"
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let prompt = last_text(&request);
        if prompt.contains("worth remembering") {
            let step = self.prompts.lock().unwrap().len();
            let memory = self
                .memories
                .iter()
                .find(|(s, _)| *s == step)
                .map_or("None".to_string(), |(_, m)| m.clone());
            return Ok(reply(format!("### Important content ###\n{memory}")));
        }
        self.prompts.lock().unwrap().push(prompt.clone());
        let step = self
            .plan
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| "stop".into());
        let (verb, arg) = step.split_once(' ').unwrap_or((step.as_str(), ""));
        let action = match verb {
            "open" => format!("Open app ({arg})"),
            "tap" => match find(&prompt, arg) {
                Some((x, y)) => format!("Tap ({x}, {y})"),
                None => format!("Tap (nowhere {arg})"),
            },
            "type" => format!("Type ({arg})"),
            "raw" => arg.to_string(),
            _ => "Stop".to_string(),
        };
        Ok(reply(format!(
            "### Thought ###\nNext: {step}.\n### Action ###\n{action}\n### Operation ###\n{step} to move on"
        )))
    }
}

/// Reflection: C when the screen did not change, B when the new screen shows a wrong-page
/// marker, else A.
struct ScreenDiffReflectionSimulator {
    wrong_page_markers: Vec<String>,
    verdicts: Mutex<Vec<char>>,
}

#[async_trait]
impl ChatBackend for ScreenDiffReflectionSimulator {
    fn model_name(&self) -> &str {
        "screen-diff-reflection-simulator"
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let prompt = last_text(&request);
        let before = prompt
            .split("### Before the operation ###")
            .nth(1)
            .and_then(|s| s.split("### After the operation ###").next())
            .unwrap_or("")
            .trim()
            .to_string();
        let after = prompt
            .split("### After the operation ###")
            .nth(1)
            .and_then(|s| s.split("### The operation ###").next())
            .unwrap_or("")
            .trim()
            .to_string();
        let verdict = if before == after {
            'C'
        } else if self
            .wrong_page_markers
            .iter()
            .any(|m| after.contains(m.as_str()))
        {
            'B'
        } else {
            'A'
        };
        self.verdicts.lock().unwrap().push(verdict);
        Ok(reply(format!(
            "### Thought ###\ncompared\n### Answer ###\n{verdict}"
        )))
    }
}

struct CountingPlannerSimulator;

#[async_trait]
impl ChatBackend for CountingPlannerSimulator {
    fn model_name(&self) -> &str {
        "counting-planner-simulator"
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        let steps = last_text(&request).matches("Step-").count();
        Ok(reply(format!(
            "### Completed contents ###\n{steps} steps done"
        )))
    }
}

fn agents(
    policy: Arc<ElementReadingPolicySimulator>,
    reflection: Arc<ScreenDiffReflectionSimulator>,
) -> Agents {
    Agents {
        decision: policy,
        reflection,
        planning: Arc::new(CountingPlannerSimulator),
    }
}

fn reflector(markers: &[&str]) -> Arc<ScreenDiffReflectionSimulator> {
    Arc::new(ScreenDiffReflectionSimulator {
        wrong_page_markers: markers.iter().map(|m| m.to_string()).collect(),
        verdicts: Mutex::new(Vec::new()),
    })
}

fn config(dir: &std::path::Path) -> MobileConfig {
    MobileConfig {
        settle: std::time::Duration::ZERO,
        max_steps: Some(12),
        log_dir: Some(dir.to_path_buf()),
        ..MobileConfig::default()
    }
}

async fn go(
    phone: &mut SimPhone,
    agents: &Agents,
    instruction: &str,
    config: &MobileConfig,
) -> qforge_agent::mobile::agent::MobileRun {
    run(
        phone,
        &mut AccessibilityPerception,
        agents,
        instruction,
        config,
    )
    .await
}

#[tokio::test]
async fn wifi_on_through_open_app_with_a_wrong_tap_and_a_no_op_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut phone = demo_phone();
    let mut policy = ElementReadingPolicySimulator::new(&[
        "open Settings", // the label: the icon above it is tapped
        "tap Bluetooth", // wrong page: reflection B, Back
        "tap Display",   // does nothing: reflection C
        "tap Wi-Fi",
        "tap Wi-Fi switch",
        "stop",
    ]);
    policy.memories = vec![(5, "Wi-Fi is on".into())];
    let policy = Arc::new(policy);
    let reflection = reflector(&["Pair new device"]);
    let run = go(
        &mut phone,
        &agents(policy.clone(), reflection.clone()),
        "Turn on Wi-Fi",
        &config(dir.path()),
    )
    .await;

    assert_eq!(run.stop, StopReason::Stop);
    assert!(
        phone.flags.contains(&"wifi_on".to_string()),
        "{:?}",
        phone.log
    );
    assert_eq!(
        *reflection.verdicts.lock().unwrap(),
        ['A', 'B', 'C', 'A', 'A']
    );
    // B pressed Back: the phone left the Bluetooth page.
    assert!(phone.log.iter().any(|l| l == "back"));
    // The next decision after B and after C saw the error note; after A it is gone.
    let prompts = policy.prompts.lock().unwrap();
    assert!(
        prompts[2].contains("led to a wrong page, so Back was pressed"),
        "{}",
        prompts[2]
    );
    assert!(prompts[3].contains("changed nothing on screen"));
    assert!(!prompts[4].contains("### Last operation ###"));
    // Only A steps enter the history and the progress.
    assert!(
        prompts[4].contains("Step-2: [Operation: tap Wi-Fi; Action: Tap (540, 340)]"),
        "{}",
        prompts[4]
    );
    assert_eq!(run.progress, "3 steps done");
    assert_eq!(run.memory, ["Wi-Fi is on"]);
    // Step logs and screenshots are on disk.
    let lines = std::fs::read_to_string(dir.path().join("steps.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
    assert!(dir.path().join("step-001.png").is_file());
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["executed"]["Ok"]["op"], "open_app");
}

#[tokio::test]
async fn typing_needs_a_focused_box_and_bad_actions_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut phone = demo_phone();
    let policy = Arc::new(ElementReadingPolicySimulator::new(&[
        "open Browser",
        "raw Tap (2000, 5000)", // off the screen
        "raw Dance wildly",     // not an operation
        "tap Search or type URL",
        "type kyoto\\n", // a literal backslash-n: Enter, as the released typing rule has it
        "stop",
    ]));
    let reflection = reflector(&[]);
    let run = go(
        &mut phone,
        &agents(policy.clone(), reflection),
        "Search for kyoto",
        &config(dir.path()),
    )
    .await;
    assert_eq!(run.stop, StopReason::Stop);
    assert_eq!(phone.fields["query"], "kyoto");
    assert_eq!(phone.current, "results");
    let prompts = policy.prompts.lock().unwrap();
    assert!(prompts[1].contains("Typing is unavailable until you tap an input box"));
    assert!(
        prompts[2].contains("(2000, 5000) is off the 1080x2400 screen"),
        "{}",
        prompts[2]
    );
    assert!(prompts[3].contains("no known operation"), "{}", prompts[3]);
    assert!(prompts[4].contains("Type (text): type text into the focused box"));
    assert!(run.steps[1].executed.is_err() && run.steps[2].executed.is_err());
}

#[tokio::test]
async fn limits_and_a_lost_device_end_the_run_with_the_steps_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut phone = demo_phone();
    let endless = Arc::new(ElementReadingPolicySimulator::new(&["tap Display"; 20]));
    let limited = MobileConfig {
        max_steps: Some(3),
        ..config(dir.path())
    };
    let run = go(
        &mut phone,
        &agents(endless, reflector(&[])),
        "Never done",
        &limited,
    )
    .await;
    assert_eq!(
        (run.stop.clone(), run.steps.len()),
        (StopReason::StepLimit, 3)
    );

    let timed = MobileConfig {
        max_steps: None,
        time_budget: Some(std::time::Duration::ZERO),
        ..config(dir.path())
    };
    let endless = Arc::new(ElementReadingPolicySimulator::new(&["tap Display"]));
    let run = go(
        &mut phone,
        &agents(endless, reflector(&[])),
        "Never done",
        &timed,
    )
    .await;
    assert_eq!(run.stop, StopReason::TimeBudget);

    let mut unplugged = demo_phone();
    unplugged.connected = false;
    let policy = Arc::new(ElementReadingPolicySimulator::new(&["stop"]));
    let run = go(
        &mut unplugged,
        &agents(policy, reflector(&[])),
        "Anything",
        &config(dir.path()),
    )
    .await;
    assert!(
        matches!(run.stop, StopReason::Device(ref m) if m.contains("not connected")),
        "{:?}",
        run.stop
    );
}

/// `qforge serve` hosting the tiny (untrained) model over real HTTP as all three agents: its
/// output is never a valid action, and the loop logs that and goes on until its step limit.
#[test]
fn a_served_tiny_model_drives_the_loop_over_http_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture_with_context(dir.path(), 8192);
    let url = qforge_serve::spawn_on_loopback(
        qforge_serve::AppState::for_checkpoint("tiny", &model, Default::default()).unwrap(),
    )
    .unwrap();
    let backend = || -> Arc<dyn ChatBackend> {
        let mut config = qforge_engine::RemoteConfig::new(&url, "tiny");
        config.retries = 0;
        Arc::new(qforge_engine::RemoteBackend::new(config).unwrap())
    };
    let agents = Agents {
        decision: backend(),
        reflection: backend(),
        planning: backend(),
    };
    let config = MobileConfig {
        max_steps: Some(2),
        images: false,
        ..config(&dir.path().join("logs"))
    };
    let mut phone = demo_phone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = rt.block_on(run(
        &mut phone,
        &mut AccessibilityPerception,
        &agents,
        "Turn on Wi-Fi",
        &config,
    ));
    assert!(
        matches!(run.stop, StopReason::StepLimit | StopReason::Stop),
        "{:?}",
        run.stop
    );
    assert!(!run.steps.is_empty());
    assert!(dir.path().join("logs/steps.jsonl").is_file());
}

/// SR, CR, DA and RA against the simulator's truth, for a run with a detour, and for the same
/// run judged by a reflection agent that always answers A.
#[tokio::test]
async fn metrics_follow_the_simulators_truth() {
    use qforge_agent::mobile::eval::{demo_suite, score, summarize, timeline_html};
    let dir = tempfile::tempdir().unwrap();
    let task = demo_suite()
        .into_iter()
        .find(|t| t.name == "wifi-on")
        .unwrap();
    let plan = [
        "open Settings",
        "tap Bluetooth",
        "tap Display",
        "tap Wi-Fi",
        "tap Wi-Fi switch",
        "stop",
    ];

    let mut phone = task.phone.clone();
    let policy = Arc::new(ElementReadingPolicySimulator::new(&plan));
    let run = go(
        &mut phone,
        &agents(policy, reflector(&["Pair new device"])),
        &task.instruction,
        &config(dir.path()),
    )
    .await;
    let s = score(&task, &run, &phone);
    assert!(s.success);
    assert_eq!(s.truth, ['A', 'B', 'C', 'A', 'A', '-']);
    assert_eq!(s.cr, 1.0);
    assert!((s.da - 4.0 / 6.0).abs() < 1e-12, "{s:?}");
    assert_eq!(s.ra, Some(1.0));
    let html = timeline_html(&run, Some(&s));
    assert!(html.contains("<img src=\"step-001.png\">") && html.contains("truth B"));

    // A reflection agent that always says A misses the detour and the no-op.
    let mut phone = task.phone.clone();
    let policy = Arc::new(ElementReadingPolicySimulator::new(&[
        "open Settings",
        "tap Bluetooth",
        "stop",
    ]));
    let run = go(
        &mut phone,
        &agents(policy, reflector(&[])),
        &task.instruction,
        &config(dir.path()),
    )
    .await;
    let s = score(&task, &run, &phone);
    assert!(!s.success);
    assert_eq!(s.truth, ['A', 'B', '-']);
    assert_eq!(s.ra, Some(0.5));
    let report = summarize(vec![s]);
    assert_eq!(report.sr, 0.0);
}

use crate::common;

/// Icons without an accessibility label are captioned by a vision model from their crop; a
/// model that gives nothing leaves the released "This is an icon.".
#[tokio::test]
async fn undescribed_icons_are_captioned_from_their_crop() {
    use qforge_agent::mobile::adb::Device;
    use qforge_agent::mobile::agent::{CaptionedPerception, Perception};
    use qforge_agent::mobile::perception::Kind;
    let mut phone = demo_phone();
    phone.apply_tap(500, 1900); // the browser
    let png = phone.screenshot().unwrap();
    let captioner = Arc::new(common::ScriptedModelSimulator::new(&[
        "A grey square with three dots.",
    ]));
    let mut perception = CaptionedPerception {
        captioner: captioner.clone(),
    };
    let elements = perception.perceive(&mut phone, &png).await.unwrap();
    let icon = elements.iter().find(|e| e.kind == Kind::Icon).unwrap();
    assert_eq!(icon.text, "A grey square with three dots.");
    let request = &captioner.requests()[0];
    let url = request.messages[0]["content"][1]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("data:image/png;base64,"));
    let elements = perception.perceive(&mut phone, &png).await.unwrap();
    assert!(elements.iter().any(|e| e.text == "This is an icon."));
}

/// A phone that breaks: it unplugs after `ops` device calls, or returns a screenshot that is not
/// an image.
struct BrokenPhone {
    phone: SimPhone,
    ops: usize,
    garbage_screenshot: bool,
}

impl BrokenPhone {
    fn tick(&mut self) {
        if self.ops == 0 {
            self.phone.connected = false;
        }
        self.ops = self.ops.saturating_sub(1);
    }
}

impl qforge_agent::mobile::adb::Device for BrokenPhone {
    fn screenshot(&mut self) -> Result<Vec<u8>, qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        if self.garbage_screenshot {
            self.phone.screenshot()?;
            return Ok(b"<html>not an image</html>".to_vec());
        }
        self.phone.screenshot()
    }
    fn tap(&mut self, x: i64, y: i64) -> Result<(), qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.tap(x, y)
    }
    fn swipe(
        &mut self,
        a: (i64, i64),
        b: (i64, i64),
    ) -> Result<(), qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.swipe(a, b)
    }
    fn type_text(&mut self, t: &str) -> Result<(), qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.type_text(t)
    }
    fn back(&mut self) -> Result<(), qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.back()
    }
    fn home(&mut self) -> Result<(), qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.home()
    }
    fn keyboard_shown(&mut self) -> Result<bool, qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.keyboard_shown()
    }
    fn ui_dump(&mut self) -> Result<String, qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.ui_dump()
    }
    fn current_ime(&mut self) -> Result<String, qforge_agent::mobile::adb::DeviceError> {
        self.tick();
        self.phone.current_ime()
    }
}

#[tokio::test]
async fn a_device_lost_mid_run_or_a_broken_screenshot_ends_the_run_with_steps_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Two full steps take 6 + 6 device calls (screenshot, dump, keyboard; tap; again after).
    let mut phone = BrokenPhone {
        phone: demo_phone(),
        ops: 9,
        garbage_screenshot: false,
    };
    let policy = Arc::new(ElementReadingPolicySimulator::new(&[
        "open Settings",
        "tap Wi-Fi",
        "tap Wi-Fi switch",
    ]));
    let result = run(
        &mut phone,
        &mut AccessibilityPerception,
        &agents(policy, reflector(&[])),
        "Turn on Wi-Fi",
        &config(dir.path()),
    )
    .await;
    assert!(
        matches!(result.stop, StopReason::Device(ref m) if m.contains("not connected")),
        "{:?}",
        result.stop
    );
    assert!(
        !result.steps.is_empty(),
        "the steps before the loss are kept"
    );
    assert!(dir.path().join("steps.jsonl").is_file());

    let mut phone = BrokenPhone {
        phone: demo_phone(),
        ops: usize::MAX,
        garbage_screenshot: true,
    };
    let policy = Arc::new(ElementReadingPolicySimulator::new(&["stop"]));
    let result = run(
        &mut phone,
        &mut AccessibilityPerception,
        &agents(policy, reflector(&[])),
        "Anything",
        &config(dir.path()),
    )
    .await;
    assert_eq!(
        result.stop,
        StopReason::Device("the screenshot is not a PNG image".into())
    );
}

/// The whole loop through the real adb code path: `AdbDevice` running `qforge-sim-adb`.
#[tokio::test]
async fn the_loop_runs_through_adb_against_the_simulated_phone() {
    use qforge_agent::mobile::adb::AdbDevice;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("phone.json");
    std::fs::write(&state, serde_json::to_string(&demo_phone()).unwrap()).unwrap();
    let mut device = AdbDevice::new(env!("CARGO_BIN_EXE_qforge-sim-adb"), dir.path());
    device.settle = std::time::Duration::ZERO;
    device.env = vec![(
        "QFORGE_SIM_STATE".into(),
        state.to_string_lossy().into_owned(),
    )];
    let policy = Arc::new(ElementReadingPolicySimulator::new(&[
        "open Settings",
        "tap Wi-Fi",
        "tap Wi-Fi switch",
        "stop",
    ]));
    let result = run(
        &mut device,
        &mut AccessibilityPerception,
        &agents(policy, reflector(&[])),
        "Turn on Wi-Fi",
        &config(&dir.path().join("logs")),
    )
    .await;
    assert_eq!(result.stop, StopReason::Stop);
    let phone: SimPhone = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(phone.flags, ["wifi_on"]);
    assert_eq!(
        result
            .steps
            .iter()
            .filter_map(|s| s.reflection)
            .collect::<String>(),
        "AAA"
    );
}

/// Mobile-Agent-v2's agents on an embedded vision-language model (no server): the decision and
/// reflection agents get the screenshots as images and the loop runs to its step limit; a
/// text-only model given the same screenshots stops the run with a backend error saying so.
#[test]
fn a_local_vision_language_model_sees_the_screenshots_as_every_agent() {
    let dir = tempfile::tempdir().unwrap();
    let local = |model: &std::path::Path| -> (Arc<dyn ChatBackend>, Arc<qforge_engine::Metrics>) {
        let ck = qforge_model::Checkpoint::load_dir(
            model,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let metrics = Arc::new(qforge_engine::Metrics::default());
        let generation = ck.generation.clone();
        let scheduler = qforge_engine::Scheduler::spawn(
            qforge_engine::Engine::from_checkpoint(ck),
            qforge_engine::SchedulerConfig::default(),
            metrics.clone(),
        );
        (
            Arc::new(qforge_engine::EmbeddedBackend::new(
                "local".into(),
                scheduler,
                generation,
            )),
            metrics,
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let go = |backend: Arc<dyn ChatBackend>, logs: &str| {
        let agents = Agents {
            decision: backend.clone(),
            reflection: backend.clone(),
            planning: backend,
        };
        let config = MobileConfig {
            max_steps: Some(1),
            images: true,
            ..config(&dir.path().join(logs))
        };
        let mut phone = demo_phone();
        rt.block_on(run(
            &mut phone,
            &mut AccessibilityPerception,
            &agents,
            "Turn on Wi-Fi",
            &config,
        ))
    };
    let vl = common::vl_fixture_with_context(dir.path(), 16384, 64 * 28 * 28);
    let (backend, metrics) = local(&vl);
    let seen = go(backend, "vl");
    assert!(
        matches!(seen.stop, StopReason::StepLimit | StopReason::Stop),
        "{:?}",
        seen.stop
    );
    assert!(!seen.steps.is_empty());
    let started = metrics
        .requests_started
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        started >= 2,
        "the decision and reflection agents ran: {started}"
    );
    let text = common::fixture_with_context(dir.path(), 8192);
    let (backend, _) = local(&text);
    let refused = go(backend, "text");
    match &refused.stop {
        StopReason::Backend(message) => assert!(message.contains("text-only"), "{message}"),
        other => panic!("a text-only model took screenshots: {other:?}"),
    }
}
