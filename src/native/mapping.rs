//! Data mapping rules, in the spirit of upstream m3u-proxy's data mapping.
//!
//! A rule is one string:
//!
//! ```text
//! [<condition>] SET <action>[, <action>...]
//! ```
//!
//! - `<condition>` is a [`FilterExpr`]; without one the rule applies to every
//!   channel.
//! - An action is `<field> <op> "<value>"` with `<op>` one of
//!   - `=`  set the field;
//!   - `?=` set it only if it is empty (blank counts as empty);
//!   - `+=` append to it;
//!   - `-=` remove every occurrence of the value (ignoring case).
//! - `<field>` is a text [`Field`] (`channel_name`, `tvg-logo`, ...) or an
//!   extra EXTINF attribute: a name with a dash (`tvg-country`,
//!   `catchup-days`) or any name prefixed with `attr:` (`attr:catchup`).
//!   Setting an attribute to the empty string removes it.
//! - In values, `$1`..`$9` stand for the capture groups of the first
//!   `matches` condition that matched (see [`FilterExpr::captures`]), `$0`
//!   for its whole match, and `$$` for a literal `$`. A group that does not
//!   exist or did not take part in the match is empty.
//!
//! ```text
//! channel_name matches "^(.+) \| HD$" SET channel_name = "$1", resolution ?= "1080p"
//! group_title == "" SET group_title = "Uncategorized"
//! SET channel_name -= " [geo-blocked]"
//! tvg_id ends_with ".uk" SET tvg-country = "UK"
//! ```
//!
//! [`Mapper`] applies rules in order; each rule sees the result of the ones
//! before it.

use std::borrow::Cow;
use std::fmt;

use crate::abi::{Channel, Field, FieldSet};
use crate::native::filter::{
    describe, error_at, is_keyword, lex, strip_prefix_ci, Captures, FilterExpr, Parser, Tok, Token,
    MAX_CAPTURE_GROUP,
};
use crate::{Error, Result};

/// Where an action writes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Field(Field),
    Attribute(String),
}

impl Target {
    fn resolve(text: &str, pos: usize, name: &str) -> Result<Target> {
        if let Some(attr) = strip_prefix_ci(name, "attr:") {
            if attr.is_empty() || attr.contains(':') {
                return Err(error_at(
                    text,
                    pos,
                    "`attr:` must be followed by an attribute name, e.g. `attr:catchup`",
                ));
            }
            return Ok(Target::Attribute(attr.to_owned()));
        }
        match Field::from_name(name) {
            Some(field) if field.is_text() => return Ok(Target::Field(field)),
            Some(field) => {
                return Err(error_at(
                    text,
                    pos,
                    format!(
                        "`{}` cannot be set as a whole; set one attribute by name \
                         (`tvg-country = \"UK\"`) instead",
                        field.name()
                    ),
                ))
            }
            None => {}
        }
        if name.contains('-') && !name.contains(':') {
            return Ok(Target::Attribute(name.to_owned()));
        }
        let known: Vec<&str> = Field::ALL
            .iter()
            .filter(|f| f.is_text())
            .map(|f| f.name())
            .collect();
        let hint = if name.contains('_') {
            format!(
                " (did you mean the attribute `{}`?)",
                name.replace('_', "-")
            )
        } else {
            String::new()
        };
        Err(error_at(
            text,
            pos,
            format!(
                "unknown field `{name}`{hint}; known fields are: {}; an EXTINF attribute is \
                 written with dashes as in the playlist (`tvg-country`) or as `attr:<name>`",
                known.join(", ")
            ),
        ))
    }

    fn get<'c>(&self, channel: &'c Channel<'_>) -> &'c str {
        match self {
            Target::Field(field) => channel.text(*field),
            Target::Attribute(name) => channel.attribute(name).unwrap_or(""),
        }
    }

    fn set(&self, channel: &mut Channel<'_>, value: String) {
        match self {
            Target::Field(field) => {
                if let Some(slot) = channel.text_mut(*field) {
                    *slot = Cow::Owned(value);
                }
            }
            Target::Attribute(name) if value.is_empty() => channel
                .attributes
                .retain(|a| !a.name.eq_ignore_ascii_case(name)),
            Target::Attribute(name) => {
                channel.set_attribute(Cow::Owned(name.clone()), Cow::Owned(value))
            }
        }
    }

