//! Refusals that carry no client data. A decoder's message quotes the
//! value it could not take (`invalid type: string "ann@example.com",
//! expected u32`); stored as a job's error or written to a log, that would
//! keep personal data past the masking a model's policy applies. Names the
//! schema gives (fields, what was expected) stay.

/// Whether `s` reads as a name from a schema rather than a client's value:
/// a letter, then letters, digits and `_ . -`, at most 40 long.
pub fn is_plain_name(s: &str) -> bool {
    s.len() <= 40
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `name` quoted when it is a plain name, `…` otherwise.
pub fn shown(name: &str) -> String {
    match is_plain_name(name) {
        true => format!("{name:?}"),
        false => "…".to_owned(),
    }
}

/// A decoder's message with the input's values it quotes replaced by `…`.
/// What follows `expected` is the schema's and stays; a quoted name of a
/// missing, unknown or duplicate field stays when it is a plain name.
pub fn without_values(message: &str) -> String {
    let (head, tail) = match message.find(", expected") {
        Some(at) => message.split_at(at),
        None => (message, ""),
    };
    let names_fields = ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|p| head.contains(p));
    let mut out = String::with_capacity(message.len());
    let mut rest = head;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest[open..].chars().next().unwrap_or('"');
        let after = &rest[open + 1..];
        // The closing mark: for a backtick, the next one; for a JSON
        // string, the next quote not escaped.
        let close = match quote {
            '`' => after.find('`'),
            _ => {
                let mut escaped = false;
                after.char_indices().find_map(|(i, c)| {
                    let end = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end.then_some(i)
                })
            }
        };
        let Some(close) = close else {
            // Unclosed: everything after the mark is the value.
            out.push_str(&rest[..=open]);
            out.push('…');
            rest = "";
            break;
        };
        let inner = &after[..close];
        out.push_str(&rest[..=open]);
        match names_fields && is_plain_name(inner) {
            true => out.push_str(inner),
            false => out.push('…'),
        }
        out.push(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_go_and_the_schema_s_names_stay() {
        let cases = [
            (
                r#"invalid type: string "ann@example.com", expected u32 at line 1 column 30"#,
                r#"invalid type: string "…", expected u32 at line 1 column 30"#,
            ),
            (
                r#"invalid type: string "say \"hi\" to bob@x.io", expected a map"#,
                r#"invalid type: string "…", expected a map"#,
            ),
            (
                "invalid value: integer `5551234567`, expected u8",
                "invalid value: integer `…`, expected u8",
            ),
            (
                "unknown variant `ann@example.com`, expected one of `critical`, `high`",
                "unknown variant `…`, expected one of `critical`, `high`",
            ),
            ("missing field `model`", "missing field `model`"),
            (
                "unknown field `ann@example.com`, expected `model`",
                "unknown field `…`, expected `model`",
            ),
            (
                r#"invalid type: string "unclosed"#,
                r#"invalid type: string "…"#,
            ),
            ("EOF while parsing a value", "EOF while parsing a value"),
        ];
        for (message, want) in cases {
            assert_eq!(without_values(message), want, "{message}");
        }
    }

    #[test]
    fn only_plain_names_are_shown() {
        assert_eq!(shown("role_name"), "\"role_name\"");
        assert_eq!(shown("ann@example.com"), "…");
        assert_eq!(shown("5551234567"), "…");
        assert_eq!(shown(&"a".repeat(41)), "…");
    }
}
