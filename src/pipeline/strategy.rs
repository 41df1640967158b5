//! Strategy choice: per stage, the TOML preference list filtered by health,
//! stage support and memory pressure, with a native strategy as last resort.

use m3u_proxy_plugin_abi::Stage;

/// The built-in strategies.
///
/// Some *hold* what passes through their stage until the input ends (see
/// [`NativeStrategy::holds`]); they keep it in the run's spill store
/// ([`crate::store`]), whose tier (plain, compressed, disk) is chosen by the
/// estimated need and moves down when memory pressure rises, so they are
/// usable at every pressure level while a spill directory is available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeStrategy {
    /// Reads sources batch by batch (default).
    StreamingSource,
    /// Reads every source fully before the first batch moves on (releases
    /// a slow provider connection early), held in the store.
    InMemorySource,
    /// `inmemory_full` held in S3-compatible object storage; needs an
    /// object store endpoint.
    CloudSpill,
    /// The `[mapping]` rules, per channel.
    Mapping,
    /// The `[mapping]` rules on a pool of worker threads.
    ParallelMapping,
    /// Holds what data_mapping hands on, zstd-compressed, until the input
    /// ends; the mapping itself is done by the next usable candidate.
    ZstdCompression,
    /// The `[filtering]` filters, per channel.
    Filter,
    /// The `[filtering]` filters evaluated into a keep bitmask per batch.
    BitmaskFilter,
    /// The `[filtering]` filters over the whole playlist, held in the store
    /// until the input ends.
    InMemoryFilter,
    /// Filtering whose state lives in Redis; needs a Redis endpoint.
    RedisSpill,
    /// Numbers channels as they stream past (default).
    StreamingNumbering,
    /// Reserves every explicit `tvg-chno` first, then numbers the rest.
    InMemoryNumbering,
    /// Writes channels in arrival order (default).
    StreamingWriter,
    /// Writes channels sorted by number (an external merge sort).
    SortedWriter,
}

impl NativeStrategy {
    /// Every native strategy.
    pub const ALL: [NativeStrategy; 14] = [
        NativeStrategy::StreamingSource,
        NativeStrategy::InMemorySource,
        NativeStrategy::CloudSpill,
        NativeStrategy::Mapping,
        NativeStrategy::ParallelMapping,
        NativeStrategy::ZstdCompression,
        NativeStrategy::Filter,
        NativeStrategy::BitmaskFilter,
        NativeStrategy::InMemoryFilter,
        NativeStrategy::RedisSpill,
        NativeStrategy::StreamingNumbering,
        NativeStrategy::InMemoryNumbering,
        NativeStrategy::StreamingWriter,
        NativeStrategy::SortedWriter,
    ];