    fn field(&self) -> Field {
        match self {
            Target::Field(field) => *field,
            Target::Attribute(_) => Field::Attributes,
        }
    }
}

/// How an action changes its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionKind {
    /// `=`
    Set,
    /// `?=`
    SetIfEmpty,
    /// `+=`
    Append,
    /// `-=`
    Remove,
}

impl ActionKind {
    fn from_symbol(symbol: &str) -> Option<ActionKind> {
        Some(match symbol {
            "=" => ActionKind::Set,
            "?=" => ActionKind::SetIfEmpty,
            "+=" => ActionKind::Append,
            "-=" => ActionKind::Remove,
            _ => return None,
        })
    }
}

/// A piece of a value template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Group(usize),
}

/// A value with `$n` references, split once at parse time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    parts: Vec<Part>,
}

impl Template {
    fn parse(text: &str, pos: usize, value: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '$' {
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some('$') => literal.push('$'),
                Some(d @ '0'..='9') => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    let group = d as usize - '0' as usize;
                    debug_assert!(group <= MAX_CAPTURE_GROUP);
                    parts.push(Part::Group(group));
                }
                _ => {
                    return Err(error_at(
                        text,
                        pos,
                        "in this value, `$` must be followed by a digit (`$1`..`$9`) or by `$` \
                         (write `$$` for a literal `$`)",
                    ))
                }
            }
        }
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    fn render<'t>(&'t self, captures: &Captures) -> Cow<'t, str> {
        match self.parts.as_slice() {
            [Part::Literal(literal)] => Cow::Borrowed(literal),
            parts => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Literal(literal) => out.push_str(literal),
                        Part::Group(group) => out.push_str(captures.get(*group).unwrap_or("")),
                    }
                }
                Cow::Owned(out)
            }
        }
    }
}

/// One `<field> <op> "<value>"` action.
#[derive(Clone, Debug)]
struct Action {
    target: Target,
    kind: ActionKind,
    value: Template,
}

impl Action {
    fn apply(&self, channel: &mut Channel<'_>, captures: &Captures) -> bool {
        let value = self.value.render(captures);
        let current = self.target.get(channel);
        let new = match self.kind {
            ActionKind::Set => (current != value).then(|| value.into_owned()),
            ActionKind::SetIfEmpty => {
                (current.trim().is_empty() && current != value).then(|| value.into_owned())
            }
            ActionKind::Append => (!value.is_empty()).then(|| format!("{current}{value}")),
            ActionKind::Remove => remove_all_ignore_case(current, &value),
        };
        match new {
            Some(new) => {
                self.target.set(channel, new);
                true
            }
            None => false,
        }
    }
}

/// Length in bytes of the prefix of `haystack` that equals `needle` (already
/// lowercased, as chars) ignoring case, if there is one ending on a char
/// boundary.
fn prefix_len_ignore_case(haystack: &str, needle: &[char]) -> Option<usize> {
    let mut matched = 0;
    for (index, c) in haystack.char_indices() {
        if matched == needle.len() {
            return Some(index);
        }
        for lower in c.to_lowercase() {
            if needle.get(matched) != Some(&lower) {
                return None;
            }
            matched += 1;
        }
    }
    (matched == needle.len()).then_some(haystack.len())
}

