//! The parser of the rule language (shared with `mapping`): the operator
//! table and a recursive-descent [`Parser`] from tokens to the compiled tree.

use std::fmt;

use regex::RegexBuilder;

use super::eval::{parse_number, Condition, Node, NumOp, Source, Test, TextOp};
use super::lexer::{column, describe, error_at, is_keyword, Tok, Token};
use super::{MAX_NESTING, REGEX_SIZE_LIMIT};
use crate::{Error, Result};

/// What an operator name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Text(TextOp),
    Regex,
    Number(NumOp),
}

/// Every operator spelling: name, meaning, negated.
const OPERATORS: &[(&str, OpKind, bool)] = &[
    ("equals", OpKind::Text(TextOp::Equals), false),
    ("contains", OpKind::Text(TextOp::Contains), false),
    ("starts_with", OpKind::Text(TextOp::StartsWith), false),
    ("ends_with", OpKind::Text(TextOp::EndsWith), false),
    ("matches", OpKind::Regex, false),
    ("not_equals", OpKind::Text(TextOp::Equals), true),
    ("not_contains", OpKind::Text(TextOp::Contains), true),
    ("not_starts_with", OpKind::Text(TextOp::StartsWith), true),
    ("not_ends_with", OpKind::Text(TextOp::EndsWith), true),
    ("not_matches", OpKind::Regex, true),
    ("==", OpKind::Text(TextOp::Equals), false),
    ("!=", OpKind::Text(TextOp::Equals), true),
    (">", OpKind::Number(NumOp::Gt), false),
    (">=", OpKind::Number(NumOp::Ge), false),
    ("<", OpKind::Number(NumOp::Lt), false),
    ("<=", OpKind::Number(NumOp::Le), false),
];

/// The operator list shown in errors.
const KNOWN_OPERATORS: &str = "equals, contains, starts_with, ends_with, matches, \
     not_equals, not_contains, not_starts_with, not_ends_with, not_matches \
     (or `not <operator>`), ==, !=, >, >=, <, <=";

fn lookup_operator(name: &str) -> Option<(OpKind, bool)> {
    OPERATORS
        .iter()
        .find(|(spelling, _, _)| spelling.eq_ignore_ascii_case(name))
        .map(|&(_, kind, negated)| (kind, negated))
}

/// Recursive-descent parser over the tokens of one rule.
pub(crate) struct Parser<'t, 's> {
    text: &'s str,
    tokens: &'t [Token<'s>],
    index: usize,
}

impl<'t, 's> Parser<'t, 's> {
    /// A parser over `tokens` (lexed from `text`) starting at token `start`.
    pub(crate) fn new(text: &'s str, tokens: &'t [Token<'s>], start: usize) -> Self {
        Parser {
            text,
            tokens,
            index: start,
        }
    }

    /// Index of the next unread token.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    fn peek(&self) -> Option<&'t Token<'s>> {
        self.tokens.get(self.index)
    }

    fn next(&mut self) -> Option<&'t Token<'s>> {
        let token = self.tokens.get(self.index);
        if token.is_some() {
            self.index += 1;
        }
        token
    }

    /// Byte offset of the next token, or the end of the text.
    fn here(&self) -> usize {
        self.peek().map_or(self.text.len(), |t| t.pos)
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = is_keyword(self.peek(), keyword);
        if found {
            self.index += 1;
        }
        found
    }

    fn error_here(&self, message: impl fmt::Display) -> Error {
        error_at(self.text, self.here(), message)
    }

    /// Parses one expression (an `OR` of `AND`s), stopping before the first
    /// token that cannot continue it.
    pub(crate) fn parse_expr(&mut self) -> Result<Node> {
        self.parse_or(0)
    }

    fn parse_or(&mut self, depth: usize) -> Result<Node> {
        let mut items = vec![self.parse_and(depth)?];
        while self.eat_keyword("or") {
            items.push(self.parse_and(depth)?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Node::Or(items)
        })
    }

