//! `dedup`: a filtering-stage plugin that drops duplicate channels.
//!
//! The key is made of `tvg_id`, `name`, `url` or a `+`-joined combination;
//! the keys of one pipeline run live in an exact set of 64-bit hashes or in a
//! Bloom filter (chosen by `mode` and the memory pressure). The plugin reads
//! only tvg-id, channel name and stream URL and answers with a keep bitmask.
//!
//! With `merge_alternates = true` it also runs at data_mapping: there it
//! decides the batch as a dry run (nothing remembered) and sets
//! `x-alternate-urls` on each channel that will be kept over copies in the
//! same batch; the filtering call then makes the same decisions, commits
//! them and drops the copies.
//!
//! All the logic is in [`logic`] (core + alloc only, shared with the
//! benchmarks); this file is the SDK glue. See README.md for the exact
//! semantics and the batch-boundary limits.
use std::collections::VecDeque;
use std::iter::Peekable;

#[cfg(feature = "shared")]
use m3u_proxy_plugin_sdk::claim_keys;
use m3u_proxy_plugin_sdk::prelude::*;

pub mod logic;

use logic::{Config, Decision, Dedup, Fields, Mode, Structure, ALTERNATES_ATTRIBUTE};

/// The decisions of one data_mapping call, waiting for its filtering call.
struct Mapped {
    batch_index: u32,
    decisions: Vec<Decision>,
}

struct DedupPlugin {
    dedup: Dedup,
    /// Set by the host's pressure check, which opens every pipeline run (and
    /// initially): the next call (data_mapping or filtering) starts a new
    /// run with an empty key set.
    new_run: bool,
    decisions: Vec<Decision>,
    /// `merge_alternates`: the data_mapping calls of the current batch not
    /// yet matched by a filtering call, oldest first (a batch the host
    /// splits in halves is several calls).
    mapped: VecDeque<Mapped>,
    /// `merge_alternates`: this run has already warned about a batch whose
    /// copies could not be merged.
    warned: bool,
    /// `merge_alternates`: this run has already warned about a batch that
    /// was merged at data_mapping but not deduplicated by this plugin.
    warned_unfiltered: bool,
    /// `merge_alternates`: the batch index of the last filtering call.
    filtered_batch: Option<u32>,
}

impl Default for DedupPlugin {
    fn default() -> Self {
        DedupPlugin {
            dedup: Dedup::new(Config::default()),
            new_run: true,
            decisions: Vec::new(),
            mapped: VecDeque::new(),
            warned: false,
            warned_unfiltered: false,
            filtered_batch: None,
        }
    }
}

impl DedupPlugin {
    /// Starts a new run if the host's pressure check asked for one.
    fn begin_call(&mut self, ctx: &StageContext<'_>) {
        if !std::mem::replace(&mut self.new_run, false) {
            return;
        }
        self.dedup.start_run(ctx.memory_pressure.as_u32());
        self.mapped.clear();
        self.warned = false;
        self.warned_unfiltered = false;
        self.filtered_batch = None;
        let structure = match self.dedup.structure() {
            _ if self.dedup.config().mode == Mode::Shared => "the host's shared key set",
            Structure::Exact => "exact set of 64-bit key hashes",
            Structure::Bloom => "Bloom filter",
        };
        log_info!(
            "dedup: new run at memory pressure {}: {structure}",
            ctx.memory_pressure.name()
        );
    }

    /// `merge_alternates`, at filtering: checks that this call's decisions
    /// (in `self.decisions`) are the ones its data_mapping call attached
    /// alternates for; warns once per run when not.
    fn check_merged(&mut self, batch_index: u32) {
        self.filtered_batch = Some(batch_index);
        while self
            .mapped
            .front()
            .is_some_and(|mapped| mapped.batch_index != batch_index)
        {
            self.mapped.pop_front();
        }
        let problem = match self.mapped.pop_front() {
            None => {
                "it did not go through dedup's data_mapping call (list dedup in \
                 [proxy_generation.wasm_plugins.strategies] data_mapping as well; or that call \
                 failed and another strategy mapped the batch)"
            }
            Some(mapped) if !logic::merge_matches(&mapped.decisions, &self.decisions) => {
                "its tvg-id, channel name or stream URL changed between dedup's data_mapping \
                 call and filtering (list dedup after the mappers that change them, e.g. \
                 \"logo_mapper+dedup\")"
            }
            Some(_) => return,
        };
        if !self.warned {
            self.warned = true;
            log_warn!(
                "dedup: merge_alternates: copies dropped in batch {batch_index} may lack their \
                 x-alternate-urls because {problem}; duplicates are still dropped. Further \
                 such batches of this run are not reported"
            );
        }
    }
}

fn fields_of<'c>(batch: &'c Batch<'c>) -> Vec<Fields<'c>> {
    batch
        .iter()
        .map(|channel| Fields {
            tvg_id: channel.tvg_id(),
            name: channel.name(),
            url: channel.url(),
        })
        .collect()
}

