//! The compiled expression tree and its evaluation: where a condition reads
//! its value, the tests it applies, `AND` / `OR` / `NOT` nodes, and the
//! regex [`Captures`] a match provides.

use regex::Regex;

use super::lexer::{error_at, strip_prefix_ci};
use super::MAX_CAPTURE_GROUP;
use crate::abi::{Channel, Field, FieldSet};
use crate::Result;

/// Where a condition reads its value from.
#[derive(Clone, Debug)]
pub(super) enum Source {
    /// A text field of the channel.
    Field(Field),
    /// An extra attribute; `alt` is the dashed spelling of a name written
    /// with underscores.
    Attribute { name: String, alt: Option<String> },
}

impl Source {
    pub(super) fn resolve(text: &str, pos: usize, name: &str) -> Result<Source> {
        if let Some(attr) = strip_prefix_ci(name, "attr:") {
            if attr.is_empty() {
                return Err(error_at(
                    text,
                    pos,
                    "`attr:` must be followed by an attribute name, e.g. `attr:tvg-country`",
                ));
            }
            return Ok(Source::Attribute {
                name: attr.to_owned(),
                alt: None,
            });
        }
        match Field::from_name(name) {
            Some(field) if field.is_text() => Ok(Source::Field(field)),
            Some(field) => Err(error_at(
                text,
                pos,
                format!(
                    "`{}` is not a text field; name the attribute itself, e.g. `tvg-country`",
                    field.name()
                ),
            )),
            None => Ok(Source::Attribute {
                name: name.to_owned(),
                alt: name.contains('_').then(|| name.replace('_', "-")),
            }),
        }
    }

    fn value<'c>(&self, channel: &'c Channel<'_>) -> &'c str {
        match self {
            Source::Field(field) => channel.text(*field),
            Source::Attribute { name, alt } => channel
                .attribute(name)
                .or_else(|| alt.as_deref().and_then(|alt| channel.attribute(alt)))
                .unwrap_or(""),
        }
    }
}

/// A text comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TextOp {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
}

/// A numeric comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NumOp {
    Gt,
    Ge,
    Lt,
    Le,
}

/// The test a condition applies to the field value.
#[derive(Clone, Debug)]
pub(super) enum Test {
    /// Text comparison; `value` is lowercased when not case-sensitive.
    Text {
        op: TextOp,
        value: String,
        case_sensitive: bool,
    },
    /// Regex search (case-insensitivity is compiled into the regex).
    Regex(Regex),
    /// Numeric comparison.
    Number { op: NumOp, value: f64 },
}

impl Test {
    fn eval(&self, value: &str) -> bool {
        match self {
            Test::Text {
                op,
                value: needle,
                case_sensitive: true,
            } => text_op(*op, value, needle),
            Test::Text {
                op,
                value: needle,
                case_sensitive: false,
            } => text_op_ignore_case(*op, value, needle),
            Test::Regex(regex) => regex.is_match(value),
            Test::Number { op, value: right } => match parse_number(value) {
                Some(left) => match op {
                    NumOp::Gt => left > *right,
                    NumOp::Ge => left >= *right,
                    NumOp::Lt => left < *right,
                    NumOp::Le => left <= *right,
                },
                None => false,
            },
        }
    }
}

pub(super) fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

fn text_op(op: TextOp, haystack: &str, needle: &str) -> bool {
    match op {
        TextOp::Equals => haystack == needle,
        TextOp::Contains => haystack.contains(needle),
        TextOp::StartsWith => haystack.starts_with(needle),
        TextOp::EndsWith => haystack.ends_with(needle),
    }
}

/// Case-insensitive text comparison; `needle` is already lowercase. ASCII
/// haystacks are compared without allocating.
fn text_op_ignore_case(op: TextOp, haystack: &str, needle: &str) -> bool {
    if !haystack.is_ascii() {
        return text_op(op, &haystack.to_lowercase(), needle);
    }
    // The lowercase of an ASCII string is ASCII, so comparing the haystack's
    // lowercased bytes with the needle's bytes is exact.
    let hay = haystack.as_bytes();
    let needle = needle.as_bytes();
    let eq = |h: &[u8]| {
        h.iter()
            .zip(needle)
            .all(|(h, n)| h.to_ascii_lowercase() == *n)
    };
    match op {
        TextOp::Equals => hay.len() == needle.len() && eq(hay),
        TextOp::StartsWith => hay.len() >= needle.len() && eq(&hay[..needle.len()]),
        TextOp::EndsWith => hay.len() >= needle.len() && eq(&hay[hay.len() - needle.len()..]),
        TextOp::Contains => needle.is_empty() || hay.windows(needle.len()).any(eq),
    }
}

