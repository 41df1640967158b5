//! The Prometheus text exposition of `/metrics` (format 0.0.4): the
//! [`Exposition`] writer, [`render_metrics`] and the escaping and number
//! formatting they need.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use super::{PluginSnapshot, Snapshot};
use crate::pipeline::PluginStats;

/// Writes the Prometheus text exposition format, one family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (index, (name, value)) in labels.iter().enumerate() {
            if index > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{name}=\"{}\"", escape_label_value(value));
        }
        self.out.push('}');
    }

    fn int(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
    }

    fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.raw(name, labels, &format_float(value));
    }

    fn raw(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

/// Prometheus text exposition (format 0.0.4) of a snapshot. Pure: the same
/// snapshot always renders the same text.
///
/// Counters (`_total`) count since the server started; per-plugin counters
/// since the plugin was (re)loaded, so they restart at zero after a hot
/// reload, which Prometheus treats as a counter reset. Gauges describe the
/// last successful run. Plugin series carry the labels `plugin` (its name)
/// and `file` (its file name), which keeps them unique even when two files
/// declare the same name.
pub fn render_metrics(snapshot: &Snapshot) -> String {
    let mut m = Exposition { out: String::new() };
    m.family(
        "m3u_generations_total",
        "counter",
        "Successful playlist generations since start.",
    );
    m.int("m3u_generations_total", &[], snapshot.generations);
    m.family(
        "m3u_generation_failures_total",
        "counter",
        "Failed playlist generations since start (the previous playlist kept being served).",
    );
    m.int("m3u_generation_failures_total", &[], snapshot.failures);
    m.family(
        "m3u_degraded",
        "gauge",
        "1 when the last generation failed, a plugin circuit is open, a plugin file failed \
         to load or a source is stale.",
    );
    m.int("m3u_degraded", &[], u64::from(snapshot.is_degraded()));
    m.family(
        "m3u_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful generation.",
    );
    if let Some(at) = snapshot.last_success {
        let seconds = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        m.float("m3u_last_success_timestamp_seconds", &[], seconds);
    }
    m.family(
        "m3u_playlist_bytes",
        "gauge",
        "Size of the playlist being served.",
    );
    m.int("m3u_playlist_bytes", &[], snapshot.playlist_bytes);
    m.family(
        "m3u_plugin_load_errors",
        "gauge",
        "Plugin files that failed to load and are not running as they are on disk.",
    );
    m.int(
        "m3u_plugin_load_errors",
        &[],
        snapshot.plugin_load_errors.len() as u64,
    );

    m.family(
        "m3u_source_stale",
        "gauge",
        "1 when the last successful run read the source's last good copy because the source \
         failed or was refused (empty, HTML, no channel, shrank, download failed).",
    );
    if let Some(run) = &snapshot.last_run {
        for source in &run.sources {
            let stale = source.status == crate::inputs::SourceStatus::Stale;
            m.int(
                "m3u_source_stale",
                &[("source", &source.name)],
                u64::from(stale),
            );
        }
    }
    m.family(
        "m3u_source_stale_total",
        "counter",
        "Generations since start that read the source's last good copy instead of the source.",
    );
    for (name, count) in &snapshot.stale_sources_total {
        m.int("m3u_source_stale_total", &[("source", name)], *count);
    }

    let run = snapshot.last_run.as_ref();
    let run_gauges: [(&str, &str, Option<String>); 4] = [
        (
            "m3u_channels_loaded",
            "Channels read from the sources by the last successful run.",
            run.map(|r| r.channels_loaded.to_string()),
        ),
        (
            "m3u_channels_written",
            "Channels in the playlist being served.",
            run.map(|r| r.channels_written.to_string()),
        ),
        (
            "m3u_malformed_entries",
            "Malformed entries skipped by the last successful run.",
            run.map(|r| r.malformed_entries.to_string()),
        ),
        (
            "m3u_generation_duration_seconds",
            "Wall-clock time of the last successful run.",
            run.map(|r| format_float(r.time_ms / 1e3)),
        ),
    ];
    for (name, help, value) in run_gauges {
        m.family(name, "gauge", help);
        if let Some(value) = value {
            m.raw(name, &[], &value);
        }
    }
    m.family(
        "m3u_memory_pressure_level",
        "gauge",
        "Memory pressure when the last successful run was planned: 0 optimal, 1 moderate, \
         2 high, 3 critical, 4 emergency.",
    );
    if let Some(Ok(level)) = run.map(|r| crate::config::parse_level(&r.memory_pressure)) {
        m.int(
            "m3u_memory_pressure_level",
            &[("level", level.name())],
            u64::from(level.as_u32()),
        );
    }
    let stages = run.map_or(&[][..], |run| &run.stages[..]);
    m.family(
        "m3u_stage_duration_seconds",
        "gauge",
        "Time spent in each stage by the last successful run.",
    );
    for stage in stages {
        m.float(
            "m3u_stage_duration_seconds",
            &[("stage", &stage.stage)],
            stage.time_ms / 1e3,
        );
    }
    m.family(
        "m3u_stage_channels_in",
        "gauge",
        "Channels that entered each stage in the last successful run.",
    );
    for stage in stages {
        m.int(
            "m3u_stage_channels_in",
            &[("stage", &stage.stage)],
            stage.channels_in,
        );
    }
    m.family(
        "m3u_stage_channels_out",
        "gauge",
        "Channels that left each stage in the last successful run.",
    );
    for stage in stages {
        m.int(
            "m3u_stage_channels_out",
            &[("stage", &stage.stage)],
            stage.channels_out,
        );
    }
    m.family(
        "m3u_stage_batches",
        "gauge",
        "Batches each strategy ran per stage in the last successful run (fallbacks show up \
         here).",
    );
    for stage in stages {
        for (strategy, batches) in &stage.batches_by_strategy {
            m.int(
                "m3u_stage_batches",
                &[("stage", &stage.stage), ("strategy", strategy)],
                *batches,
            );
        }
    }

    let plugins: Vec<(&PluginSnapshot, String)> = snapshot
        .plugins
        .iter()
        .map(|plugin| {
            let file = plugin
                .path
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            (plugin, file)
        })
        .collect();
    let mut per_plugin =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&PluginStats) -> String| {
            m.family(name, kind, help);
            for (plugin, file) in &plugins {
                m.raw(
                    name,
                    &[("plugin", &plugin.stats.name), ("file", file)],
                    &value(&plugin.stats),
                );
            }
        };
    per_plugin(
        "m3u_plugin_calls_total",
        "counter",
        "Export calls made to the plugin since it was loaded.",
        &|p| p.calls.to_string(),
    );
    per_plugin(
        "m3u_plugin_failures_total",
        "counter",
        "Batches the plugin failed on since it was loaded.",
        &|p| p.failures.to_string(),
    );
    per_plugin(
        "m3u_plugin_fuel_total",
        "counter",
        "Fuel (about one unit per Wasm instruction) the plugin consumed since it was loaded.",
        &|p| p.fuel.to_string(),
    );
    per_plugin(
        "m3u_plugin_time_seconds_total",
        "counter",
        "Time spent inside the plugin since it was loaded.",
        &|p| format_float(p.time_seconds()),
    );
    per_plugin(
        "m3u_plugin_bytes_in_total",
        "counter",
        "Bytes sent to the plugin since it was loaded.",
        &|p| p.bytes_in.to_string(),
    );
    per_plugin(
        "m3u_plugin_bytes_out_total",
        "counter",
        "Bytes received from the plugin since it was loaded.",
        &|p| p.bytes_out.to_string(),
    );
    per_plugin(
        "m3u_plugin_log_lines_dropped_total",
        "counter",
        "Log lines of the plugin dropped (past its allowance).",
        &|p| p.log_lines_dropped.to_string(),
    );
    per_plugin(
        "m3u_plugin_circuit_open",
        "gauge",
        "1 when the plugin is switched off after max_plugin_failures failures.",
        &|p| u8::from(p.disabled).to_string(),
    );
    m.family(
        "m3u_plugin_info",
        "gauge",
        "Loaded plugins with their version and signature state (always 1).",
    );
    for (plugin, file) in &plugins {
        m.int(
            "m3u_plugin_info",
            &[
                ("plugin", &plugin.stats.name),
                ("file", file),
                ("version", &plugin.stats.version),
                ("signature", &plugin.signature),
            ],
            1,
        );
    }
    m.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tests::snapshot;

    fn sample<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn counters_and_gauges_carry_the_snapshot_values() {
        let text = render_metrics(&snapshot());
        assert_eq!(
            sample(&text, "m3u_generations_total "),
            ["m3u_generations_total 7"]
        );
        assert_eq!(
            sample(&text, "m3u_generation_failures_total "),
            ["m3u_generation_failures_total 2"]
        );
        assert_eq!(
            sample(&text, "m3u_channels_written "),
            ["m3u_channels_written 10000"]
        );
        assert_eq!(
            sample(&text, "m3u_generation_duration_seconds "),
            ["m3u_generation_duration_seconds 1.5"]
        );
        assert_eq!(
            sample(&text, "m3u_memory_pressure_level"),
            ["m3u_memory_pressure_level{level=\"high\"} 2"]
        );
        assert_eq!(
            sample(&text, "m3u_stage_duration_seconds{"),
            ["m3u_stage_duration_seconds{stage=\"data_mapping\"} 0.25"]
        );
        assert_eq!(
            sample(&text, "m3u_stage_batches{"),
            ["m3u_stage_batches{stage=\"data_mapping\",strategy=\"group_normalizer\"} 11"]
        );
        assert_eq!(
            sample(&text, "m3u_degraded "),
            ["m3u_degraded 1"],
            "circuit open"
        );
        assert_eq!(
            sample(&text, "m3u_last_success_timestamp_seconds "),
            ["m3u_last_success_timestamp_seconds 1700000000"]
        );
        assert!(text.contains("# TYPE m3u_generations_total counter\n"));
        assert!(text.contains("# TYPE m3u_channels_loaded gauge\n"));
        assert!(text.contains("# TYPE m3u_plugin_fuel_total counter\n"));
        assert!(text.contains("# TYPE m3u_plugin_circuit_open gauge\n"));
    }

    #[test]
    fn every_sample_follows_its_help_and_type() {
        let text = render_metrics(&snapshot());
        let mut typed = Vec::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.last().is_some_and(|h| h == name), "{line}");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                typed.push(name.to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.last().is_some_and(|t| t == name), "{line}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let text = render_metrics(&snapshot());
        let calls = sample(&text, "m3u_plugin_calls_total{");
        assert_eq!(
            calls,
            ["m3u_plugin_calls_total{plugin=\"we\\\"ird\\\\na\\nme\",file=\"weird.wasm\"} 12"]
        );
        assert!(
            text.lines().all(|line| !line.is_empty()),
            "no raw newline inside a value"
        );
        assert_eq!(
            sample(&text, "m3u_plugin_circuit_open{").len(),
            1,
            "one series per plugin"
        );
    }

    #[test]
    fn large_counters_and_odd_floats_stay_parseable() {
        let text = render_metrics(&snapshot());
        let fuel = sample(&text, "m3u_plugin_fuel_total{")[0];
        let value: f64 = fuel.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value > 1.8e19);
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(0.000_001), "0.000001");
    }

    #[test]
    fn an_empty_snapshot_renders_families_without_run_samples() {
        let text = render_metrics(&Snapshot::default());
        assert!(text.contains("m3u_generations_total 0\n"));
        assert!(text.contains("# TYPE m3u_stage_duration_seconds gauge\n"));
        assert!(sample(&text, "m3u_channels_loaded ").is_empty());
    }
}
