//! The hand-written WAT dedup filter (`plugins/dedup-wat/dedup_wat.wat`,
//! plugin `dedup_wat`, written against docs/ABI.md only) and its Rust twin
//! (`plugins/dedup`, plugin `dedup`, with `key = "url"`): both keep the first
//! channel of every stream URL (trimmed of ASCII whitespace), drop later
//! ones and keep channels without a URL, across batch boundaries. Each check
//! derives the expected output with plain Rust and compares channel by
//! channel, through `PluginSlot` and through the whole `Pipeline`.

use std::collections::HashSet;
use std::path::Path;

use m3u_plugin_host::abi::{
    encode_stage_input, Field, FieldSet, InputHeader, MemoryPressureLevel, Stage, StageContext,
};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::m3u::{read_all, M3uWriter, PlaylistHeader};
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, RunStats, Source};
use m3u_plugin_host::runtime::{PluginInstance, PluginSettings, RuntimeLimits};
use m3u_plugin_host::{Error, ErrorKind, OwnedChannel};

use super::common::{
    allowlist_with, assign_ids, default_allowlist, example_plugin, playlist, replace_once,
    repo_path, runtime_with, wat_str,
};
use super::pipeline::plugin_dir;

/// Channels per `PluginSlot::run` call, as the pipeline's default batch.
const BATCH: usize = 1024;

/// The WAT plugin: file built by build.rs, plugin name, its source.
const WAT_FILE: &str = "dedup_wat.wasm";
const WAT_NAME: &str = "dedup_wat";
const WAT_SOURCE: &str = "plugins/dedup-wat/dedup_wat.wat";

/// The Rust twin, in the one mode the WAT plugin implements (its own
/// defaults differ: key `tvg_id`, mode `auto`).
const TWIN_FILE: &str = "dedup.wasm";
const TWIN_NAME: &str = "dedup";
const TWIN_SETTINGS: &str = "key = \"url\"\nkeep = \"first\"\nmode = \"exact\"\n";

/// The mode's keys spelled out (what both plugins accept), as the pipeline's
/// TOML has them (a boolean reaches the plugin as the text `false`) ...
const ALL_KEYS: &str =
    "key = \"url\"\nkeep = \"first\"\nmode = \"exact\"\nmerge_alternates = false\n";
/// ... and as `PluginSettings` (text values) for loading through the runtime.
const ALL_KEYS_TEXT: &str =
    "key = \"url\"\nkeep = \"first\"\nmode = \"exact\"\nmerge_alternates = \"false\"\n";

/// Status `m3u_init` returns for a config it refuses (`abi::status::CONFIG_ERROR`).
const CONFIG_ERROR: i32 = -5;
/// Status for a batch the plugin refuses (`abi::status::PLUGIN_ERROR`).
const PLUGIN_ERROR: i32 = -1;

// ---------------------------------------------------------------------------
// Inputs and the reference
// ---------------------------------------------------------------------------

/// What both plugins must answer, derived independently: the first channel
/// of each URL trimmed of ASCII whitespace; channels with an empty (trimmed)
/// URL are all kept.
fn expected_dedup(channels: &[OwnedChannel]) -> Vec<OwnedChannel> {
    let mut seen: HashSet<&str> = HashSet::new();
    channels
        .iter()
        .filter(|c| {
            let url = c.stream_url.trim_ascii();
            url.is_empty() || seen.insert(url)
        })
        .cloned()
        .collect()
}

/// A small deterministic generator (xorshift64*), so inputs are the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The real playlist with many duplicates: about 4 500 copies of real
/// entries (some with the URL padded by ASCII whitespace) inserted at random
/// later positions, so most repeats land in a later batch than their first
/// occurrence; with `empty_urls`, also channels whose URL is empty or only
/// whitespace. Ids are 1..=n.
fn playlist_with_duplicates(empty_urls: bool) -> Vec<OwnedChannel> {
    let real = playlist();
    let mut rng = Rng(0x5eed_d00d_cafe_f00d);
    let mut out: Vec<OwnedChannel> = Vec::with_capacity(real.len() + 7000);
    for (index, channel) in real.iter().enumerate() {
        out.push(channel.clone());
        // After the first 2 000, roughly every other entry is followed by a
        // copy of a random earlier real entry.
        if index > 2000 && rng.below(2) == 0 {
            let mut copy = real[rng.below(index)].clone();
            match rng.below(8) {
                0 => copy.stream_url = format!("  {}\t", copy.stream_url).into(),
                1 => copy.stream_url = format!("\r\n{} ", copy.stream_url).into(),
                _ => {}
            }
            copy.channel_name = format!("{} (repeat)", copy.channel_name).into();
            out.push(copy);
        }
        if empty_urls && index % 997 == 0 {
            let mut empty = channel.clone();
            empty.stream_url = if index % 2 == 0 { "" } else { " \t " }.into();
            out.push(empty);
        }
    }
    // The first 300 entries once more at the end: repeats of the very first
    // URLs, ten or more batches after them.
    out.extend(real[..300].iter().cloned());
    assign_ids(&mut out);
    out
}

