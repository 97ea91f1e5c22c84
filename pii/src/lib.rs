//! Personal data in request text: found, then masked with a typed
//! placeholder (`[EMAIL]`) or reported so that the request can be refused.
//!
//! Each detector pairs a broad pattern with a check that the pattern alone
//! cannot make (a card's Luhn digit and issuer prefix, an RRN's date, an IP
//! address that parses), so that the usual look-alikes — millisecond
//! timestamps, order numbers, version strings, clock times — are left alone.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use regex::Regex;
use serde::Deserialize;

/// A kind of personal data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Email,
    Phone,
    Card,
    /// Korean resident registration number.
    Rrn,
    Ipv4,
    Ipv6,
    /// A pattern from the configuration, by its name.
    Custom(String),
}

impl Kind {
    pub fn name(&self) -> &str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Rrn => "rrn",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::Custom(name) => name,
        }
    }

    fn placeholder(&self) -> String {
        format!("[{}]", self.name().to_ascii_uppercase())
    }
}

/// A pattern of the configuration's own: `name` becomes the type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    pub name: String,
    pub pattern: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("custom pattern {name:?}: {reason}")]
    Pattern { name: String, reason: String },
}

struct Detector {
    kind: Kind,
    pattern: Regex,
    check: fn(&str) -> bool,
}

/// Every detector, built once.
pub struct Scanner {
    detectors: Vec<Detector>,
}

/// What a scan found: how many of each kind.
pub type Found = BTreeMap<Kind, usize>;

fn any(_: &str) -> bool {
    true
}

// Patterns are literals checked by the tests; a failure is a build defect.
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("built-in pattern {pattern}: {e}"))
}

impl Scanner {
    pub fn new(custom: &[CustomPattern]) -> Result<Scanner, PiiError> {
        let mut detectors = vec![
            Detector {
                kind: Kind::Email,
                pattern: regex(
                    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                ),
                check: any,
            },
            // Before phones, so that a Korean RRN is not read as a number.
            Detector {
                kind: Kind::Rrn,
                pattern: regex(r"\b\d{6}-?[1-8]\d{6}\b"),
                check: rrn,
            },
            Detector {
                kind: Kind::Card,
                pattern: regex(r"\b\d(?:[ -]?\d){12,18}\b"),
                check: card,
            },
            Detector {
                kind: Kind::Phone,
                pattern: regex(
                    r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}\b|\b01[016789][ .-]?\d{3,4}[ .-]?\d{4}\b|\b0\d{1,2}[ .-]\d{3,4}[ .-]\d{4}\b|\(\d{3}\) ?\d{3}-\d{4}\b|\b\d{3}-\d{3}-\d{4}\b)",
                ),
                check: phone,
            },
            Detector {
                kind: Kind::Ipv4,
                pattern: regex(
                    r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
                ),
                check: any,
            },
            // A whole token only (the group `m` is what is replaced), so
            // that `std::vec` or `a::b` inside code is not read as one.
            Detector {
                kind: Kind::Ipv6,
                pattern: regex(
                    r"(?i)(?:^|[^0-9a-z:_.])(?P<m>(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:%\w+)?)(?:$|[^0-9a-z:_])",
                ),
                check: ipv6,
            },
        ];
        for c in custom {
            let pattern = Regex::new(&c.pattern).map_err(|e| PiiError::Pattern {
                name: c.name.clone(),
                reason: e.to_string(),
            })?;
            detectors.push(Detector {
                kind: Kind::Custom(c.name.clone()),
                pattern,
                check: any,
            });
        }
        Ok(Scanner { detectors })
    }

    /// Finds personal data in `text`, and the text with each one replaced
    /// by its placeholder. Detectors run in order over what the earlier
    /// ones left, so one span is counted once.
    pub fn mask(&self, text: &str) -> (String, Found) {
        let mut found = Found::new();
        let mut out = text.to_owned();
        for d in &self.detectors {
            if !d.pattern.is_match(&out) {
                continue;
            }
            let placeholder = d.kind.placeholder();
            let mut n = 0;
            let replaced = d.pattern.replace_all(&out, |caps: &regex::Captures<'_>| {
                let whole = &caps[0];
                let Some((all, m)) = caps.get(0).zip(caps.name("m").or_else(|| caps.get(0))) else {
                    return whole.to_owned();
                };
                if !(d.check)(m.as_str()) {
                    return whole.to_owned();
                }
                n += 1;
                let (start, end) = (m.start() - all.start(), m.end() - all.start());
                format!("{}{placeholder}{}", &whole[..start], &whole[end..])
            });
            if n > 0 {
                out = replaced.into_owned();
                *found.entry(d.kind.clone()).or_default() += n;
            }
        }
        (out, found)
    }
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// A card number: the Luhn digit holds and the issuer prefix and length
/// are those of a real scheme (a 13-digit millisecond timestamp starts
/// with 1, which no scheme issues).
fn card(s: &str) -> bool {
    let d = digits(s);
    let luhn = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum::<u32>()
        % 10
        == 0;
    let prefix = |n: usize| d.iter().take(n).fold(0u32, |acc, &x| acc * 10 + x);
    let len = d.len();
    let scheme = match d.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&prefix(2)) && len == 16,
        Some(2) => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(3) => {
            (matches!(prefix(2), 34 | 37) && len == 15)
                || ((3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len))
                || (((300..=305).contains(&prefix(3)) || matches!(prefix(2), 36 | 38)) && len == 14)
        }
        Some(6) => {
            (prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 62)
                && (16..=19).contains(&len)
        }
        _ => false,
    };
    luhn && scheme
}

