//! Mobile-Agent-v2's loop (Mobile-Agent-v2, arXiv 2406.01014): per step, perception, the
//! decision agent (thought / action / operation), the memory unit (a follow-up turn in the same
//! decision chat), the operation on the device, perception again, the reflection agent (A: go on
//! and let the planning agent rewrite the task progress; B: wrong page, press Back; C: nothing
//! changed, note the error), until the action says Stop. Prompts are ours, with the released
//! sections and output headers. Added, as users asked: a step limit, a wall-clock budget, and a
//! structured log of every step with its screenshots (`steps.jsonl` and PNGs), so a run can be
//! replayed and audited; an unparsable action or off-screen point is logged and shown to the
//! model as the last operation's error instead of crashing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use qforge_engine::ChatBackend;
use qforge_engine::chat::ChatRequest;
use serde::Serialize;
use serde_json::{Value, json};

use super::adb::{Device, DeviceError};
use super::ops::{Operation, parse_action};
use super::perception::{
    Element, Kind, from_ui_dump, keyboard_label_shown, merge_text_lines, screen_lines,
};

/// How the screen is read, given the screenshot just taken.
#[async_trait::async_trait]
pub trait Perception: Send {
    async fn perceive(
        &mut self,
        device: &mut dyn Device,
        screenshot: &[u8],
    ) -> Result<Vec<Element>, DeviceError>;
}

/// Elements from the accessibility tree (`uiautomator dump`), text lines merged as the released
/// OCR path merges them.
pub struct AccessibilityPerception;

#[async_trait::async_trait]
impl Perception for AccessibilityPerception {
    async fn perceive(
        &mut self,
        device: &mut dyn Device,
        _: &[u8],
    ) -> Result<Vec<Element>, DeviceError> {
        Ok(merge_text_lines(&from_ui_dump(&device.ui_dump()?)))
    }
}

/// The accessibility tree, with undescribed icons captioned by a vision model through any
/// `ChatBackend` (released: Qwen-VL, one sentence on shape and colour). As released: crops of 10
/// px or less on a side are skipped, icons over 5% of the screen are not captioned, and a failed
/// call gives "This is an icon.".
pub struct CaptionedPerception {
    pub captioner: Arc<dyn ChatBackend>,
}

#[async_trait::async_trait]
impl Perception for CaptionedPerception {
    async fn perceive(
        &mut self,
        device: &mut dyn Device,
        screenshot: &[u8],
    ) -> Result<Vec<Element>, DeviceError> {
        let mut elements = AccessibilityPerception.perceive(device, screenshot).await?;
        let (w, h) = png_size(screenshot).unwrap_or((1, 1));
        for e in elements
            .iter_mut()
            .filter(|e| e.kind == Kind::Icon && e.text.is_empty())
        {
            let (bw, bh) = (e.bbox[2] - e.bbox[0], e.bbox[3] - e.bbox[1]);
            if bw <= 10 || bh <= 10 || bw * bh * 20 > w * h {
                continue;
            }
            let Some(crop) = super::perception::crop_png(screenshot, e.bbox) else {
                continue;
            };
            let request = ChatRequest {
                messages: vec![user_message(
                    "This is an icon from a phone screen. Describe its shape and colour in one \
                     sentence."
                        .into(),
                    &[&crop],
                    true,
                )],
                temperature: Some(0.0),
                max_tokens: Some(64),
                ..ChatRequest::default()
            };
            e.text = match self.captioner.chat(request).await {
                Ok(r) if !r.text().trim().is_empty() => r.text().trim().to_string(),
                _ => "This is an icon.".into(),
            };
        }
        Ok(elements)
    }
}

/// The models: the decision and reflection agents see screenshots (any OpenAI-compatible vision
/// model); the planning agent reads text only and may be another backend.
pub struct Agents {
    pub decision: Arc<dyn ChatBackend>,
    pub reflection: Arc<dyn ChatBackend>,
    pub planning: Arc<dyn ChatBackend>,
}

