//! The `dedup` plugin (plugins/dedup) on the real playlist: every key kind,
//! keep first/best, `merge_alternates` (dedup at data_mapping and filtering,
//! alone and in a chain), the exact set and the Bloom filter (chosen by
//! `mode` and memory pressure), config errors, and the whole pipeline.
//! Expected results are computed here with plain Rust over the parsed
//! channels (string keys in a `HashSet`, no hashing, batches cut by
//! `chunks`), never by the plugin's own code; the plugin's logic file is
//! compiled natively below only for what the wasm boundary cannot show
//! (error texts, per-channel merge decisions and the dry run, the Bloom
//! filter's false-positive rate at capacity).

use std::collections::{HashMap, HashSet};

use m3u_plugin_host::abi::{status, MemoryPressureLevel, Stage, StageContext};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, Source};
use m3u_plugin_host::runtime::{PluginSettings, RuntimeLimits};
use m3u_plugin_host::{Error, ErrorKind, OwnedChannel};

use super::common::{allowlist_with, example_plugin, playlist, repo_path, runtime_with};
use super::pipeline::plugin_dir;

#[allow(dead_code)]
#[path = "../../plugins/dedup/src/logic.rs"]
pub(crate) mod dedup_logic;

/// Channels per plugin call, as the pipeline's default batch.
const BATCH: usize = 1024;

// ---------------------------------------------------------------------------
// The specification, written independently of the plugin
// ---------------------------------------------------------------------------

/// Quality tags and the resolution rank each stands for.
const TAGS: [(&str, u8); 14] = [
    ("4k", 4),
    ("2160p", 4),
    ("uhd", 4),
    ("1080p", 3),
    ("1080i", 3),
    ("fhd", 3),
    ("fullhd", 3),
    ("720p", 2),
    ("hd", 2),
    ("576p", 1),
    ("576i", 1),
    ("480p", 1),
    ("480i", 1),
    ("sd", 1),
];

fn trim_ascii(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

fn tag_rank(word: &str) -> Option<u8> {
    TAGS.iter()
        .find(|(tag, _)| *tag == word.to_ascii_lowercase())
        .map(|(_, rank)| *rank)
}

/// Name key: lowercase (per character), blank out `(…)`/`[…]`, split at
/// non-alphanumerics, drop quality tags, concatenate.
fn name_key(name: &str) -> String {
    let lower: String = name.chars().flat_map(char::to_lowercase).collect();
    let mut outside = String::new();
    let mut depth = 0usize;
    for c in lower.chars() {
        match c {
            '(' | '[' => {
                depth += 1;
                outside.push(' ');
            }
            ')' | ']' => {
                depth = depth.saturating_sub(1);
                outside.push(' ');
            }
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty() && tag_rank(word).is_none())
        .collect()
}

/// Highest rank of any tag word in the whole name (brackets included).
fn rank(name: &str) -> u8 {
    name.split(|c: char| !c.is_alphanumeric())
        .filter_map(tag_rank)
        .max()
        .unwrap_or(0)
}

/// The key of `channel` for `key` (`tvg_id`, `name`, `url`, joined by `+`):
/// one string per part; `None` when any part is empty.
fn key_of(channel: &OwnedChannel, key: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for part in ["tvg_id", "name", "url"] {
        if !key.split('+').any(|p| p.trim() == part) {
            continue;
        }
        let value = match part {
            "tvg_id" => trim_ascii(&channel.tvg_id).to_ascii_lowercase(),
            "name" => name_key(&channel.channel_name),
            _ => trim_ascii(&channel.stream_url).to_string(),
        };
        if value.is_empty() {
            return None;
        }
        parts.push(value);
    }
    Some(parts)
}

/// What the plugin must return with `keep = "first"`: every channel whose
/// key was not seen before (in any earlier batch), in input order.
fn expected_first(channels: &[OwnedChannel], key: &str) -> Vec<OwnedChannel> {
    let mut seen = HashSet::new();
    channels
        .iter()
        .filter(|c| key_of(c, key).is_none_or(|k| seen.insert(k)))
        .cloned()
        .collect()
}

/// `keep = "best"`: per batch, among channels whose key no earlier batch
/// had, the highest rank wins (ties: the earlier); a key of an earlier batch
/// drops every copy. Also returns, per kept channel id, the ids it beat in
/// its batch, in arrival order (what `merge_alternates` attaches).
fn expected_best(
    channels: &[OwnedChannel],
    key: &str,
    batch: usize,
) -> (Vec<OwnedChannel>, HashMap<u64, Vec<u64>>) {
    expected_per_batch(channels, key, batch, true)
}

/// [`expected_best`], or with `best = false` the same per-batch grouping
/// where the first copy of a batch wins (`keep = "first"` with merging).
fn expected_per_batch(
    channels: &[OwnedChannel],
    key: &str,
    batch: usize,
    best: bool,
) -> (Vec<OwnedChannel>, HashMap<u64, Vec<u64>>) {
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut kept = Vec::new();
    let mut alternates: HashMap<u64, Vec<u64>> = HashMap::new();
    for chunk in channels.chunks(batch) {
        let mut winner: HashMap<Vec<String>, usize> = HashMap::new();
        for (index, channel) in chunk.iter().enumerate() {
            let Some(k) = key_of(channel, key) else {
                continue;
            };
            if seen.contains(&k) {
                continue;
            }
            let entry = winner.entry(k).or_insert(index);
            if best && rank(&channel.channel_name) > rank(&chunk[*entry].channel_name) {
                *entry = index;
            }
        }
        for (index, channel) in chunk.iter().enumerate() {
            match key_of(channel, key) {
                None => kept.push(channel.clone()),
                Some(k) if seen.contains(&k) => {}
                Some(k) => {
                    let win = winner[&k];
                    if win == index {
                        kept.push(channel.clone());
                    } else {
                        alternates
                            .entry(chunk[win].id)
                            .or_default()
                            .push(channel.id);
                    }
                }
            }
        }
        seen.extend(chunk.iter().filter_map(|c| key_of(c, key)));
    }
    (kept, alternates)
}

#[test]
fn the_test_spec_normalises_as_documented() {
    assert_eq!(name_key("BBC One HD (1080p) [Geo-blocked]"), "bbcone");
    assert_eq!(name_key("bbc-one"), "bbcone");
    assert_eq!(name_key("ESPN2 FHD"), "espn2");
    assert_eq!(name_key("(HD)"), "");
    assert_eq!(name_key("Канал 4K"), "канал");
    assert_eq!(rank("Zee TV (1080p)"), 3);
    assert_eq!(rank("Zee TV HD [4K]"), 4);
    assert_eq!(rank("HDTV"), 0);
    assert_eq!(rank("Arte SD"), 1);
}

// ---------------------------------------------------------------------------
// Running the plugin
// ---------------------------------------------------------------------------

/// `[plugins.dedup]` settings as the host hands them over at init (and to
/// `get_config`): strings as they are, numbers and booleans as text.
fn settings(toml_text: &str) -> PluginSettings {
    let table: toml::Table = toml::from_str(toml_text).expect("plugin settings TOML");
    let values = table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(text) => text,
                other => other.to_string(),
            };
            (key, text)
        })
        .collect();
    PluginSettings::from([("dedup".to_string(), values)])
}