/// One `<field> <operator> "<value>"` condition.
#[derive(Clone, Debug)]
pub(crate) struct Condition {
    pub(super) source: Source,
    pub(super) test: Test,
    pub(super) negate: bool,
}

impl Condition {
    fn eval(&self, channel: &Channel<'_>) -> bool {
        self.negate ^ self.test.eval(self.source.value(channel))
    }
}

/// A node of the compiled expression tree.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Cond(Condition),
}

impl Node {
    pub(super) fn eval(&self, channel: &Channel<'_>) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.eval(channel)),
            Node::Or(nodes) => nodes.iter().any(|n| n.eval(channel)),
            Node::Not(node) => !node.eval(channel),
            Node::Cond(cond) => cond.eval(channel),
        }
    }

    /// Like `eval`, recording in `slot` the captures of the first positive
    /// `matches` condition that took part in making the result true.
    /// Invariant: when this returns false, `slot` is as it was before.
    pub(super) fn eval_captures(&self, channel: &Channel<'_>, slot: &mut Option<Captures>) -> bool {
        match self {
            Node::And(nodes) => {
                let had = slot.is_some();
                for node in nodes {
                    if !node.eval_captures(channel, slot) {
                        if !had {
                            *slot = None;
                        }
                        return false;
                    }
                }
                true
            }
            Node::Or(nodes) => nodes.iter().any(|n| n.eval_captures(channel, slot)),
            // Under NOT a regex that matches makes the result false, so it
            // never provides captures.
            Node::Not(node) => !node.eval(channel),
            Node::Cond(Condition {
                source,
                test: Test::Regex(regex),
                negate: false,
            }) if slot.is_none() => match regex.captures(source.value(channel)) {
                Some(caps) => {
                    *slot = Some(Captures::from_regex(&caps));
                    true
                }
                None => false,
            },
            Node::Cond(cond) => cond.eval(channel),
        }
    }

    pub(super) fn fields(&self, set: &mut FieldSet) {
        match self {
            Node::And(nodes) | Node::Or(nodes) => nodes.iter().for_each(|n| n.fields(set)),
            Node::Not(node) => node.fields(set),
            Node::Cond(cond) => {
                let field = match cond.source {
                    Source::Field(field) => field,
                    Source::Attribute { .. } => Field::Attributes,
                };
                set.0 |= field.bit();
            }
        }
    }
}

/// Regex capture groups from the `matches` condition that made an expression
/// true (see [`FilterExpr::captures`](super::FilterExpr::captures)).
///
/// Group 0 is the whole match, groups 1 to [`MAX_CAPTURE_GROUP`] are the
/// parenthesised groups; higher groups are not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures {
    groups: Vec<Option<String>>,
}

impl Captures {
    fn from_regex(caps: &regex::Captures<'_>) -> Self {
        Captures {
            groups: caps
                .iter()
                .take(MAX_CAPTURE_GROUP + 1)
                .map(|m| m.map(|m| m.as_str().to_owned()))
                .collect(),
        }
    }