/// Switches and budgets (the released defaults, plus the limits users asked for).
#[derive(Debug, Clone)]
pub struct MobileConfig {
    pub reflection: bool,
    pub memory: bool,
    /// Extra knowledge for the decision agent ("Hint").
    pub hint: String,
    /// Steps at most (the released loop has none: `None`).
    pub max_steps: Option<usize>,
    /// Wall-clock budget for the whole run.
    pub time_budget: Option<Duration>,
    /// Pause after each operation for the screen to settle (released: 5 s).
    pub settle: Duration,
    /// Step logs and screenshots go here when set.
    pub log_dir: Option<PathBuf>,
    /// Send screenshots to the decision and reflection agents (off for text-only models, which
    /// then work from the element list alone).
    pub images: bool,
}

impl Default for MobileConfig {
    fn default() -> Self {
        Self {
            reflection: true,
            memory: true,
            hint: "To open an app, use Open app on its icon; to leave an app, use Home.".into(),
            max_steps: None,
            time_budget: None,
            settle: Duration::from_secs(5),
            log_dir: None,
            images: true,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The decision agent said Stop.
    Stop,
    StepLimit,
    TimeBudget,
    /// The device failed (disconnected mid-run); the steps so far are kept.
    Device(String),
    /// A model backend failed.
    Backend(String),
}

/// One step, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub screen: String,
    pub keyboard: bool,
    pub thought: String,
    pub action: String,
    pub operation: String,
    /// The parsed operation, or why it could not be used.
    pub executed: Result<Operation, String>,
    pub memory: Option<String>,
    /// 'A', 'B' or 'C' when reflection ran.
    pub reflection: Option<char>,
    pub progress: String,
    pub screenshot: Option<String>,
    pub seconds: f64,
}

/// A finished run.
#[derive(Debug, Clone, Serialize)]
pub struct MobileRun {
    pub instruction: String,
    pub steps: Vec<StepLog>,
    pub stop: StopReason,
    pub progress: String,
    pub memory: Vec<String>,
}

/// The sections of a decision agent reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub thought: String,
    pub action: String,
    pub operation: String,
}

fn section<'a>(reply: &'a str, header: &str, next: &[&str]) -> Option<&'a str> {
    let start = reply.find(header)? + header.len();
    let rest = &reply[start..];
    let end = next
        .iter()
        .filter_map(|h| rest.find(h))
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Reads `### Thought ###`, `### Action ###` and `### Operation ###` (newlines folded, colons
/// dropped from the thought, as released).
pub fn parse_decision(reply: &str) -> Decision {
    let heads = ["### Thought ###", "### Action ###", "### Operation ###"];
    let get = |h: &str| {
        section(reply, h, &heads)
            .unwrap_or("")
            .replace('\n', " ")
            .trim()
            .to_string()
    };
    Decision {
        thought: get(heads[0]).replace(':', ""),
        action: get(heads[1]),
        operation: get(heads[2]),
    }
}

/// The reflection verdict: the first of 'A', 'B', 'C' found after `### Answer ###` (released:
/// substring tests in the order A, B, C, so any capital A wins).
pub fn parse_reflection(reply: &str) -> char {
    let answer = reply.rsplit("### Answer ###").next().unwrap_or(reply);
    ['A', 'B', 'C']
        .into_iter()
        .find(|c| answer.contains(*c))
        .unwrap_or('A')
}

/// The memory unit's content, or `None` ("None", or nothing after the header).
pub fn parse_memory(reply: &str) -> Option<String> {
    let content = section(reply, "### Important content ###", &[])?;
    let first_block = content.split("\n\n").next().unwrap_or("").trim();
    (!first_block.is_empty() && !first_block.contains("None")).then(|| first_block.to_string())
}

/// A user message: the text, then the screenshots as image parts when `images` is on.
fn user_message(text: String, pngs: &[&[u8]], images: bool) -> Value {
    if !images {
        return json!({"role": "user", "content": text});
    }
    let mut parts = vec![json!({"type": "text", "text": text})];
    parts.extend(pngs.iter().map(|p| image_part(p)));
    json!({"role": "user", "content": parts})
}

fn image_part(png: &[u8]) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(png);
    json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}})
}

fn keyboard_words(on: bool) -> &'static str {
    if on {
        "The keyboard is up: you can type into the focused box."
    } else {
        "The keyboard is not up: to type, first tap an input box."
    }
}

struct History {
    operations: Vec<(String, String)>,
    progress: String,
    memory: Vec<String>,
    error: Option<String>,
}