impl Plugin for DedupPlugin {
    const DESCRIPTION: &'static str =
        "Drops duplicate channels by tvg-id, name, URL or a combination (exact set or Bloom filter)";
    // Every field any `key`/`keep` setting needs; after init, `reads` asks
    // only for what the configuration uses.
    const READS: FieldSet = FieldSet::of(&[Field::TvgId, Field::ChannelName, Field::StreamUrl]);

    /// The key's fields, the name for `keep = "best"` (its quality tags),
    /// the URL for `merge_alternates`; the same at both stages, since the
    /// data_mapping dry run must decide exactly like the filtering call.
    fn reads(&self, _stage: Stage) -> FieldSet {
        let config = self.dedup.config();
        let mut fields = Vec::new();
        if config.key.tvg_id {
            fields.push(Field::TvgId);
        }
        if config.key.name || config.keep == logic::Keep::Best {
            fields.push(Field::ChannelName);
        }
        if config.key.url || config.merge_alternates {
            fields.push(Field::StreamUrl);
        }
        FieldSet::of(&fields)
    }

    fn init(&mut self) -> Result<(), PluginError> {
        // The `shared` build (dedup_shared) claims keys through the host by
        // default; plain dedup cannot (it does not import claim_keys).
        let default_mode = cfg!(feature = "shared").then(|| "shared".to_string());
        let lookup = |key: &str| {
            config::get(key).or_else(|| (key == "mode").then(|| default_mode.clone()).flatten())
        };
        let config = Config::from_lookup(lookup).map_err(PluginError::Config)?;
        if config.mode == Mode::Shared && !cfg!(feature = "shared") {
            return Err(PluginError::Config(
                "dedup: mode = \"shared\" needs the dedup_shared build of this plugin \
                 (plugins/dedup-shared), which imports the claim_keys host function"
                    .to_string(),
            ));
        }
        let mode = match config.mode {
            Mode::Auto => "auto",
            Mode::Exact => "exact",
            Mode::Bloom => "bloom",
            Mode::Shared => "shared",
        };
        log_info!(
            "dedup: key {:?}, keep {:?}, merge_alternates {}, mode {mode}, Bloom filter {} bytes \
             for {} channels at false-positive rate {}",
            config.key,
            config.keep,
            config.merge_alternates,
            logic::Bloom::size_bytes(config.expected_channels, config.bloom_false_positive_rate),
            config.expected_channels,
            config.bloom_false_positive_rate
        );
        self.dedup = Dedup::new(config);
        self.new_run = true;
        self.mapped.clear();
        Ok(())
    }

    fn start_run(&mut self, _level: MemoryPressureLevel) {
        // Once per stage the plugin is listed in, before any batch: the next
        // call forgets the keys of the previous run.
        self.new_run = true;
    }

    fn accepts_pressure(&self, _level: MemoryPressureLevel) -> bool {
        true
    }

    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        Some(self)
    }

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Filter for DedupPlugin {
    fn filter_batch<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
        keep: &mut KeepMask,
    ) {
        self.begin_call(ctx);
        let fields = fields_of(batch);
        if self.dedup.config().mode == Mode::Shared {
            self.claim(&fields, keep);
            return;
        }
        if self.dedup.config().merge_alternates {
            // The same dry run as at data_mapping (same keys, same batch),
            // checked against it, then committed.
            self.dedup.plan_batch(&fields, &mut self.decisions);
            self.check_merged(ctx.batch_index);
            self.dedup.commit_batch();
        } else {
            self.dedup.decide_batch(&fields, &mut self.decisions);
        }
        for (index, decision) in self.decisions.iter().enumerate() {
            if !decision.is_keep() {
                keep.drop(index);
            }
        }
    }
}

