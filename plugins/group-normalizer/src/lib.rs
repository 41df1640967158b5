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
    /// The normalized group of the current channel (reused, so mapping a
    /// channel allocates nothing).
    buffer: String,
}

impl Default for GroupNormalizer {
    fn default() -> Self {
        GroupNormalizer {
            empty_group: String::from("Uncategorized"),
            case: CaseStyle::Title,
            buffer: String::new(),
        }
    }
}

impl Plugin for GroupNormalizer {
    const DESCRIPTION: &'static str = "Normalizes group-title and fills empty groups";
    const READS: FieldSet = FieldSet::of(&[Field::GroupTitle]);
    const PARALLEL_SAFE: bool = true;

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
        channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        let group = channel.group_title();
        normalize(group, self.case, &self.empty_group, &mut self.buffer);
        if self.buffer != group {
            patches.set(Field::GroupTitle, &self.buffer);
        }
    }
}

/// Writes the normalized `group` into `out` (cleared first).
fn normalize(group: &str, case: CaseStyle, empty_group: &str, out: &mut String) {
    out.clear();
    for word in group.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        // ASCII words (nearly all group titles) skip the Unicode tables.
        if word.is_ascii() {
            let start = out.len();
            out.push_str(word);
            // ASCII case changes keep the string valid UTF-8.
            let bytes = &mut out.as_mut_str()[start..];
            match case {
                CaseStyle::Keep => {}
                CaseStyle::Upper => bytes.make_ascii_uppercase(),
                CaseStyle::Lower => bytes.make_ascii_lowercase(),
                CaseStyle::Title => {
                    bytes.make_ascii_lowercase();
                    if let Some(first) = bytes.get_mut(..1) {
                        first.make_ascii_uppercase();
                    }
                }
            }
            continue;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3u_proxy_plugin_sdk::testing::TestHost;

    fn group(title: &str) -> Channel<'static> {
        Channel {
            group_title: String::from(title).into(),
            ..Channel::default()
        }
    }

    #[test]
    fn normalizes_case_and_spaces_and_fills_empty_groups() {
        let mut host = TestHost::<GroupNormalizer>::new(&[]).unwrap();
        let mut batch = vec![
            group("  sports   NEWS "),
            group(""),
            group("Ünïcode wörds"),
            group("Already Fine"),
        ];
        host.run(Stage::DataMapping, &mut batch).unwrap();
        let groups: Vec<&str> = batch.iter().map(|c| c.group_title.as_ref()).collect();
        assert_eq!(
            groups,
            [
                "Sports News",
                "Uncategorized",
                "Ünïcode Wörds",
                "Already Fine"
            ]
        );
    }

    #[test]
    fn a_bad_case_setting_fails_init_with_its_reason() {
        let error = TestHost::<GroupNormalizer>::new(&[("case", "loud")])
            .err()
            .expect("refused");
        assert!(error.message.contains("\"loud\" is not one of"), "{error}");
    }
}

export_plugin!(GroupNormalizer, "group_normalizer");
