//! HTML to readable text for the `visit` tool: scripts, styles and comments dropped, block
//! elements on their own lines, headings as `#` lines, list items as `- ` lines, entities
//! decoded, runs of blank space collapsed. Deliberately small: pages only need to be readable
//! by the summary model, not rendered.

/// Elements whose content is never text.
const SKIPPED: [&str; 6] = ["script", "style", "noscript", "svg", "template", "iframe"];

/// Elements that start a new line.
const BLOCKS: [&str; 22] = [
    "p",
    "div",
    "br",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "nav",
    "aside",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "blockquote",
    "pre",
    "form",
    "figure",
    "hr",
];

fn decode_entity(entity: &str) -> Option<char> {
    match entity {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        "mdash" => Some('—'),
        "ndash" => Some('–'),
        "hellip" => Some('…'),
        "copy" => Some('©'),
        _ => {
            let n = entity.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Decodes `&name;` and `&#N;` entities; unknown ones stay as written.
pub fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest[1..]
            .find(';')
            .filter(|&end| end <= 10)
            .and_then(|end| Some((decode_entity(&rest[1..1 + end])?, end + 2)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value of `name="…"` among a tag's attributes (`attrs`: the text after the tag name).
pub fn attribute<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    // A space in front, so the first attribute matches like the others.
    let start = format!(" {attrs}").find(&key)? + key.len() - 1;
    let value = &attrs[start..];
    Some(&value[..value.find('"')?])
}

/// The lowercase name of the tag starting `tag` (after `<` and an optional `/`).
fn tag_name(tag: &str) -> String {
    tag.trim_start_matches('/')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Readable text of an HTML page.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..open]));
        rest = &rest[open..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        // `<` not followed by a tag name is text (`3 < 4`).
        if !rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!') {
            out.push('<');
            rest = &rest[1..];
            continue;
        }
        let Some(close) = rest.find('>') else {
            // A lone `<` in text.
            out.push_str(&decode_entities(rest));
            rest = "";
            break;
        };
        let tag = &rest[1..close];
        rest = &rest[close + 1..];
        let name = tag_name(tag);
        let closing = tag.starts_with('/');
        if !closing && SKIPPED.contains(&name.as_str()) {
            let end = format!("</{name}");
            let lower = rest.to_ascii_lowercase();
            rest = match lower.find(&end) {
                Some(at) => rest[at..].find('>').map_or("", |gt| &rest[at + gt + 1..]),
                None => "",
            };
            continue;
        }
        match name.as_str() {
            "li" if !closing => out.push_str("\n- "),
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "title" => {
                out.push('\n');
                if !closing {
                    out.push_str("# ");
                }
            }
            "td" | "th" if !closing => out.push(' '),
            n if BLOCKS.contains(&n) => out.push('\n'),
            _ => {}
        }
    }
    out.push_str(&decode_entities(rest));
    tidy(&out)
}

/// Collapses spaces within lines and keeps at most one blank line between paragraphs.
fn tidy(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let blank = line.is_empty() || line == "-" || line == "#";
        if blank {
            if lines.last().is_some_and(|l| !l.is_empty()) {
                lines.push(String::new());
            }
        } else {
            lines.push(line);
        }
    }
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_styles_and_comments_vanish_and_blocks_get_lines() {
        let html = "<html><head><title>Kyoto &amp; Nara</title><style>p{color:red}</style>\
            <script>var x = '<p>no</p>';</script></head><body><!-- hidden <b>x</b> -->\
            <h1>Kyoto</h1><p>Capital from <b>794</b>&nbsp;to 1868.</p><ul><li>Temples</li>\
            <li>Shrines &#x26; gardens&#33;</li></ul><table><tr><td>a</td><td>b</td></tr></table>\
            <SCRIPT type=x>bad()</SCRIPT>end &unknown; 3 < 4</body></html>";
        assert_eq!(
            html_to_text(html),
            "# Kyoto & Nara\n\n# Kyoto\n\nCapital from 794 to 1868.\n\n- Temples\n\
             - Shrines & gardens!\n\na b\n\nend &unknown; 3 < 4"
        );
    }

    #[test]
    fn entities_decode_and_broken_ones_stay() {
        assert_eq!(
            decode_entities("a &lt;b&gt; &#233; &#xE9; &amp"),
            "a <b> é é &amp"
        );
        assert_eq!(
            decode_entities("&#xFFFFFFFF; fish & chips"),
            "&#xFFFFFFFF; fish & chips"
        );
    }

    #[test]
    fn unterminated_markup_does_not_panic() {
        assert_eq!(html_to_text("<p>text<script>never closed"), "text");
        assert_eq!(html_to_text("x <!-- open"), "x");
        assert_eq!(html_to_text("ä <b"), "ä <b");
    }
}
