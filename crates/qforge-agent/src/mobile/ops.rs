//! Mobile-Agent-v2's operation space and how the decision agent's `### Action ###` is read
//! (Mobile-Agent-v2, arXiv 2406.01014): substring tests in the order Open app, Tap, Swipe, Type,
//! Back, Home, Stop; arguments from the last parentheses. Where the released parser crashes (a
//! float coordinate, a malformed pair) this one rounds the float or returns a typed error the
//! loop logs and shows the model.

use serde::Serialize;

/// One action on the phone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Tap the app's icon (found by its label on screen).
    OpenApp {
        name: String,
    },
    Tap {
        x: i64,
        y: i64,
    },
    Swipe {
        from: (i64, i64),
        to: (i64, i64),
    },
    Type {
        text: String,
    },
    Back,
    Home,
    Stop,
}

/// Why an action could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "no known operation in `{0}` (expected Open app, Tap, Swipe, Type, Back, Home or Stop)"
    )]
    Unknown(String),
    #[error("cannot read coordinates from `{0}`")]
    Coordinates(String),
    #[error("no argument in parentheses in `{0}`")]
    Missing(String),
}

/// The text inside the last `( … )`, as `split("(")[-1].split(")")[0]` reads it.
fn last_parenthesised(action: &str) -> Option<&str> {
    let open = action.rfind('(')?;
    let rest = &action[open + 1..];
    Some(rest.split(')').next().unwrap_or(rest))
}

fn number(text: &str, action: &str) -> Result<i64, ParseError> {
    let t = text.trim().trim_matches(|c| c == '[' || c == ']');
    t.parse::<i64>()
        .or_else(|_| t.parse::<f64>().map(|f| f.round() as i64))
        .map_err(|_| ParseError::Coordinates(action.to_string()))
}

fn pair(text: &str, action: &str) -> Result<(i64, i64), ParseError> {
    let mut parts = text.split(',');
    let (Some(x), Some(y), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ParseError::Coordinates(action.to_string()));
    };
    Ok((number(x, action)?, number(y, action)?))
}

/// Reads an action line.
pub fn parse_action(action: &str) -> Result<Operation, ParseError> {
    let missing = || ParseError::Missing(action.to_string());
    if action.contains("Open app") {
        let name = last_parenthesised(action).ok_or_else(missing)?.trim();
        if name.is_empty() {
            return Err(missing());
        }
        return Ok(Operation::OpenApp {
            name: name.to_string(),
        });
    }
    if action.contains("Tap") {
        let (x, y) = pair(last_parenthesised(action).ok_or_else(missing)?, action)?;
        return Ok(Operation::Tap { x, y });
    }
    if action.contains("Swipe") {
        let after = action.rsplit("Swipe (").next().ok_or_else(missing)?;
        let mut halves = after.split("), (");
        let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
            return Err(ParseError::Coordinates(action.to_string()));
        };
        let b = b.split(')').next().unwrap_or(b);
        return Ok(Operation::Swipe {
            from: pair(a, action)?,
            to: pair(b, action)?,
        });
    }
    if action.contains("Type") {
        // `Type (text)` copied from the prompt's template: the text is the last quoted string.
        let text = if action.contains("(text)") {
            action
                .rsplit(" \"")
                .next()
                .and_then(|t| t.split('"').next())
                .ok_or_else(missing)?
        } else {
            last_parenthesised(action).ok_or_else(missing)?
        };
        return Ok(Operation::Type {
            text: text.to_string(),
        });
    }
    if action.contains("Back") {
        return Ok(Operation::Back);
    }
    if action.contains("Home") {
        return Ok(Operation::Home);
    }
    if action.contains("Stop") {
        return Ok(Operation::Stop);
    }
    Err(ParseError::Unknown(action.to_string()))
}

impl Operation {
    /// Coordinates inside a `width` × `height` screen, or an error naming the bad point.
    pub fn check_on_screen(&self, width: i64, height: i64) -> Result<(), String> {
        let inside = |(x, y): (i64, i64)| (0..width).contains(&x) && (0..height).contains(&y);
        let points: Vec<(i64, i64)> = match self {
            Operation::Tap { x, y } => vec![(*x, *y)],
            Operation::Swipe { from, to } => vec![*from, *to],
            _ => Vec::new(),
        };
        match points.into_iter().find(|p| !inside(*p)) {
            Some((x, y)) => Err(format!("({x}, {y}) is off the {width}x{height} screen")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_in_the_released_order() {
        assert_eq!(
            parse_action("Open app (Settings)"),
            Ok(Operation::OpenApp {
                name: "Settings".into()
            })
        );
        assert_eq!(
            parse_action("Tap (540, 1200)"),
            Ok(Operation::Tap { x: 540, y: 1200 })
        );
        assert_eq!(
            parse_action("Swipe (540, 1800), (540, 600)"),
            Ok(Operation::Swipe {
                from: (540, 1800),
                to: (540, 600)
            })
        );
        assert_eq!(
            parse_action("Type (hello world)"),
            Ok(Operation::Type {
                text: "hello world".into()
            })
        );
        assert_eq!(
            parse_action("Type (text) \"京都 weather\""),
            Ok(Operation::Type {
                text: "京都 weather".into()
            })
        );
        assert_eq!(parse_action("Back"), Ok(Operation::Back));
        assert_eq!(parse_action("Home"), Ok(Operation::Home));
        assert_eq!(parse_action("Stop"), Ok(Operation::Stop));
        // "Open app" is tested before "Tap": an action naming both opens the app.
        assert_eq!(
            parse_action("Open app (Tap Tap)"),
            Ok(Operation::OpenApp {
                name: "Tap Tap".into()
            })
        );
    }

    #[test]
    fn what_crashes_the_released_parser_is_rounded_or_a_typed_error() {
        assert_eq!(
            parse_action("Tap (540.6, 99.2)"),
            Ok(Operation::Tap { x: 541, y: 99 })
        );
        assert!(matches!(
            parse_action("Tap (here)"),
            Err(ParseError::Coordinates(_))
        ));
        assert!(matches!(parse_action("Tap"), Err(ParseError::Missing(_))));
        assert!(matches!(
            parse_action("Swipe (1, 2)"),
            Err(ParseError::Coordinates(_))
        ));
        assert!(matches!(parse_action("Dance"), Err(ParseError::Unknown(_))));
        assert_eq!(
            Operation::Tap { x: 2000, y: 5 }.check_on_screen(1080, 2400),
            Err("(2000, 5) is off the 1080x2400 screen".into())
        );
        assert!(Operation::Home.check_on_screen(1080, 2400).is_ok());
    }
}
