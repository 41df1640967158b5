//! Upstream m3u-proxy's filter expression language, compiled once.
//!
//! An expression is made of conditions `<field> <operator> "<value>"` joined
//! by `AND` / `OR` (`AND` binds tighter than `OR`), negated with `NOT` and
//! grouped with parentheses:
//!
//! ```text
//! group_title equals "Sports" AND (channel_name contains "HD" OR tvg_country == "UK")
//! NOT channel_name case_sensitive starts_with "XXX"
//! tvg_chno >= "100" AND tvg_chno < "200"
//! channel_name matches "^(.+) HD$"
//! ```
//!
//! - **Keywords** (`AND`, `OR`, `NOT`, `case_sensitive`, operator names) are
//!   case-insensitive.
//! - **Fields**: every text [`Field`] by name, with `_` or `-`
//!   (`channel_name`, `group_title`, `tvg_id`, `tvg-id`, ...). Any other name
//!   is an extra EXTINF attribute looked up with [`Channel::attribute`]; a name
//!   written with `_` is also tried with `-` (`tvg_country` finds
//!   `tvg-country`). `attr:<name>` names an attribute explicitly. A missing
//!   attribute reads as the empty string.
//! - **Operators**: `equals`, `contains`, `starts_with`, `ends_with`,
//!   `matches` (regular expression, [`regex`] syntax, unanchored), their
//!   negations `not_equals`, `not_contains`, `not_starts_with`,
//!   `not_ends_with`, `not_matches` (also written as two words,
//!   `not contains`), `==` / `!=` (aliases of `equals` / `not_equals`) and the
//!   numeric `>`, `>=`, `<`, `<=`. Numeric operators parse both sides as
//!   `f64` (surrounding blanks ignored); a field value that is not a finite
//!   number never matches.
//! - **Case**: text operators and regexes ignore case (Unicode lowercase)
//!   unless `case_sensitive` is written right before the operator:
//!   `channel_name case_sensitive contains "HD"`.
//! - **Values** are in double quotes. `\"` stands for `"` and `\\` for `\`;
//!   any other backslash is kept as written, so regexes such as `"\d+"` need
//!   no doubling.
//!
//! Parse errors are [`Error::rule`](crate::Error::rule) errors naming the
//! column and what was expected there.
//!
//! [`FilterSet`] applies include/exclude rules in order, as upstream does.

use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};

use crate::abi::{Channel, Field, FieldSet};
use crate::{Error, Result};

/// Deepest nesting of parentheses and `NOT` an expression may use; deeper
/// expressions are refused so evaluation never exhausts the stack.
pub const MAX_NESTING: usize = 64;

/// Highest capture group number a mapping value can refer to (`$9`).
pub const MAX_CAPTURE_GROUP: usize = 9;

/// Longest compiled regex accepted, in bytes of the regex engine's program.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Lexer (shared with `mapping`)
// ---------------------------------------------------------------------------

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
fn column(text: &str, pos: usize) -> usize {
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

// ---------------------------------------------------------------------------
// Compiled expression
// ---------------------------------------------------------------------------

/// Where a condition reads its value from.
#[derive(Clone, Debug)]
enum Source {
    /// A text field of the channel.
    Field(Field),
    /// An extra attribute; `alt` is the dashed spelling of a name written
    /// with underscores.
    Attribute { name: String, alt: Option<String> },
}

impl Source {
    fn resolve(text: &str, pos: usize, name: &str) -> Result<Source> {
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

/// `name` without `prefix` (ASCII case-insensitive), if it starts with it.
pub(crate) fn strip_prefix_ci<'n>(name: &'n str, prefix: &str) -> Option<&'n str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// A text comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextOp {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
}

/// A numeric comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumOp {
    Gt,
    Ge,
    Lt,
    Le,
}

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