/// `count` distinct synthetic URLs, each channel followed now and then by a
/// repeat of an earlier one (a third of the time from far back).
fn synthetic(count: usize, seed: u64) -> Vec<OwnedChannel> {
    let template = playlist()[0].clone();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(count + count / 4);
    for index in 0..count {
        let mut channel = template.clone();
        channel.stream_url =
            format!("http://cdn{}.example/{index:07}/index.m3u8", index % 97).into();
        out.push(channel);
        if index > 0 && rng.below(4) == 0 {
            let mut repeat = template.clone();
            let from = if rng.below(3) == 0 {
                rng.below(index)
            } else {
                index - rng.below(index.min(3000))
            };
            repeat.stream_url =
                format!("http://cdn{}.example/{from:07}/index.m3u8", from % 97).into();
            out.push(repeat);
        }
    }
    assign_ids(&mut out);
    out
}

fn dropped(input: &[OwnedChannel], expected: &[OwnedChannel]) -> usize {
    input.len() - expected.len()
}

/// How many dropped channels had their first occurrence in an earlier batch.
fn dropped_across_batches(input: &[OwnedChannel], batch: usize) -> usize {
    let mut first_batch = std::collections::HashMap::new();
    let mut across = 0;
    for (index, channel) in input.iter().enumerate() {
        let url = channel.stream_url.trim_ascii();
        if url.is_empty() {
            continue;
        }
        let first = *first_batch.entry(url).or_insert(index / batch);
        if first != index / batch {
            across += 1;
        }
    }
    across
}

// ---------------------------------------------------------------------------
// Loading and running
// ---------------------------------------------------------------------------

fn context(batch_index: u32) -> StageContext<'static> {
    StageContext {
        stage: Stage::Filtering,
        memory_pressure: MemoryPressureLevel::Optimal,
        available_memory: 1 << 30,
        proxy_name: "integration".into(),
        base_url: "http://proxy.local/".into(),
        batch_index,
    }
}

/// `[<plugin>]` with these `key = "value"` lines, as the config passes them
/// (values are text).
fn settings(plugin: &str, lines: &str) -> PluginSettings {
    toml::from_str(&format!("[{plugin}]\n{lines}")).expect("plugin settings TOML")
}

/// The built plugin file; for the Rust twin a clear failure while it does
/// not exist yet (never a silent pass).
fn plugin_file(file: &str) -> (Vec<u8>, std::path::PathBuf) {
    let path = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(file);
    if file == TWIN_FILE && !path.exists() {
        panic!(
            "the Rust twin {} does not exist, so this comparison could not run: \
             build.rs builds it from plugins/dedup (plugin `dedup`) once that crate is \
             in the checkout and compiles",
            path.display()
        );
    }
    example_plugin(file)
}

fn try_load(
    wasm: &[u8],
    plugin: &str,
    lines: &str,
    limits: RuntimeLimits,
) -> Result<PluginInstance, Error> {
    let runtime = runtime_with(limits, &allowlist_with(&["get_config"]));
    runtime.load(wasm, plugin, &settings(plugin, lines))
}

fn slot(file: &str, plugin: &str, lines: &str) -> PluginSlot {
    let (wasm, path) = plugin_file(file);
    let instance = try_load(&wasm, plugin, lines, RuntimeLimits::default())
        .unwrap_or_else(|error| panic!("loading {file} failed: {error}"));
    assert_eq!(instance.info().name, plugin);
    assert!(instance.info().supports(Stage::Filtering));
    PluginSlot::new(instance, path)
}

