//! The phone behind a `Device` trait, and its adb implementation with the released command
//! lines (Mobile-Agent-v2, arXiv 2406.01014, `MobileAgent/controller.py`). Commands are built as
//! argv vectors ([`AdbCommands`], pinned by golden tests) and run without a local shell, so what
//! the released code quoted for the phone's shell is quoted here as part of the argument.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// adb reports no device (unplugged, offline, unauthorised).
    #[error("the device is not connected: {0}")]
    Disconnected(String),
    #[error("`{argv}` failed: {message}")]
    Command { argv: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the agent needs from a phone.
pub trait Device: Send {
    /// The screen as PNG bytes.
    fn screenshot(&mut self) -> Result<Vec<u8>, DeviceError>;
    fn tap(&mut self, x: i64, y: i64) -> Result<(), DeviceError>;
    fn swipe(&mut self, from: (i64, i64), to: (i64, i64)) -> Result<(), DeviceError>;
    fn type_text(&mut self, text: &str) -> Result<(), DeviceError>;
    fn back(&mut self) -> Result<(), DeviceError>;
    fn home(&mut self) -> Result<(), DeviceError>;
    /// Whether a soft keyboard is on screen (`dumpsys input_method`'s `mInputShown`).
    fn keyboard_shown(&mut self) -> Result<bool, DeviceError>;
    /// The accessibility tree (`uiautomator dump`'s XML).
    fn ui_dump(&mut self) -> Result<String, DeviceError>;
    /// The active input method's id (the ADB Keyboard is `com.android.adbkeyboard/.AdbIME`;
    /// typing CJK needs it).
    fn current_ime(&mut self) -> Result<String, DeviceError>;
}

/// The ADB Keyboard's input-method id.
pub const ADB_KEYBOARD_IME: &str = "com.android.adbkeyboard/.AdbIME";

/// What typing sends, character by character: newlines (and a literal `\n`) become `_`, which
/// is sent as Enter (so is a real underscore, as released).
pub fn keystrokes(text: &str) -> String {
    text.replace("\\n", "_").replace('\n', "_")
}

/// The released command lines, as argv after the adb path (and `-s SERIAL`).
pub struct AdbCommands;

/// Characters the released code sends quoted (`input text "C"`), for the phone's shell.
const QUOTED: &str = "-.,!?@'°/:;()";

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

impl AdbCommands {
    pub const SCREENSHOT_ON_DEVICE: &'static str = "/sdcard/screenshot.png";
    pub const DUMP_ON_DEVICE: &'static str = "/sdcard/window_dump.xml";

    pub fn tap(x: i64, y: i64) -> Vec<String> {
        args(&["shell", "input", "tap", &x.to_string(), &y.to_string()])
    }

    pub fn swipe(from: (i64, i64), to: (i64, i64)) -> Vec<String> {
        args(&[
            "shell",
            "input",
            "swipe",
            &from.0.to_string(),
            &from.1.to_string(),
            &to.0.to_string(),
            &to.1.to_string(),
            "500",
        ])
    }

    pub fn back() -> Vec<String> {
        args(&["shell", "input", "keyevent", "4"])
    }

    pub fn home() -> Vec<String> {
        args(&[
            "shell",
            "am",
            "start",
            "-a",
            "android.intent.action.MAIN",
            "-c",
            "android.intent.category.HOME",
        ])
    }

    /// One command per character: newlines (and a literal `\n`) become `_` first, which is
    /// sent as Enter (keyevent 66; a real underscore too, as released); a space as `%s`;
    /// letters and digits as they are; the punctuation `-.,!?@'°/:;()` quoted; anything else
    /// (CJK, emoji) through the ADB Keyboard's broadcast.
    pub fn type_text(text: &str) -> Vec<Vec<String>> {
        keystrokes(text)
            .chars()
            .map(|c| match c {
                ' ' => args(&["shell", "input", "text", "%s"]),
                '_' => args(&["shell", "input", "keyevent", "66"]),
                c if c.is_ascii_alphanumeric() => args(&["shell", "input", "text", &c.to_string()]),
                c if QUOTED.contains(c) => args(&["shell", "input", "text", &format!("\"{c}\"")]),
                c => args(&[
                    "shell",
                    "am",
                    "broadcast",
                    "-a",
                    "ADB_INPUT_TEXT",
                    "--es",
                    "msg",
                    &format!("\"{c}\""),
                ]),
            })
            .collect()
    }

    /// Remove the old capture, capture, pull (the released sequence).
    pub fn screenshot(local: &Path) -> Vec<Vec<String>> {
        vec![
            args(&["shell", "rm", Self::SCREENSHOT_ON_DEVICE]),
            args(&["shell", "screencap", "-p", Self::SCREENSHOT_ON_DEVICE]),
            args(&["pull", Self::SCREENSHOT_ON_DEVICE, &local.to_string_lossy()]),
        ]
    }

    pub fn ui_dump(local: &Path) -> Vec<Vec<String>> {
        vec![
            args(&["shell", "uiautomator", "dump", Self::DUMP_ON_DEVICE]),
            args(&["pull", Self::DUMP_ON_DEVICE, &local.to_string_lossy()]),
        ]
    }

    pub fn input_method_state() -> Vec<String> {
        args(&["shell", "dumpsys", "input_method"])
    }

    pub fn current_ime() -> Vec<String> {
        args(&["shell", "settings", "get", "secure", "default_input_method"])
    }
}

/// A phone over adb (Debian's `adb`, or any executable speaking its command line).
pub struct AdbDevice {
    pub adb: PathBuf,
    pub serial: Option<String>,
    /// Where pulled files land.
    pub workdir: PathBuf,
    /// Pause between the screenshot commands (released: 0.5 s).
    pub settle: Duration,
    /// Extra environment for adb (`ADB_SERVER_SOCKET`, or a simulator's state file).
    pub env: Vec<(String, String)>,
}

impl AdbDevice {
    pub fn new(adb: impl Into<PathBuf>, workdir: impl Into<PathBuf>) -> Self {
        Self {
            adb: adb.into(),
            serial: None,
            workdir: workdir.into(),
            settle: Duration::from_millis(500),
            env: Vec::new(),
        }
    }

    /// Runs `adb [-s SERIAL] ARGS`; returns stdout.
    pub fn run(&self, argv: &[String]) -> Result<String, DeviceError> {
        let mut command = Command::new(&self.adb);
        if let Some(serial) = &self.serial {
            command.args(["-s", serial]);
        }
        command.args(argv);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let shown = format!("{} {}", self.adb.display(), argv.join(" "));
        let out = command.output().map_err(|e| DeviceError::Command {
            argv: shown.clone(),
            message: format!("cannot run adb: {e}"),
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let lower = stderr.to_ascii_lowercase();
        let disconnected = lower.contains("no devices")
            || lower.contains("device offline")
            || (lower.contains("device") && lower.contains("not found"));
        if disconnected {
            return Err(DeviceError::Disconnected(stderr));
        }
        if !out.status.success() {
            return Err(DeviceError::Command {
                argv: shown,
                message: if stderr.is_empty() {
                    format!("exit status {}", out.status)
                } else {
                    stderr
                },
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pull(&self, commands: Vec<Vec<String>>, local: &Path) -> Result<Vec<u8>, DeviceError> {
        let last = commands.len() - 1;
        for (i, argv) in commands.iter().enumerate() {
            match self.run(argv) {
                // Removing a capture that is not there yet is fine.
                Err(DeviceError::Command { .. })
                    if i == 0 && argv.get(1).is_some_and(|a| a == "rm") => {}
                other => {
                    other?;
                }
            }
            if i < last {
                std::thread::sleep(self.settle);
            }
        }
        std::fs::read(local).map_err(|source| DeviceError::Io {
            path: local.to_path_buf(),
            source,
        })
    }
}

impl Device for AdbDevice {
    fn screenshot(&mut self) -> Result<Vec<u8>, DeviceError> {
        let local = self.workdir.join("screenshot.png");
        self.pull(AdbCommands::screenshot(&local), &local)
    }

    fn tap(&mut self, x: i64, y: i64) -> Result<(), DeviceError> {
        self.run(&AdbCommands::tap(x, y)).map(drop)
    }

    fn swipe(&mut self, from: (i64, i64), to: (i64, i64)) -> Result<(), DeviceError> {
        self.run(&AdbCommands::swipe(from, to)).map(drop)
    }

    fn type_text(&mut self, text: &str) -> Result<(), DeviceError> {
        for argv in AdbCommands::type_text(text) {
            self.run(&argv)?;
        }
        Ok(())
    }

    fn back(&mut self) -> Result<(), DeviceError> {
        self.run(&AdbCommands::back()).map(drop)
    }

    fn home(&mut self) -> Result<(), DeviceError> {
        self.run(&AdbCommands::home()).map(drop)
    }

    fn keyboard_shown(&mut self) -> Result<bool, DeviceError> {
        let state = self.run(&AdbCommands::input_method_state())?;
        Ok(state.contains("mInputShown=true"))
    }

    fn current_ime(&mut self) -> Result<String, DeviceError> {
        Ok(self.run(&AdbCommands::current_ime())?.trim().to_string())
    }

    fn ui_dump(&mut self) -> Result<String, DeviceError> {
        let local = self.workdir.join("window_dump.xml");
        let bytes = self.pull(AdbCommands::ui_dump(&local), &local)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(argv: &[String]) -> String {
        argv.join(" ")
    }

    #[test]
    fn golden_command_lines() {
        assert_eq!(
            line(&AdbCommands::tap(540, 1200)),
            "shell input tap 540 1200"
        );
        assert_eq!(
            line(&AdbCommands::swipe((540, 1800), (540, 600))),
            "shell input swipe 540 1800 540 600 500"
        );
        assert_eq!(line(&AdbCommands::back()), "shell input keyevent 4");
        assert_eq!(
            line(&AdbCommands::current_ime()),
            "shell settings get secure default_input_method"
        );
        assert_eq!(
            line(&AdbCommands::input_method_state()),
            "shell dumpsys input_method"
        );
        assert_eq!(
            line(&AdbCommands::home()),
            "shell am start -a android.intent.action.MAIN -c android.intent.category.HOME"
        );
        let shot: Vec<String> = AdbCommands::screenshot(Path::new("/w/screenshot.png"))
            .iter()
            .map(|a| line(a))
            .collect();
        assert_eq!(
            shot,
            [
                "shell rm /sdcard/screenshot.png",
                "shell screencap -p /sdcard/screenshot.png",
                "pull /sdcard/screenshot.png /w/screenshot.png"
            ]
        );
    }

    #[test]
    fn typing_goes_one_character_at_a_time_by_the_released_rules() {
        let typed: Vec<String> = AdbCommands::type_text("Hi 5!\n京_")
            .iter()
            .map(|a| line(a))
            .collect();
        assert_eq!(
            typed,
            [
                "shell input text H",
                "shell input text i",
                "shell input text %s",
                "shell input text 5",
                "shell input text \"!\"",
                "shell input keyevent 66",
                "shell am broadcast -a ADB_INPUT_TEXT --es msg \"京\"",
                "shell input keyevent 66",
            ]
        );
        // A literal backslash-n is a newline too.
        assert_eq!(
            AdbCommands::type_text("a\\nb")[1],
            args(&["shell", "input", "keyevent", "66"])
        );
    }
}