/// `haystack` without any occurrence of `needle` (ignoring case), or `None`
/// if there is none (or `needle` is empty).
fn remove_all_ignore_case(haystack: &str, needle: &str) -> Option<String> {
    let needle: Vec<char> = needle.chars().flat_map(char::to_lowercase).collect();
    if needle.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(haystack.len());
    let mut found = false;
    let mut rest = haystack;
    while let Some(c) = rest.chars().next() {
        match prefix_len_ignore_case(rest, &needle) {
            // A non-empty needle always consumes at least one char.
            Some(len) if len > 0 => {
                found = true;
                rest = &rest[len..];
            }
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    found.then_some(out)
}

/// One compiled mapping rule (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct MappingRule {
    text: String,
    condition: Option<FilterExpr>,
    actions: Vec<Action>,
}

impl MappingRule {
    /// Compiles one rule.
    ///
    /// # Errors
    /// [`ErrorKind::Rule`](crate::ErrorKind::Rule) naming the column and what
    /// was expected there; unknown target fields list the known ones.
    pub fn parse(text: &str) -> Result<MappingRule> {
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Err(Error::rule(
                text,
                "empty mapping rule: expected `[<condition>] SET <field> = \"value\"`",
            ));
        }
        let Some(set_at) = tokens.iter().position(|t| is_keyword(Some(t), "set")) else {
            return Err(Error::rule(
                text,
                "missing `SET`: a mapping rule is `[<condition>] SET <field> = \"value\"[, ...]`, \
                 e.g. `group_title == \"\" SET group_title = \"Other\"`",
            ));
        };

        let condition = if set_at == 0 {
            None
        } else {
            let mut parser = Parser::new(text, &tokens, 0);
            let root = parser.parse_expr()?;
            let next = tokens.get(parser.index());
            if !is_keyword(next, "set") {
                return Err(error_at(
                    text,
                    next.map_or(text.len(), |t| t.pos),
                    format!(
                        "expected AND, OR or SET after the condition, found {}",
                        describe(next)
                    ),
                ));
            }
            let condition_text = text
                .get(tokens[0].pos..tokens[set_at].pos)
                .unwrap_or_default()
                .trim();
            Some(FilterExpr::from_parts(condition_text.to_owned(), root))
        };

        let mut actions = Vec::new();
        let mut index = set_at + 1;
        let token_pos = |token: Option<&Token<'_>>| token.map_or(text.len(), |t| t.pos);
        loop {
            let token = tokens.get(index);
            let Some(Token {
                tok: Tok::Word(name),
                pos: name_pos,
            }) = token
            else {
                let after = if actions.is_empty() { "SET" } else { "`,`" };
                return Err(error_at(
                    text,
                    token_pos(token),
                    format!(
                        "expected a field to set after {after}, found {}",
                        describe(token)
                    ),
                ));
            };
            let target = Target::resolve(text, *name_pos, name)?;
            index += 1;

            let token = tokens.get(index);
            let kind = match token {
                Some(Token {
                    tok: Tok::Sym(symbol),
                    ..
                }) => ActionKind::from_symbol(symbol),
                _ => None,
            };
            let Some(kind) = kind else {
                return Err(error_at(
                    text,
                    token_pos(token),
                    format!(
                        "expected `=`, `?=`, `+=` or `-=` after `{name}`, found {}",
                        describe(token)
                    ),
                ));
            };
            index += 1;

            let token = tokens.get(index);
            let Some(Token {
                tok: Tok::Str(value),
                pos: value_pos,
            }) = token
            else {
                return Err(error_at(
                    text,
                    token_pos(token),
                    format!(
                        "expected a value in double quotes for `{name}`, found {}",
                        describe(token)
                    ),
                ));
            };
            let value = Template::parse(text, *value_pos, value)?;
            index += 1;
            actions.push(Action {
                target,
                kind,
                value,
            });

            match tokens.get(index) {
                None => break,
                Some(Token {
                    tok: Tok::Comma, ..
                }) => index += 1,
                other => {
                    return Err(error_at(
                        text,
                        token_pos(other),
                        format!(
                            "expected `,` and another action, or the end of the rule, found {}",
                            describe(other)
                        ),
                    ))
                }
            }
        }

        Ok(MappingRule {
            text: text.trim().to_owned(),
            condition,
            actions,
        })
    }

    /// The rule's source text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The rule's condition, if it has one.
    pub fn condition(&self) -> Option<&FilterExpr> {
        self.condition.as_ref()
    }

    /// Applies the rule to `channel`; true if anything changed.
    pub fn apply(&self, channel: &mut Channel<'_>) -> bool {
        let captures = match &self.condition {
            None => Captures::default(),
            Some(condition) => match condition.captures(channel) {
                Some(captures) => captures,
                None => return false,
            },
        };
        let mut changed = false;
        for action in &self.actions {
            changed |= action.apply(channel, &captures);
        }
        changed
    }

    /// Every field the rule reads or writes ([`Field::Attributes`] for
    /// attributes).
    pub fn fields(&self) -> FieldSet {
        let mut bits = self.condition.as_ref().map_or(0, |c| c.fields().0);
        for action in &self.actions {
            bits |= action.target.field().bit();
        }
        FieldSet(bits)
    }
}

impl fmt::Display for MappingRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An ordered list of [`MappingRule`]s.
#[derive(Clone, Debug, Default)]
pub struct Mapper {
    rules: Vec<MappingRule>,
}

