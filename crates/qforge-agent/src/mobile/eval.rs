//! Evaluation on the simulated phone (Mobile-Agent-v2, arXiv 2406.01014): task suites whose
//! success is checked on the phone's state, and the paper's metrics against the simulator's
//! truth. Each run is replayed on a fresh copy of the phone to label every step:
//! - the truth of a step is A when it changed the state on the task's path, B when it left the
//!   path (a screen the solution never visits), C when it changed nothing;
//! - **SR**: the task's state checks hold at the end;
//! - **CR**: steps labelled A over the human-demonstrated step count (capped at 1);
//! - **DA**: decisions labelled A (a Stop counts when the task is done) over all decisions;
//! - **RA**: reflection verdicts equal to the truth over all reflections.

use std::collections::BTreeSet;

use serde::Serialize;

use super::agent::{MobileRun, execute};
use super::ops::Operation;
use super::perception::{from_ui_dump, merge_text_lines};
use super::sim::{SimPhone, demo_phone};

/// A state check on the phone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum Check {
    Flag { flag: String },
    Field { field: String, value: String },
    Screen { screen: String },
}

impl Check {
    pub fn holds(&self, phone: &SimPhone) -> bool {
        match self {
            Check::Flag { flag } => phone.flags.contains(flag),
            Check::Field { field, value } => phone.fields.get(field) == Some(value),
            Check::Screen { screen } => &phone.current == screen,
        }
    }
}

/// A task: the instruction, the phone it starts on, what must hold at the end, the screens a
/// solution visits, and how many steps a person needs.
#[derive(Debug, Clone, Serialize)]
pub struct SimTask {
    pub name: String,
    pub instruction: String,
    #[serde(skip)]
    pub phone: SimPhone,
    pub success: Vec<Check>,
    pub path: Vec<String>,
    pub human_steps: usize,
}

/// The built-in suite on [`demo_phone`].
pub fn demo_suite() -> Vec<SimTask> {
    let task =
        |name: &str, instruction: &str, success: Vec<Check>, path: &[&str], human_steps| SimTask {
            name: name.into(),
            instruction: instruction.into(),
            phone: demo_phone(),
            success,
            path: path.iter().map(|s| s.to_string()).collect(),
            human_steps,
        };
    vec![
        task(
            "wifi-on",
            "Turn on Wi-Fi in Settings.",
            vec![Check::Flag {
                flag: "wifi_on".into(),
            }],
            &["home", "settings", "wifi"],
            3,
        ),
        task(
            "browser-search",
            "Search the browser for kyoto.",
            vec![
                Check::Field {
                    field: "query".into(),
                    value: "kyoto".into(),
                },
                Check::Screen {
                    screen: "results".into(),
                },
            ],
            &["home", "browser", "results"],
            3,
        ),
        task(
            "bluetooth-page",
            "Open the Bluetooth settings page.",
            vec![Check::Screen {
                screen: "bluetooth".into(),
            }],
            &["home", "settings", "bluetooth"],
            2,
        ),
    ]
}

/// One evaluated run.
#[derive(Debug, Clone, Serialize)]
pub struct TaskScore {
    pub task: String,
    pub success: bool,
    pub steps: usize,
    /// Truth label per step ('A', 'B', 'C'), or '-' for a step that did nothing on the device.
    pub truth: Vec<char>,
    pub cr: f64,
    pub da: f64,
    /// `None` when reflection never ran.
    pub ra: Option<f64>,
}

fn state_key(p: &SimPhone) -> String {
    format!("{}|{:?}|{:?}|{:?}", p.current, p.focused, p.fields, p.flags)
}

