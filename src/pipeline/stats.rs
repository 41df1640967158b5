//! What a run reports: per stage, per plugin, and in total.

use serde::Serialize;

use crate::store::{HoldStats, Tier};

/// Counters of one stage.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StageStats {
    /// Stage name.
    pub stage: String,
    /// Strategy chosen to run first.
    pub strategy: String,
    /// The holding strategy of the stage and the tier it started in, if the
    /// stage held what passed through it.
    pub hold: Option<String>,
    /// Why it was chosen (and what was skipped, and why).
    pub reason: String,
    /// Channels that entered the stage.
    pub channels_in: u64,
    /// Channels that left it.
    pub channels_out: u64,
    /// Batches run by each strategy (fallbacks show up here).
    pub batches_by_strategy: Vec<(String, u64)>,
    /// Time spent in the stage, in milliseconds.
    pub time_ms: f64,
}

impl StageStats {
    pub(crate) fn count_batch(&mut self, strategy: &str) {
        match self
            .batches_by_strategy
            .iter_mut()
            .find(|(s, _)| s == strategy)
        {
            Some((_, count)) => *count += 1,
            None => self.batches_by_strategy.push((strategy.to_string(), 1)),
        }
    }
}

/// Counters of one plugin.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PluginStats {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Export calls.
    pub calls: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Failures since the circuit last closed.
    pub failures: u32,
    /// Failures over the plugin's life, by kind.
    pub failures_by_kind: std::collections::BTreeMap<String, u64>,
    /// Bytes sent to the plugin.
    pub bytes_in: u64,
    /// Bytes received from it.
    pub bytes_out: u64,
    /// Circuit open: the plugin is switched off (too many failures, see
    /// `max_plugin_failures`); `/health` also shows it as `circuit_open`.
    pub disabled: bool,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Time inside the plugin, in microseconds.
    pub time_us: u64,
    /// Log lines the plugin wrote past its per-call, per-batch or per-run
    /// allowance: dropped, and counted here.
    pub log_lines_dropped: u64,
}

impl PluginStats {
    /// The figures of a loaded plugin since its file was (re)loaded: the
    /// counters of every instance the slot ran, its failures and circuit
    /// state. `serve` shows these; a run reports its own calls and fuel by
    /// subtracting the counts it started with.
    pub fn from_slot(slot: &super::PluginSlot) -> PluginStats {
        let stats = slot.total_stats();
        PluginStats {
            name: slot.name().to_string(),
            version: slot.instance.info().version.to_string(),
            calls: stats.calls,
            fuel: stats.fuel_consumed,
            failures: slot.failures,
            failures_by_kind: slot
                .failures_by_kind
                .iter()
                .map(|(kind, count)| (kind.to_string(), *count))
                .collect(),
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            disabled: slot.disabled,
            last_error: slot.last_error.clone(),
            time_us: u64::try_from(stats.time.as_micros()).unwrap_or(u64::MAX),
            log_lines_dropped: stats.log_lines_dropped,
        }
    }

    /// The counters of one run: these (taken at its end) minus `before`
    /// (taken at its start); failures, state and last error as they are now.
    pub fn since(mut self, before: &PluginStats) -> PluginStats {
        self.calls = self.calls.saturating_sub(before.calls);
        self.fuel = self.fuel.saturating_sub(before.fuel);
        self.bytes_in = self.bytes_in.saturating_sub(before.bytes_in);
        self.bytes_out = self.bytes_out.saturating_sub(before.bytes_out);
        self.time_us = self.time_us.saturating_sub(before.time_us);
        self.log_lines_dropped = self
            .log_lines_dropped
            .saturating_sub(before.log_lines_dropped);
        self
    }

    /// Time inside the plugin, in seconds.
    pub fn time_seconds(&self) -> f64 {
        self.time_us as f64 / 1e6
    }
}