impl DedupPlugin {
    /// `mode = "shared"`: keeps the channels whose key the host says this
    /// instance claims first; keyless channels stay.
    #[cfg(feature = "shared")]
    fn claim(&mut self, fields: &[Fields<'_>], keep: &mut KeepMask) {
        let mut text = String::new();
        let mut keys: Vec<String> = Vec::new();
        let mut keyed = Vec::with_capacity(fields.len());
        for (index, channel) in fields.iter().enumerate() {
            if self.dedup.key_text(*channel, &mut text) {
                keys.push(text.clone());
                keyed.push(index);
            }
        }
        let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
        let mut claimed = Vec::with_capacity(keys.len());
        claim_keys(&keys, &mut claimed);
        for (&index, &first) in keyed.iter().zip(&claimed) {
            if !first {
                keep.drop(index);
            }
        }
    }
}

#[cfg(not(feature = "shared"))]
impl DedupPlugin {
    /// Never called: `init` refuses `mode = "shared"` in this build.
    fn claim(&mut self, _fields: &[Fields<'_>], _keep: &mut KeepMask) {}
}

impl Mapper for DedupPlugin {
    /// `merge_alternates = true`: decides the batch without remembering its
    /// keys and sets `x-alternate-urls` on the channels that will be kept
    /// over copies in it. Otherwise answers with no patches.
    fn map_batch<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
        patches: &mut Patches<'a>,
    ) {
        if !self.dedup.config().merge_alternates {
            return;
        }
        self.begin_call(ctx);
        let fields = fields_of(batch);
        let mut decisions = Vec::with_capacity(batch.len());
        self.dedup.plan_batch(&fields, &mut decisions);
        let mut values = Vec::new();
        logic::alternate_urls(&fields, &decisions, &mut values);
        if let Some(stale) = self
            .mapped
            .iter()
            .find(|mapped| mapped.batch_index != ctx.batch_index)
        {
            // Left over from a batch that was filtered (its filtering calls
            // were split differently) is not this problem.
            if self.filtered_batch != Some(stale.batch_index) && !self.warned_unfiltered {
                self.warned_unfiltered = true;
                log_warn!(
                    "dedup: merge_alternates: batch {} got x-alternate-urls at data_mapping but \
                     was not filtered by dedup (list dedup in \
                     [proxy_generation.wasm_plugins.strategies] filtering as well; or its \
                     filtering call failed and another strategy filtered the batch), so its \
                     copies were kept next to the channel listing them. Further such batches \
                     of this run are not reported",
                    stale.batch_index
                );
            }
            self.mapped
                .retain(|mapped| mapped.batch_index == ctx.batch_index);
        }
        self.mapped.push_back(Mapped {
            batch_index: ctx.batch_index,
            decisions,
        });
        if values.is_empty() {
            return;
        }
        // The SDK's default `map_batch` points `patches` at each channel in
        // turn; `Attach` hands it the value for that channel.
        let mut attach = Attach {
            values: values.into_iter().peekable(),
            index: 0,
        };
        attach.map_batch(ctx, batch, patches);
    }
}

/// Sets precomputed [`ALTERNATES_ATTRIBUTE`] values, given as `(index,
/// value)` in index order, through the default [`Mapper::map_batch`].
struct Attach<I: Iterator<Item = (u32, String)>> {
    values: Peekable<I>,
    index: u32,
}

impl<I: Iterator<Item = (u32, String)>> Mapper for Attach<I> {
    fn map<'a>(
        &mut self,
        _ctx: &StageContext<'_>,
        _channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        if let Some((_, value)) = self.values.next_if(|(index, _)| *index == self.index) {
            patches.set_attribute(ALTERNATES_ATTRIBUTE, value);
        }
        self.index += 1;
    }
}

#[cfg(all(test, feature = "shared"))]
mod tests {
    use super::*;
    use m3u_proxy_plugin_sdk::testing::TestHost;

    fn channel(tvg_id: &str, name: &str) -> Channel<'static> {
        Channel {
            tvg_id: String::from(tvg_id).into(),
            channel_name: String::from(name).into(),
            ..Channel::default()
        }
    }

    fn names(batch: &[Channel<'_>]) -> Vec<String> {
        batch.iter().map(|c| c.channel_name.to_string()).collect()
    }

    #[test]
    fn shared_mode_claims_keys_through_the_host_and_forgets_them_each_run() {
        let mut host = TestHost::<DedupPlugin>::new(&[]).unwrap();
        host.start_run(MemoryPressureLevel::Optimal, "").unwrap();
        let mut first = vec![
            channel("a.us", "A"),
            channel(" A.US ", "A again"),
            channel("", "no key"),
            channel("b.us", "B"),
        ];
        host.run(Stage::Filtering, &mut first).unwrap();
        assert_eq!(names(&first), ["A", "no key", "B"]);
        let mut second = vec![channel("b.us", "B later"), channel("c.us", "C")];
        host.run(Stage::Filtering, &mut second).unwrap();
        assert_eq!(names(&second), ["C"]);
        // A new run claims anew.
        host.start_run(MemoryPressureLevel::Optimal, "").unwrap();
        let mut again = vec![channel("b.us", "B")];
        host.run(Stage::Filtering, &mut again).unwrap();
        assert_eq!(names(&again), ["B"]);
    }

    #[test]
    fn shared_mode_keeps_only_the_first_copy() {
        let error = TestHost::<DedupPlugin>::new(&[("mode", "shared"), ("keep", "best")])
            .err()
            .expect("refused");
        assert!(error.message.contains("keep = \"first\""), "{error}");
    }
}

#[cfg(all(test, not(feature = "shared")))]
mod plain_tests {
    use super::*;
    use m3u_proxy_plugin_sdk::testing::TestHost;

    #[test]
    fn shared_mode_needs_the_shared_build() {
        let error = TestHost::<DedupPlugin>::new(&[("mode", "shared")])
            .err()
            .expect("refused");
        assert!(error.message.contains("dedup_shared"), "{error}");
    }
}

#[cfg(feature = "shared")]
export_plugin!(DedupPlugin, "dedup_shared");
#[cfg(not(feature = "shared"))]
export_plugin!(DedupPlugin, "dedup");