/// The test a condition applies to the field value.
#[derive(Clone, Debug)]
enum Test {
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

fn parse_number(text: &str) -> Option<f64> {
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
    source: Source,
    test: Test,
    negate: bool,
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
    fn eval(&self, channel: &Channel<'_>) -> bool {
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
    fn eval_captures(&self, channel: &Channel<'_>, slot: &mut Option<Captures>) -> bool {
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

    fn fields(&self, set: &mut FieldSet) {
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

// ---------------------------------------------------------------------------
// Parser (shared with `mapping`)
// ---------------------------------------------------------------------------

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
                    .map_err(|e| {
                        error_at(
                            self.text,
                            value_pos,
                            format!("invalid regular expression: {e}"),
                        )
                    })?;
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

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// Regex capture groups from the `matches` condition that made an expression
/// true (see [`FilterExpr::captures`]).
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

/// A compiled filter expression (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct FilterExpr {
    text: String,
    root: Node,
}

impl FilterExpr {
    /// Compiles `text`. Regexes are compiled here, once.
    ///
    /// # Errors
    /// [`ErrorKind::Rule`](crate::ErrorKind::Rule) naming the column and what
    /// was expected there (unknown operators list the known ones).
    pub fn parse(text: &str) -> Result<FilterExpr> {
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Err(Error::rule(
                text,
                "empty expression: expected a condition such as `channel_name contains \"sport\"`",
            ));
        }
        let mut parser = Parser::new(text, &tokens, 0);
        let root = parser.parse_expr()?;
        if let Some(token) = tokens.get(parser.index()) {
            let message = if token.tok == Tok::RParen {
                "this `)` has no matching `(`".to_owned()
            } else {
                format!(
                    "expected AND, OR or the end of the expression, found {}",
                    describe(Some(token))
                )
            };
            return Err(error_at(text, token.pos, message));
        }
        Ok(FilterExpr::from_parts(text.trim().to_owned(), root))
    }

    /// An expression from its source text and compiled tree.
    pub(crate) fn from_parts(text: String, root: Node) -> Self {
        FilterExpr { text, root }
    }

    /// The source text of the expression.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if `channel` satisfies the expression.
    pub fn matches(&self, channel: &Channel<'_>) -> bool {
        self.root.eval(channel)
    }

    /// `None` if `channel` does not satisfy the expression; otherwise the
    /// capture groups of the first (leftmost) non-negated `matches` condition
    /// that matched and contributed to the result, or empty [`Captures`] if
    /// no such condition exists.
    ///
    /// Conditions under `NOT` and `not_matches` never provide captures, nor
    /// does a branch of an `OR` that turned out false.
    pub fn captures(&self, channel: &Channel<'_>) -> Option<Captures> {
        let mut slot = None;
        self.root
            .eval_captures(channel, &mut slot)
            .then(|| slot.unwrap_or_default())
    }

    /// The fields the expression reads ([`Field::Attributes`] for attribute
    /// conditions), e.g. to decide what to send a plugin.
    pub fn fields(&self) -> FieldSet {
        let mut set = FieldSet::NONE;
        self.root.fields(&mut set);
        set
    }
}

impl FromStr for FilterExpr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        FilterExpr::parse(text)
    }
}

impl fmt::Display for FilterExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a [`FilterRule`] does with the channels it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Matching channels are kept.
    Include,
    /// Matching channels are dropped.
    Exclude,
}

/// One include or exclude filter.
#[derive(Clone, Debug)]
pub struct FilterRule {
    /// Keep or drop what matches.
    pub action: FilterAction,
    /// The condition.
    pub expr: FilterExpr,
}

impl FilterRule {
    /// A rule from an action and an expression text.
    ///
    /// # Errors
    /// The expression's parse error.
    pub fn parse(action: FilterAction, text: &str) -> Result<FilterRule> {
        Ok(FilterRule {
            action,
            expr: FilterExpr::parse(text)?,
        })
    }

    /// An include rule for `text`.
    ///
    /// # Errors
    /// The expression's parse error.
    pub fn include(text: &str) -> Result<FilterRule> {
        FilterRule::parse(FilterAction::Include, text)
    }

    /// An exclude rule for `text`.
    ///
    /// # Errors
    /// The expression's parse error.
    pub fn exclude(text: &str) -> Result<FilterRule> {
        FilterRule::parse(FilterAction::Exclude, text)
    }
}