/// Runs `input` through the slot in batches of `batch`, every call must
/// succeed; returns the kept channels.
fn filter_all(slot: &mut PluginSlot, input: &[OwnedChannel], batch: usize) -> Vec<OwnedChannel> {
    let mut output = Vec::with_capacity(input.len());
    for (index, chunk) in input.chunks(batch).enumerate() {
        let mut channels = chunk.to_vec();
        slot.run(Stage::Filtering, &context(index as u32), &mut channels)
            .unwrap_or_else(|error| panic!("batch {index}: {error}"));
        output.extend(channels);
    }
    output
}

/// Compares two channel lists one channel at a time, so a failure names the
/// first channel that differs.
fn assert_same_channels(actual: &[OwnedChannel], expected: &[OwnedChannel]) {
    for (index, (got, want)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(
            got, want,
            "output channel #{index} differs (expected id {}, url {:?})",
            want.id, want.stream_url
        );
    }
    assert_eq!(actual.len(), expected.len(), "channel count differs");
}

// ---------------------------------------------------------------------------
// The core checks, run on both plugins
// ---------------------------------------------------------------------------

/// Through `PluginSlot`: the real playlist as it is (45 repeated URLs), then,
/// on a fresh instance, the playlist with thousands of repeats, padded URLs
/// and empty URLs, in batches of 1024 and of 333.
fn check_dedup_through_slot(file: &str, plugin: &str, lines: &str) {
    let real = playlist();
    let expected = expected_dedup(&real);
    assert_eq!(
        dropped(&real, &expected),
        45,
        "the real playlist repeats 45 URLs"
    );
    let mut plain = slot(file, plugin, lines);
    assert_same_channels(&filter_all(&mut plain, &real, BATCH), &expected);

    let input = playlist_with_duplicates(true);
    let expected = expected_dedup(&input);
    assert!(
        dropped(&input, &expected) > 4000,
        "the derived input has many repeats"
    );
    assert!(
        dropped_across_batches(&input, BATCH) > 3500,
        "most repeats cross a batch boundary"
    );
    assert!(expected.iter().any(|c| c.stream_url.is_empty()));
    assert!(expected.iter().any(|c| c.stream_url.as_ref() == " \t "));
    for batch in [BATCH, 333] {
        let mut fresh = slot(file, plugin, lines);
        let output = filter_all(&mut fresh, &input, batch);
        assert_same_channels(&output, &expected);
    }
}

/// `M3U` text of `channels`, and the channels as the pipeline will read it
/// back (the reference is computed on those).
fn as_m3u(channels: &[OwnedChannel]) -> (String, Vec<OwnedChannel>) {
    let mut writer = M3uWriter::new(Vec::new(), &PlaylistHeader::default()).unwrap();
    for channel in channels {
        writer.write_channel(channel).unwrap();
    }
    let text = String::from_utf8(writer.finish().unwrap()).unwrap();
    let (_, mut parsed, malformed) = read_all(&text, 0);
    assert_eq!(malformed, 0);
    assign_ids(&mut parsed);
    (text, parsed)
}