fn decision_prompt(
    instruction: &str,
    size: (i64, i64),
    elements: &[Element],
    keyboard: bool,
    config: &MobileConfig,
    history: &History,
) -> String {
    let mut p = format!(
        "### Background ###\nThis is a {}x{} phone screenshot. The user's instruction: {instruction}\n\n\
         ### Screen elements ###\nElements on screen, by centre coordinates (the list may be \
         imperfect):\n{}\n\n### Keyboard ###\n{}\n\n### Hint ###\n{}\n\n",
        size.0,
        size.1,
        screen_lines(elements),
        keyboard_words(keyboard),
        config.hint
    );
    if !history.operations.is_empty() {
        p.push_str("### Operations so far ###\n");
        for (i, (summary, action)) in history.operations.iter().enumerate() {
            let before_to = summary.split(" to ").next().unwrap_or(summary);
            p.push_str(&format!(
                "Step-{}: [Operation: {before_to}; Action: {action}]\n",
                i + 1
            ));
        }
        p.push_str(&format!("\n### Progress ###\n{}\n\n", history.progress));
    }
    if !history.memory.is_empty() {
        p.push_str(&format!(
            "### Memory ###\n{}\n\n",
            history.memory.join("\n")
        ));
    }
    if let Some(error) = &history.error {
        p.push_str(&format!(
            "### Last operation ###\nThe last operation did not do what was intended: {error}. \
             Think about why, and change course.\n\n"
        ));
    }
    let type_line = if keyboard {
        "- Type (text): type text into the focused box."
    } else {
        "- (Typing is unavailable until you tap an input box.)"
    };
    p.push_str(&format!(
        "### Actions ###\nChoose one:\n- Open app (app name): open an app from the home screen.\n\
         - Tap (x, y): tap a point.\n- Swipe (x1, y1), (x2, y2): swipe between two points.\n\
         {type_line}\n- Home: go to the home screen.\n- Stop: the instruction is done.\n\n\
         ### Output format ###\n### Thought ###\nyour reasoning\n### Action ###\none action from \
         the list\n### Operation ###\na one-sentence summary of this step"
    ));
    p
}