    fn parse_and(&mut self, depth: usize) -> Result<Node> {
        let mut items = vec![self.parse_unary(depth)?];
        while self.eat_keyword("and") {
            items.push(self.parse_unary(depth)?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Node::And(items)
        })
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Node> {
        if depth >= MAX_NESTING {
            return Err(self.error_here(format!(
                "expression nested too deeply (more than {MAX_NESTING} levels of `(` and `NOT`)"
            )));
        }
        if self.eat_keyword("not") {
            return Ok(Node::Not(Box::new(self.parse_unary(depth + 1)?)));
        }
        if let Some(Token {
            tok: Tok::LParen,
            pos: open,
        }) = self.peek()
        {
            self.index += 1;
            let inner = self.parse_or(depth + 1)?;
            return match self.next() {
                Some(Token {
                    tok: Tok::RParen, ..
                }) => Ok(inner),
                other => Err(error_at(
                    self.text,
                    other.map_or(self.text.len(), |t| t.pos),
                    format!(
                        "expected `)` to close the `(` at column {}, or AND / OR, found {}",
                        column(self.text, *open),
                        describe(other)
                    ),
                )),
            };
        }
        self.parse_condition().map(Node::Cond)
    }

    fn parse_condition(&mut self) -> Result<Condition> {
        let (name, name_pos) = match self.peek() {
            Some(Token {
                tok: Tok::Word(w),
                pos,
            }) if !["and", "or", "set"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                (*w, *pos)
            }
            other => {
                return Err(self.error_here(format!(
                    "expected a condition (a field name such as `channel_name`, `NOT` or `(`), \
                     found {}",
                    describe(other)
                )))
            }
        };
        self.index += 1;
        let source = Source::resolve(self.text, name_pos, name)?;

        let mut case_sensitive = false;
        let mut negate = false;
        loop {
            let pos = self.here();
            if self.eat_keyword("case_sensitive") {
                if case_sensitive {
                    return Err(error_at(self.text, pos, "`case_sensitive` written twice"));
                }
                case_sensitive = true;
            } else if self.eat_keyword("not") {
                if negate {
                    return Err(error_at(self.text, pos, "`not` written twice"));
                }
                negate = true;
            } else {
                break;
            }
        }

        let op_pos = self.here();
        let op_name = match self.next() {
            Some(Token {
                tok: Tok::Word(w) | Tok::Sym(w),
                ..
            }) => *w,
            other => {
                return Err(error_at(
                    self.text,
                    op_pos,
                    format!(
                        "expected an operator after `{name}` ({KNOWN_OPERATORS}), found {}",
                        describe(other)
                    ),
                ))
            }
        };
        let Some((kind, op_negated)) = lookup_operator(op_name) else {
            return Err(error_at(
                self.text,
                op_pos,
                format!("unknown operator `{op_name}`; known operators are: {KNOWN_OPERATORS}"),
            ));
        };
        if negate && op_negated {
            return Err(error_at(
                self.text,
                op_pos,
                format!("`not` before the negated operator `{op_name}` cancels out; drop one"),
            ));
        }
        if negate && matches!(kind, OpKind::Number(_)) {
            return Err(error_at(
                self.text,
                op_pos,
                format!("`not` cannot be combined with `{op_name}`; use the opposite comparison"),
            ));
        }

        let value_pos = self.here();
        let value = match self.next() {
            Some(Token {
                tok: Tok::Str(value),
                ..
            }) => value.as_str(),
            other => {
                return Err(error_at(
                    self.text,
                    value_pos,
                    format!(
                        "expected a value in double quotes after `{op_name}`, found {}",
                        describe(other)
                    ),
                ))
            }
        };

        let test = match kind {
            OpKind::Text(op) => Test::Text {
                op,
                value: if case_sensitive {
                    value.to_owned()
                } else {
                    value.to_lowercase()
                },
                case_sensitive,
            },
            OpKind::Regex => {
                let regex = RegexBuilder::new(value)
                    .case_insensitive(!case_sensitive)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| error_at(self.text, value_pos, regex_error_message(&e)))?;
                Test::Regex(regex)
            }
            OpKind::Number(op) => match parse_number(value) {
                Some(value) => Test::Number { op, value },
                None => {
                    return Err(error_at(
                        self.text,
                        value_pos,
                        format!("`{op_name}` compares numbers, but \"{value}\" is not a number"),
                    ))
                }
            },
        };
        Ok(Condition {
            source,
            test,
            negate: negate || op_negated,
        })
    }
}

