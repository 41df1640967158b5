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
//! - **Fields**: every text [`Field`](crate::abi::Field) by name, with `_`
//!   or `-` (`channel_name`, `group_title`, `tvg_id`, `tvg-id`, ...). Any
//!   other name is an extra EXTINF attribute looked up with
//!   [`Channel::attribute`]; a name written with `_` is also tried with `-`
//!   (`tvg_country` finds `tvg-country`). `attr:<name>` names an attribute
//!   explicitly. A missing attribute reads as the empty string.
//! - **Operators**: `equals`, `contains`, `starts_with`, `ends_with`,
//!   `matches` (regular expression, [`regex`] syntax, unanchored; the CLI
//!   is built without the Unicode property classes `\p{..}` / `\P{..}`,
//!   which are refused), their negations `not_equals`, `not_contains`,
//!   `not_starts_with`, `not_ends_with`, `not_matches` (also written as two
//!   words, `not contains`), `==` / `!=` (aliases of `equals` /
//!   `not_equals`) and the numeric `>`, `>=`, `<`, `<=`. Numeric operators
//!   parse both sides as `f64` (surrounding blanks ignored); a field value
//!   that is not a finite number never matches.
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
//!
//! This file owns [`FilterExpr`] (compile, match, captures, fields); the
//! lexer is in `lexer.rs`, the parser and operator table in `parse.rs`, the
//! compiled tree and its evaluation in `eval.rs`, and the rules in
//! `rules.rs`.

mod eval;
mod lexer;
mod parse;
mod rules;

use std::fmt;
use std::str::FromStr;

use crate::abi::{Channel, FieldSet};
use crate::{Error, Result};

pub use eval::Captures;
use eval::Node;
pub(crate) use lexer::{describe, error_at, is_keyword, lex, strip_prefix_ci, Tok, Token};
pub(crate) use parse::Parser;
pub use rules::{FilterAction, FilterRule, FilterSet};

/// Deepest nesting of parentheses and `NOT` an expression may use; deeper
/// expressions are refused so evaluation never exhausts the stack.
pub const MAX_NESTING: usize = 64;

/// Highest capture group number a mapping value can refer to (`$9`).
pub const MAX_CAPTURE_GROUP: usize = 9;

/// Longest compiled regex accepted, in bytes of the regex engine's program.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

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

    /// The fields the expression reads
    /// ([`Field::Attributes`](crate::abi::Field::Attributes) for attribute
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{Attribute, Field};
    use crate::{ErrorKind, OwnedChannel};

    pub(super) fn channel(name: &str, group: &str) -> OwnedChannel {
        Channel {
            channel_name: name.to_owned().into(),
            group_title: group.to_owned().into(),
            ..Channel::default()
        }
    }

    pub(super) fn with_attr(mut ch: OwnedChannel, name: &str, value: &str) -> OwnedChannel {
        ch.attributes.push(Attribute {
            name: name.to_owned().into(),
            value: value.to_owned().into(),
        });
        ch
    }

    pub(super) fn m(expr: &str, ch: &OwnedChannel) -> bool {
        FilterExpr::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches(ch)
    }

    pub(super) fn err(expr: &str) -> String {
        let e = FilterExpr::parse(expr).expect_err(expr);
        assert!(matches!(e.kind(), ErrorKind::Rule { .. }), "{e:?}");
        e.to_string()
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
}
