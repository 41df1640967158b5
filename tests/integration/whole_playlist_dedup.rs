//! Native duplicate removal (`[filtering.dedup]`): its keys are the `dedup`
//! plugin's on the real playlist, and `inmemory_filter` compares every copy
//! of a key over the whole playlist (the best resolution stays, the others'
//! URLs are listed on it), however far apart the copies arrive, in every
//! tier of the spill store.

use std::collections::{HashMap, HashSet};

use m3u_plugin_host::abi::MemoryPressureLevel;
use m3u_plugin_host::config::Config;
use m3u_plugin_host::m3u::M3uWriter;
use m3u_plugin_host::native::dedup::{Dedup, DedupConfig, ALTERNATES_ATTRIBUTE};
use m3u_plugin_host::pipeline::{Pipeline, Source};
use m3u_plugin_host::OwnedChannel;

use super::common::{playlist, repo_path, PLAYLIST_FIXTURE};

// The plugin's own key logic, compiled natively (loaded by plugin_dedup).
use super::plugin_dedup::dedup_logic;

fn native(key: &str) -> Dedup {
    Dedup::parse(&DedupConfig {
        key: key.into(),
        keep: "first".into(),
        merge_alternates: false,
    })
    .unwrap()
}

#[test]
fn native_keys_group_the_real_playlist_as_the_plugin_does() {
    let channels = playlist();
    type Normalize = fn(&OwnedChannel) -> String;
    let parts: [(&str, Normalize); 3] = [
        ("tvg_id", |c| {
            let mut out = String::new();
            dedup_logic::normalize_tvg_id(&c.tvg_id, &mut out);
            out
        }),
        ("name", |c| {
            let mut out = String::new();
            dedup_logic::normalize_name(&c.channel_name, &mut out);
            out
        }),
        ("url", |c| dedup_logic::trim(&c.stream_url).to_string()),
    ];
    for (key, plugin_key) in parts {
        let dedup = native(key);
        let mut plugin_to_native: HashMap<String, Option<u64>> = HashMap::new();
        let mut native_to_plugin: HashMap<u64, String> = HashMap::new();
        let mut groups = 0;
        for channel in &channels {
            let plugin = plugin_key(channel);
            let hash = dedup.key_hash(channel);
            assert_eq!(plugin.is_empty(), hash.is_none(), "{key}: {channel:?}");
            let known = plugin_to_native.entry(plugin.clone()).or_insert(hash);
            assert_eq!(*known, hash, "{key}: {plugin:?} hashes two ways");
            if let Some(hash) = hash {
                let other = native_to_plugin.entry(hash).or_insert_with(|| {
                    groups += 1;
                    plugin.clone()
                });
                assert_eq!(
                    *other, plugin,
                    "{key}: two plugin keys share one native key"
                );
            }
        }
        // The real playlist has duplicates to group by each part.
        assert!(groups < channels.len(), "{key}: {groups} groups");
    }
}

/// The real playlist, then a copy of every channel with a tvg-id, named
/// `… 1080p` with another URL: each key's best copy comes ~10,000 channels
/// (ten batches) after its first.
fn playlist_with_far_hd_copies() -> (Vec<u8>, Vec<u8>) {
    let real = std::fs::read(repo_path(PLAYLIST_FIXTURE)).unwrap();
    let (header, channels, _) =
        m3u_plugin_host::m3u::read_all(std::str::from_utf8(&real).unwrap(), 0);
    let mut copies = Vec::new();
    let mut writer = M3uWriter::new(&mut copies, &header).unwrap();
    for channel in channels.iter().filter(|c| !c.tvg_id.trim().is_empty()) {
        let mut copy = channel.clone();
        copy.channel_name = format!("{} 1080p", copy.channel_name).into();
        copy.stream_url = format!("{}#hd", copy.stream_url).into();
        writer.write_channel(&copy).unwrap();
    }
    writer.finish().unwrap();
    (real, copies)
}