/// A Korean resident registration number: YYMMDD of a real date, then a
/// sex/century digit 1–8. (Numbers issued since October 2020 carry no
/// check digit, so none is required.)
fn rrn(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 13 {
        return false;
    }
    let month = d[2] * 10 + d[3];
    let day = d[4] * 10 + d[5];
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => 29,
        _ => return false,
    };
    (1..=days).contains(&day) && (1..=8).contains(&d[6])
}

/// A phone number has 8 to 15 digits (E.164) and, unless it is written
/// with `+`, a separator or a Korean mobile prefix: a bare run of digits is
/// more often an id than a phone.
fn phone(s: &str) -> bool {
    let n = digits(s).len();
    (8..=15).contains(&n)
}

/// An IPv6 address with at least two groups written out (`::1` and
/// `d::` are too like other text to count).
fn ipv6(s: &str) -> bool {
    let addr = s.split('%').next().unwrap_or(s);
    addr.split(':').filter(|g| !g.is_empty()).count() >= 2 && addr.parse::<Ipv6Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> (String, Found) {
        Scanner::new(&[]).unwrap().mask(text)
    }

    fn kinds(text: &str) -> Vec<String> {
        scan(text)
            .1
            .iter()
            .flat_map(|(k, n)| std::iter::repeat_n(k.name().to_owned(), *n))
            .collect()
    }

    #[test]
    fn true_positives_are_masked_with_their_type() {
        let (masked, found) = scan(
            "Mail kim.minsu+work@example.co.kr or call +82 10-1234-5678; card 4111 1111 1111 1111.",
        );
        assert_eq!(masked, "Mail [EMAIL] or call [PHONE]; card [CARD].");
        assert_eq!(found.len(), 3);
        for (text, kind) in [
            ("a@b.io", "email"),
            ("010-1234-5678", "phone"),
            ("01012345678", "phone"),
            ("02-312-4567", "phone"),
            ("031-8765-4321", "phone"),
            ("+1 (415) 555-0132", "phone"),
            ("+44 20 7946 0958", "phone"),
            ("(415) 555-0132", "phone"),
            ("5500-0000-0000-0004", "card"),
            ("378282246310005", "card"),
            ("4222222222222", "card"),
            ("900101-1234567", "rrn"),
            ("0503157654321", "rrn"),
            ("192.168.0.1", "ipv4"),
            ("8.8.8.8", "ipv4"),
            ("2001:db8::8a2e:370:7334", "ipv6"),
            ("fe80::1%eth0", "ipv6"),
        ] {
            assert_eq!(kinds(&format!("x {text} y")), [kind], "{text}");
        }
    }

    #[test]
    fn look_alikes_are_left_alone() {
        for text in [
            // Millisecond timestamps: 13 digits, some even Luhn-valid.
            "at 1732233445566 and 1700000000000",
            "ts=1699999999998",
            // A 16-digit order number that fails Luhn.
            "order 1234567812345678",
            // Luhn-valid, but no scheme issues numbers starting with 1 or 9.
            "ref 1234567812345670",
            "9111111111111111",
            // Dates, clock times, versions, UUIDs, hashes.
            "2026-11-22 12:30:45",
            "meet at 10:30",
            "version 1.2.3",
            "550e8400-e29b-41d4-a716-446655440000",
            "sha 3f786850e387550fdab836ed7e6dc881de23001b",
            // Not a date: month 13; and a bare digit run is not a phone.
            "id 901301-1234567",
            "count 12345678",
            // Not an address: out of range.
            "999.1.1.1",
            "the ratio is 3:2:1",
            // Paths in code.
            "use std::collections::HashMap; Vec::new()",
            "call foo::bar::baz",
        ] {
            assert_eq!(kinds(text), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn custom_patterns_have_their_own_type() {
        let scanner = Scanner::new(&[CustomPattern {
            name: "employee_id".into(),
            pattern: r"\bEMP-\d{6}\b".into(),
        }])
        .unwrap();
        let (masked, found) = scanner.mask("ask EMP-004217 about it");
        assert_eq!(masked, "ask [EMPLOYEE_ID] about it");
        assert_eq!(found[&Kind::Custom("employee_id".into())], 1);
        let bad = Scanner::new(&[CustomPattern {
            name: "broken".into(),
            pattern: "(".into(),
        }]);
        assert!(bad.is_err());
    }

    #[test]
    fn every_occurrence_is_counted_once() {
        let (masked, found) = scan("a@x.com, b@y.org and 10.0.0.1 twice: 10.0.0.1");
        assert_eq!(masked, "[EMAIL], [EMAIL] and [IPV4] twice: [IPV4]");
        assert_eq!(found[&Kind::Email], 2);
        assert_eq!(found[&Kind::Ipv4], 2);
    }
}
