//! Normalizes `group-title`: trims it, collapses runs of whitespace, applies
//! a case style, and gives channels without a group a default one.
//! It reads only `group-title` and answers with field patches.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CaseStyle {
    Keep,
    Title,
    Upper,
    Lower,
}

struct GroupNormalizer {
    empty_group: String,
    case: CaseStyle,
}

impl Default for GroupNormalizer {
    fn default() -> Self {
        GroupNormalizer {
            empty_group: String::from("Uncategorized"),
            case: CaseStyle::Title,
        }
    }
}

impl Plugin for GroupNormalizer {
    const DESCRIPTION: &'static str = "Normalizes group-title and fills empty groups";
    const READS: FieldSet = FieldSet::of(&[Field::GroupTitle]);

    fn init(&mut self) -> Result<(), PluginError> {
        if let Some(group) = config::get("empty_group") {
            self.empty_group = group;
        }
        if let Some(case) = config::get("case") {
            self.case = match case.as_str() {
                "keep" => CaseStyle::Keep,
                "title" => CaseStyle::Title,
                "upper" => CaseStyle::Upper,
                "lower" => CaseStyle::Lower,
                other => {
                    return Err(PluginError::Config(format!(
                        "group_normalizer: case = {other:?} is not one of keep, title, upper, lower"
                    )))
                }
            };
        }
        log_info!(
            "group_normalizer: case {:?}, empty group {:?}",
            self.case,
            self.empty_group
        );
        Ok(())
    }

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for GroupNormalizer {
    fn map<'a>(
        &mut self,
        _ctx: &StageContext<'_>,
        channel: &Channel<'a>,
        patches: &mut Patches<'a>,
    ) {
        let normalized = normalize(&channel.group_title, self.case, &self.empty_group);
        if normalized != channel.group_title {
            patches.set(Field::GroupTitle, normalized);
        }
    }
}

fn normalize(group: &str, case: CaseStyle, empty_group: &str) -> String {
    let mut out = String::with_capacity(group.len());
    for word in group.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        match case {
            CaseStyle::Keep => out.push_str(word),
            CaseStyle::Upper => out.extend(word.chars().flat_map(char::to_uppercase)),
            CaseStyle::Lower => out.extend(word.chars().flat_map(char::to_lowercase)),
            CaseStyle::Title => {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.extend(chars.flat_map(char::to_lowercase));
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str(empty_group);
    }
    out
}

export_plugin!(GroupNormalizer, "group_normalizer");
