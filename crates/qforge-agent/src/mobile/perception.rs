//! What the decision agent is told is on screen (Mobile-Agent-v2, arXiv 2406.01014): elements
//! with a box and a text or an icon description, shown as `[cx, cy]; text: …` / `[cx, cy]; icon:
//! …` lines. Elements come from the accessibility tree (`uiautomator dump`) here; OCR lines go
//! through the released text-merge rule; the keyboard flag is the released "ADB Keyboard" label
//! test (or the device's own `keyboard_shown`).

use serde::Serialize;

use super::super::websailor::html::{attribute, decode_entities};

/// A box in screen pixels: left, top, right, bottom.
pub type BoundingBox = [i64; 4];

/// Whether an element was read as text or seen as an icon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Text,
    Icon,
}

/// One thing on screen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Element {
    pub kind: Kind,
    pub text: String,
    pub bbox: BoundingBox,
}

impl Element {
    pub fn centre(&self) -> (i64, i64) {
        (
            (self.bbox[0] + self.bbox[2]) / 2,
            (self.bbox[1] + self.bbox[3]) / 2,
        )
    }
}

fn parse_bounds(bounds: &str) -> Option<BoundingBox> {
    // "[x1,y1][x2,y2]"
    let numbers: Vec<i64> = bounds
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    (numbers.len() == 4).then(|| [numbers[0], numbers[1], numbers[2], numbers[3]])
}

/// Elements of a `uiautomator dump`: every node with a `text` becomes a text element; a node
/// with only a `content-desc` becomes an icon described by it; an image without either becomes
/// an icon with an empty description (for a captioning model to fill; the screen lines skip it
/// until then). Nodes without a box, or with an empty one, are left out.
pub fn from_ui_dump(xml: &str) -> Vec<Element> {
    let mut out = Vec::new();
    for node in xml.split("<node").skip(1) {
        let head = node.split('>').next().unwrap_or(node);
        let Some(bbox) = attribute(head, "bounds").and_then(parse_bounds) else {
            continue;
        };
        if bbox[2] <= bbox[0] || bbox[3] <= bbox[1] {
            continue;
        }
        let text = attribute(head, "text")
            .map(decode_entities)
            .unwrap_or_default();
        let desc = attribute(head, "content-desc")
            .map(decode_entities)
            .unwrap_or_default();
        if !text.trim().is_empty() {
            out.push(Element {
                kind: Kind::Text,
                text: text.trim().to_string(),
                bbox,
            });
        } else if !desc.trim().is_empty() {
            out.push(Element {
                kind: Kind::Icon,
                text: desc.trim().to_string(),
                bbox,
            });
        } else if attribute(head, "class").is_some_and(|c| c.contains("Image")) {
            out.push(Element {
                kind: Kind::Icon,
                text: String::new(),
                bbox,
            });
        }
    }
    out
}

/// The region `bbox` of a PNG screenshot, as a PNG; `None` when the bytes are not an 8-bit PNG
/// or the box is empty.
pub fn crop_png(png: &[u8], bbox: BoundingBox) -> Option<Vec<u8>> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).ok()?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Indexed => return None,
    };
    if info.bit_depth != png::BitDepth::Eight {
        return None;
    }
    let (w, h) = (i64::from(info.width), i64::from(info.height));
    let [l, t, r, b] = [
        bbox[0].clamp(0, w),
        bbox[1].clamp(0, h),
        bbox[2].clamp(0, w),
        bbox[3].clamp(0, h),
    ];
    if r <= l || b <= t {
        return None;
    }
    let mut pixels = Vec::with_capacity(((r - l) * (b - t)) as usize * channels);
    for y in t..b {
        let row = (y * w) as usize * channels;
        pixels.extend_from_slice(&buf[row + l as usize * channels..row + r as usize * channels]);
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, (r - l) as u32, (b - t) as u32);
    encoder.set_color(info.color_type);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().ok()?;
    writer.write_image_data(&pixels).ok()?;
    drop(writer);
    Some(out)
}