fn pipeline_for(file: &str, plugin: &str, lines: &str, batch_size: usize) -> Pipeline {
    plugin_file(file); // a clear message if the Rust twin is not built
    let stem = file.trim_end_matches(".wasm");
    let dir = plugin_dir(&[stem]);
    let text = format!(
        "[pipeline]\nbatch_size = {batch_size}\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         filtering = [\"{plugin}\", \"native_filter\"]\n\
         [plugins.{plugin}]\n{lines}",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    pipeline
}

fn run_pipeline(pipeline: &mut Pipeline, m3u: &str) -> (Vec<OwnedChannel>, RunStats) {
    let source = Source::from_reader("dups", std::io::Cursor::new(m3u.as_bytes().to_vec()));
    pipeline.run_collect(vec![source]).unwrap()
}

/// The pipeline's output against the reference: same channels in the same
/// order, apart from the number the numbering stage gives and the id.
fn assert_pipeline_output(
    out: &[OwnedChannel],
    stats: &RunStats,
    plugin: &str,
    expected: &[OwnedChannel],
) {
    assert!(
        stats.plugin_load_errors.is_empty(),
        "{:?}",
        stats.plugin_load_errors
    );
    let filtering = stats
        .stages
        .iter()
        .find(|s| s.stage == "filtering")
        .expect("a filtering stage");
    assert_eq!(filtering.strategy, plugin, "{}", filtering.reason);
    assert_eq!(stats.plugin_failures, 0, "{:?}", stats.plugins);
    assert_eq!(stats.fallbacks, 0);
    assert_eq!(
        filtering
            .batches_by_strategy
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        vec![plugin],
        "every batch was filtered by the plugin"
    );
    assert_eq!(filtering.channels_out as usize, expected.len());
    let neutral: Vec<OwnedChannel> = out
        .iter()
        .zip(expected)
        .map(|(got, want)| {
            let mut got = got.clone();
            got.id = want.id;
            got.tvg_chno = want.tvg_chno.clone();
            got
        })
        .collect();
    assert_same_channels(&neutral, expected);
    assert_eq!(out.len(), expected.len());
}

/// Through the whole pipeline with `filtering = [plugin, "native_filter"]`,
/// on the playlist with repeats, with batches of 700.
fn check_dedup_through_pipeline(file: &str, plugin: &str, lines: &str) {
    let (m3u, input) = as_m3u(&playlist_with_duplicates(false));
    let expected = expected_dedup(&input);
    assert!(dropped(&input, &expected) > 4000);
    let mut pipeline = pipeline_for(file, plugin, lines, 700);
    let (out, stats) = run_pipeline(&mut pipeline, &m3u);
    assert_eq!(stats.channels_loaded as usize, input.len());
    assert_pipeline_output(&out, &stats, plugin, &expected);
}

/// A pipeline is reused for many runs (`serve` regenerates with the same
/// one): each run deduplicates on its own, so the second run of the same
/// playlist gives the same output as the first, not an empty one.
fn check_second_run_starts_afresh(file: &str, plugin: &str, lines: &str) {
    let (m3u, input) = as_m3u(&playlist_with_duplicates(false));
    let expected = expected_dedup(&input);
    let mut pipeline = pipeline_for(file, plugin, lines, BATCH);
    for run in 1..=2 {
        let (out, stats) = run_pipeline(&mut pipeline, &m3u);
        assert_eq!(stats.channels_written as usize, expected.len(), "run {run}");
        assert_pipeline_output(&out, &stats, plugin, &expected);
    }
}

// ---------------------------------------------------------------------------
// The WAT plugin
// ---------------------------------------------------------------------------

#[test]
fn wat_dedup_keeps_first_occurrences_through_the_slot() {
    check_dedup_through_slot(WAT_FILE, WAT_NAME, "");
}

#[test]
fn wat_dedup_keeps_first_occurrences_through_the_pipeline() {
    check_dedup_through_pipeline(WAT_FILE, WAT_NAME, ALL_KEYS);
}

#[test]
fn wat_dedup_second_run_of_a_pipeline_starts_afresh() {
    check_second_run_starts_afresh(WAT_FILE, WAT_NAME, "");
}

/// The set lives for the whole run: fed the same playlist again without a
/// new run, only the channels without a URL survive; after the host's
/// start-of-run call (`m3u_check_memory_pressure`) the set is empty again.
#[test]
fn wat_dedup_state_spans_batches_until_the_next_run() {
    let input = playlist_with_duplicates(true);
    let expected = expected_dedup(&input);
    let mut slot = slot(WAT_FILE, WAT_NAME, "");
    assert_same_channels(&filter_all(&mut slot, &input, BATCH), &expected);

    let again = filter_all(&mut slot, &input, BATCH);
    let no_url: Vec<OwnedChannel> = input
        .iter()
        .filter(|c| c.stream_url.trim_ascii().is_empty())
        .cloned()
        .collect();
    assert!(no_url.len() >= 10);
    assert_same_channels(&again, &no_url);

    assert!(slot
        .instance
        .accepts_pressure(
            MemoryPressureLevel::Emergency,
            &m3u_plugin_host::abi::RunContext::default()
        )
        .unwrap());
    assert_same_channels(&filter_all(&mut slot, &input, BATCH), &expected);
}

/// 200 000 distinct URLs (plus 50 000 repeats) take the table from 8 192
/// slots through six doublings to 524 288; the answers stay exact.
#[test]
fn wat_dedup_stays_exact_while_its_table_grows() {
    let input = synthetic(200_000, 7);
    let expected = expected_dedup(&input);
    assert_eq!(expected.len(), 200_000);
    assert!(dropped(&input, &expected) > 40_000);
    let mut slot = slot(WAT_FILE, WAT_NAME, "");
    let output = filter_all(&mut slot, &input, BATCH);
    assert_same_channels(&output, &expected);
    // And the set still answers for URLs from the start after all the moves.
    let mut batch: Vec<OwnedChannel> = input[..BATCH].to_vec();
    slot.run(Stage::Filtering, &context(0), &mut batch).unwrap();
    assert!(batch.is_empty(), "every early URL is still known");
}

/// What the plugin must do for `input` (batches of `BATCH`) when its table
/// cannot grow past 65 536 slots: the batch that first needs more than half
/// of them fails with `first_failure` (nothing recorded), later batches run
/// while the set stays within 7/8 of the slots, and after that every batch
/// with a URL is refused with PLUGIN_ERROR, unchanged.
fn check_memory_ceiling(
    slot: &mut PluginSlot,
    input: &[OwnedChannel],
    first_failure: Option<fn(&ErrorKind) -> bool>,
) {
    const SLOTS: usize = 65_536;
    let mut seen: HashSet<String> = HashSet::new();
    let mut pending_failure = first_failure;
    let (mut ran, mut refused) = (0, 0);
    for (index, chunk) in input.chunks(BATCH).enumerate() {
        let urls = chunk
            .iter()
            .filter(|c| !c.stream_url.trim_ascii().is_empty())
            .count();
        let need = seen.len() + urls;
        let mut batch = chunk.to_vec();
        let result = slot.run(Stage::Filtering, &context(index as u32), &mut batch);
        let trapped_now = need > SLOTS / 2 && pending_failure.is_some();
        if trapped_now || need > SLOTS - SLOTS / 8 {
            let error = result.expect_err(&format!("batch {index} (needs {need}) must fail"));
            if trapped_now {
                let is_expected = pending_failure.take().expect("checked above");
                assert!(is_expected(error.kind()), "batch {index}: {error:?}");
            } else {
                assert!(
                    matches!(
                        error.kind(),
                        ErrorKind::PluginStatus {
                            status: PLUGIN_ERROR,
                            ..
                        }
                    ),
                    "batch {index}: {error:?}"
                );
                refused += 1;
            }
            assert_same_channels(&batch, chunk);
            continue;
        }
        result.unwrap_or_else(|error| panic!("batch {index} (needs {need}): {error}"));
        let want: Vec<OwnedChannel> = chunk
            .iter()
            .filter(|c| {
                let url = c.stream_url.trim_ascii();
                url.is_empty() || seen.insert(url.to_string())
            })
            .cloned()
            .collect();
        assert_same_channels(&batch, &want);
        ran += 1;
    }
    assert!(pending_failure.is_none(), "the memory limit was reached");
    assert!(
        seen.len() > SLOTS / 2 + 20_000,
        "exact beyond half load: {}",
        seen.len()
    );
    assert!(ran > 50 && refused > 5, "ran {ran}, refused {refused}");
}

/// The module's own memory maximum lowered to 2 MiB: `memory.grow` returns
/// -1, the plugin keeps its 65 536-slot table, stays exact up to 7/8 load and
/// then refuses batches without recording anything from them.
#[test]
fn wat_dedup_at_its_memory_maximum_stays_exact_then_refuses_batches() {
    let source = std::fs::read_to_string(repo_path(WAT_SOURCE)).unwrap();
    let small = replace_once(
        &source,
        "(memory (export \"memory\") 18 1024)",
        "(memory (export \"memory\") 18 32)",
    );
    let instance = try_load(&wat_str(&small), WAT_NAME, "", RuntimeLimits::default()).unwrap();
    let mut slot = PluginSlot::new(instance, repo_path(WAT_SOURCE));
    check_memory_ceiling(&mut slot, &synthetic(70_000, 11), None);
}

/// The host's memory limit at 2 MiB: the `memory.grow` that would pass it
/// traps (MemoryLimit), that batch fails unchanged with the table untouched;
/// the next call notices and carries on as above.
#[test]
fn wat_dedup_at_the_host_memory_limit_fails_one_batch_then_carries_on() {
    let (wasm, path) = plugin_file(WAT_FILE);
    let limits = RuntimeLimits {
        max_memory_bytes: 2 << 20,
        ..RuntimeLimits::default()
    };
    let mut slot = PluginSlot::new(try_load(&wasm, WAT_NAME, "", limits).unwrap(), path);
    check_memory_ceiling(
        &mut slot,
        &synthetic(70_000, 13),
        Some(|kind| matches!(kind, ErrorKind::MemoryLimit { .. })),
    );
}

#[test]
fn wat_dedup_refuses_other_modes_at_load_with_the_config_status() {
    let (wasm, _) = plugin_file(WAT_FILE);
    let refused = [
        "key = \"name\"\n",
        "key = \"URL\"\n",
        "keep = \"last\"\n",
        "mode = \"fuzzy\"\n",
        "mode = \"normalized\"\n",
        "merge_alternates = \"true\"\n",
        "merge_alternates = \"False\"\n",
        "key = \"url\"\nkeep = \"first\"\nmode = \"exact\"\nmerge_alternates = \"0\"\n",
    ];
    for lines in refused {
        let error = match try_load(&wasm, WAT_NAME, lines, RuntimeLimits::default()) {
            Ok(_) => panic!("{lines:?} was accepted"),
            Err(error) => error,
        };
        assert!(
            matches!(
                error.kind(),
                ErrorKind::PluginStatus { function, status: CONFIG_ERROR, .. } if function.contains("init")
            ),
            "{lines:?}: {error:?}"
        );
    }
    // The supported mode, spelled out (surrounding whitespace ignored, as the
    // Rust twin does) or left to the defaults, and keys the plugin does not
    // know, load.
    for lines in [
        ALL_KEYS_TEXT,
        "",
        "keep = \"first\"\n",
        "key = \" url\\t\"\nmode = \"exact \"\n",
        "other = \"1\"\n",
    ] {
        try_load(&wasm, WAT_NAME, lines, RuntimeLimits::default())
            .unwrap_or_else(|error| panic!("{lines:?}: {error}"));
    }
    // get_config must be allowed: without it the module is refused by name.
    let runtime = runtime_with(RuntimeLimits::default(), &default_allowlist());
    let error = match runtime.load(&wasm, WAT_NAME, &PluginSettings::new()) {
        Ok(_) => panic!("loaded without get_config in the allowlist"),
        Err(error) => error,
    };
    assert!(
        matches!(error.kind(), ErrorKind::DisallowedImport { name, .. } if name == "get_config"),
        "{error:?}"
    );
}

/// An ABI 2 `StageInput` of channels with these stream URLs (ids 1..),
/// carrying only `fields`, as the host writes it into the arena.
fn stage_input(fields: FieldSet, urls: &[&str]) -> Vec<u8> {
    let channels: Vec<OwnedChannel> = urls
        .iter()
        .enumerate()
        .map(|(index, url)| OwnedChannel {
            id: index as u64 + 1,
            stream_url: url.to_string().into(),
            ..OwnedChannel::default()
        })
        .collect();
    let header = InputHeader {
        batch_index: 0,
        memory_pressure: MemoryPressureLevel::Optimal,
        fields,
    };
    let mut buffer = vec![0u8; 4096];
    let len = encode_stage_input(&mut buffer, header, &channels).unwrap();
    buffer.truncate(len);
    buffer
}

/// Bytes that are not a projected `StageInput` of a plugin reading only
/// `stream_url` are refused with DECODE_ERROR, and the set is not touched.
#[test]
fn wat_dedup_refuses_input_it_cannot_decode() {
    let (wasm, _) = plugin_file(WAT_FILE);
    let mut instance = try_load(&wasm, WAT_NAME, "", RuntimeLimits::default()).unwrap();
    let url_only = FieldSet::of(&[Field::StreamUrl]);
    #[rustfmt::skip]
    let good: Vec<u8> = vec![
        0x00, 0x00,                     // batch_index 0, memory_pressure Optimal
        0x80, 0x01,                     // fields = {StreamUrl}
        0x01,                           // 1 channel
        0x08, 1, 0, 0, 0, 0, 0, 0, 0,   // ids: 8 bytes, id 1
        0x04, 0, 0, 0, 0,               // source_ids: 4 bytes, 0
        0x01,                           // one column (stream_url):
        0x00,                           //   starts: empty (a text field)
        0x08, 0, 0, 0, 0, 1, 0, 0, 0,   //   offsets: 8 bytes, 0 and 1
        0x01, b'u',                     //   data: "u"
    ];
    assert_eq!(good, stage_input(url_only, &["u"]), "the ABI 2 layout");
    // Three URLs "a", "b", "c": their offsets 0, 1, 2, 3 are bytes 46..62,
    // after the header (5 bytes), the ids (1 + 3 × 8), the source ids
    // (1 + 3 × 4), the column count, `starts` and the offsets' length.
    let three = stage_input(url_only, &["a", "b", "c"]);
    assert_eq!(
        &three[46..62],
        &[0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]
    );
    let with_offsets = |at: usize, value: u8| {
        let mut bytes = three.clone();
        bytes[at] = value;
        bytes
    };
    let bad: [(&str, Vec<u8>); 9] = [
        ("URL cut short", good[..good.len() - 1].to_vec()),
        ("trailing byte", [&good[..], &[0][..]].concat()),
        (
            "fields = ChannelName",
            stage_input(FieldSet::of(&[Field::ChannelName]), &["u"]),
        ),
        (
            "fields = StreamUrl and ChannelName",
            stage_input(
                FieldSet::of(&[Field::ChannelName, Field::StreamUrl]),
                &["u"],
            ),
        ),
        ("5 channels, 1 sent", {
            let mut bytes = good.clone();
            bytes[4] = 0x05;
            bytes
        }),
        (
            "data length 2^32 - 1",
            [&good[..30], &[0xff, 0xff, 0xff, 0xff, 0x0f, b'u'][..]].concat(),
        ),
        ("last offset past the data", with_offsets(58, 4)),
        ("an offset past the data", with_offsets(50, 200)),
        ("offsets going back", with_offsets(54, 0)),
    ];
    for (what, input) in bad {
        let error = instance
            .execute_stage(Stage::Filtering, &input)
            .expect_err(what);
        assert!(
            matches!(error.kind(), ErrorKind::PluginStatus { status: -2, .. }),
            "{what}: {input:02x?}: {error:?}"
        );
    }
    let error = instance
        .execute_stage(Stage::DataMapping, &good)
        .expect_err("data_mapping");
    assert!(
        matches!(error.kind(), ErrorKind::PluginStatus { status: -3, .. }),
        "{error:?}"
    );
    // "u" was never recorded: kept (nothing dropped: KeepAll), then dropped
    // (Keep, a one-byte mask with bit 0 clear).
    assert_eq!(
        instance.execute_stage(Stage::Filtering, &good).unwrap(),
        &[0x03]
    );
    assert_eq!(
        instance.execute_stage(Stage::Filtering, &good).unwrap(),
        &[0x01, 0x01, 0x00]
    );
    // Nor were "a", "b" and "c": all kept, then all dropped; with a new URL
    // in the middle, only that one is kept.
    assert_eq!(
        instance.execute_stage(Stage::Filtering, &three).unwrap(),
        &[0x03]
    );
    assert_eq!(
        instance.execute_stage(Stage::Filtering, &three).unwrap(),
        &[0x01, 0x01, 0x00]
    );
    let mixed = stage_input(url_only, &["a", "x", "c"]);
    assert_eq!(
        instance.execute_stage(Stage::Filtering, &mixed).unwrap(),
        &[0x01, 0x01, 0b010]
    );
}

// ---------------------------------------------------------------------------
// The Rust twin, same checks
// ---------------------------------------------------------------------------

#[test]
fn rust_twin_dedup_keeps_first_occurrences_through_the_slot() {
    check_dedup_through_slot(TWIN_FILE, TWIN_NAME, TWIN_SETTINGS);
}

#[test]
fn rust_twin_dedup_keeps_first_occurrences_through_the_pipeline() {
    check_dedup_through_pipeline(TWIN_FILE, TWIN_NAME, TWIN_SETTINGS);
}

#[test]
fn rust_twin_dedup_second_run_of_a_pipeline_starts_afresh() {
    check_second_run_starts_afresh(TWIN_FILE, TWIN_NAME, TWIN_SETTINGS);
}

/// The two plugins side by side on the same batches: identical keep sets.
#[test]
fn wat_and_rust_twin_answer_identically_batch_by_batch() {
    let input = playlist_with_duplicates(true);
    let mut wat = slot(WAT_FILE, WAT_NAME, "");
    let mut twin = slot(TWIN_FILE, TWIN_NAME, TWIN_SETTINGS);
    for (index, chunk) in input.chunks(BATCH).enumerate() {
        let mut a = chunk.to_vec();
        let mut b = chunk.to_vec();
        wat.run(Stage::Filtering, &context(index as u32), &mut a)
            .unwrap();
        twin.run(Stage::Filtering, &context(index as u32), &mut b)
            .unwrap();
        assert_same_channels(&b, &a);
    }
}