/// Runs `instruction` on `device` until Stop or a limit.
pub async fn run(
    device: &mut dyn Device,
    perception: &mut dyn Perception,
    agents: &Agents,
    instruction: &str,
    config: &MobileConfig,
) -> MobileRun {
    let started = Instant::now();
    let mut history = History {
        operations: Vec::new(),
        progress: String::new(),
        memory: Vec::new(),
        error: None,
    };
    let mut steps: Vec<StepLog> = Vec::new();
    if let Some(dir) = &config.log_dir {
        let _ = std::fs::create_dir_all(dir);
    }
    let chat = |backend: &Arc<dyn ChatBackend>, messages: Vec<Value>| {
        let backend = backend.clone();
        async move {
            let request = ChatRequest {
                messages,
                temperature: Some(0.0),
                max_tokens: Some(2048),
                seed: Some(1234),
                ..ChatRequest::default()
            };
            backend.chat(request).await.map(|r| r.text())
        }
    };
    let stop = loop {
        if config.max_steps.is_some_and(|m| steps.len() >= m) {
            break StopReason::StepLimit;
        }
        if config.time_budget.is_some_and(|b| started.elapsed() >= b) {
            break StopReason::TimeBudget;
        }
        let step_started = Instant::now();
        let step = steps.len() + 1;
        let observed = async {
            let png = device.screenshot()?;
            let elements = perception.perceive(device, &png).await?;
            let shown = device.keyboard_shown()?;
            Ok::<_, DeviceError>((png, elements, shown))
        }
        .await;
        let (png, elements, shown) = match observed {
            Ok(o) => o,
            Err(e) => break StopReason::Device(e.to_string()),
        };
        let Some(size) = png_size(&png) else {
            break StopReason::Device("the screenshot is not a PNG image".into());
        };
        // The device's own answer, or the released test for the IME's label on screen.
        let keyboard = shown || keyboard_label_shown(&elements, size.1);
        let screenshot = config.log_dir.as_ref().map(|dir| {
            let path = dir.join(format!("step-{step:03}.png"));
            let _ = std::fs::write(&path, &png);
            path.display().to_string()
        });
        let prompt = decision_prompt(instruction, size, &elements, keyboard, config, &history);
        let mut conversation = vec![
            json!({"role": "system", "content": "You are a helpful assistant that operates a mobile phone for the user."}),
            user_message(prompt, &[&png], config.images),
        ];
        let reply = match chat(&agents.decision, conversation.clone()).await {
            Ok(r) => r,
            Err(e) => break StopReason::Backend(e.to_string()),
        };
        let decision = parse_decision(&reply);
        conversation.push(json!({"role": "assistant", "content": reply}));
        let mut log = StepLog {
            step,
            screen: screen_lines(&elements),
            keyboard,
            thought: decision.thought.clone(),
            action: decision.action.clone(),
            operation: decision.operation.clone(),
            executed: Err(String::new()),
            memory: None,
            reflection: None,
            progress: history.progress.clone(),
            screenshot,
            seconds: 0.0,
        };
        if config.memory {
            conversation.push(json!({"role": "user", "content": format!(
                "Is there anything on this screen worth remembering for the instruction ({instruction})? \
                 Answer under ### Important content ###, or write None there.")}));
            let reply = chat(&agents.decision, conversation).await;
            if let Some(m) = reply.ok().as_deref().and_then(parse_memory) {
                if !history.memory.contains(&m) {
                    history.memory.push(m.clone());
                }
                log.memory = Some(m);
            }
        }
        // Read the action and act.
        let parsed = parse_action(&decision.action)
            .map_err(|e| e.to_string())
            .and_then(|op| op.check_on_screen(size.0, size.1).map(|_| op));
        let op = match parsed {
            Ok(op) => op,
            Err(e) => {
                log.executed = Err(e.clone());
                history.error = Some(e);
                log.seconds = step_started.elapsed().as_secs_f64();
                steps.push(log);
                continue;
            }
        };
        if op == Operation::Stop {
            log.executed = Ok(op);
            log.seconds = step_started.elapsed().as_secs_f64();
            steps.push(log);
            break StopReason::Stop;
        }
        let acted = execute(device, &op, &elements);
        log.executed = acted.clone().map(|_| op.clone());
        if let Err(e) = acted {
            if e.starts_with("device:") {
                log.seconds = step_started.elapsed().as_secs_f64();
                steps.push(log);
                break StopReason::Device(e);
            }
            history.error = Some(e);
            log.seconds = step_started.elapsed().as_secs_f64();
            steps.push(log);
            continue;
        }
        std::thread::sleep(config.settle);
        let verdict = if config.reflection {
            let after = async {
                let png = device.screenshot()?;
                let elements = perception.perceive(device, &png).await?;
                let keyboard = device.keyboard_shown()?;
                Ok::<_, DeviceError>((png, elements, keyboard))
            }
            .await;
            let (after_png, after_elements, after_keyboard) = match after {
                Ok(a) => a,
                Err(e) => {
                    steps.push(log);
                    break StopReason::Device(e.to_string());
                }
            };
            let prompt = format!(
                "### Before the operation ###\n{}\n{}\n\n### After the operation ###\n{}\n{}\n\n\
                 ### The operation ###\nInstruction: {instruction}\nHint: {}\nThought: {}\nAction: {}\n\n\
                 ### Question ###\nDid the operation do what was intended? A: yes, it moved the task \
                 on; B: it went to a wrong page; C: nothing changed.\n\n### Output format ###\n\
                 ### Thought ###\nyour comparison\n### Answer ###\nA, B or C",
                screen_lines(&elements),
                keyboard_words(keyboard),
                screen_lines(&after_elements),
                keyboard_words(after_keyboard),
                config.hint,
                decision.thought,
                decision.action
            );
            let messages = vec![user_message(prompt, &[&png, &after_png], config.images)];
            match chat(&agents.reflection, messages).await {
                Ok(r) => parse_reflection(&r),
                Err(e) => {
                    steps.push(log);
                    break StopReason::Backend(e.to_string());
                }
            }
        } else {
            'A'
        };
        log.reflection = config.reflection.then_some(verdict);
        match verdict {
            'A' => {
                history
                    .operations
                    .push((decision.operation.clone(), decision.action.clone()));
                history.error = None;
                let ops: String = history
                    .operations
                    .iter()
                    .enumerate()
                    .map(|(i, (o, a))| format!("Step-{}: {o} ({a})\n", i + 1))
                    .collect();
                let prompt = format!(
                    "### Instruction ###\n{instruction}\n\n### Hint ###\n{}\n\n### Steps so far ###\n{ops}\n\
                     ### Progress so far ###\n{}\n\nUpdate what of the instruction is done. \
                     Answer under ### Completed contents ###.",
                    config.hint,
                    if history.progress.is_empty() {
                        "Nothing yet."
                    } else {
                        &history.progress
                    }
                );
                match chat(
                    &agents.planning,
                    vec![json!({"role": "user", "content": prompt})],
                )
                .await
                {
                    Ok(r) => {
                        if let Some(p) = section(&r, "### Completed contents ###", &[]) {
                            history.progress = p.replace('\n', " ").trim().to_string();
                        }
                    }
                    Err(e) => {
                        steps.push(log);
                        break StopReason::Backend(e.to_string());
                    }
                }
            }
            'B' => {
                history.error = Some(format!(
                    "\"{}\" led to a wrong page, so Back was pressed",
                    decision.action
                ));
                if let Err(e) = device.back() {
                    steps.push(log);
                    break StopReason::Device(e.to_string());
                }
            }
            _ => {
                history.error = Some(format!("\"{}\" changed nothing on screen", decision.action));
            }
        }
        log.progress = history.progress.clone();
        log.seconds = step_started.elapsed().as_secs_f64();
        steps.push(log);
    };
    let run = MobileRun {
        instruction: instruction.to_string(),
        steps,
        stop,
        progress: history.progress,
        memory: history.memory,
    };
    if let Some(dir) = &config.log_dir {
        let lines: String = run
            .steps
            .iter()
            .map(|s| format!("{}\n", serde_json::to_string(s).expect("serialisable")))
            .collect();
        let _ = std::fs::write(dir.join("steps.jsonl"), lines);
        let _ = std::fs::write(
            dir.join("run.json"),
            serde_json::to_string_pretty(&run).expect("serialisable"),
        );
    }
    run
}

