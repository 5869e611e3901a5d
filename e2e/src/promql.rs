//! Just enough PromQL reading for the monitoring test: the data an alert expression is
//! computed from, so a test can check that each part returns data where the alert's
//! condition (rightly) returns nothing.

/// The parts of an alert expression that must return data on a healthy system: every
/// operand of a top-level `and` / `unless` / `or` with its top-level comparison removed (the
/// left side, and the right side unless it is a number), and the argument of `absent(...)`.
/// Set-operator modifiers (`on (...)`, `ignoring (...)`) and `bool` are dropped.
pub fn data_queries(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for clause in split_top_level(expr, &["and", "unless", "or"], true) {
        let clause = strip_modifiers(clause.trim());
        let sides = split_top_level(&clause, &["==", "!=", ">=", "<=", ">", "<"], false);
        for (i, side) in sides.iter().enumerate() {
            let side = strip_modifiers(side.trim());
            if side.is_empty() || (i > 0 && side.parse::<f64>().is_ok()) {
                continue;
            }
            out.push(unwrap_absent(&side));
        }
    }
    out
}

fn unwrap_absent(s: &str) -> String {
    let t = s.trim();
    if let Some(inner) = t.strip_prefix("absent(").and_then(|r| r.strip_suffix(')'))
        && balanced(inner)
    {
        return inner.trim().to_string();
    }
    t.to_string()
}

fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// Drops a leading `bool`, `on (...)`, `ignoring (...)`, `group_left (...)` or
/// `group_right (...)`: what follows a binary operator before its right operand.
fn strip_modifiers(s: &str) -> String {
    let mut t = s.trim_start();
    loop {
        let before = t;
        for word in ["bool", "on", "ignoring", "group_left", "group_right"] {
            if let Some(rest) = t.strip_prefix(word)
                && rest.chars().next().is_none_or(|c| c.is_whitespace() || c == '(')
            {
                t = rest.trim_start();
                if word != "bool"
                    && let Some(args) = t.strip_prefix('(')
                    && let Some(close) = args.find(')')
                {
                    t = args[close + 1..].trim_start();
                }
            }
        }
        if t == before {
            return t.trim_end().to_string();
        }
    }
}

/// Splits `expr` at the operators `ops` that stand outside parentheses, braces, brackets
/// and strings. `words`: the operators are keywords (matched as whole words).
fn split_top_level(expr: &str, ops: &[&str], words: bool) -> Vec<String> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut start, mut i) = (0i32, None::<u8>, 0usize, 0usize);
    let mut parts = Vec::new();
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ if depth == 0 => {
                if let Some(op) = ops.iter().find(|op| expr[i..].starts_with(**op)) {
                    let end = i + op.len();
                    let word_ok = !words
                        || ((i == 0 || !is_ident(bytes[i - 1])) && (end >= bytes.len() || !is_ident(bytes[end])));
                    if word_ok {
                        parts.push(expr[start..i].to_string());
                        start = end;
                        i = end;
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(expr[start..].to_string());
    parts
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

#[cfg(test)]
mod tests {
    use super::data_queries;

    #[test]
    fn a_comparison_keeps_its_left_side() {
        assert_eq!(data_queries("max by (node) (x) == 0"), ["max by (node) (x)"]);
        assert_eq!(data_queries("sum(rate(y_total[5m])) > 0"), ["sum(rate(y_total[5m]))"]);
        assert_eq!(data_queries("a / b > 0.1"), ["a / b"]);
    }

    #[test]
    fn operators_inside_selectors_strings_and_parentheses_are_not_split() {
        assert_eq!(
            data_queries(r#"max(x{state=~"Failed|Error", a!="b<c"}) > 0"#),
            [r#"max(x{state=~"Failed|Error", a!="b<c"})"#]
        );
        assert_eq!(data_queries("count(x == 0) or vector(0)"), ["count(x == 0)", "vector(0)"]);
        // `and` inside a word is not the operator.
        assert_eq!(data_queries("standby_total > 1"), ["standby_total"]);
    }

    #[test]
    fn set_operators_split_into_clauses_without_their_modifiers() {
        assert_eq!(
            data_queries("min by (scope) (r) == 0\n  and on (scope) max by (scope) (w) > 0"),
            ["min by (scope) (r)", "max by (scope) (w)"]
        );
        assert_eq!(data_queries("a unless ignoring (x) b"), ["a", "b"]);
        assert_eq!(data_queries("a > bool 1"), ["a"]);
    }

    #[test]
    fn absent_is_checked_through_its_argument() {
        assert_eq!(data_queries("absent(benchkite_leader)"), ["benchkite_leader"]);
        assert_eq!(data_queries("absent(x) or absent(y)"), ["x", "y"]);
    }

    #[test]
    fn a_right_side_that_is_a_query_is_kept() {
        assert_eq!(data_queries("a > b"), ["a", "b"]);
        assert_eq!(data_queries("a - b > 0"), ["a - b"]);
    }
}
