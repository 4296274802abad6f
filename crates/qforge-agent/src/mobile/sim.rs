//! A simulated Android phone (a stand-in: no emulator image can be had here), clearly a
//! simulator: apps are state machines of screens whose elements have boxes, texts or icon
//! descriptions, and tap targets; input fields take typed text while the soft keyboard is up.
//! It renders screenshots (PNG) and `uiautomator dump` XML, answers `dumpsys input_method`,
//! and implements [`Device`] in process. `qforge-sim-adb` (a binary of this crate) serves the same
//! phone behind adb's command line, keeping its state in a JSON file, so the real adb code path
//! runs against it.
//!
//! Android behaviours kept: Back closes the keyboard before leaving a screen; Home clears the
//! back stack; the home screen shows app icons with their labels *below* them, and only the icon
//! opens the app (which is why Mobile-Agent-v2 taps above the label it finds).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::adb::{Device, DeviceError};

/// What tapping an element does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum OnTap {
    /// Open a screen (pushing the current one on the back stack).
    Goto { screen: String },
    /// Focus an input field (the keyboard comes up).
    Focus { field: String },
    /// Set a flag (a setting switched, a message sent): what tasks are checked against.
    Set { flag: String },
}

/// One element of a screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimElement {
    /// Visible text; empty for an icon.
    #[serde(default)]
    pub text: String,
    /// An icon's description (its accessibility label).
    #[serde(default)]
    pub icon: String,
    /// Left, top, right, bottom.
    pub bbox: [i64; 4],
    #[serde(default)]
    pub on_tap: Option<OnTap>,
    /// Shows this field's current value instead of `text` when the field is not empty.
    #[serde(default)]
    pub shows_field: Option<String>,
    /// (flag, label): once the flag is set the element reads `label` (a switch showing "on").
    #[serde(default)]
    pub when_set: Option<(String, String)>,
}

/// A screen: its elements, and where Enter goes (a search box submitting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimScreen {
    pub elements: Vec<SimElement>,
    #[serde(default)]
    pub on_enter: Option<String>,
}

/// The phone: screens by name ("home" is the launcher), and the state the agent changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimPhone {
    pub width: i64,
    pub height: i64,
    pub screens: BTreeMap<String, SimScreen>,
    pub current: String,
    #[serde(default)]
    pub back_stack: Vec<String>,
    #[serde(default)]
    pub focused: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub flags: Vec<String>,
    /// False: every command fails as if the cable were pulled.
    #[serde(default = "connected")]
    pub connected: bool,
    /// Every operation applied, in order (for audits and metrics).
    #[serde(default)]
    pub log: Vec<String>,
}

fn connected() -> bool {
    true
}

/// The label the ADB Keyboard IME shows at the bottom of the screen while it is up.
pub const KEYBOARD_LABEL: &str = "ADB Keyboard {ON}";

impl SimPhone {
    /// The elements on screen now, the keyboard's label included while it is up, with field
    /// values shown.
    pub fn visible(&self) -> Vec<SimElement> {
        let mut out: Vec<SimElement> = self
            .screens
            .get(&self.current)
            .map(|s| s.elements.clone())
            .unwrap_or_default();
        for e in &mut out {
            if let Some(value) = e
                .shows_field
                .as_ref()
                .and_then(|f| self.fields.get(f))
                .filter(|v| !v.is_empty())
            {
                e.text = value.clone();
            }
            if let Some((_, label)) = e.when_set.as_ref().filter(|(f, _)| self.flags.contains(f)) {
                let label = label.clone();
                if e.text.is_empty() {
                    e.icon = label;
                } else {
                    e.text = label;
                }
            }
        }
        if self.focused.is_some() {
            let h = self.height;
            out.push(SimElement {
                text: KEYBOARD_LABEL.into(),
                icon: String::new(),
                bbox: [0, h - h / 20, self.width, h],
                on_tap: None,
                shows_field: None,
                when_set: None,
            });
        }
        out
    }

    fn check_connected(&self) -> Result<(), DeviceError> {
        if self.connected {
            Ok(())
        } else {
            Err(DeviceError::Disconnected(
                "error: no devices/emulators found".into(),
            ))
        }
    }

    fn go(&mut self, screen: &str) {
        if self.screens.contains_key(screen) {
            let previous = std::mem::replace(&mut self.current, screen.to_string());
            self.back_stack.push(previous);
            self.focused = None;
        }
    }

