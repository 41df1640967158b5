//! Sports channel optimizer: recognises sports channels from keyword, league
//! and team dictionaries, groups them as `Sports/<Sport>`, tags league and
//! teams, hints their numbers into a configured block (data_mapping, answered
//! with field patches) and drops the ones outside the allowed countries or
//! languages (filtering, answered with a keep mask). Other channels pass
//! through untouched.
//!
//! The logic lives in `logic.rs` (core + alloc only); this file is the SDK
//! glue.
use m3u_proxy_plugin_sdk::prelude::*;

mod logic;

use logic::SportsOptimizer;

/// `tvg-country` and `tvg-language`, the attributes the filter reads.
const COUNTRY: &str = "tvg-country";
const LANGUAGE: &str = "tvg-language";

#[derive(Default)]
struct SportsPlugin {
    /// Set by `init`; the host never calls a stage before `init` succeeded.
    optimizer: Option<SportsOptimizer>,
}

impl SportsPlugin {
    fn optimizer(&mut self) -> &mut SportsOptimizer {
        self.optimizer
            .get_or_insert_with(SportsOptimizer::with_defaults)
    }
}

impl Plugin for SportsPlugin {
    const DESCRIPTION: &'static str =
        "Groups sports channels as Sports/<Sport>, tags league/teams, filters by country/language, numbers them in a block";
    const READS: FieldSet = FieldSet::of(&[
        Field::TvgChno,
        Field::GroupTitle,
        Field::ChannelName,
        Field::Attributes,
    ]);

    fn init(&mut self) -> Result<(), PluginError> {
        let optimizer = SportsOptimizer::new(config::get)
            .map_err(|error| PluginError::Config(format!("sports_optimizer: {error}")))?;
        let dictionary = optimizer.dictionary();
        // The host cannot list the keys it has, so name the known ones that
        // are set: a misspelled key is then visibly missing.
        let set: Vec<&str> = logic::CONFIG_KEYS
            .iter()
            .copied()
            .filter(|key| config::get(key).is_some())
            .collect();
        log_info!(
            "sports_optimizer: settings [{}]; {} keywords, {} leagues, {} teams; groups {:?}; \
             number block {}",
            set.join(", "),
            dictionary.keywords().len(),
            dictionary.leagues().len(),
            dictionary.teams().len(),
            optimizer.group_prefix(),
            match optimizer.numbers() {
                Some(numbers) => format!("{}-{}", numbers.block().0, numbers.block().1),
                None => String::from("none"),
            }
        );
        self.optimizer = Some(optimizer);
        Ok(())
    }

    fn start_run(&mut self, _level: MemoryPressureLevel) {
        self.optimizer().start_run();
    }

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }

    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        Some(self)
    }
}

impl Mapper for SportsPlugin {
    fn map<'a>(
        &mut self,
        _ctx: &StageContext<'_>,
        channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        let optimizer = self.optimizer();
        let refused_before = optimizer.numbers().map_or(0, |n| n.refused());
        let Some(mapping) = optimizer.map_channel(
            channel.name(),
            channel.group_title(),
            channel.tvg_chno(),
            channel.attribute(COUNTRY),
            channel.attribute(LANGUAGE),
        ) else {
            return;
        };
        if let Some(group) = mapping.group_title {
            patches.set(Field::GroupTitle, group);
        }
        for (name, value) in mapping.attributes {
            patches.set_attribute(name, value);
        }
        if let Some(number) = mapping.tvg_chno {
            patches.set(Field::TvgChno, number.to_string());
        }
        if let Some(numbers) = optimizer.numbers() {
            if refused_before == 0 && numbers.refused() > 0 {
                let (first, last) = numbers.block();
                log_warn!(
                    "sports_optimizer: number block {first}-{last} is full; further sports \
                     channels get no tvg-chno hint and are numbered by the numbering stage"
                );
            }
        }
    }
}

impl Filter for SportsPlugin {
    fn keep(&mut self, _ctx: &StageContext<'_>, channel: ChannelRef<'_>) -> bool {
        self.optimizer().keep(
            channel.name(),
            channel.group_title(),
            channel.attribute(COUNTRY),
            channel.attribute(LANGUAGE),
        )
    }
}

export_plugin!(SportsPlugin, "sports_optimizer");
