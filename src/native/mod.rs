//! Native (in-process, Rust) implementations of the pipeline stages.
//!
//! These are the strategies the host always has: they need no plugin, are
//! compiled once from the configuration and run per channel, so they serve as
//! the fallback when a plugin fails and as the only strategy at
//! [`MemoryPressureLevel::Emergency`](crate::abi::MemoryPressureLevel::Emergency).
//!
//! - [`filter`]: upstream m3u-proxy's filter expression language and the
//!   include/exclude rule set built from it;
//! - [`dedup`]: duplicate removal by tvg-id, name or URL, streaming or over
//!   the whole playlist (`[filtering.dedup]`);
//! - [`mapping`]: data mapping rules (`[<condition>] SET <field> = "value"`);
//! - [`numbering`]: channel numbering, streaming and in-memory variants.

pub mod dedup;
pub mod filter;
pub mod mapping;
pub mod numbering;

use crate::config::{Config, FilterActionConfig};
use crate::{Error, Result};

/// The configuration's native rules, parsed once (by
/// [`Config::from_toml`](crate::config::Config::from_toml), which keeps
/// them) and handed to the pipeline.
#[derive(Debug)]
pub struct NativeRules {
    /// `[mapping] rules`.
    pub mapper: mapping::Mapper,
    /// `[[filtering.filters]]`.
    pub filters: filter::FilterSet,
    /// `[filtering.dedup]`.
    pub dedup: Option<dedup::Dedup>,
    /// What they were parsed from, to notice a configuration changed since.
    fingerprint: u64,
}

impl NativeRules {
    /// Parses every rule of `config`.
    ///
    /// # Errors
    /// A configuration error naming the key of the first rule that does not
    /// parse.
    pub fn parse(config: &Config) -> Result<NativeRules> {
        let filters = config
            .filtering
            .filters
            .iter()
            .enumerate()
            .map(|(index, filter)| {
                let action = match filter.action {
                    FilterActionConfig::Include => filter::FilterAction::Include,
                    FilterActionConfig::Exclude => filter::FilterAction::Exclude,
                };
                filter::FilterRule::parse(action, &filter.expression).map_err(|error| {
                    Error::config_key(
                        format!("filtering.filters[{index}].expression"),
                        error.to_string(),
                    )
                })
            })
            .collect::<Result<filter::FilterSet>>()?;
        let mapper = mapping::Mapper::parse(&config.mapping.rules)
            .map_err(|error| Error::config_key("mapping.rules", error.to_string()))?;
        let dedup = config
            .filtering
            .dedup
            .as_ref()
            .map(dedup::Dedup::parse)
            .transpose()?;
        Ok(NativeRules {
            mapper,
            filters,
            dedup,
            fingerprint: NativeRules::fingerprint(config),
        })
    }

    /// True if these were parsed from `config`'s rules as they are now.
    pub fn parsed_from(&self, config: &Config) -> bool {
        self.fingerprint == NativeRules::fingerprint(config)
    }

    fn fingerprint(config: &Config) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        config.mapping.rules.hash(&mut hasher);
        for filter in &config.filtering.filters {
            (filter.action == FilterActionConfig::Include).hash(&mut hasher);
            filter.expression.hash(&mut hasher);
        }
        config.filtering.dedup.hash(&mut hasher);
        hasher.finish()
    }
}
