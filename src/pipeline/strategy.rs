//! Strategy choice: per stage, the TOML preference list filtered by health,
//! stage support and memory pressure, with a native strategy as last resort.

use m3u_proxy_plugin_abi::{MemoryPressureLevel, Stage};

/// The built-in strategies. In-memory ones hold the whole playlist and are
/// chosen only while memory pressure is at most [`IN_MEMORY_MAX_PRESSURE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeStrategy {
    /// Reads sources batch by batch (default).
    StreamingSource,
    /// Reads every source into memory before the first batch moves.
    InMemorySource,
    /// The `[mapping]` rules, per channel.
    Mapping,
    /// The `[filtering]` filters, per channel.
    Filter,
    /// Numbers channels as they stream past (default).
    StreamingNumbering,
    /// Reserves every explicit `tvg-chno` first, then numbers the rest.
    InMemoryNumbering,
    /// Writes channels in arrival order (default).
    StreamingWriter,
    /// Writes channels sorted by number.
    SortedWriter,
}

/// Highest pressure at which an in-memory strategy is chosen.
pub const IN_MEMORY_MAX_PRESSURE: MemoryPressureLevel = MemoryPressureLevel::Moderate;

/// Highest pressure at which `inmemory_numbering` is chosen when it may hold
/// its channels compressed (`[pipeline] compress_held`, `auto` by default).
pub const COMPRESSED_HOLD_MAX_PRESSURE: MemoryPressureLevel = MemoryPressureLevel::Critical;

impl NativeStrategy {
    /// Every native strategy.
    pub const ALL: [NativeStrategy; 8] = [
        NativeStrategy::StreamingSource,
        NativeStrategy::InMemorySource,
        NativeStrategy::Mapping,
        NativeStrategy::Filter,
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
            NativeStrategy::Mapping => "native_mapping",
            NativeStrategy::Filter => "native_filter",
            NativeStrategy::StreamingNumbering => "streaming_numbering",
            NativeStrategy::InMemoryNumbering => "inmemory_numbering",
            NativeStrategy::StreamingWriter => "streaming_writer",
            NativeStrategy::SortedWriter => "sorted_writer",
        }
    }

    /// The stage it implements.
    pub const fn stage(self) -> Stage {
        match self {
            NativeStrategy::StreamingSource | NativeStrategy::InMemorySource => {
                Stage::SourceLoading
            }
            NativeStrategy::Mapping => Stage::DataMapping,
            NativeStrategy::Filter => Stage::Filtering,
            NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => {
                Stage::ChannelNumbering
            }
            NativeStrategy::StreamingWriter | NativeStrategy::SortedWriter => Stage::M3uGeneration,
        }
    }

    /// True if it holds the whole playlist in memory.
    pub const fn in_memory(self) -> bool {
        matches!(
            self,
            NativeStrategy::InMemorySource
                | NativeStrategy::InMemoryNumbering
                | NativeStrategy::SortedWriter
        )
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
    /// Usable candidates in order; the first runs, the rest are fallbacks.
    /// Always ends with a native strategy.
    pub chain: Vec<Candidate>,
    /// Human-readable reason for the choice (what was skipped and why).
    pub reason: String,
}