fn context(level: MemoryPressureLevel, batch_index: u32) -> StageContext<'static> {
    StageContext {
        stage: Stage::Filtering,
        memory_pressure: level,
        available_memory: 1 << 30,
        proxy_name: "integration".into(),
        base_url: "http://proxy.local/".into(),
        batch_index,
    }
}

fn load(config: &str) -> Result<PluginSlot, Error> {
    let (wasm, path) = example_plugin("dedup.wasm");
    let runtime = runtime_with(RuntimeLimits::default(), &allowlist_with(&["get_config"]));
    let instance = runtime.load(&wasm, "dedup", &settings(config))?;
    Ok(PluginSlot::new(instance, path))
}

/// One run as the pipeline makes it: the pressure check that opens a run,
/// then every batch at filtering. Returns the kept channels.
fn run_slot(
    slot: &mut PluginSlot,
    channels: &[OwnedChannel],
    level: MemoryPressureLevel,
    batch: usize,
) -> Vec<OwnedChannel> {
    assert!(slot
        .instance
        .accepts_pressure(level, &m3u_plugin_host::abi::RunContext::default())
        .unwrap());
    let mut output = Vec::with_capacity(channels.len());
    for (index, chunk) in channels.chunks(batch).enumerate() {
        let mut batch = chunk.to_vec();
        slot.run(Stage::Filtering, &context(level, index as u32), &mut batch)
            .unwrap_or_else(|error| panic!("batch {index}: {error}"));
        output.extend(batch);
    }
    output
}

fn run_plugin(config: &str, channels: &[OwnedChannel]) -> Vec<OwnedChannel> {
    let mut slot = load(config).unwrap_or_else(|error| panic!("loading dedup: {error}"));
    run_slot(&mut slot, channels, MemoryPressureLevel::Optimal, BATCH)
}

fn assert_same_channels(actual: &[OwnedChannel], expected: &[OwnedChannel]) {
    for (index, (got, want)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(got, want, "channel #{index} (id {}) differs", want.id);
    }
    assert_eq!(actual.len(), expected.len(), "channel count differs");
}

/// The real playlist plus copies that must count as duplicates under each
/// normalisation: every 9th channel again later, with its tvg-id upper-cased
/// and padded, its URL padded, and its name decorated with a quality tag and
/// a bracketed note. Ids stay unique (1..=n), as the pipeline assigns them.
fn playlist_with_copies() -> Vec<OwnedChannel> {
    playlist_with(|index, channel| {
        if index % 9 != 0 {
            return Vec::new();
        }
        let mut copy = copy_of(channel);
        copy.stream_url = format!(" {} ", channel.stream_url).into();
        vec![copy]
    })
}

/// A copy of `channel` that every key normalisation must match: tvg-id
/// upper-cased and padded, name upper-cased with a quality tag and a note.
fn copy_of(channel: &OwnedChannel) -> OwnedChannel {
    let mut copy = channel.clone();
    copy.tvg_id = format!("  {}\t", channel.tvg_id.to_ascii_uppercase()).into();
    copy.channel_name = format!("{} FHD [copy]", channel.channel_name.to_uppercase()).into();
    copy
}

/// The real playlist with `extra(index, channel)` inserted later: the extras
/// of each 1536 channels are released together (about 1.5 batches on), so
/// some land in the batch of their original and most in a later one. Ids
/// are 1..=n, as the pipeline assigns them.
fn playlist_with(extra: impl Fn(usize, &OwnedChannel) -> Vec<OwnedChannel>) -> Vec<OwnedChannel> {
    let channels = playlist();
    let mut out = Vec::with_capacity(channels.len() * 2);
    let mut pending = Vec::new();
    for (index, channel) in channels.iter().enumerate() {
        out.push(channel.clone());
        pending.extend(extra(index, channel));
        if index % 1536 == 1535 {
            out.append(&mut pending);
        }
    }
    out.append(&mut pending);
    for (index, channel) in out.iter_mut().enumerate() {
        channel.id = index as u64 + 1;
    }
    out
}