/// Labels the run's steps by replaying them on a fresh copy of the task's phone, and scores it
/// against `final_phone` (the phone the run left).
pub fn score(task: &SimTask, run: &MobileRun, final_phone: &SimPhone) -> TaskScore {
    let mut phone = task.phone.clone();
    let path: BTreeSet<&str> = task.path.iter().map(String::as_str).collect();
    let success = task.success.iter().all(|c| c.holds(final_phone));
    let mut truth = Vec::new();
    let (mut correct_decisions, mut reflections, mut reflections_right) = (0usize, 0usize, 0usize);
    for step in &run.steps {
        let label = match &step.executed {
            Ok(Operation::Stop) => {
                let done = task.success.iter().all(|c| c.holds(&phone));
                if done {
                    correct_decisions += 1;
                }
                '-'
            }
            Ok(op) => {
                let before = state_key(&phone);
                let elements = merge_text_lines(&from_ui_dump(&phone.ui_dump_xml()));
                let _ = execute(&mut phone, op, &elements);
                if state_key(&phone) == before {
                    'C'
                } else if !path.contains(phone.current.as_str()) {
                    'B'
                } else {
                    'A'
                }
            }
            Err(_) => 'C',
        };
        if label == 'A' {
            correct_decisions += 1;
        }
        if let Some(verdict) = step.reflection {
            reflections += 1;
            reflections_right += usize::from(verdict == label);
            if verdict == 'B' {
                phone.apply_back();
            }
        }
        truth.push(label);
    }
    let a_steps = truth.iter().filter(|&&l| l == 'A').count();
    let steps = run.steps.len();
    TaskScore {
        task: task.name.clone(),
        success,
        steps,
        cr: (a_steps as f64 / task.human_steps.max(1) as f64).min(1.0),
        da: correct_decisions as f64 / steps.max(1) as f64,
        ra: (reflections > 0).then(|| reflections_right as f64 / reflections as f64),
        truth,
    }
}

/// The suite's summary: SR and the means of CR, DA and RA.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub tasks: usize,
    pub sr: f64,
    pub cr: f64,
    pub da: f64,
    pub ra: Option<f64>,
    pub scores: Vec<TaskScore>,
}

pub fn summarize(scores: Vec<TaskScore>) -> SuiteReport {
    let n = scores.len().max(1) as f64;
    let mean = |f: &dyn Fn(&TaskScore) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let ras: Vec<f64> = scores.iter().filter_map(|s| s.ra).collect();
    SuiteReport {
        tasks: scores.len(),
        sr: mean(&|s| f64::from(u8::from(s.success))),
        cr: mean(&|s| s.cr),
        da: mean(&|s| s.da),
        ra: (!ras.is_empty()).then(|| ras.iter().sum::<f64>() / ras.len() as f64),
        scores,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A per-step HTML timeline of a run: screenshot, thought, action, reflection and truth.
pub fn timeline_html(run: &MobileRun, score: Option<&TaskScore>) -> String {
    let mut html = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>{}</title><style>body{{font-family:sans-serif}}\
         .step{{display:flex;gap:1em;border-bottom:1px solid #ccc;padding:.5em}}img{{width:180px}}</style>\
         <h1>{}</h1><p>stop: {:?}; progress: {}</p>",
        escape(&run.instruction),
        escape(&run.instruction),
        run.stop,
        escape(&run.progress)
    );
    for (i, s) in run.steps.iter().enumerate() {
        let image = s.screenshot.as_deref().map_or(String::new(), |p| {
            let name = std::path::Path::new(p)
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            format!("<img src=\"{}\">", escape(&name))
        });
        let truth = score
            .and_then(|sc| sc.truth.get(i))
            .map_or(String::new(), |t| format!("; truth {t}"));
        html.push_str(&format!(
            "<div class=\"step\">{image}<div><b>Step {}</b><br>Thought: {}<br>Action: {}<br>Result: {}<br>Reflection: {}{truth}<br>Memory: {}</div></div>",
            s.step,
            escape(&s.thought),
            escape(&s.action),
            escape(&match &s.executed {
                Ok(op) => format!("{op:?}"),
                Err(e) => format!("error: {e}"),
            }),
            s.reflection.map_or("-".to_string(), |c| c.to_string()),
            escape(s.memory.as_deref().unwrap_or("-")),
        ));
    }
    html
}
