//! The few Python string and float behaviours MUSEG's reward code relies on, reproduced: the
//! rewards are defined by what `float()`, `str.split()` and `str(float)` do, edge cases included.

/// Python's `str.isspace()`: Rust's Unicode whitespace plus the four ASCII separators
/// `\x1c`–`\x1f`, which `str.split()` splits on and `split_whitespace` does not.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `s.split()`.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// The value of a Unicode decimal digit in the scripts a model plausibly writes (ASCII,
/// Arabic-Indic, extended Arabic-Indic, Devanagari, Bengali, fullwidth), which Python's
/// `float()` accepts. Digits of other scripts are treated as not numbers (a documented gap).
fn digit_value(c: char) -> Option<u32> {
    const ZEROS: [u32; 6] = [0x30, 0x660, 0x6F0, 0x966, 0x9E6, 0xFF10];
    let u = c as u32;
    ZEROS
        .iter()
        .find(|&&z| (z..z + 10).contains(&u))
        .map(|&z| u - z)
}

/// Python's `float(s)`: optional surrounding whitespace, a sign, digits with single underscores
/// between them, a fraction, an exponent, or `inf`/`infinity`/`nan` in any case. `None` where
/// Python raises `ValueError`.
pub fn py_float(s: &str) -> Option<f64> {
    let s = py_strip(s);
    let (sign, body) = match s.chars().next()? {
        '+' => ("", &s[1..]),
        '-' => ("-", &s[1..]),
        _ => ("", s),
    };
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity") {
        return Some(if sign == "-" {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    // Normalise to ASCII, checking Python's grammar: digitpart = digit (["_"] digit)*.
    let mut out = String::with_capacity(body.len() + 1);
    out.push_str(sign);
    let chars: Vec<char> = body.chars().collect();
    let (mut mantissa_digits, mut in_exponent, mut exponent_digits, mut seen_dot) =
        (0, false, 0, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(d) = digit_value(c) {
            out.push(char::from_digit(d, 10).expect("a decimal digit"));
            if in_exponent {
                exponent_digits += 1;
            } else {
                mantissa_digits += 1;
            }
        } else if c == '_' {
            let between = i > 0
                && digit_value(chars[i - 1]).is_some()
                && chars.get(i + 1).is_some_and(|&n| digit_value(n).is_some());
            if !between {
                return None;
            }
        } else if c == '.' && !seen_dot && !in_exponent {
            seen_dot = true;
            out.push('.');
        } else if (c == 'e' || c == 'E') && !in_exponent && mantissa_digits > 0 {
            in_exponent = true;
            out.push('e');
            if let Some(&n @ ('+' | '-')) = chars.get(i + 1) {
                out.push(n);
                i += 1;
            }
        } else {
            return None;
        }
        i += 1;
    }
    if mantissa_digits == 0 || (in_exponent && exponent_digits == 0) {
        return None;
    }
    out.parse().ok()
}

/// Python's `str(x)` (`repr`) of a float: the shortest digits that round-trip, in fixed notation
/// with at least one decimal for 1e-4 <= |x| < 1e16, else `d.ddde±XX`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: "d.ddde-X".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let text = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{text}")
    } else {
        let mantissa = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_parses_as_python() {
        for (s, v) in [
            ("1", 1.0),
            ("+1", 1.0),
            ("1.", 1.0),
            (".5", 0.5),
            ("1_0", 10.0),
            ("1e3", 1000.0),
            ("1E-2", 0.01),
            ("\u{661}", 1.0),
            ("\u{ff12}.5", 2.5),
            (" 2 ", 2.0),
        ] {
            assert_eq!(py_float(s), Some(v), "{s:?}");
        }
        assert_eq!(py_float("inf"), Some(f64::INFINITY));
        assert!(py_float("NaN").unwrap().is_nan());
        for bad in [
            "", ".", "1__0", "_1", "1_", "1..5", "1e", "e3", "foo", "1.0x", "--1", "1_.5",
        ] {
            assert_eq!(py_float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn repr_matches_python_str_of_float() {
        for (x, s) in [
            (3.0, "3.0"),
            (12.5, "12.5"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (2.5e16, "2.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (0.30000000000000004, "0.30000000000000004"),
        ] {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn split_counts_the_ascii_separators_as_space() {
        assert_eq!(
            py_split("a\x1cb  c\u{3000}d").collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
    }
}