    /// A tap: the topmost (last) element containing the point acts; elsewhere nothing happens.
    pub fn apply_tap(&mut self, x: i64, y: i64) {
        self.log.push(format!("tap {x} {y}"));
        let hit = self
            .visible()
            .into_iter()
            .rev()
            .find(|e| x >= e.bbox[0] && x < e.bbox[2] && y >= e.bbox[1] && y < e.bbox[3]);
        match hit.and_then(|e| e.on_tap) {
            Some(OnTap::Goto { screen }) => self.go(&screen),
            Some(OnTap::Focus { field }) => {
                self.fields.entry(field.clone()).or_default();
                self.focused = Some(field);
            }
            Some(OnTap::Set { flag }) if !self.flags.contains(&flag) => self.flags.push(flag),
            Some(OnTap::Set { .. }) | None => {}
        }
    }

    /// Typed text goes into the focused field; without one it is lost (as on a phone).
    pub fn apply_text(&mut self, text: &str) {
        self.log.push(format!("text {text}"));
        if let Some(f) = &self.focused {
            self.fields.entry(f.clone()).or_default().push_str(text);
        }
    }

    pub fn apply_enter(&mut self) {
        self.log.push("enter".into());
        let target = self
            .screens
            .get(&self.current)
            .and_then(|s| s.on_enter.clone());
        if let (Some(_), Some(t)) = (&self.focused, target) {
            self.go(&t);
        }
    }

    pub fn apply_back(&mut self) {
        self.log.push("back".into());
        if self.focused.take().is_some() {
            return;
        }
        if let Some(previous) = self.back_stack.pop() {
            self.current = previous;
        }
    }

    pub fn apply_home(&mut self) {
        self.log.push("home".into());
        self.current = "home".into();
        self.back_stack.clear();
        self.focused = None;
    }

    /// `uiautomator dump` XML of the visible elements.
    pub fn ui_dump_xml(&self) -> String {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('"', "&quot;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut xml = format!(
            "<?xml version='1.0' encoding='UTF-8' standalone='yes' ?><hierarchy rotation=\"0\">\
             <node index=\"0\" text=\"\" class=\"android.widget.FrameLayout\" content-desc=\"\" \
             bounds=\"[0,0][{},{}]\">",
            self.width, self.height
        );
        for (i, e) in self.visible().iter().enumerate() {
            let [l, t, r, b] = e.bbox;
            xml.push_str(&format!(
                "<node index=\"{}\" text=\"{}\" class=\"{}\" content-desc=\"{}\" clickable=\"{}\" bounds=\"[{l},{t}][{r},{b}]\" />",
                i + 1,
                escape(&e.text),
                if e.text.is_empty() { "android.widget.ImageView" } else { "android.widget.TextView" },
                escape(&e.icon),
                e.on_tap.is_some()
            ));
        }
        xml.push_str("</node></hierarchy>");
        xml
    }