/// Include and exclude filters applied in order, as upstream m3u-proxy does.
///
/// A channel starts out dropped if the first rule is an include, kept
/// otherwise; then every rule that matches sets its state (include → kept,
/// exclude → dropped), so later rules win. An empty set keeps everything.
/// The decision depends on the channel alone, so streaming and in-memory
/// filtering give the same result.
#[derive(Clone, Debug, Default)]
pub struct FilterSet {
    rules: Vec<FilterRule>,
}

impl FilterSet {
    /// A set of `rules`, applied in the given order.
    pub fn new(rules: Vec<FilterRule>) -> Self {
        FilterSet { rules }
    }

    /// Appends a rule.
    pub fn push(&mut self, rule: FilterRule) {
        self.rules.push(rule);
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[FilterRule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule (everything is kept).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True if `channel` survives the filters.
    pub fn keeps(&self, channel: &Channel<'_>) -> bool {
        let Some(first) = self.rules.first() else {
            return true;
        };
        let mut keep = first.action == FilterAction::Exclude;
        for rule in &self.rules {
            let include = rule.action == FilterAction::Include;
            // A rule that would not change the state need not be evaluated.
            if include != keep && rule.expr.matches(channel) {
                keep = include;
            }
        }
        keep
    }

    /// Every field any rule reads.
    pub fn fields(&self) -> FieldSet {
        FieldSet(
            self.rules
                .iter()
                .fold(0, |bits, r| bits | r.expr.fields().0),
        )
    }
}

impl FromIterator<FilterRule> for FilterSet {
    fn from_iter<I: IntoIterator<Item = FilterRule>>(iter: I) -> Self {
        FilterSet::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Attribute;
    use crate::{ErrorKind, OwnedChannel};

    fn channel(name: &str, group: &str) -> OwnedChannel {
        Channel {
            channel_name: name.to_owned().into(),
            group_title: group.to_owned().into(),
            ..Channel::default()
        }
    }

    fn with_attr(mut ch: OwnedChannel, name: &str, value: &str) -> OwnedChannel {
        ch.attributes.push(Attribute {
            name: name.to_owned().into(),
            value: value.to_owned().into(),
        });
        ch
    }

    fn m(expr: &str, ch: &OwnedChannel) -> bool {
        FilterExpr::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches(ch)
    }

    fn err(expr: &str) -> String {
        let e = FilterExpr::parse(expr).expect_err(expr);
        assert!(matches!(e.kind(), ErrorKind::Rule { .. }), "{e:?}");
        e.to_string()
    }

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
    fn escapes_in_values() {
        let ch = channel(r#"say "hi" \o/"#, "");
        assert!(m(r#"channel_name equals "say \"hi\" \\o/""#, &ch));
        // Unknown escapes are kept, so regexes need no doubling.
        let ch = channel("Channel 42", "");
        assert!(m(r#"channel_name matches "\d+$""#, &ch));
        assert!(m(r#"channel_name matches "\\d+$""#, &ch));
    }

    #[test]
    fn regex_compile_error() {
        let msg = err(r#"channel_name matches "(unclosed""#);
        assert!(msg.contains("at column 22"), "{msg}");
        assert!(msg.contains("invalid regular expression"), "{msg}");
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
    fn syntax_errors_point_at_the_problem() {
        let msg = err(r#"channel_name contains sport"#);
        assert!(msg.contains("at column 23"), "{msg}");
        assert!(msg.contains("expected a value in double quotes"), "{msg}");

        let msg = err(r#"channel_name contains "a" group_title equals "b""#);
        assert!(msg.contains("at column 27"), "{msg}");
        assert!(msg.contains("expected AND, OR"), "{msg}");

        let msg = err(r#"(channel_name contains "a""#);
        assert!(
            msg.contains("expected `)` to close the `(` at column 1"),
            "{msg}"
        );

        let msg = err(r#"channel_name contains "a")"#);
        assert!(msg.contains("no matching `(`"), "{msg}");

        let msg = err(r#"channel_name contains "a"#);
        assert!(msg.contains("no closing"), "{msg}");

        let msg = err(r#"channel_name contains "a" AND"#);
        assert!(msg.contains("found the end of the rule"), "{msg}");

        let msg = err("channel_name");
        assert!(
            msg.contains("expected an operator after `channel_name`"),
            "{msg}"
        );

        let msg = err("   ");
        assert!(msg.contains("empty expression"), "{msg}");

        let msg = err(r#"tvg_chno > "ten""#);
        assert!(msg.contains("is not a number"), "{msg}");

        let msg = err(r#"channel_name contains 'x'"#);
        assert!(msg.contains("double quotes"), "{msg}");

        let msg = err(r#"channel_name not not_contains "x""#);
        assert!(msg.contains("cancels out"), "{msg}");

        let msg = err(r#"tvg_chno not > "1""#);
        assert!(msg.contains("cannot be combined"), "{msg}");

        let msg = err(r#"attributes contains "x""#);
        assert!(msg.contains("not a text field"), "{msg}");

        let msg = err(r#"channel_name contains "x" & group_title == "y""#);
        assert!(msg.contains("unexpected character `&`"), "{msg}");
    }

    #[test]
    fn column_counts_characters() {
        let msg = err(r#"channel_name == "é" foo"#);
        assert!(msg.contains("at column 21"), "{msg}");
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

    #[test]
    fn fields_used() {
        let e = FilterExpr::parse(
            r#"channel_name == "a" OR NOT (tvg-country == "x" AND tvg_id != "")"#,
        )
        .expect("parse");
        assert_eq!(
            e.fields(),
            FieldSet::of(&[Field::ChannelName, Field::Attributes, Field::TvgId])
        );
        assert_eq!(e.to_string(), e.as_str());
        let parsed: FilterExpr = "group_title == \"x\"".parse().expect("parse");
        assert_eq!(parsed.fields(), FieldSet::of(&[Field::GroupTitle]));
    }

    #[test]
    fn empty_filter_set_keeps_everything() {
        let set = FilterSet::default();
        assert!(set.is_empty());
        assert!(set.keeps(&channel("anything", "")));
    }

    #[test]
    fn include_first_starts_from_drop() {
        let set: FilterSet = [FilterRule::include(r#"group_title == "sport""#).expect("rule")]
            .into_iter()
            .collect();
        assert!(set.keeps(&channel("A", "Sport")));
        assert!(!set.keeps(&channel("B", "News")));
    }

    #[test]
    fn exclude_first_starts_from_keep() {
        let set = FilterSet::new(vec![
            FilterRule::exclude(r#"channel_name contains "xxx""#).expect("rule")
        ]);
        assert!(set.keeps(&channel("News", "")));
        assert!(!set.keeps(&channel("XXX films", "")));
    }

    #[test]
    fn rules_apply_in_order_later_wins() {
        let set = FilterSet::new(vec![
            FilterRule::include(r#"group_title == "sport""#).expect("rule"),
            FilterRule::exclude(r#"channel_name contains "4k""#).expect("rule"),
            FilterRule::include(r#"channel_name contains "premium""#).expect("rule"),
        ]);
        assert_eq!(set.len(), 3);
        assert!(set.keeps(&channel("Sport 1", "Sport")));
        assert!(!set.keeps(&channel("Sport 1 4K", "Sport")));
        assert!(set.keeps(&channel("Premium Sport 4K", "Sport")));
        assert!(set.keeps(&channel("Premium Movies", "Movies")));
        assert!(!set.keeps(&channel("Movies", "Movies")));

        // Order matters: the same rules with the exclude last.
        let set = FilterSet::new(vec![
            FilterRule::include(r#"group_title == "sport""#).expect("rule"),
            FilterRule::include(r#"channel_name contains "premium""#).expect("rule"),
            FilterRule::exclude(r#"channel_name contains "4k""#).expect("rule"),
        ]);
        assert!(!set.keeps(&channel("Premium Sport 4K", "Sport")));
        assert!(set.keeps(&channel("Premium Movies", "Movies")));
        assert_eq!(
            set.fields(),
            FieldSet::of(&[Field::GroupTitle, Field::ChannelName])
        );
    }

    #[test]
    fn filter_action_deserializes_lowercase() {
        let action: FilterAction =
            serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                serde::de::value::Error,
            >::new("exclude"))
            .expect("deserialize");
        assert_eq!(action, FilterAction::Exclude);
    }
}