fn run(extra: &str, level: MemoryPressureLevel) -> Vec<OwnedChannel> {
    let spill = repo_path("target/test-scratch/whole-playlist-dedup");
    std::fs::create_dir_all(&spill).unwrap();
    let config = Config::from_toml(&format!(
        "[store]\nspill_directory = {spill:?}\n\
         [proxy_generation.wasm_plugins]\nenabled = false\n{extra}"
    ))
    .unwrap();
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(level));
    let (real, copies) = playlist_with_far_hd_copies();
    let sources = vec![
        Source::from_reader("real", std::io::Cursor::new(real)),
        Source::from_reader("hd copies", std::io::Cursor::new(copies)),
    ];
    pipeline.run_collect(sources).unwrap().0
}

fn attribute<'c>(channel: &'c OwnedChannel, name: &str) -> Option<&'c str> {
    channel
        .attributes
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.value.as_ref())
}

#[test]
fn inmemory_filter_keeps_the_best_copy_of_the_whole_playlist() {
    let whole = "[filtering.dedup]\nkey = \"tvg_id\"\nkeep = \"best\"\nmerge_alternates = true\n\
                 [proxy_generation.wasm_plugins.strategies]\nfiltering = [\"inmemory_filter\"]\n";
    let optimal = run(whole, MemoryPressureLevel::Optimal);
    let dedup = native("tvg_id");
    let mut keys = HashSet::new();
    let mut far_copies_won = 0;
    for channel in &optimal {
        if let Some(key) = dedup.key_hash(channel) {
            assert!(keys.insert(key), "one channel per key: {channel:?}");
        }
        if channel.stream_url.ends_with("#hd") {
            far_copies_won += 1;
            // Its copies' URLs (the original, ~10 batches earlier) are on it.
            // (a space inside a URL is listed as %20).
            let original = channel
                .stream_url
                .trim_end_matches("#hd")
                .trim()
                .replace(' ', "%20");
            let alternates = attribute(channel, ALTERNATES_ATTRIBUTE).unwrap_or_default();
            assert!(
                original.is_empty() || alternates.split(' ').any(|url| url == original),
                "{channel:?}"
            );
        }
    }
    // Exactly the best copy of each key (the highest rank, the earliest of
    // equals), computed here from the input the loader numbered 1..=n.
    let (real, copies) = playlist_with_far_hd_copies();
    let mut input = m3u_plugin_host::m3u::read_all(std::str::from_utf8(&real).unwrap(), 0).1;
    input.extend(m3u_plugin_host::m3u::read_all(std::str::from_utf8(&copies).unwrap(), 1).1);
    let mut best: HashMap<u64, (u8, u64)> = HashMap::new();
    let mut expected = Vec::new();
    for (index, channel) in input.iter().enumerate() {
        let id = index as u64 + 1;
        let rank = dedup_logic::resolution_rank(&channel.channel_name);
        match dedup.key_hash(channel) {
            None => expected.push(id),
            Some(key) => {
                let entry = best.entry(key).or_insert((rank, id));
                if rank > entry.0 {
                    *entry = (rank, id);
                }
            }
        }
    }
    expected.extend(best.values().map(|(_, id)| *id));
    expected.sort_unstable();
    let kept: Vec<u64> = optimal.iter().map(|c| c.id).collect();
    assert_eq!(kept, expected);
    assert!(
        far_copies_won > keys.len() / 2,
        "{far_copies_won} of {}",
        keys.len()
    );
    // Arrival order is kept.
    assert!(optimal.windows(2).all(|pair| pair[0].id < pair[1].id));
    // The same in the disk tier.
    assert_eq!(run(whole, MemoryPressureLevel::Critical), optimal);
}

#[test]
fn streaming_filters_keep_the_first_copy() {
    let first = "[filtering.dedup]\nkey = \"tvg_id\"\n";
    let streaming = run(first, MemoryPressureLevel::Optimal);
    assert!(streaming.iter().all(|c| !c.stream_url.ends_with("#hd")));
    let bitmask = run(
        &format!(
            "{first}[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"bitmask_filter\"]\n"
        ),
        MemoryPressureLevel::Optimal,
    );
    let whole = run(
        &format!("{first}[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"inmemory_filter\"]\n"),
        MemoryPressureLevel::High,
    );
    assert_eq!(streaming, bitmask);
    assert_eq!(streaming, whole);
}
