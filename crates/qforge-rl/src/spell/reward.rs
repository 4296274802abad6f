//! SPELL's rule rewards, as its released `verl/utils/reward_score/{docqa,long,docmath}.py` compute
//! them. They are not QwenLong-L1's: the answer is read without requiring a `</think>`, the
//! DocQA metric is `sub_em_strict` (gold inside prediction only), DocMath reads `\boxed{}` and
//! parenthesised numbers and scores an unparsable number as 999999999 instead of 0, and its
//! scale rule is the ×100/×1e3/×1e6/×1e9 list. Pinned by `tests/integration/spell.rs` against
//! fixtures made by calling those files (`tools/fixtures/gen_spell.py`).

use qforge_train::answers::{docmath_number_len, normalize_answer};

use super::SpellTask;

/// A rule score with what the verifier needs: the parsed prediction and gold (`None` when
/// either did not parse, as the released `pred`/`gt`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleScore {
    pub score: f64,
    pub pred: Option<String>,
    pub gold: Option<String>,
}

/// The ground truth string the responder is scored against (`reward_model.ground_truth`).
pub fn ground_truth_text(answer: &str) -> String {
    format!("The correct answer is {answer}")
}

/// Scores a responder's response against a ground truth written by [`ground_truth_text`].
pub fn rule_score(task: SpellTask, response: &str, ground_truth: &str) -> RuleScore {
    let (extract_tail, parse): (usize, fn(&str) -> Option<String>) = match task {
        SpellTask::DocGeneralQa => (1000, parse_docqa_answer),
        SpellTask::DocMc => (300, parse_choice),
        SpellTask::DocmathQa => (300, parse_docmath_answer),
    };
    let answer_text = extract_answer_text(response, extract_tail, task == SpellTask::DocmathQa);
    if answer_text.is_empty() {
        return RuleScore {
            score: 0.0,
            pred: None,
            gold: None,
        };
    }
    let pred = parse(&answer_text);
    let gold = parse(ground_truth);
    let score = match (&pred, &gold) {
        (Some(p), Some(g)) if !p.is_empty() && !g.is_empty() => match task {
            SpellTask::DocGeneralQa => f64::from(u8::from(sub_em_strict(p, g))),
            SpellTask::DocMc => f64::from(u8::from(p == g)),
            SpellTask::DocmathQa => f64::from(u8::from(docmath_accuracy(p, g))),
        },
        _ => 0.0,
    };
    RuleScore { score, pred, gold }
}

/// The released `extract_solution` of the reward files: after the last `</think>` when the
/// response thinks (an unclosed think block gives "Empty"), the whole response when it has a
/// `</think>` or "answer is" (DocMath also `\boxed{`), else its last `tail` characters.
pub fn extract_answer_text(response: &str, tail: usize, boxed_counts: bool) -> String {
    let after_last_think = |s: &str| s.rsplit("</think>").next().unwrap_or(s).trim().to_string();
    if response.contains("<think>") {
        if !response.contains("</think>") {
            return "Empty".into();
        }
        return after_last_think(response);
    }
    if response.contains("</think>")
        || response.contains("answer is")
        || (boxed_counts && response.contains("\\boxed{"))
    {
        return after_last_think(response);
    }
    let n = response.chars().count();
    response.chars().skip(n.saturating_sub(tail)).collect()
}

/// Python's `str.strip(chars)` for a set of characters.
fn strip_chars<'a>(s: &'a str, chars: &[char]) -> &'a str {
    s.trim_matches(|c| chars.contains(&c))
}

/// `docqa.parse_model_answer`: the text after the last occurrence of the first of "the answer
/// is", "correct answer is", "answer is" that appears, up to its first line; `None` for the
/// template's "(insert answer here)".
pub fn parse_docqa_answer(response: &str) -> Option<String> {
    let response = response
        .replace('*', "")
        .replace("<｜Assistant｜>", "")
        .replace("<｜end▁of▁sentence｜>", "");
    for pattern in ["the answer is", "correct answer is", "answer is"] {
        if let Some(at) = response.rfind(pattern) {
            let candidate = response[at + pattern.len()..].trim();
            let candidate = strip_chars(candidate, &['.']).trim();
            if candidate.contains("insert answer here") {
                return None;
            }
            let first_line = candidate.split('\n').next().unwrap_or("");
            return Some(strip_chars(first_line.trim(), &['.']).trim().to_string());
        }
    }
    None
}