/// Checks a result against the input without knowing the rule: a
/// subsequence in input order, and every dropped channel has a non-empty key
/// that a kept channel shares.
fn assert_only_duplicates_dropped(input: &[OwnedChannel], output: &[OwnedChannel], key: &str) {
    let kept_ids: HashSet<u64> = output.iter().map(|c| c.id).collect();
    let mut position = 0;
    for channel in output {
        position += input[position..]
            .iter()
            .position(|c| c.id == channel.id)
            .unwrap_or_else(|| panic!("id {} out of order or unknown", channel.id))
            + 1;
    }
    let kept_keys: HashSet<Vec<String>> = output.iter().filter_map(|c| key_of(c, key)).collect();
    for channel in input.iter().filter(|c| !kept_ids.contains(&c.id)) {
        let k = key_of(channel, key)
            .unwrap_or_else(|| panic!("id {} has an empty key but was dropped", channel.id));
        assert!(
            kept_keys.contains(&k),
            "id {} dropped without a kept twin",
            channel.id
        );
    }
}

fn check_first(key: &str, input: &[OwnedChannel], min_dropped: usize) -> usize {
    let expected = expected_first(input, key);
    let dropped = input.len() - expected.len();
    assert!(
        dropped >= min_dropped,
        "key {key}: only {dropped} duplicates in the input; the test would prove little"
    );
    let output = run_plugin(&format!("key = {key:?}\n"), input);
    eprintln!("dedup key={key}: {dropped} of {} dropped", input.len());
    assert_same_channels(&output, &expected);
    assert_only_duplicates_dropped(input, &output, key);
    dropped
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[test]
fn default_key_is_tvg_id_and_drops_later_copies_across_batches() {
    let input = playlist();
    let expected = expected_first(&input, "tvg_id");
    assert!(
        input.len() - expected.len() > 1000,
        "the playlist repeats tvg-ids"
    );
    let no_id = input.iter().filter(|c| c.tvg_id.trim().is_empty()).count();
    assert!(no_id > 2000, "channels without tvg-id are all kept");
    let mut slot = load("").expect("dedup loads without config");
    assert_eq!(slot.instance.info().name, "dedup");
    assert!(slot.instance.info().supports(Stage::Filtering));
    let output = run_slot(&mut slot, &input, MemoryPressureLevel::Optimal, BATCH);
    assert_same_channels(&output, &expected);
    assert_only_duplicates_dropped(&input, &output, "tvg_id");
    let stats = slot.instance.stats();
    eprintln!(
        "dedup key=tvg_id: {} channels, {:.0} fuel/channel",
        input.len(),
        stats.fuel_consumed as f64 / input.len() as f64
    );
}

#[test]
fn tvg_id_key_ignores_case_and_surrounding_whitespace() {
    let dropped = check_first("tvg_id", &playlist_with_copies(), 1800);
    // Every copy of a channel with a tvg-id is a duplicate.
    let copies_with_id = playlist()
        .iter()
        .step_by(9)
        .filter(|c| !c.tvg_id.trim().is_empty())
        .count();
    assert!(dropped >= copies_with_id);
}

#[test]
fn name_key_ignores_case_brackets_and_quality_tags() {
    check_first("name", &playlist_with_copies(), 1169);
}

#[test]
fn url_key_drops_repeated_stream_urls() {
    check_first("url", &playlist(), 40);
    check_first("url", &playlist_with_copies(), 1169);
}

#[test]
fn combined_key_needs_every_part_to_match() {
    let input = playlist_with_copies();
    let combined = check_first("tvg_id+url", &input, 850);
    let by_id = expected_first(&input, "tvg_id").len();
    let by_both = expected_first(&input, "tvg_id+url").len();
    assert!(by_both > by_id, "same tvg-id with other URLs is kept");
    assert!(combined < input.len() - by_id);
    check_first("name + url", &input, 1100);
}

// ---------------------------------------------------------------------------
// keep = best, merge decisions
// ---------------------------------------------------------------------------

#[test]
fn keep_best_keeps_the_highest_resolution_of_each_batch() {
    let input = playlist_with_copies();
    for key in ["name", "tvg_id"] {
        let (expected, _) = expected_best(&input, key, BATCH);
        let first = expected_first(&input, key);
        let differ = first
            .iter()
            .map(|c| c.id)
            .collect::<HashSet<_>>()
            .symmetric_difference(&expected.iter().map(|c| c.id).collect())
            .count();
        assert!(
            differ > 20,
            "key {key}: best and first differ on only {differ} ids"
        );
        let output = run_plugin(&format!("key = {key:?}\nkeep = \"best\"\n"), &input);
        assert_same_channels(&output, &expected);
        assert_only_duplicates_dropped(&input, &output, key);
    }
}

#[test]
fn keep_best_only_compares_within_a_batch() {
    // Original in batch 0 without a tag, a 4K copy in batch 1: the original
    // stands, the better copy is dropped.
    let mut input: Vec<OwnedChannel> = playlist().into_iter().take(8).collect();
    let mut better = input[0].clone();
    better.channel_name = format!("{} 4K", input[0].channel_name).into();
    better.id = 100;
    input.push(better);
    assert_eq!(rank(&input[0].channel_name), 0);
    let mut slot = load("key = \"tvg_id\"\nkeep = \"best\"\n").unwrap();
    let output = run_slot(&mut slot, &input, MemoryPressureLevel::Optimal, 8);
    assert_same_channels(&output, &input[..8]);
    // The same channels in one batch: the 4K copy wins, in its own place.
    let output = run_slot(&mut slot, &input, MemoryPressureLevel::Optimal, 16);
    let mut want: Vec<OwnedChannel> = input[1..].to_vec();
    want.retain(|c| c.id != input[0].id);
    assert_same_channels(&output, &want);
}

#[test]
fn merge_decisions_of_the_logic_name_the_kept_channel_of_the_batch() {
    // Natively, on the real playlist: `plan_batch` is a dry run (planning a
    // batch twice gives the same answer, so nothing was remembered), plan +
    // commit decides as `decide_batch` does, and each dropped channel names
    // the kept channel of its batch exactly as the spec computes.
    let input = playlist_with_copies();
    let config = dedup_logic::Config {
        key: dedup_logic::KeySpec::parse("name").unwrap(),
        keep: dedup_logic::Keep::Best,
        merge_alternates: true,
        ..dedup_logic::Config::default()
    };
    let mut dedup = dedup_logic::Dedup::new(config.clone());
    dedup.start_run(0);
    let mut twin = dedup_logic::Dedup::new(config);
    twin.start_run(0);
    let (expected, expected_alternates) = expected_best(&input, "name", BATCH);
    let mut kept = Vec::new();
    let mut alternates: HashMap<u64, Vec<u64>> = HashMap::new();
    let (mut decisions, mut again) = (Vec::new(), Vec::new());
    for chunk in input.chunks(BATCH) {
        let fields: Vec<dedup_logic::Fields<'_>> = chunk
            .iter()
            .map(|c| dedup_logic::Fields {
                tvg_id: &c.tvg_id,
                name: &c.channel_name,
                url: &c.stream_url,
            })
            .collect();
        dedup.plan_batch(&fields, &mut decisions);
        dedup.plan_batch(&fields, &mut again);
        assert_eq!(decisions, again, "a plan must not remember keys");
        assert!(dedup_logic::merge_matches(&decisions, &again));
        dedup.commit_batch();
        twin.decide_batch(&fields, &mut again);
        assert_eq!(decisions, again, "plan + commit is decide_batch");
        for (channel, decision) in chunk.iter().zip(&decisions) {
            match decision {
                dedup_logic::Decision::Keep => kept.push(channel.id),
                dedup_logic::Decision::Drop { kept: Some(winner) } => {
                    assert!(decisions[*winner as usize].is_keep());
                    let winner = &chunk[*winner as usize];
                    alternates.entry(winner.id).or_default().push(channel.id);
                }
                dedup_logic::Decision::Drop { kept: None } => {}
            }
        }
    }
    assert_eq!(kept, expected.iter().map(|c| c.id).collect::<Vec<_>>());
    assert!(expected_alternates.len() > 100);
    assert_eq!(alternates, expected_alternates);
    assert_eq!(dedup.exact_len(), twin.exact_len());
}

#[test]
fn merge_matches_accepts_only_plans_that_attach_what_filtering_drops() {
    use dedup_logic::{merge_matches, Decision::Drop, Decision::Keep};
    let filtered = [Keep, Drop { kept: Some(0) }, Keep, Drop { kept: None }];
    assert!(merge_matches(&filtered, &filtered));
    // Copies of an earlier batch's key may have been planned as a group of
    // their own: their kept channel is dropped as well.
    let planned = [Keep, Drop { kept: Some(0) }, Keep, Drop { kept: Some(2) }];
    let later = [
        Keep,
        Drop { kept: Some(0) },
        Drop { kept: None },
        Drop { kept: None },
    ];
    assert!(merge_matches(&planned, &later));
    // A copy merged elsewhere or not at all, a kept channel's URL merged
    // into another kept channel, or another length: mismatch.
    assert!(!merge_matches(
        &[Keep, Keep, Keep, Drop { kept: None }],
        &filtered
    ));
    assert!(!merge_matches(
        &[Keep, Drop { kept: Some(2) }, Keep, Drop { kept: None }],
        &filtered
    ));
    assert!(!merge_matches(
        &planned,
        &[Keep, Drop { kept: Some(0) }, Keep, Keep]
    ));
    assert!(!merge_matches(&filtered[..3], &filtered));
}

// ---------------------------------------------------------------------------
// merge_alternates through the whole pipeline
// ---------------------------------------------------------------------------

const ALTERNATES: &str = "x-alternate-urls";

/// The copies of [`playlist_with_copies`] (URLs not padded) plus mirrors:
/// every 18th channel once more,
/// twice, with one other URL (the second mirror adds nothing), and for every
/// 36th that URL holds a space, which the attribute percent-encodes. The
/// copies and mirrors of 1536 channels are released together, so some land
/// in the batch of their original and most in a later one.
fn playlist_with_mirrors() -> Vec<OwnedChannel> {
    playlist_with(|index, channel| {
        let mut extras = Vec::new();
        if index % 9 == 0 {
            extras.push(copy_of(channel));
        }
        if index % 18 == 0 {
            let mut mirror = channel.clone();
            mirror.channel_name = format!("{} (mirror)", channel.channel_name).into();
            mirror.stream_url = if index % 36 == 0 {
                format!("{} backup", channel.stream_url.trim()).into()
            } else {
                format!("{}?mirror=1", channel.stream_url.trim()).into()
            };
            extras.push(mirror.clone());
            extras.push(mirror);
        }
        extras
    })
}

/// `channels` as M3U text, as a source would hold it.
fn m3u_text(channels: &[OwnedChannel]) -> String {
    let mut writer = m3u_plugin_host::m3u::M3uWriter::new(
        Vec::new(),
        &m3u_plugin_host::m3u::PlaylistHeader::default(),
    )
    .unwrap();
    for channel in channels {
        writer.write_channel(channel).unwrap();
    }
    String::from_utf8(writer.finish().unwrap()).unwrap()
}

/// The spec of `x-alternate-urls` for `kept` over `copies` (arrival order):
/// their trimmed URLs, each once, none empty or equal to the kept channel's
/// own, with space, ASCII controls and `"` percent-encoded, joined by one
/// space; `None` when no URL remains.
fn alternates_value(kept: &OwnedChannel, copies: &[&OwnedChannel]) -> Option<String> {
    let own = trim_ascii(&kept.stream_url);
    let mut urls: Vec<&str> = Vec::new();
    for copy in copies {
        let url = trim_ascii(&copy.stream_url);
        if !url.is_empty() && url != own && !urls.contains(&url) {
            urls.push(url);
        }
    }
    let encode = |url: &str| -> String {
        url.chars()
            .map(|c| {
                if c == ' ' || c == '"' || c.is_ascii_control() {
                    format!("%{:02X}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    (!urls.is_empty()).then(|| {
        urls.iter()
            .map(|url| encode(url))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// What a merge run over `text` must give: the channels as the pipeline
/// reads them (ids 1..=n), the ids kept, and `x-alternate-urls` per kept id.
fn expected_merge(
    text: &str,
    key: &str,
    batch: usize,
    best: bool,
) -> (Vec<OwnedChannel>, Vec<u64>, HashMap<u64, String>) {
    let (_, mut input, malformed) = m3u_plugin_host::m3u::read_all(text, 0);
    assert_eq!(malformed, 0);
    super::common::assign_ids(&mut input);
    let (kept, beaten) = expected_per_batch(&input, key, batch, best);
    let by_id: HashMap<u64, &OwnedChannel> = input.iter().map(|c| (c.id, c)).collect();
    let alternates = beaten
        .iter()
        .filter_map(|(winner, losers)| {
            let copies: Vec<&OwnedChannel> = losers.iter().map(|id| by_id[id]).collect();
            alternates_value(by_id[winner], &copies).map(|value| (*winner, value))
        })
        .collect();
    let kept = kept.iter().map(|c| c.id).collect();
    (input, kept, alternates)
}

/// A pipeline with `dedup` and `group_normalizer` in its plugin directory:
/// `data_mapping` is the stage's TOML list (empty: the stage is not
/// listed), filtering is `["dedup", "native_filter"]`.
fn dedup_pipeline(data_mapping: &str, dedup_settings: &str, batch_size: usize) -> Pipeline {
    let dir = plugin_dir(&["dedup", "group_normalizer"]);
    let data_mapping = if data_mapping.is_empty() {
        String::new()
    } else {
        format!("data_mapping = {data_mapping}\n")
    };
    let text = format!(
        "[pipeline]\nbatch_size = {batch_size}\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\n{data_mapping}\
         filtering = [\"dedup\", \"native_filter\"]\n[plugins.dedup]\n{dedup_settings}",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Pipeline::new(config).unwrap()
}

fn run_text(
    pipeline: &mut Pipeline,
    text: &str,
) -> (Vec<OwnedChannel>, m3u_plugin_host::pipeline::RunStats) {
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let source = Source::from_reader("merge", std::io::Cursor::new(text.as_bytes().to_vec()));
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
    assert_eq!(stats.plugin_failures, 0);
    assert_eq!(stats.stages[2].strategy, "dedup");
    (out, stats)
}

/// Channel by channel: the kept ids in order, `x-alternate-urls` exactly
/// as expected (absent where none), every other attribute as in the input.
fn assert_merged(
    output: &[OwnedChannel],
    input: &[OwnedChannel],
    kept: &[u64],
    alternates: &HashMap<u64, String>,
) {
    let ids: Vec<u64> = output.iter().map(|c| c.id).collect();
    assert_eq!(ids, kept, "kept channels differ");
    let by_id: HashMap<u64, &OwnedChannel> = input.iter().map(|c| (c.id, c)).collect();
    for channel in output {
        assert_eq!(
            channel.attribute(ALTERNATES),
            alternates.get(&channel.id).map(String::as_str),
            "{ALTERNATES} of id {} ({:?})",
            channel.id,
            channel.channel_name
        );
        let others = |c: &OwnedChannel| -> Vec<(String, String)> {
            c.attributes
                .iter()
                .filter(|a| !a.name.eq_ignore_ascii_case(ALTERNATES))
                .map(|a| (a.name.to_string(), a.value.to_string()))
                .collect()
        };
        assert_eq!(
            others(channel),
            others(by_id[&channel.id]),
            "id {}",
            channel.id
        );
    }
}

#[test]
fn merge_alternates_in_the_pipeline_lists_the_copies_dropped_in_each_batch() {
    let text = m3u_text(&playlist_with_mirrors());
    for (key, keep) in [("tvg_id", "first"), ("name", "best")] {
        let (input, kept, alternates) = expected_merge(&text, key, BATCH, keep == "best");
        // The input exercises every rule: many merges, a percent-encoded
        // space, and kept channels whose copies only repeat their own URL.
        let (_, beaten) = expected_per_batch(&input, key, BATCH, keep == "best");
        let nothing_to_add = beaten
            .keys()
            .filter(|id| !alternates.contains_key(id))
            .count();
        let several = alternates.values().filter(|v| v.contains(' ')).count();
        eprintln!(
            "dedup merge key={key} keep={keep}: {} of {} kept, {} with alternates \
             ({several} with several), {nothing_to_add} whose copies add nothing",
            kept.len(),
            input.len(),
            alternates.len()
        );
        assert!(alternates.len() > 300, "only {} merges", alternates.len());
        assert!(several > 20 && nothing_to_add > 20);
        assert!(alternates.values().any(|v| v.contains("%20backup")));
        assert!(kept.len() < expected_first(&input, "url").len());

        let settings = format!("key = {key:?}\nkeep = {keep:?}\nmerge_alternates = true\n");
        let mut pipeline = dedup_pipeline("[\"dedup\"]", &settings, BATCH);
        // Twice: the second run starts with no keys and no pending plans.
        for _ in 0..2 {
            let (output, stats) = run_text(&mut pipeline, &text);
            assert_eq!(stats.stages[1].strategy, "dedup");
            assert_merged(&output, &input, &kept, &alternates);
        }
    }
}

#[test]
fn merge_alternates_works_in_a_data_mapping_chain() {
    let text = m3u_text(&playlist_with_mirrors());
    let (input, kept, alternates) = expected_merge(&text, "tvg_id", BATCH, false);
    assert!(input.iter().any(|c| c.group_title.trim().is_empty()));
    let mut pipeline = dedup_pipeline(
        "[\"dedup+group_normalizer\"]",
        "merge_alternates = true\n",
        BATCH,
    );
    let (output, stats) = run_text(&mut pipeline, &text);
    assert_eq!(stats.stages[1].strategy, "dedup+group_normalizer");
    assert_merged(&output, &input, &kept, &alternates);
    assert!(
        output.iter().all(|c| !c.group_title.trim().is_empty()),
        "group_normalizer ran too"
    );
}

#[test]
fn merge_alternates_without_dedup_in_data_mapping_still_drops_duplicates() {
    // The filter sees batches its mapper never planned: it warns (once per
    // run) and deduplicates as usual; no channel gets alternates.
    let text = m3u_text(&playlist_with_mirrors());
    let (input, kept, _) = expected_merge(&text, "tvg_id", BATCH, false);
    let first: Vec<u64> = expected_first(&input, "tvg_id")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(kept, first, "per-batch first is first across the run");
    let mut pipeline = dedup_pipeline("", "merge_alternates = true\n", BATCH);
    let (output, stats) = run_text(&mut pipeline, &text);
    assert_ne!(stats.stages[1].strategy, "dedup");
    assert_merged(&output, &input, &kept, &HashMap::new());
}

#[test]
fn merge_alternates_with_keep_best_lists_the_copies_on_the_best_one() {
    // Batches of 4. Batch 0: three copies of A (the 4K one wins, after the
    // others) and B. Batch 1: a copy of A (A was written in batch 0: dropped,
    // not merged) and three copies of C, two with the same URL. Batch 2: D.
    let entries = [
        ("a.tv", "A SD", "http://a/1"),
        ("a.tv", "A HD", "http://a/2 backup"),
        ("b.tv", "B", "http://b/1"),
        ("A.TV", "A 4K", "http://a/3"),
        ("a.tv", "A 1080p", "http://a/4"),
        ("c.tv", "C", "http://c/1"),
        ("c.tv", "C", "http://c/1"),
        ("c.tv", "C FHD", "http://c/2"),
        ("d.tv", "D", "http://d/1"),
    ];
    let mut text = String::from("#EXTM3U\n");
    for (tvg_id, name, url) in entries {
        text.push_str(&format!("#EXTINF:-1 tvg-id=\"{tvg_id}\",{name}\n{url}\n"));
    }
    let settings = "keep = \"best\"\nmerge_alternates = true\n";
    let mut pipeline = dedup_pipeline("[\"dedup\"]", settings, 4);
    let (output, _) = run_text(&mut pipeline, &text);
    let got: Vec<(u64, Option<&str>)> = output
        .iter()
        .map(|c| (c.id, c.attribute(ALTERNATES)))
        .collect();
    assert_eq!(
        got,
        [
            (3, None),
            (4, Some("http://a/1 http://a/2%20backup")),
            (8, Some("http://c/1")),
            (9, None),
        ]
    );
    // The spec agrees, and without merging (dedup still listed at
    // data_mapping) the same channels stay, with no attribute.
    let (_, kept, alternates) = expected_merge(&text, "tvg_id", 4, true);
    assert_eq!(kept, [3, 4, 8, 9]);
    assert_eq!(alternates.len(), 2);
    let mut pipeline = dedup_pipeline("[\"dedup\"]", "keep = \"best\"\n", 4);
    let (output, _) = run_text(&mut pipeline, &text);
    let got: Vec<(u64, Option<&str>)> = output
        .iter()
        .map(|c| (c.id, c.attribute(ALTERNATES)))
        .collect();
    assert_eq!(got, [(3, None), (4, None), (8, None), (9, None)]);
}

// ---------------------------------------------------------------------------
// Exact set, Bloom filter, memory pressure, runs
// ---------------------------------------------------------------------------

/// `n` channels with distinct tvg-ids (`syn-<start + i>`).
fn synthetic(start: usize, n: usize) -> Vec<OwnedChannel> {
    (0..n)
        .map(|i| OwnedChannel {
            id: (start + i + 1) as u64,
            tvg_id: format!("syn-{}", start + i).into(),
            channel_name: format!("Synthetic {}", start + i).into(),
            stream_url: format!("http://example.invalid/{}.m3u8", start + i).into(),
            ..OwnedChannel::default()
        })
        .collect()
}

#[test]
fn bloom_mode_false_positive_rate_stays_within_the_configured_rate() {
    // 20 000 distinct keys into a filter sized for 20 000 at 1%: any drop is
    // a false positive. While the filter fills, the rate climbs towards 1%,
    // so the drops stay below 1% of the channels.
    let (n, p) = (20_000usize, 0.01f64);
    let input = synthetic(0, n);
    let config =
        format!("mode = \"bloom\"\nexpected_channels = {n}\nbloom_false_positive_rate = {p}\n");
    let output = run_plugin(&config, &input);
    let false_positives = n - output.len();
    assert!(
        (false_positives as f64) <= p * n as f64,
        "{false_positives} false positives among {n} distinct keys"
    );
    assert_only_duplicates_dropped_or_false_positive(&input, &output);
    eprintln!("dedup bloom n={n} p={p}: {false_positives} false positives while filling");

    // At capacity (natively, same code): 200 000 fresh keys against the
    // full filter are reported present at the configured rate, ±30%.
    let mut bloom = dedup_logic::Bloom::with_rate(n as u64, p);
    for i in 0..n as u64 {
        bloom.insert(dedup_logic::hash_bytes(7, &i.to_le_bytes()));
    }
    let queries = 200_000u64;
    let hits = (n as u64..n as u64 + queries)
        .filter(|i| bloom.contains(dedup_logic::hash_bytes(7, &i.to_le_bytes())))
        .count();
    let rate = hits as f64 / queries as f64;
    eprintln!(
        "dedup bloom at capacity: measured {rate:.5} for p = {p} ({} bits, k = {})",
        bloom.bits(),
        bloom.probe_count()
    );
    assert!(
        rate <= 1.3 * p && rate >= 0.7 * p,
        "measured {rate} for p = {p}"
    );
    // The default sizing: 1 000 000 channels at 0.001 in about 1.8 MB.
    let default_bytes = dedup_logic::Bloom::size_bytes(1_000_000, 0.001);
    assert!(
        (1_790_000..1_800_000).contains(&default_bytes),
        "{default_bytes} bytes"
    );
    assert_eq!(dedup_logic::Bloom::probes(1_000_000, 0.001), 10);
}

/// All output ids are input ids in order (false positives may drop any).
fn assert_only_duplicates_dropped_or_false_positive(
    input: &[OwnedChannel],
    output: &[OwnedChannel],
) {
    let mut ids = input.iter().map(|c| c.id);
    for channel in output {
        assert!(
            ids.any(|id| id == channel.id),
            "id {} out of order",
            channel.id
        );
    }
}

#[test]
fn auto_mode_switches_to_the_bloom_filter_at_high_pressure() {
    // A deliberately tiny Bloom filter (1000 keys at 50%) makes it visible:
    // 900 distinct channels plus a copy of each.
    let mut input = synthetic(0, 900);
    input.extend(synthetic(0, 900).into_iter().map(|mut c| {
        c.id += 900;
        c
    }));
    let tiny = "expected_channels = 1000\nbloom_false_positive_rate = 0.5\n";
    let exact = &input[..900];
    for (mode, level, lossy) in [
        ("auto", MemoryPressureLevel::Optimal, false),
        ("auto", MemoryPressureLevel::Moderate, false),
        ("auto", MemoryPressureLevel::High, true),
        ("auto", MemoryPressureLevel::Emergency, true),
        ("exact", MemoryPressureLevel::Emergency, false),
        ("bloom", MemoryPressureLevel::Optimal, true),
    ] {
        let mut slot = load(&format!("mode = \"{mode}\"\n{tiny}")).unwrap();
        let output = run_slot(&mut slot, &input, level, BATCH);
        if lossy {
            assert!(
                output.len() < 800,
                "{mode} at {level:?}: the Bloom filter should drop distinct channels, kept {}",
                output.len()
            );
            assert_only_duplicates_dropped_or_false_positive(&input, &output);
            assert!(
                output.iter().all(|c| c.id <= 900),
                "true duplicates are always dropped"
            );
        } else {
            assert_same_channels(&output, exact);
        }
    }
}

#[test]
fn auto_mode_moves_a_full_exact_set_into_the_bloom_filter() {
    // expected_channels = 1000: exact for the first 1000 keys, then a
    // (tiny, 50%) Bloom filter holding them all.
    let input = synthetic(0, 5000);
    let tiny = "expected_channels = 1000\nbloom_false_positive_rate = 0.5\n";
    let output = run_plugin(&format!("mode = \"auto\"\n{tiny}"), &input);
    assert_same_channels(&output[..1000], &input[..1000]);
    assert!(output.len() < 3000, "kept {} of 5000", output.len());
    // Exact mode never switches.
    let output = run_plugin(&format!("mode = \"exact\"\n{tiny}"), &input);
    assert_same_channels(&output, &input);
}

#[test]
fn each_run_starts_with_no_keys_and_batch_size_does_not_matter_for_first() {
    let input = playlist_with_copies();
    let expected = expected_first(&input, "url");
    let mut slot = load("key = \"url\"\nmode = \"exact\"\n").unwrap();
    for batch in [BATCH, 100, 4096] {
        let output = run_slot(&mut slot, &input, MemoryPressureLevel::Optimal, batch);
        assert_same_channels(&output, &expected);
    }
}

// ---------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------

fn assert_config_status(error: &Error) {
    assert!(
        matches!(
            error.kind(),
            ErrorKind::PluginStatus { function: "m3u_init", status: code, message: Some(_) } if *code == status::CONFIG_ERROR
        ),
        "expected m3u_init to return CONFIG_ERROR with the plugin's reason, got {error}"
    );
}

#[test]
fn config_errors_fail_init_and_say_what_is_allowed() {
    let cases: [(&str, &str, &[&str]); 10] = [
        ("key", "tvgid", &["key", "tvgid", "tvg_id, name, url", "+"]),
        ("key", "tvg_id+", &["empty part"]),
        ("key", "url+url", &["appears twice"]),
        ("keep", "last", &["keep", "\"first\" or \"best\""]),
        (
            "mode",
            "fast",
            &["mode", "\"auto\", \"exact\", \"bloom\" or \"shared\""],
        ),
        (
            "merge_alternates",
            "yes",
            &["merge_alternates", "true or false"],
        ),
        (
            "bloom_false_positive_rate",
            "0",
            &["bloom_false_positive_rate", "0.001"],
        ),
        (
            "bloom_false_positive_rate",
            "1.5",
            &["bloom_false_positive_rate"],
        ),
        (
            "expected_channels",
            "0",
            &["expected_channels", "at least 1"],
        ),
        (
            "expected_channels",
            "lots",
            &["expected_channels", "whole number"],
        ),
    ];
    for (key, value, needles) in cases {
        let message = dedup_logic::Config::from_lookup(|k| (k == key).then(|| value.to_string()))
            .expect_err(&format!("{key} = {value:?} must be refused"));
        for needle in needles {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        let error = load(&format!("{key} = {value:?}\n")).map(drop).unwrap_err();
        assert_config_status(&error);
    }
    // A Bloom filter too large for a 32-bit plugin is refused at init.
    let huge = "expected_channels = 1000000000\nbloom_false_positive_rate = 0.000001\n";
    assert_config_status(&load(huge).map(drop).unwrap_err());
    // TOML numbers and booleans arrive as text and are accepted.
    let typed =
        "expected_channels = 5000\nbloom_false_positive_rate = 0.01\nmerge_alternates = false\n\
                 key = \"tvg_id + url\"\nkeep = \"best\"\nmode = \"bloom\"\n";
    assert!(load(typed).is_ok());
    // The settings arrive at init: the plugin does not import get_config and
    // loads under the default allowlist (which lacks it), where a bad value
    // still fails init saying what is allowed, and a good one takes effect.
    let (wasm, path) = example_plugin("dedup.wasm");
    let runtime = runtime_with(
        RuntimeLimits::default(),
        &super::common::default_allowlist(),
    );
    super::common::assert_compiles_without_get_config(&runtime, &wasm);
    let Err(error) = runtime.load(&wasm, "dedup", &settings("keep = \"last\"\n")) else {
        panic!("keep = \"last\" loaded without get_config on the allowlist");
    };
    assert_config_status(&error);
    let text = error.to_string();
    assert!(
        text.contains("keep") && text.contains("\"first\" or \"best\""),
        "{text}"
    );
    let channel = |id: u64, name: &str, tvg_id: &str| OwnedChannel {
        id,
        channel_name: name.to_string().into(),
        tvg_id: tvg_id.to_string().into(),
        stream_url: format!("http://streams.example/{id}").into(),
        ..OwnedChannel::default()
    };
    let input = [
        channel(1, "BBC One HD", "bbcone.uk"),
        channel(2, "BBC One (1080p)", "bbc1.uk"),
        channel(3, "ITV", "itv.uk"),
    ];
    let kept_ids = |config: &str| {
        let instance = runtime
            .load(&wasm, "dedup", &settings(config))
            .unwrap_or_else(|error| panic!("{config:?} without get_config: {error}"));
        let mut slot = PluginSlot::new(instance, path.clone());
        run_slot(&mut slot, &input, MemoryPressureLevel::Optimal, BATCH)
            .iter()
            .map(|c| c.id)
            .collect::<Vec<u64>>()
    };
    // The default key (tvg_id) keeps all three; key = name drops the second
    // BBC One.
    assert_eq!(kept_ids(""), [1, 2, 3]);
    assert_eq!(
        kept_ids("key = \"name\"\n"),
        [1, 3],
        "key = name took effect"
    );
}

// ---------------------------------------------------------------------------
// The whole pipeline
// ---------------------------------------------------------------------------

#[test]
fn pipeline_runs_dedup_in_the_filtering_stage_and_each_run_starts_afresh() {
    let dir = plugin_dir(&["dedup"]);
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\nfiltering = [\"dedup\", \"native_filter\"]\n\
         [plugins.dedup]\nkey = \"tvg_id\"\nexpected_channels = 1000000\n\
         bloom_false_positive_rate = 0.001\nmerge_alternates = false\n",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    let expected: Vec<u64> = expected_first(&playlist(), "tvg_id")
        .iter()
        .map(|c| c.id)
        .collect();
    // Two runs of the same loaded pipeline (the second would drop every
    // channel with a tvg-id if keys survived a run), then one at High
    // pressure, where auto mode uses the Bloom filter (1.8 MB for the
    // default 1 000 000 channels; no false positive among these).
    for level in [
        MemoryPressureLevel::Optimal,
        MemoryPressureLevel::Optimal,
        MemoryPressureLevel::High,
    ] {
        pipeline.force_memory_pressure(Some(level));
        let source = Source::open(&repo_path(super::common::PLAYLIST_FIXTURE)).unwrap();
        let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
        assert_eq!(stats.stages[2].strategy, "dedup");
        assert_eq!(stats.plugin_failures, 0);
        assert_eq!(stats.stages[2].channels_out, expected.len() as u64);
        let ids: Vec<u64> = out.iter().map(|c| c.id).collect();
        assert_eq!(ids, expected, "at {level:?}");
    }
}