impl Mapper {
    /// A mapper applying `rules` in order.
    pub fn new(rules: Vec<MappingRule>) -> Self {
        Mapper { rules }
    }

    /// Compiles every rule.
    ///
    /// # Errors
    /// The first rule that does not parse.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Mapper> {
        rules
            .iter()
            .map(|rule| MappingRule::parse(rule.as_ref()))
            .collect::<Result<Vec<_>>>()
            .map(Mapper::new)
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[MappingRule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies every rule in order, each seeing the result of the previous
    /// ones; true if anything changed. Works on an
    /// [`OwnedChannel`](crate::OwnedChannel) as well as on a borrowed one
    /// (changed fields become owned).
    pub fn apply(&self, channel: &mut Channel<'_>) -> bool {
        let mut changed = false;
        for rule in &self.rules {
            changed |= rule.apply(channel);
        }
        changed
    }

    /// Every field any rule reads or writes.
    pub fn fields(&self) -> FieldSet {
        FieldSet(self.rules.iter().fold(0, |bits, r| bits | r.fields().0))
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

    fn rule(text: &str) -> MappingRule {
        MappingRule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        let e = MappingRule::parse(text).expect_err(text);
        assert!(matches!(e.kind(), ErrorKind::Rule { .. }), "{e:?}");
        e.to_string()
    }

    #[test]
    fn set_without_condition() {
        let mut ch = channel("A", "Old");
        assert!(rule(r#"SET group_title = "New""#).apply(&mut ch));
        assert_eq!(ch.group_title, "New");
        // Setting the same value again is not a change.
        assert!(!rule(r#"set group_title = "New""#).apply(&mut ch));
        assert_eq!(ch.group_title, "New");
    }

    #[test]
    fn set_if_empty() {
        let r = rule(r#"SET tvg_logo ?= "default.png""#);
        let mut ch = channel("A", "");
        assert!(r.apply(&mut ch));
        assert_eq!(ch.tvg_logo, "default.png");
        let mut ch = channel("A", "");
        ch.tvg_logo = "mine.png".into();
        assert!(!r.apply(&mut ch));
        assert_eq!(ch.tvg_logo, "mine.png");
        // Blank counts as empty.
        ch.tvg_logo = "  ".into();
        assert!(r.apply(&mut ch));
        assert_eq!(ch.tvg_logo, "default.png");
    }

    #[test]
    fn append() {
        let mut ch = channel("News", "");
        assert!(rule(r#"SET channel_name += " (UK)""#).apply(&mut ch));
        assert_eq!(ch.channel_name, "News (UK)");
        assert!(!rule(r#"SET channel_name += """#).apply(&mut ch));
        assert_eq!(ch.channel_name, "News (UK)");
    }

    #[test]
    fn remove_every_occurrence_ignoring_case() {
        let mut ch = channel("HD Sport hd 1 Hd", "");
        assert!(rule(r#"SET channel_name -= "hd""#).apply(&mut ch));
        assert_eq!(ch.channel_name, " Sport  1 ");
        assert!(!rule(r#"SET channel_name -= "hd""#).apply(&mut ch));
        assert!(!rule(r#"SET channel_name -= """#).apply(&mut ch));
        let mut ch = channel("Sport [Geo-Blocked]", "");
        assert!(rule(r#"SET channel_name-=" [geo-blocked]""#).apply(&mut ch));
        assert_eq!(ch.channel_name, "Sport");
        // Unicode case folding.
        let mut ch = channel("ÄRD Ärd ard", "");
        assert!(rule(r#"SET channel_name -= "ärd""#).apply(&mut ch));
        assert_eq!(ch.channel_name, "  ard");
    }

    #[test]
    fn remove_helper_edge_cases() {
        assert_eq!(remove_all_ignore_case("aaaa", "aa").as_deref(), Some(""));
        assert_eq!(remove_all_ignore_case("aXa", "x").as_deref(), Some("aa"));
        assert_eq!(remove_all_ignore_case("abc", "abcd"), None);
        assert_eq!(remove_all_ignore_case("", "a"), None);
        // `İ` lowercases to two chars; a needle of only the first does not
        // match half a character.
        assert_eq!(remove_all_ignore_case("İx", "i"), None);
        assert_eq!(remove_all_ignore_case("İx", "İ").as_deref(), Some("x"));
    }

    #[test]
    fn condition_gates_the_rule() {
        let r = rule(r#"group_title == "" SET group_title = "Uncategorized""#);
        let mut ch = channel("A", "");
        assert!(r.apply(&mut ch));
        assert_eq!(ch.group_title, "Uncategorized");
        let mut ch = channel("A", "News");
        assert!(!r.apply(&mut ch));
        assert_eq!(ch.group_title, "News");
        assert_eq!(
            r.condition().map(FilterExpr::as_str),
            Some(r#"group_title == """#)
        );
    }

    #[test]
    fn regex_captures_in_values() {
        let r = rule(
            r#"channel_name matches "^(.+?) (\d+) \| (HD|SD)$" SET channel_name = "$1 $2", resolution ?= "$3", tvg_id = "$1.$9.$$2""#,
        );
        let mut ch = channel("Sky Sports 2 | HD", "");
        assert!(r.apply(&mut ch));
        assert_eq!(ch.channel_name, "Sky Sports 2");
        assert_eq!(ch.resolution, "HD");
        // $9 does not exist: empty. $$ is a literal dollar.
        assert_eq!(ch.tvg_id, "Sky Sports..$2");
        // The condition no longer matches the renamed channel.
        assert!(!r.apply(&mut ch));
    }

    #[test]
    fn captures_without_regex_are_empty() {
        let mut ch = channel("A", "G");
        assert!(rule(r#"SET tvg_name = "[$1]$0""#).apply(&mut ch));
        assert_eq!(ch.tvg_name, "[]");
    }

    #[test]
    fn captures_come_from_the_matching_or_branch() {
        let r = rule(
            r#"channel_name matches "^UK: (.+)$" OR channel_name matches "^(.+) \(UK\)$" SET channel_name = "$1", tvg-country = "UK""#,
        );
        let mut a = channel("UK: BBC One", "");
        let mut b = channel("ITV (UK)", "");
        assert!(r.apply(&mut a));
        assert!(r.apply(&mut b));
        assert_eq!(a.channel_name, "BBC One");
        assert_eq!(b.channel_name, "ITV");
        assert_eq!(b.attribute("tvg-country"), Some("UK"));
    }

    #[test]
    fn attributes() {
        let mut ch = channel("A", "");
        ch.attributes.push(Attribute {
            name: "Catchup".into(),
            value: "default".into(),
        });
        let r = rule(r#"SET tvg-country = "UK", attr:catchup = "append", tvg-language ?= "en""#);
        assert!(r.apply(&mut ch));
        assert_eq!(ch.attribute("tvg-country"), Some("UK"));
        assert_eq!(ch.attribute("catchup"), Some("append"));
        assert_eq!(ch.attribute("tvg-language"), Some("en"));
        assert_eq!(ch.attributes.len(), 3);
        // Empty value removes the attribute.
        assert!(rule(r#"SET attr:CATCHUP = """#).apply(&mut ch));
        assert_eq!(ch.attribute("catchup"), None);
        assert_eq!(ch.attributes.len(), 2);
        // Appending to and removing from an attribute.
        assert!(rule(r#"SET tvg-language += ",fr""#).apply(&mut ch));
        assert_eq!(ch.attribute("tvg-language"), Some("en,fr"));
        assert!(rule(r#"SET tvg-language -= "EN,""#).apply(&mut ch));
        assert_eq!(ch.attribute("tvg-language"), Some("fr"));
    }

    #[test]
    fn dashed_field_names_are_fields_not_attributes() {
        let mut ch = channel("A", "");
        assert!(rule(r#"SET tvg-logo = "x.png", Group-Title = "G""#).apply(&mut ch));
        assert_eq!(ch.tvg_logo, "x.png");
        assert_eq!(ch.group_title, "G");
        assert!(ch.attributes.is_empty());
    }

    #[test]
    fn mapper_applies_rules_in_order() {
        let rules = vec![
            r#"SET channel_name -= " HD""#.to_owned(),
            r#"channel_name == "BBC One" SET tvg_id = "bbc1.uk""#.to_owned(),
            r#"tvg_id ends_with ".uk" SET group_title = "UK", tvg-country = "GB""#.to_owned(),
        ];
        let mapper = Mapper::parse(&rules).expect("parse");
        assert_eq!(mapper.len(), 3);
        let mut ch = channel("BBC One HD", "");
        assert!(mapper.apply(&mut ch));
        assert_eq!(ch.channel_name, "BBC One");
        assert_eq!(ch.tvg_id, "bbc1.uk");
        assert_eq!(ch.group_title, "UK");
        assert_eq!(ch.attribute("tvg-country"), Some("GB"));
        // Applying again changes nothing.
        assert!(!mapper.apply(&mut ch));

        let mut other = channel("ITV", "Misc");
        assert!(!mapper.apply(&mut other));
        assert_eq!(other, channel("ITV", "Misc"));
        assert_eq!(
            mapper.fields(),
            FieldSet::of(&[
                Field::ChannelName,
                Field::TvgId,
                Field::GroupTitle,
                Field::Attributes
            ])
        );
        assert!(Mapper::parse::<&str>(&[]).expect("empty").is_empty());
    }

    #[test]
    fn mapper_reports_the_bad_rule() {
        let e = Mapper::parse(&["SET tvg_id = \"a\"", "SET nonsense = \"b\""]).expect_err("bad");
        assert!(e.to_string().contains("SET nonsense"), "{e}");
    }

    #[test]
    fn unknown_target_lists_known_fields() {
        let msg = err(r#"SET chanel_name = "x""#);
        assert!(msg.contains("at column 5"), "{msg}");
        assert!(msg.contains("unknown field `chanel_name`"), "{msg}");
        for field in [
            "channel_name",
            "group_title",
            "tvg_logo",
            "stream_url",
            "resolution",
        ] {
            assert!(msg.contains(field), "{field} missing from {msg}");
        }
        let msg = err(r#"SET tvg_country = "x""#);
        assert!(
            msg.contains("did you mean the attribute `tvg-country`"),
            "{msg}"
        );
        let msg = err(r#"SET attributes = "x""#);
        assert!(msg.contains("cannot be set as a whole"), "{msg}");
        let msg = err(r#"SET attr: = "x""#);
        assert!(msg.contains("attribute name"), "{msg}");
    }

    #[test]
    fn syntax_errors() {
        assert!(err(r#"channel_name = "x""#).contains("missing `SET`"));
        assert!(err("  ").contains("empty mapping rule"));
        let msg = err("SET");
        assert!(
            msg.contains("expected a field to set after SET, found the end"),
            "{msg}"
        );
        let msg = err(r#"SET channel_name == "x""#);
        assert!(msg.contains("at column 18"), "{msg}");
        assert!(msg.contains("expected `=`, `?=`, `+=` or `-=`"), "{msg}");
        let msg = err(r#"SET channel_name = x"#);
        assert!(msg.contains("expected a value in double quotes"), "{msg}");
        let msg = err(r#"SET channel_name = "x" tvg_id = "y""#);
        assert!(msg.contains("expected `,`"), "{msg}");
        let msg = err(r#"SET channel_name = "x","#);
        assert!(msg.contains("after `,`, found the end"), "{msg}");
        let msg = err(r#"SET channel_name = "cost: $5x$""#);
        assert!(msg.contains("write `$$`"), "{msg}");
        let msg = err(r#"channel_name == "a" group_title == "b" SET tvg_id = "c""#);
        assert!(msg.contains("expected AND, OR or SET"), "{msg}");
        assert!(msg.contains("at column 21"), "{msg}");
        let msg = err(r#"channel_name bogus "a" SET tvg_id = "c""#);
        assert!(msg.contains("unknown operator `bogus`"), "{msg}");
        let msg = err(r#"channel_name matches "(" SET tvg_id = "c""#);
        assert!(msg.contains("invalid regular expression"), "{msg}");
    }

    #[test]
    fn values_may_contain_keywords_and_commas() {
        let mut ch = channel("A", "");
        assert!(rule(r#"SET channel_name = "SET, AND, OR", tvg_id = "x""#).apply(&mut ch));
        assert_eq!(ch.channel_name, "SET, AND, OR");
        assert_eq!(ch.tvg_id, "x");
    }

    #[test]
    fn borrowed_channels_become_owned_where_changed() {
        let name = String::from("Borrowed");
        let mut ch = Channel {
            channel_name: Cow::Borrowed(name.as_str()),
            ..Channel::default()
        };
        assert!(rule(r#"SET channel_name += "!""#).apply(&mut ch));
        assert_eq!(ch.channel_name, "Borrowed!");
        assert!(matches!(ch.channel_name, Cow::Owned(_)));
    }
}