/// `sub_em_strict`: the normalised gold is inside the normalised prediction, both non-empty.
pub fn sub_em_strict(prediction: &str, gold: &str) -> bool {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    !p.is_empty() && !g.is_empty() && p.contains(&g)
}

/// Every case-insensitive occurrence of `prefix` followed by one character in A–D (either
/// case), optionally parenthesised; returns the captured characters in order.
fn find_choice_captures(text: &str, prefix: &str, parenthesised: bool) -> Vec<char> {
    let lower = text.to_ascii_lowercase();
    let prefix = prefix.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find(&prefix) {
        let start = from + at + prefix.len();
        let rest = &text[start..];
        let mut chars = rest.chars();
        let hit = if parenthesised {
            match (chars.next(), chars.next(), chars.next()) {
                (Some('('), Some(c), Some(')'))
                    if ('A'..='D').contains(&c.to_ascii_uppercase()) =>
                {
                    Some((c, 3))
                }
                _ => None,
            }
        } else {
            chars
                .next()
                .filter(|c| ('A'..='D').contains(&c.to_ascii_uppercase()))
                .map(|c| (c, 1))
        };
        match hit {
            Some((c, len)) => {
                found.push(c);
                from = start + len;
            }
            None => from = start.max(from + at + 1),
        }
    }
    found
}

/// `long.parse_model_answer`: the letter of the last match of the first pattern that matches
/// (`\boxed{X}`, "correct answer is (X)", "correct answer is X", "answer is (X)", "answer is
/// X"; case-insensitive), `None` when that letter is lower-case.
pub fn parse_choice(response: &str) -> Option<String> {
    let text = response.replace('*', "");
    let text = text.trim();
    let patterns: [(&str, bool); 5] = [
        ("\\boxed{", false),
        ("correct answer is ", true),
        ("correct answer is ", false),
        ("answer is ", true),
        ("answer is ", false),
    ];
    for (i, (prefix, parenthesised)) in patterns.into_iter().enumerate() {
        let mut captures = find_choice_captures(text, prefix, parenthesised);
        if i == 0 {
            // `\boxed\{([A-D])\}` needs the closing brace right after the letter.
            captures.clear();
            let lower = text.to_ascii_lowercase();
            let mut from = 0;
            while let Some(at) = lower[from..].find("\\boxed{") {
                let start = from + at + "\\boxed{".len();
                let mut chars = text[start..].chars();
                if let (Some(c), Some('}')) = (chars.next(), chars.next())
                    && ('A'..='D').contains(&c.to_ascii_uppercase())
                {
                    captures.push(c);
                }
                from = start;
            }
        }
        if let Some(&last) = captures.last() {
            return ('A'..='D').contains(&last).then(|| last.to_string());
        }
    }
    None
}