/// The released merge of OCR lines: sorted by (top, left), a line joins the block above it
/// when their left edges are within 10 px, its top is between 10 px above and 30 px below the
/// block's bottom, and their heights differ by less than 10 px; texts join with a newline and
/// boxes unite. Icons pass through.
pub fn merge_text_lines(elements: &[Element]) -> Vec<Element> {
    let (mut lines, icons): (Vec<Element>, Vec<Element>) =
        elements.iter().cloned().partition(|e| e.kind == Kind::Text);
    lines.sort_by_key(|e| (e.bbox[1], e.bbox[0]));
    let mut merged: Vec<Element> = Vec::new();
    let mut used = vec![false; lines.len()];
    for i in 0..lines.len() {
        if used[i] {
            continue;
        }
        used[i] = true;
        let mut block = lines[i].clone();
        // The anchor is the last line joined: heights compare line to line.
        let mut anchor = lines[i].bbox;
        for j in i + 1..lines.len() {
            if used[j] {
                continue;
            }
            let b = lines[j].bbox;
            let gap = b[1] - anchor[3];
            let height = |x: BoundingBox| x[3] - x[1];
            if (b[0] - anchor[0]).abs() < 10
                && (-10..30).contains(&gap)
                && (height(b) - height(anchor)).abs() < 10
            {
                used[j] = true;
                block.text = format!("{}\n{}", block.text, lines[j].text);
                block.bbox = [
                    block.bbox[0].min(b[0]),
                    block.bbox[1].min(b[1]),
                    block.bbox[2].max(b[2]),
                    block.bbox[3].max(b[3]),
                ];
                anchor = b;
            }
        }
        merged.push(block);
    }
    merged.extend(icons);
    merged
}

/// The released keyboard test: some text mentions "ADB Keyboard" in the bottom tenth.
pub fn keyboard_label_shown(elements: &[Element], height: i64) -> bool {
    elements.iter().any(|e| {
        e.kind == Kind::Text && e.text.contains("ADB Keyboard") && e.bbox[1] * 10 >= height * 9
    })
}

/// The decision prompt's screen lines: `[x, y]; text: …` / `[x, y]; icon: …`, empty texts and
/// "icon: None" left out.
pub fn screen_lines(elements: &[Element]) -> String {
    elements
        .iter()
        .filter(|e| !(e.text.trim().is_empty() || (e.kind == Kind::Icon && e.text == "None")))
        .map(|e| {
            let (x, y) = e.centre();
            let kind = match e.kind {
                Kind::Text => "text",
                Kind::Icon => "icon",
            };
            format!("[{x}, {y}]; {kind}: {}", e.text)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str, bbox: BoundingBox) -> Element {
        Element {
            kind: Kind::Text,
            text: t.into(),
            bbox,
        }
    }

    #[test]
    fn the_released_merge_example() {
        // "Wi-Fi" (y 200-240) + "Connected" (245-285) -> one block [100, 200, 300, 285].
        let merged = merge_text_lines(&[
            text("Connected", [100, 245, 300, 285]),
            text("Wi-Fi", [100, 200, 250, 240]),
            text("Bluetooth", [100, 400, 280, 440]),
            text("Far right", [500, 245, 700, 285]),
        ]);
        assert_eq!(merged[0], text("Wi-Fi\nConnected", [100, 200, 300, 285]));
        assert_eq!(merged.len(), 3);
        // A line much taller than the block does not join it.
        let merged = merge_text_lines(&[text("a", [0, 0, 50, 20]), text("b", [0, 25, 50, 80])]);
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn ui_dumps_become_elements_and_screen_lines() {
        let xml = r#"<?xml version='1.0' encoding='UTF-8'?><hierarchy rotation="0">
<node index="0" text="" class="android.widget.FrameLayout" content-desc="" bounds="[0,0][1080,2400]">
<node index="1" text="Wi-Fi &amp; network" class="android.widget.TextView" content-desc="" bounds="[100,200][500,260]" />
<node index="2" text="" class="android.widget.ImageView" content-desc="Search settings" bounds="[900,100][1000,200]" />
<node index="3" text="ADB Keyboard {ON}" class="android.widget.TextView" content-desc="" bounds="[0,2200][1080,2300]" />
<node index="4" text="broken" bounds="[5,5][5,5]" />
</node></hierarchy>"#;
        let elements = from_ui_dump(xml);
        assert_eq!(elements.len(), 3);
        assert_eq!(elements[1].kind, Kind::Icon);
        assert_eq!(
            screen_lines(&elements),
            "[300, 230]; text: Wi-Fi & network\n[950, 150]; icon: Search settings\n[540, 2250]; text: ADB Keyboard {ON}"
        );
        assert!(keyboard_label_shown(&elements, 2400));
        assert!(!keyboard_label_shown(&elements[..2], 2400));
    }
}