    /// Group `index`, or `None` if the regex has no such group or it did not
    /// take part in the match.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.groups.get(index)?.as_deref()
    }

    /// Number of groups kept, including group 0 (0 when no regex matched).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when no regex provided captures.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{channel, m, with_attr};
    use super::super::FilterExpr;
    use super::*;

    #[test]
    fn equals_and_negations() {
        let ch = channel("BBC One HD", "UK");
        assert!(m(r#"channel_name equals "bbc one hd""#, &ch));
        assert!(!m(r#"channel_name equals "BBC One""#, &ch));
        assert!(m(r#"channel_name == "BBC ONE HD""#, &ch));
        assert!(!m(r#"channel_name not_equals "bbc one hd""#, &ch));
        assert!(m(r#"channel_name not_equals "BBC""#, &ch));
        assert!(!m(r#"channel_name != "BBC ONE HD""#, &ch));
        assert!(m(r#"channel_name != "x""#, &ch));
        assert!(!m(r#"channel_name not equals "BBC One HD""#, &ch));
    }

    #[test]
    fn contains_and_negations() {
        let ch = channel("BBC One HD", "UK");
        assert!(m(r#"channel_name contains "one""#, &ch));
        assert!(!m(r#"channel_name contains "two""#, &ch));
        assert!(m(r#"channel_name contains """#, &ch));
        assert!(!m(r#"channel_name not_contains "ONE""#, &ch));
        assert!(m(r#"channel_name not_contains "two""#, &ch));
        assert!(!m(r#"channel_name NOT CONTAINS "one""#, &ch));
        assert!(m(r#"channel_name not contains "two""#, &ch));
    }

    #[test]
    fn starts_ends_with_and_negations() {
        let ch = channel("BBC One HD", "UK");
        assert!(m(r#"channel_name starts_with "bbc""#, &ch));
        assert!(!m(r#"channel_name starts_with "one""#, &ch));
        assert!(m(r#"channel_name not_starts_with "one""#, &ch));
        assert!(!m(r#"channel_name not starts_with "BBC""#, &ch));
        assert!(m(r#"channel_name ends_with " hd""#, &ch));
        assert!(!m(r#"channel_name ends_with "bbc""#, &ch));
        assert!(m(r#"channel_name not_ends_with "bbc""#, &ch));
        assert!(!m(r#"channel_name not ends_with "HD""#, &ch));
        // Longer needle than haystack.
        assert!(!m(r#"channel_name starts_with "BBC One HD extra""#, &ch));
        assert!(!m(r#"channel_name ends_with "more BBC One HD""#, &ch));
    }

    #[test]
    fn matches_and_negations() {
        let ch = channel("BBC One HD", "UK");
        assert!(m(r#"channel_name matches "^bbc \w+ hd$""#, &ch));
        assert!(!m(r#"channel_name matches "^one""#, &ch));
        assert!(m(r#"channel_name not_matches "^one""#, &ch));
        assert!(!m(r#"channel_name not matches "one""#, &ch));
        assert!(m(r#"channel_name matches "\d*""#, &ch));
    }

    #[test]
    fn case_sensitive_modifier() {
        let ch = channel("BBC One HD", "UK");
        assert!(m(r#"channel_name case_sensitive contains "HD""#, &ch));
        assert!(!m(r#"channel_name case_sensitive contains "hd""#, &ch));
        assert!(!m(
            r#"channel_name CASE_SENSITIVE equals "bbc one hd""#,
            &ch
        ));
        assert!(m(r#"channel_name case_sensitive starts_with "BBC""#, &ch));
        assert!(!m(r#"channel_name case_sensitive ends_with "hd""#, &ch));
        assert!(!m(r#"channel_name case_sensitive matches "one""#, &ch));
        assert!(m(r#"channel_name case_sensitive matches "One""#, &ch));
        assert!(m(r#"channel_name case_sensitive not_contains "hd""#, &ch));
        assert!(m(r#"channel_name case_sensitive not contains "hd""#, &ch));
        assert!(m(r#"channel_name not case_sensitive contains "hd""#, &ch));
    }

    #[test]
    fn unicode_case_folding() {
        let ch = channel("ÖSTERREICH Sport", "Ärger");
        assert!(m(r#"channel_name starts_with "österreich""#, &ch));
        assert!(m(r#"group_title equals "ärger""#, &ch));
        assert!(m(
            r#"channel_name case_sensitive not_starts_with "österreich""#,
            &ch
        ));
        // ASCII haystack, non-ASCII needle.
        let ascii = channel("Sport", "");
        assert!(!m(r#"channel_name contains "spört""#, &ascii));
    }

    #[test]
    fn numeric_comparisons() {
        let mut ch = channel("A", "");
        ch.tvg_chno = " 105 ".into();
        assert!(m(r#"tvg_chno > "100""#, &ch));
        assert!(!m(r#"tvg_chno > "105""#, &ch));
        assert!(m(r#"tvg_chno >= "105""#, &ch));
        assert!(!m(r#"tvg_chno >= "105.5""#, &ch));
        assert!(m(r#"tvg_chno < "105.5""#, &ch));
        assert!(!m(r#"tvg_chno < "105""#, &ch));
        assert!(m(r#"tvg_chno <= "105""#, &ch));
        assert!(!m(r#"tvg_chno <= "-1""#, &ch));
        assert!(m(r#"tvg_chno>="1e2""#, &ch));
        ch.tvg_chno = "abc".into();
        for op in [">", ">=", "<", "<="] {
            assert!(!m(&format!(r#"tvg_chno {op} "0""#), &ch), "{op}");
        }
        ch.tvg_chno = "".into();
        assert!(!m(r#"tvg_chno < "1000""#, &ch));
        ch.tvg_chno = "NaN".into();
        assert!(!m(r#"tvg_chno < "1000""#, &ch));
    }

    #[test]
    fn attribute_fields() {
        let ch = with_attr(channel("A", ""), "TVG-Country", "UK");
        assert!(m(r#"tvg_country equals "uk""#, &ch));
        assert!(m(r#"tvg-country equals "UK""#, &ch));
        assert!(m(r#"attr:tvg-country == "uk""#, &ch));
        assert!(!m(r#"tvg_country equals "US""#, &ch));
        // Missing attributes read as empty.
        assert!(m(r#"tvg_language equals """#, &ch));
        assert!(m(r#"tvg_language not_equals "en""#, &ch));
        assert!(!m(r#"tvg_language contains "en""#, &ch));
        // An attribute really named with underscores is found first.
        let ch = with_attr(channel("A", ""), "my_attr", "x");
        assert!(m(r#"my_attr == "x""#, &ch));
    }

    #[test]
    fn every_text_field_is_addressable() {
        let mut ch = channel("", "");
        for field in Field::ALL.into_iter().filter(|f| f.is_text()) {
            *ch.text_mut(field).expect("text field") = format!("v-{}", field.name()).into();
        }
        for field in Field::ALL.into_iter().filter(|f| f.is_text()) {
            let name = field.name();
            assert!(m(&format!(r#"{name} equals "v-{name}""#), &ch), "{name}");
            let dashed = name.replace('_', "-");
            assert!(
                m(&format!(r#"{dashed} equals "v-{name}""#), &ch),
                "{dashed}"
            );
        }
    }

    #[test]
    fn captures_from_first_matching_regex() {
        let ch = channel("Sky Sports 1 HD", "Sport");
        let e = FilterExpr::parse(r#"channel_name matches "^(.+?) (\d+) HD$""#).expect("parse");
        let caps = e.captures(&ch).expect("matches");
        assert_eq!(caps.get(0), Some("Sky Sports 1 HD"));
        assert_eq!(caps.get(1), Some("Sky Sports"));
        assert_eq!(caps.get(2), Some("1"));
        assert_eq!(caps.get(3), None);
        assert_eq!(caps.len(), 3);

        assert!(e.captures(&channel("Other", "")).is_none());

        // No regex: empty captures.
        let e = FilterExpr::parse(r#"group_title == "sport""#).expect("parse");
        assert!(e.captures(&ch).expect("matches").is_empty());

        // A false AND branch gives up its captures.
        let e = FilterExpr::parse(
            r#"(channel_name matches "(Sky)" AND group_title == "news") OR channel_name matches "(\d+)""#,
        )
        .expect("parse");
        assert_eq!(e.captures(&ch).expect("matches").get(1), Some("1"));

        // The first matching regex wins.
        let e =
            FilterExpr::parse(r#"channel_name matches "(Sky)" AND channel_name matches "(\d+)""#)
                .expect("parse");
        assert_eq!(e.captures(&ch).expect("matches").get(1), Some("Sky"));

        // Negated regexes never provide captures.
        let e = FilterExpr::parse(
            r#"NOT channel_name matches "(News)" AND channel_name not_matches "(x)" AND group_title matches "(sp)""#,
        )
        .expect("parse");
        assert_eq!(e.captures(&ch).expect("matches").get(1), Some("Sp"));
    }
}