/// `docmath.last_boxed_only_string` + `remove_boxed`: the content of the last `\boxed{…}` with
/// balanced braces.
fn last_boxed_content(s: &str) -> Option<&str> {
    let idx = s.rfind("\\boxed{")?;
    let mut depth = 0i32;
    for (i, c) in s[idx..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[idx + "\\boxed{".len()..idx + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// `docmath.parse_model_answer`: the last `\boxed{}` content if there is a `\boxed{`, else the
/// last number after the first matching of "the answer is (N)", "the answer is N", "answer is
/// (N)", "answer is N" (case-insensitive); commas removed, trailing periods dropped.
pub fn parse_docmath_answer(response: &str) -> Option<String> {
    let clean = |s: &str| s.replace(',', "").trim_end_matches('.').to_string();
    if response.contains("\\boxed{") {
        return last_boxed_content(response).map(clean);
    }
    let lower = response.to_ascii_lowercase();
    for (prefix, parenthesised) in [
        ("the answer is ", true),
        ("the answer is ", false),
        ("answer is ", true),
        ("answer is ", false),
    ] {
        let mut last = None;
        let mut from = 0;
        while let Some(at) = lower[from..].find(prefix) {
            let start = from + at + prefix.len();
            let rest = &response[start..];
            let hit = if parenthesised {
                rest.strip_prefix('(').and_then(|inner| {
                    let n = docmath_number_len(inner)?;
                    inner[n..]
                        .starts_with(')')
                        .then(|| (inner[..n].to_string(), n + 2))
                })
            } else {
                docmath_number_len(rest).map(|n| (rest[..n].to_string(), n))
            };
            match hit {
                Some((text, len)) => {
                    last = Some(text);
                    from = start + len;
                }
                None => from = start,
            }
        }
        if let Some(text) = last {
            return Some(clean(&text));
        }
    }
    None
}

/// A value as Python's `eval` returns it for the strings DocMath's `normalize` produces.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    Int(i128),
    Float(f64),
    Bool(bool),
    /// A string, tuple, list or anything else that is not a number.
    Other,
}

/// The value `normalize` gives when `eval` fails.
pub const UNPARSABLE: i128 = 999_999_999;

impl PyValue {
    fn number(&self) -> Option<f64> {
        match *self {
            PyValue::Int(i) => Some(i as f64),
            PyValue::Float(f) => Some(f),
            PyValue::Bool(b) => Some(f64::from(u8::from(b))),
            PyValue::Other => None,
        }
    }

    /// Python's `str()` of the value (for numbers and booleans).
    pub fn python_str(&self) -> String {
        match *self {
            PyValue::Int(i) => i.to_string(),
            PyValue::Float(f) => python_float_repr(f),
            PyValue::Bool(b) => if b { "True" } else { "False" }.into(),
            PyValue::Other => String::new(),
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("exponent");
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// `[\d,]*\.*\d+`, the whole string.
fn is_number_token(s: &str) -> bool {
    let t = s.trim_end_matches(|c: char| c.is_ascii_digit());
    if t.len() == s.len() {
        return false;
    }
    let t = t.trim_end_matches('.');
    t.chars().all(|c| c.is_ascii_digit() || c == ',')
}

/// `[-+]?(?:[\d,]*\.*\d+)`, the whole string.
fn is_signed_number_token(s: &str) -> bool {
    is_number_token(s.strip_prefix(['-', '+']).unwrap_or(s))
}

/// `^[-+]?(\d{1,3}(,\d{3})*|(\d+))(\.\d+)?$`.
fn is_plain_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int_part, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    if let Some(f) = frac
        && (f.is_empty() || !f.chars().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    if int_part.is_empty() {
        return false;
    }
    if int_part.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    let groups: Vec<&str> = int_part.split(',').collect();
    groups[0].len() <= 3
        && !groups[0].is_empty()
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// DocMath's `normalize`: strips currency words and symbols, keeps the part after `=`/`≈`,
/// reduces "5 apples", "Rs 5", "5kg", "~5" to the number, rewrites `10^k` and ` x `, then
/// evaluates as Python would (999999999 when that fails).
pub fn docmath_normalize(prediction: &str) -> PyValue {
    let mut p = prediction.trim().trim_end_matches('.').to_string();
    for money in [
        "£", "€", "¥", "million", "billion", "thousand", "US", "USD", "RMB",
    ] {
        p = p.replace(money, "");
    }
    for sep in ['=', '≈'] {
        if let Some(i) = p.rfind(sep) {
            p = p[i + sep.len_utf8()..].trim().to_string();
        }
    }
    p.retain(|c| !matches!(c, '`' | '%' | '$' | '°'));
    match p.as_str() {
        "true" | "yes" => p = "True".into(),
        "false" | "no" => p = "False".into(),
        _ => {}
    }
    if p.contains("True") {
        p = "True".into();
    } else if p.contains("False") {
        p = "False".into();
    }
    if p.contains("approximately") {
        p = p.replace("approximately", "").trim().to_string();
    }
    if let Some((first, _)) = p.split_once(" or ") {
        p = first.to_string();
    }
    // "5 apples" → "5"
    if let Some((n, rest)) = p.rsplit_once(' ')
        && is_signed_number_token(n)
        && !rest.is_empty()
        && !rest.chars().any(|c| c.is_ascii_digit() || c == ' ')
    {
        p = n.to_string();
    }
    // "Rs 5" → "5"
    if let Some((lead, n)) = p.split_once(' ')
        && !lead.is_empty()
        && !lead.chars().any(|c| c.is_ascii_digit())
        && is_signed_number_token(n)
    {
        p = n.to_string();
    }
    // "5kg" → "5": one or two trailing non-digits.
    {
        let body = p.trim_end_matches(|c: char| !c.is_ascii_digit());
        let tail = p[body.len()..].chars().count();
        if (1..=2).contains(&tail) && is_signed_number_token(body) {
            p = body.to_string();
        }
    }
    // "~5" → "5": one or two leading characters other than a sign or digit (greedy: two first).
    {
        let chars: Vec<(usize, char)> = p.char_indices().collect();
        for take in [2usize, 1] {
            if chars.len() > take
                && chars[..take]
                    .iter()
                    .all(|&(_, c)| !c.is_ascii_digit() && c != '-' && c != '+')
            {
                let rest = &p[chars[take].0..];
                if is_number_token(rest) {
                    p = rest.to_string();
                    break;
                }
            }
        }
    }
    if p.contains("10^") {
        p = rewrite_powers_of_ten(&p);
    }
    p = p.replace(" x ", "*").replace(" × ", "*");
    if is_plain_number(&p) {
        p = p.replace(',', "");
    }
    if ["(a)", "(b)", "(c)", "(d)"].iter().any(|o| p.contains(o)) {
        return PyValue::Other;
    }
    if p.is_empty() {
        return PyValue::Int(UNPARSABLE);
    }
    python_eval(&p).unwrap_or(PyValue::Int(UNPARSABLE))
}

/// `re.sub(r'10\^(-?\d+)', r'math.pow(10, \1)', s)`.
fn rewrite_powers_of_ten(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("10^") {
        let after = &rest[at + 3..];
        let neg = after.starts_with('-');
        let digits = after[usize::from(neg)..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        if digits == 0 {
            out.push_str(&rest[..at + 3]);
            rest = after;
            continue;
        }
        let exp_len = usize::from(neg) + digits;
        out.push_str(&rest[..at]);
        out.push_str(&format!("math.pow(10, {})", &after[..exp_len]));
        rest = &after[exp_len..];
    }
    out.push_str(rest);
    out
}

/// `eval` for the expressions `normalize` can leave: number literals, `True`/`False`, unary
/// signs, `+ - * / **`, parentheses and `math.pow(a, b)`. `None` where Python would raise;
/// `Other` for a tuple (`1,2`).
fn python_eval(s: &str) -> Option<PyValue> {
    let mut parser = Expr {
        s: s.as_bytes(),
        at: 0,
    };
    let v = parser.sum()?;
    parser.skip_space();
    if parser.at < parser.s.len() {
        // A top-level comma makes a tuple; anything else is a syntax error.
        if parser.s[parser.at] == b',' {
            return Some(PyValue::Other);
        }
        return None;
    }
    Some(v)
}

struct Expr<'a> {
    s: &'a [u8],
    at: usize,
}

impl Expr<'_> {
    fn skip_space(&mut self) {
        while self.at < self.s.len() && self.s[self.at] == b' ' {
            self.at += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.s[self.at..].starts_with(token.as_bytes()) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Option<PyValue> {
        let mut v = self.product()?;
        loop {
            if self.eat("+") {
                v = arith(&v, &self.product()?, |a, b| a.checked_add(b), |a, b| a + b)?;
            } else if self.eat("-") {
                v = arith(&v, &self.product()?, |a, b| a.checked_sub(b), |a, b| a - b)?;
            } else {
                return Some(v);
            }
        }
    }

    fn product(&mut self) -> Option<PyValue> {
        let mut v = self.unary()?;
        loop {
            self.skip_space();
            if self.s[self.at..].starts_with(b"**") {
                return Some(v);
            }
            if self.eat("*") {
                v = arith(&v, &self.unary()?, |a, b| a.checked_mul(b), |a, b| a * b)?;
            } else if self.eat("/") {
                let d = self.unary()?.number()?;
                if d == 0.0 {
                    return None;
                }
                v = PyValue::Float(v.number()? / d);
            } else {
                return Some(v);
            }
        }
    }

    fn unary(&mut self) -> Option<PyValue> {
        if self.eat("-") {
            let v = self.unary()?;
            return arith(&PyValue::Int(0), &v, |a, b| a.checked_sub(b), |a, b| a - b);
        }
        if self.eat("+") {
            let v = self.unary()?;
            return v.number().map(|_| match v {
                PyValue::Bool(b) => PyValue::Int(i128::from(b)),
                other => other,
            });
        }
        self.power()
    }

    fn power(&mut self) -> Option<PyValue> {
        let base = self.atom()?;
        if self.eat("**") {
            let exp = self.unary()?;
            return match (&base, &exp) {
                (PyValue::Int(b), PyValue::Int(e)) if *e >= 0 => u32::try_from(*e)
                    .ok()
                    .and_then(|e| b.checked_pow(e))
                    .map(PyValue::Int)
                    .or_else(|| Some(PyValue::Float((*b as f64).powf(*e as f64)))),
                _ => Some(PyValue::Float(base.number()?.powf(exp.number()?))),
            };
        }
        Some(base)
    }

    fn atom(&mut self) -> Option<PyValue> {
        self.skip_space();
        if self.eat("(") {
            let v = self.sum()?;
            return self.eat(")").then_some(v);
        }
        if self.eat("math.pow(") {
            let a = self.sum()?.number()?;
            if !self.eat(",") {
                return None;
            }
            let b = self.sum()?.number()?;
            return self.eat(")").then_some(PyValue::Float(a.powf(b)));
        }
        if self.eat("True") {
            return Some(PyValue::Bool(true));
        }
        if self.eat("False") {
            return Some(PyValue::Bool(false));
        }
        self.number()
    }

    /// A Python number literal: digits (no leading zeros unless all zeros) or a float with an
    /// optional exponent.
    fn number(&mut self) -> Option<PyValue> {
        let start = self.at;
        // Digits, with single underscores between them as Python allows (`1_000`).
        let digits = |e: &mut Self| {
            let from = e.at;
            while e.at < e.s.len() {
                let c = e.s[e.at];
                let underscore =
                    c == b'_' && e.at > from && e.s.get(e.at + 1).is_some_and(u8::is_ascii_digit);
                if !(c.is_ascii_digit() || underscore) {
                    break;
                }
                e.at += 1;
            }
            e.at - from
        };
        let int_digits = digits(self);
        let mut is_float = false;
        if self.at < self.s.len() && self.s[self.at] == b'.' {
            self.at += 1;
            let frac = digits(self);
            if int_digits == 0 && frac == 0 {
                return None;
            }
            is_float = true;
        } else if int_digits == 0 {
            return None;
        }
        if self.at < self.s.len() && matches!(self.s[self.at], b'e' | b'E') {
            let save = self.at;
            self.at += 1;
            if self.at < self.s.len() && matches!(self.s[self.at], b'+' | b'-') {
                self.at += 1;
            }
            if digits(self) == 0 {
                self.at = save;
                return None;
            }
            is_float = true;
        }
        let text = std::str::from_utf8(&self.s[start..self.at])
            .ok()?
            .replace('_', "");
        if self.at < self.s.len()
            && (self.s[self.at].is_ascii_alphabetic() || self.s[self.at] == b'_')
        {
            return None;
        }
        let text = text.as_str();
        if is_float {
            return text.parse::<f64>().ok().map(PyValue::Float);
        }
        if text.len() > 1 && text.starts_with('0') && !text.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(
            text.parse::<i128>()
                .map(PyValue::Int)
                .unwrap_or_else(|_| PyValue::Float(text.parse().unwrap_or(f64::INFINITY))),
        )
    }
}

fn arith(
    a: &PyValue,
    b: &PyValue,
    int_op: impl Fn(i128, i128) -> Option<i128>,
    float_op: impl Fn(f64, f64) -> f64,
) -> Option<PyValue> {
    let as_int = |v: &PyValue| match *v {
        PyValue::Int(i) => Some(i),
        PyValue::Bool(b) => Some(i128::from(b)),
        _ => None,
    };
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => Some(
            int_op(x, y)
                .map(PyValue::Int)
                .unwrap_or_else(|| PyValue::Float(float_op(x as f64, y as f64))),
        ),
        _ => Some(PyValue::Float(float_op(a.number()?, b.number()?))),
    }
}

/// `compare_two_numbers`: equal up to a ×100/×1e3/×1e6/×1e9 scale within 0.15%, or equal after
/// rounding up to 3 decimals, or within 0.15% of the gold. A non-number prediction is wrong.
fn compare_two_numbers(p: &PyValue, gt: f64) -> bool {
    let Some(p) = p.number() else {
        return false;
    };
    let within = |pred: f64, gt: f64| {
        let eps = gt.abs() * 0.0015;
        pred >= gt - eps && pred <= gt + eps
    };
    let (v1, v2) = (gt.abs().max(p.abs()), gt.abs().min(p.abs()));
    for scale in [100.0, 1000.0, 1_000_000.0, 1_000_000_000.0] {
        if v2 <= 2.0 * v1 / scale && within(v2 * scale, v1) {
            return true;
        }
    }
    let round_up = |x: f64| (x * 1000.0).ceil() / 1000.0;
    if round_up(v1) == round_up(v2) {
        return true;
    }
    within(p, gt)
}

/// `get_acc` with chain-of-thought answers: both normalised; a boolean gold must be equal, a
/// number gold numerically equivalent. (The released code asserts on any other gold type;
/// here that scores 0.)
pub fn docmath_accuracy(prediction: &str, gold: &str) -> bool {
    let p = docmath_normalize(prediction);
    match docmath_normalize(gold) {
        PyValue::Bool(g) => p.number() == Some(f64::from(u8::from(g))),
        PyValue::Other => false,
        g => compare_two_numbers(&p, g.number().expect("a number")),
    }
}
