//! Include/exclude rules: [`FilterAction`], [`FilterRule`] and the ordered
//! [`FilterSet`] the filtering stage applies.

use super::FilterExpr;
use crate::abi::{Channel, FieldSet};
use crate::Result;

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
    use super::super::tests::channel;
    use super::*;
    use crate::abi::Field;

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