/// Everything a run reports (`--stats-json` writes this).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RunStats {
    /// Memory pressure when the run was planned.
    pub memory_pressure: String,
    /// Where memory was read (`cgroup_v1`, `cgroup_v2`, `proc_meminfo`).
    pub memory_source: Option<String>,
    /// The memory limit the run planned against, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Channels read from the sources.
    pub channels_loaded: u64,
    /// Channels written.
    pub channels_written: u64,
    /// Malformed entries skipped while reading.
    pub malformed_entries: u64,
    /// Batches.
    pub batches: u64,
    /// Per stage, in pipeline order.
    pub stages: Vec<StageStats>,
    /// Per plugin.
    pub plugins: Vec<PluginStats>,
    /// Batch attempts handed to plugins (one per plugin and batch it was
    /// tried on; a batch split into several export calls is one attempt,
    /// `PluginStats::calls` counts the export calls).
    pub plugin_calls: u64,
    /// Fuel used by all plugins.
    pub fuel_consumed: u64,
    /// Plugin failures on batches.
    pub plugin_failures: u64,
    /// Batches re-run by a fallback strategy.
    pub fallbacks: u64,
    /// Plugins that failed to load (path and cause).
    pub plugin_load_errors: Vec<String>,
    /// Wall-clock time of the run, in milliseconds.
    pub time_ms: f64,
    /// Peak resident memory of the process, in bytes, if known.
    pub peak_rss_bytes: Option<u64>,
    /// What each holding strategy held, with its tier moves.
    pub holds: Vec<HoldStats>,
    /// How each source was read (fresh, unchanged, stale with the reason,
    /// unchecked); set by whoever opened the sources
    /// ([`crate::inputs::Inputs::open`]), empty for sources opened directly.
    pub sources: Vec<crate::inputs::SourceReport>,
}

impl RunStats {
    /// A short human-readable summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ =
            writeln!(
            out,
            "{} channels in, {} out ({} malformed skipped), {} batches, {:.1} ms, pressure {}, \
             peak RSS {}",
            self.channels_loaded,
            self.channels_written,
            self.malformed_entries,
            self.batches,
            self.time_ms,
            self.memory_pressure,
            self.peak_rss_bytes
                .map_or("unknown".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
        );
        for source in &self.sources {
            if let Some(reason) = &source.reason {
                let _ = writeln!(
                    out,
                    "  source {}: STALE, its last good copy was used ({} channels): {reason}",
                    source.name,
                    source.channels.unwrap_or(0)
                );
            }
        }
        for stage in &self.stages {
            let batches: Vec<String> = stage
                .batches_by_strategy
                .iter()
                .map(|(name, n)| format!("{name}×{n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<18} {:>8} → {:<8} {:<22} {:>8.1} ms  [{}]",
                stage.stage,
                stage.channels_in,
                stage.channels_out,
                stage.strategy,
                stage.time_ms,
                batches.join(", ")
            );
        }
        for hold in &self.holds {
            let _ = write!(
                out,
                "held by {}: {} channels, {}",
                hold.holder,
                hold.channels,
                hold.tier.map_or("-", Tier::name)
            );
            if hold.stored_bytes > 0 {
                let _ = write!(
                    out,
                    " ({}: {:.1} MiB encoded → {:.1} MiB stored)",
                    hold.codec,
                    hold.encoded_bytes as f64 / 1048576.0,
                    hold.stored_bytes as f64 / 1048576.0
                );
            }
            out.push('\n');
            for switch in &hold.switches {
                let _ = writeln!(
                    out,
                    "  moved {} → {} at {} channels: {}",
                    switch.from.name(),
                    switch.to.name(),
                    switch.at_channels,
                    switch.reason
                );
            }
        }
        let _ = writeln!(
            out,
            "plugins: {} batch attempts, {} fuel, {} failures, {} fallbacks",
            self.plugin_calls, self.fuel_consumed, self.plugin_failures, self.fallbacks
        );
        for plugin in &self.plugins {
            let dropped = match plugin.log_lines_dropped {
                0 => String::new(),
                lines => format!(", {lines} log lines dropped"),
            };
            let _ = writeln!(
                out,
                "  {} {}: {} export calls, {} fuel, {} failures{dropped}{}{}",
                plugin.name,
                plugin.version,
                plugin.calls,
                plugin.fuel,
                plugin.failures,
                if plugin.disabled {
                    ", switched off"
                } else {
                    ""
                },
                plugin
                    .last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", last error: {e}"))
            );
        }
        for error in &self.plugin_load_errors {
            let _ = writeln!(out, "  not loaded: {error}");
        }
        out
    }
}