    /// Name used in the TOML strategy lists.
    pub const fn name(self) -> &'static str {
        match self {
            NativeStrategy::StreamingSource => "streaming_source",
            NativeStrategy::InMemorySource => "inmemory_full",
            NativeStrategy::CloudSpill => "cloud_spill",
            NativeStrategy::Mapping => "native_mapping",
            NativeStrategy::ParallelMapping => "parallel_mapping",
            NativeStrategy::ZstdCompression => "zstd_compression",
            NativeStrategy::Filter => "native_filter",
            NativeStrategy::BitmaskFilter => "bitmask_filter",
            NativeStrategy::InMemoryFilter => "inmemory_filter",
            NativeStrategy::RedisSpill => "redis_spill",
            NativeStrategy::StreamingNumbering => "streaming_numbering",
            NativeStrategy::InMemoryNumbering => "inmemory_numbering",
            NativeStrategy::StreamingWriter => "streaming_writer",
            NativeStrategy::SortedWriter => "sorted_writer",
        }
    }

    /// The stage it implements.
    pub const fn stage(self) -> Stage {
        match self {
            NativeStrategy::StreamingSource
            | NativeStrategy::InMemorySource
            | NativeStrategy::CloudSpill => Stage::SourceLoading,
            NativeStrategy::Mapping
            | NativeStrategy::ParallelMapping
            | NativeStrategy::ZstdCompression => Stage::DataMapping,
            NativeStrategy::Filter
            | NativeStrategy::BitmaskFilter
            | NativeStrategy::InMemoryFilter
            | NativeStrategy::RedisSpill => Stage::Filtering,
            NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => {
                Stage::ChannelNumbering
            }
            NativeStrategy::StreamingWriter | NativeStrategy::SortedWriter => Stage::M3uGeneration,
        }
    }

    /// True if it holds the whole playlist (in the store) until the input
    /// ends.
    pub const fn holds(self) -> bool {
        matches!(
            self,
            NativeStrategy::InMemorySource
                | NativeStrategy::CloudSpill
                | NativeStrategy::ZstdCompression
                | NativeStrategy::InMemoryFilter
                | NativeStrategy::InMemoryNumbering
                | NativeStrategy::SortedWriter
        )
    }

    /// True for a strategy that only says how the stage's output is held:
    /// the stage's work is done by the next usable candidate of its list.
    pub const fn only_holds(self) -> bool {
        matches!(self, NativeStrategy::ZstdCompression)
    }

    /// The external service it needs, if any (`None`: runs anywhere).
    pub const fn needs_endpoint(self) -> Option<&'static str> {
        match self {
            NativeStrategy::CloudSpill => Some("an S3-compatible object store"),
            NativeStrategy::RedisSpill => Some("a Redis server"),
            _ => None,
        }
    }

    /// The streaming strategy every stage falls back to.
    pub const fn streaming_default(stage: Stage) -> NativeStrategy {
        match stage {
            Stage::SourceLoading => NativeStrategy::StreamingSource,
            Stage::DataMapping => NativeStrategy::Mapping,
            Stage::Filtering => NativeStrategy::Filter,
            Stage::ChannelNumbering => NativeStrategy::StreamingNumbering,
            Stage::M3uGeneration => NativeStrategy::StreamingWriter,
        }
    }

    /// The native strategy with this name.
    pub fn from_name(name: &str) -> Option<NativeStrategy> {
        NativeStrategy::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Most members in one chained strategy (`"a+b+c"`).
pub const MAX_CHAIN_LEN: usize = 8;

/// Separates the members of a chained strategy name:
/// `"sports_optimizer+logo_mapper"` runs both, in that order, on every batch
/// of the stage; `"dedup+native_filter"` runs the plugin, then the native
/// strategy.
pub const CHAIN_SEPARATOR: char = '+';

/// Plugins of one candidate, by index in the pipeline's plugin list, in the
/// order they run.
pub type PluginChain = heapless::Vec<usize, MAX_CHAIN_LEN>;

/// One usable candidate of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// One plugin, or several run one after another on the same batch,
    /// optionally followed by a streaming native strategy. If any plugin
    /// fails, the batch goes to the next candidate as it was before the
    /// first one ran.
    Plugins {
        /// The plugins, in order.
        chain: PluginChain,
        /// A native strategy run after them (the last member of the name).
        then: Option<NativeStrategy>,
    },
    /// A native strategy.
    Native(NativeStrategy),
}

/// What was chosen for a stage, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    /// The stage.
    pub stage: Stage,
    /// The holding strategy of this stage and the tier it starts in, if the
    /// stage holds what passes through it (`inmemory_full`,
    /// `zstd_compression`, `inmemory_filter`, `inmemory_numbering`,
    /// `sorted_writer`).
    pub hold: Option<(NativeStrategy, crate::store::TierPlan)>,
    /// Usable candidates in order; the first runs, the rest are fallbacks.
    /// Always ends with a native strategy.
    pub chain: Vec<Candidate>,
    /// Human-readable reason for the choice (what was skipped and why).
    pub reason: String,
}
