//! The lexer of the rule language (shared with `mapping`): tokens, rule
//! errors located by column, and small helpers on tokens and names.

use std::fmt;

use crate::{Error, Result};

/// One lexical token of a rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok<'s> {
    /// A bare word: field name, keyword or operator name.
    Word(&'s str),
    /// A double-quoted value, escapes resolved.
    Str(String),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// A run of operator symbols: `==`, `!=`, `>=`, `?=`, `+=`, `-=`, ...
    Sym(&'s str),
}

/// A token and the byte offset where it starts in the rule text.
#[derive(Clone, Debug)]
pub(crate) struct Token<'s> {
    pub(crate) tok: Tok<'s>,
    pub(crate) pos: usize,
}

fn is_symbol_char(c: char) -> bool {
    matches!(c, '=' | '!' | '<' | '>' | '?' | '+' | '-')
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

/// The 1-based character column of byte offset `pos` in `text`.
pub(super) fn column(text: &str, pos: usize) -> usize {
    text.get(..pos).map_or(pos, |s| s.chars().count()) + 1
}

/// A rule error located at byte offset `pos` of `text`.
pub(crate) fn error_at(text: &str, pos: usize, message: impl fmt::Display) -> Error {
    Error::rule(text, format!("at column {}: {message}", column(text, pos)))
}

/// Splits a rule into tokens.
pub(crate) fn lex(text: &str) -> Result<Vec<Token<'_>>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let tok = match c {
            '(' => {
                chars.next();
                Tok::LParen
            }
            ')' => {
                chars.next();
                Tok::RParen
            }
            ',' => {
                chars.next();
                Tok::Comma
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.peek() {
                            Some(&(_, next @ ('"' | '\\'))) => {
                                value.push(next);
                                chars.next();
                            }
                            _ => value.push('\\'),
                        },
                        other => value.push(other),
                    }
                }
                if !closed {
                    return Err(error_at(
                        text,
                        pos,
                        "this value has no closing `\"` (write `\\\"` for a quote inside a value)",
                    ));
                }
                Tok::Str(value)
            }
            c if is_symbol_char(c) => {
                let mut end = pos;
                while let Some(&(i, c)) = chars.peek() {
                    if !is_symbol_char(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                Tok::Sym(&text[pos..end])
            }
            c if is_word_char(c) => {
                let mut end = pos;
                while let Some(&(i, c)) = chars.peek() {
                    // `tvg_name-="x"`: a dash right before `=` is an operator.
                    if !is_word_char(c) || (c == '-' && text[i + 1..].starts_with('=')) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                Tok::Word(&text[pos..end])
            }
            '\'' => {
                return Err(error_at(
                    text,
                    pos,
                    "values must be in double quotes (\"...\"), not single quotes",
                ))
            }
            other => {
                return Err(error_at(
                    text,
                    pos,
                    format!("unexpected character `{other}`"),
                ))
            }
        };
        tokens.push(Token { tok, pos });
    }
    Ok(tokens)
}

/// A short description of a token (or of the end of input) for errors.
pub(crate) fn describe(token: Option<&Token<'_>>) -> String {
    match token.map(|t| &t.tok) {
        None => "the end of the rule".to_owned(),
        Some(Tok::Word(w)) => format!("`{w}`"),
        Some(Tok::Str(s)) => {
            let mut shown: String = s.chars().take(40).collect();
            if shown.len() < s.len() {
                shown.push_str("...");
            }
            format!("the value \"{shown}\"")
        }
        Some(Tok::LParen) => "`(`".to_owned(),
        Some(Tok::RParen) => "`)`".to_owned(),
        Some(Tok::Comma) => "`,`".to_owned(),
        Some(Tok::Sym(s)) => format!("`{s}`"),
    }
}

/// True if `token` is the bare word `keyword` (any case).
pub(crate) fn is_keyword(token: Option<&Token<'_>>, keyword: &str) -> bool {
    matches!(token, Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(keyword))
}

/// `name` without `prefix` (ASCII case-insensitive), if it starts with it.
pub(crate) fn strip_prefix_ci<'n>(name: &'n str, prefix: &str) -> Option<&'n str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::super::tests::{channel, err, m};

    #[test]
    fn escapes_in_values() {
        let ch = channel(r#"say "hi" \o/"#, "");
        assert!(m(r#"channel_name equals "say \"hi\" \\o/""#, &ch));
        // Unknown escapes are kept, so regexes need no doubling.
        let ch = channel("Channel 42", "");
        assert!(m(r#"channel_name matches "\d+$""#, &ch));
        assert!(m(r#"channel_name matches "\\d+$""#, &ch));
    }

    #[test]
    fn column_counts_characters() {
        let msg = err(r#"channel_name == "é" foo"#);
        assert!(msg.contains("at column 21"), "{msg}");
    }
}