/// Carries out an operation. Open app taps one box height above the label that matches the
/// name exactly (the icon sits above it). Errors: "device: …" when the device failed, else a
/// reason for the model.
pub fn execute(
    device: &mut dyn Device,
    op: &Operation,
    elements: &[Element],
) -> Result<(), String> {
    let device_err = |e: DeviceError| format!("device: {e}");
    match op {
        Operation::OpenApp { name } => {
            let label = elements
                .iter()
                .find(|e| e.kind == Kind::Text && e.text == *name)
                .ok_or_else(|| format!("no app labelled \"{name}\" is on screen"))?;
            let (x, y) = label.centre();
            let height = label.bbox[3] - label.bbox[1];
            device.tap(x, y - height).map_err(device_err)
        }
        Operation::Tap { x, y } => device.tap(*x, *y).map_err(device_err),
        Operation::Swipe { from, to } => device.swipe(*from, *to).map_err(device_err),
        Operation::Type { text } => device.type_text(text).map_err(device_err),
        Operation::Back => device.back().map_err(device_err),
        Operation::Home => device.home().map_err(device_err),
        Operation::Stop => Ok(()),
    }
}

/// Width and height from a PNG header; `None` for bytes that are not a PNG.
pub fn png_size(png: &[u8]) -> Option<(i64, i64)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((i64::from(w), i64::from(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_into_their_sections() {
        let d = parse_decision(
            "### Thought ###\nI need: the settings\napp.\n### Action ###\nOpen app (Settings)\n### Operation ###\nOpen Settings to change Wi-Fi",
        );
        assert_eq!(d.thought, "I need the settings app.");
        assert_eq!(d.action, "Open app (Settings)");
        assert_eq!(d.operation, "Open Settings to change Wi-Fi");
        assert_eq!(
            parse_reflection("### Thought ###\nfine\n### Answer ###\nB"),
            'B'
        );
        assert_eq!(parse_reflection("### Answer ###\nC, or maybe A"), 'A');
        assert_eq!(
            parse_memory("### Important content ###\nThe code is 4711.\n\nmore"),
            Some("The code is 4711.".into())
        );
        assert_eq!(parse_memory("### Important content ###\nNone"), None);
        assert_eq!(png_size(b"not a png"), None);
    }
}