/// regex's own message, and for a Unicode property class (`\p{Greek}`,
/// `\pL`, `\P{Han}`) what this build leaves out: the CLI links regex without
/// its Unicode property tables (Cargo.toml, for the binary's size), so such
/// a class is refused here instead of matching something else. regex says
/// only "Unicode property not found", which reads as a misspelt name.
fn regex_error_message(error: &regex::Error) -> String {
    let text = error.to_string();
    if text.contains("Unicode property not found")
        || text.contains("Unicode property value not found")
    {
        format!(
            "invalid regular expression: {text}\nUnicode property classes (\\p{{..}}, \\P{{..}}) \
             are not built into this host; \\w, \\d, \\s, \\b and case-insensitive matching \
             are Unicode-aware, and a class of ranges (e.g. [\\u{{370}}-\\u{{3FF}}] for Greek) \
             can stand in for a property"
        )
    } else {
        format!("invalid regular expression: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{channel, err, m};

    #[test]
    fn and_binds_tighter_than_or() {
        let ch = channel("News", "UK");
        // a OR (b AND c): true via a.
        assert!(m(
            r#"channel_name equals "news" OR group_title equals "US" AND channel_name equals "x""#,
            &ch
        ));
        // (a OR b) AND c: false.
        assert!(!m(
            r#"(channel_name equals "news" OR group_title equals "US") AND channel_name equals "x""#,
            &ch
        ));
        // (a AND b) OR c with a false: false.
        assert!(!m(
            r#"channel_name equals "x" AND group_title equals "UK" OR group_title equals "US""#,
            &ch
        ));
        assert!(m(
            r#"channel_name equals "x" and group_title equals "UK" or group_title equals "uk""#,
            &ch
        ));
    }

    #[test]
    fn not_and_parentheses() {
        let ch = channel("News", "UK");
        assert!(!m(r#"NOT channel_name equals "news""#, &ch));
        assert!(m(r#"not channel_name equals "sport""#, &ch));
        assert!(m(r#"NOT NOT channel_name equals "news""#, &ch));
        // NOT binds tighter than AND.
        assert!(m(
            r#"NOT channel_name equals "sport" AND group_title equals "uk""#,
            &ch
        ));
        assert!(!m(
            r#"NOT (channel_name equals "news" OR group_title equals "x")"#,
            &ch
        ));
        assert!(m(
            r#"((group_title == "UK")) AND (NOT (channel_name == "x"))"#,
            &ch
        ));
    }

    #[test]
    fn regex_compile_error() {
        let msg = err(r#"channel_name matches "(unclosed""#);
        assert!(msg.contains("at column 22"), "{msg}");
        assert!(msg.contains("invalid regular expression"), "{msg}");
    }

    #[test]
    fn unicode_property_class_is_refused_with_what_works_instead() {
        for pattern in [r"\p{Greek}", r"\pL", r"\P{Han}+", r"[\p{Lu}0-9]"] {
            let msg = err(&format!(r#"channel_name matches "{pattern}""#));
            assert!(msg.contains("invalid regular expression"), "{msg}");
            assert!(
                msg.contains("Unicode property classes (\\p{..}, \\P{..}) are not built into"),
                "{msg}"
            );
        }
        // What stays: Unicode-aware Perl classes, word boundaries and
        // case-insensitive matching beyond ASCII.
        let ch = channel("Ärzte TV ٢٤ Σport", "");
        assert!(m(r#"channel_name matches "^\w+ TV \d+ ""#, &ch));
        assert!(m(r#"channel_name matches "\bσport$""#, &ch));
        assert!(m(r#"channel_name matches "ärzte\s""#, &ch));
        assert!(!m(r#"channel_name case_sensitive matches "ärzte""#, &ch));
    }

    #[test]
    fn unknown_operator_lists_known_ones() {
        let msg = err(r#"channel_name like "x""#);
        assert!(msg.contains("at column 14"), "{msg}");
        assert!(msg.contains("unknown operator `like`"), "{msg}");
        for op in [
            "equals",
            "not_contains",
            "starts_with",
            "matches",
            ">=",
            "!=",
        ] {
            assert!(msg.contains(op), "{op} missing from {msg}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            "{}channel_name == \"x\"{}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(err(&deep).contains("nested too deeply"));
        let nots = format!("{}channel_name == \"x\"", "NOT ".repeat(10_000));
        assert!(err(&nots).contains("nested too deeply"));
        let ok = format!("{}channel_name == \"x\"{}", "(".repeat(20), ")".repeat(20));
        assert!(m(&ok, &channel("x", "")));
    }
}