    /// A screenshot: white screen, grey boxes for texts, blue for icons, the keyboard as a dark
    /// band. (Texts are not drawn: in tests perception reads the accessibility tree; a vision
    /// model sees the layout.)
    pub fn screenshot_png(&self) -> Vec<u8> {
        let (w, h) = (self.width.max(1) as usize, self.height.max(1) as usize);
        let mut pixels = vec![255u8; w * h * 3];
        for e in self.visible() {
            let colour: [u8; 3] = if e.text == KEYBOARD_LABEL {
                [60, 60, 60]
            } else if e.text.is_empty() {
                [70, 130, 220]
            } else {
                [200, 200, 200]
            };
            let [l, t, r, b] = e.bbox.map(|v| v.max(0) as usize);
            for y in t.min(h)..b.min(h) {
                for x in l.min(w)..r.min(w) {
                    pixels[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
                }
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w as u32, h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("PNG header to memory");
        writer
            .write_image_data(&pixels)
            .expect("PNG data to memory");
        drop(writer);
        out
    }
}

impl Device for SimPhone {
    fn screenshot(&mut self) -> Result<Vec<u8>, DeviceError> {
        self.check_connected()?;
        Ok(self.screenshot_png())
    }

    fn tap(&mut self, x: i64, y: i64) -> Result<(), DeviceError> {
        self.check_connected()?;
        self.apply_tap(x, y);
        Ok(())
    }

    fn swipe(&mut self, from: (i64, i64), to: (i64, i64)) -> Result<(), DeviceError> {
        self.check_connected()?;
        self.log
            .push(format!("swipe {} {} {} {}", from.0, from.1, to.0, to.1));
        Ok(())
    }

    fn type_text(&mut self, text: &str) -> Result<(), DeviceError> {
        self.check_connected()?;
        // The same per-character path adb takes: newlines and `_` are Enter.
        for c in super::adb::keystrokes(text).chars() {
            if c == '_' {
                self.apply_enter();
            } else {
                self.apply_text(&c.to_string());
            }
        }
        Ok(())
    }

    fn back(&mut self) -> Result<(), DeviceError> {
        self.check_connected()?;
        self.apply_back();
        Ok(())
    }

    fn home(&mut self) -> Result<(), DeviceError> {
        self.check_connected()?;
        self.apply_home();
        Ok(())
    }

    fn keyboard_shown(&mut self) -> Result<bool, DeviceError> {
        self.check_connected()?;
        Ok(self.focused.is_some())
    }

    fn ui_dump(&mut self) -> Result<String, DeviceError> {
        self.check_connected()?;
        Ok(self.ui_dump_xml())
    }

    fn current_ime(&mut self) -> Result<String, DeviceError> {
        self.check_connected()?;
        Ok(super::adb::ADB_KEYBOARD_IME.into())
    }
}

/// Applies one adb command line (after `-s SERIAL`) to the phone, as `qforge-sim-adb` does;
/// returns stdout, or an error message (stderr) for a command the simulator does not know.
/// Files the real adb would pull are written at the local path.
pub fn apply_adb(phone: &mut SimPhone, argv: &[String]) -> Result<String, String> {
    if !phone.connected {
        return Err("error: no devices/emulators found".into());
    }
    let a: Vec<&str> = argv.iter().map(String::as_str).collect();
    let unquote = |s: &str| s.trim_matches('"').to_string();
    match a.as_slice() {
        ["shell", "input", "tap", x, y] => {
            let (x, y) = (
                x.parse().map_err(|_| "bad x")?,
                y.parse().map_err(|_| "bad y")?,
            );
            phone.apply_tap(x, y);
        }
        ["shell", "input", "swipe", x1, y1, x2, y2, _ms] => {
            phone.log.push(format!("swipe {x1} {y1} {x2} {y2}"));
        }
        ["shell", "input", "text", t] => {
            let t = if *t == "%s" {
                " ".to_string()
            } else {
                unquote(t)
            };
            phone.apply_text(&t);
        }
        ["shell", "input", "keyevent", "4"] => phone.apply_back(),
        ["shell", "input", "keyevent", "66"] => phone.apply_enter(),
        [
            "shell",
            "am",
            "start",
            "-a",
            "android.intent.action.MAIN",
            "-c",
            "android.intent.category.HOME",
        ] => phone.apply_home(),
        [
            "shell",
            "am",
            "broadcast",
            "-a",
            "ADB_INPUT_TEXT",
            "--es",
            "msg",
            t,
        ] => {
            // The ADB Keyboard receives the broadcast only while it is the active keyboard.
            if phone.focused.is_some() {
                phone.apply_text(&unquote(t));
            }
        }
        ["shell", "rm", _]
        | ["shell", "screencap", "-p", _]
        | ["shell", "uiautomator", "dump", _] => {}
        ["shell", "settings", "get", "secure", "default_input_method"] => {
            return Ok(format!("{}\n", super::adb::ADB_KEYBOARD_IME));
        }
        ["shell", "dumpsys", "input_method"] => {
            return Ok(format!("  mInputShown={}\n", phone.focused.is_some()));
        }
        ["pull", remote, local] => {
            let bytes = if remote.ends_with(".png") {
                phone.screenshot_png()
            } else if remote.ends_with(".xml") {
                phone.ui_dump_xml().into_bytes()
            } else {
                return Err(format!(
                    "adb: error: remote object '{remote}' does not exist"
                ));
            };
            std::fs::write(local, bytes).map_err(|e| format!("adb: error: {local}: {e}"))?;
        }
        _ => {
            return Err(format!(
                "qforge-sim-adb: unsupported command: {}",
                argv.join(" ")
            ));
        }
    }
    Ok(String::new())
}

fn text(t: &str, bbox: [i64; 4], on_tap: Option<OnTap>) -> SimElement {
    SimElement {
        text: t.into(),
        icon: String::new(),
        bbox,
        on_tap,
        shows_field: None,
        when_set: None,
    }
}

fn icon(desc: &str, bbox: [i64; 4], on_tap: Option<OnTap>) -> SimElement {
    SimElement {
        text: String::new(),
        icon: desc.into(),
        bbox,
        on_tap,
        shows_field: None,
        when_set: None,
    }
}

fn goto(screen: &str) -> Option<OnTap> {
    Some(OnTap::Goto {
        screen: screen.into(),
    })
}

/// A small phone (1080×2400) for tests and demos: a launcher with Settings and Browser; in
/// Settings a Wi-Fi page with a switch (flag `wifi_on`); in Browser a search box (field
/// `query`) whose Enter opens a results page showing the query.
pub fn demo_phone() -> SimPhone {
    let mut screens = BTreeMap::new();
    screens.insert(
        "home".into(),
        SimScreen {
            elements: vec![
                icon(
                    "Settings app icon",
                    [100, 1800, 300, 2000],
                    goto("settings"),
                ),
                text("Settings", [100, 2010, 300, 2060], None),
                icon("Browser app icon", [400, 1800, 600, 2000], goto("browser")),
                text("Browser", [400, 2010, 600, 2060], None),
            ],
            on_enter: None,
        },
    );
    screens.insert(
        "settings".into(),
        SimScreen {
            elements: vec![
                text("Settings", [40, 120, 400, 200], None),
                text("Wi-Fi", [40, 300, 1040, 380], goto("wifi")),
                text("Bluetooth", [40, 420, 1040, 500], goto("bluetooth")),
                text("Display", [40, 540, 1040, 620], None),
            ],
            on_enter: None,
        },
    );
    screens.insert(
        "wifi".into(),
        SimScreen {
            elements: vec![
                text("Wi-Fi", [40, 120, 400, 200], None),
                text("Use Wi-Fi", [40, 300, 800, 380], None),
                SimElement {
                    when_set: Some(("wifi_on".into(), "Wi-Fi switch, on".into())),
                    ..icon(
                        "Wi-Fi switch",
                        [860, 300, 1040, 380],
                        Some(OnTap::Set {
                            flag: "wifi_on".into(),
                        }),
                    )
                },
            ],
            on_enter: None,
        },
    );
    screens.insert(
        "bluetooth".into(),
        SimScreen {
            elements: vec![
                text("Bluetooth", [40, 120, 400, 200], None),
                text("Pair new device", [40, 300, 1040, 380], None),
            ],
            on_enter: None,
        },
    );
    screens.insert(
        "browser".into(),
        SimScreen {
            elements: vec![
                // An icon without an accessibility label (for a captioning model).
                icon("", [960, 40, 1040, 120], None),
                SimElement {
                    text: "Search or type URL".into(),
                    icon: String::new(),
                    bbox: [40, 150, 1040, 250],
                    on_tap: Some(OnTap::Focus {
                        field: "query".into(),
                    }),
                    shows_field: Some("query".into()),
                    when_set: None,
                },
            ],
            on_enter: Some("results".into()),
        },
    );
    screens.insert(
        "results".into(),
        SimScreen {
            elements: vec![
                SimElement {
                    text: String::new(),
                    icon: String::new(),
                    bbox: [40, 150, 1040, 250],
                    on_tap: None,
                    shows_field: Some("query".into()),
                    when_set: None,
                },
                text("Results", [40, 300, 400, 380], None),
            ],
            on_enter: None,
        },
    );
    SimPhone {
        width: 1080,
        height: 2400,
        screens,
        current: "home".into(),
        back_stack: Vec::new(),
        focused: None,
        fields: BTreeMap::new(),
        flags: Vec::new(),
        connected: true,
        log: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phone_behaves_like_android() {
        let mut p = demo_phone();
        // The label under an icon does nothing; the icon opens the app.
        p.apply_tap(200, 2030);
        assert_eq!(p.current, "home");
        p.apply_tap(200, 1900);
        assert_eq!(p.current, "settings");
        p.apply_tap(500, 340);
        p.apply_tap(950, 340);
        assert_eq!(
            (p.current.as_str(), p.flags.as_slice()),
            ("wifi", &["wifi_on".to_string()][..])
        );
        p.apply_back();
        assert_eq!(p.current, "settings");
        p.apply_home();
        assert!(p.back_stack.is_empty());
        // Typing needs a focused field; the keyboard's label shows while it is up; Back first
        // closes the keyboard.
        p.apply_tap(500, 1900);
        p.apply_text("lost");
        p.apply_tap(500, 200);
        assert!(p.ui_dump_xml().contains(KEYBOARD_LABEL));
        p.apply_text("kyoto");
        p.apply_back();
        assert_eq!(
            (p.current.as_str(), p.focused.as_deref()),
            ("browser", None)
        );
        p.apply_tap(500, 200);
        p.apply_enter();
        assert_eq!(p.current, "results");
        assert!(p.ui_dump_xml().contains("text=\"kyoto\""));
        let png = p.screenshot_png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
