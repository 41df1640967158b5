//! The logo_mapper plugin (`plugins/logo-mapper`) on the real playlist: fills
//! missing tvg-logo/tvg-id from mapping tables built from the playlist,
//! keeps existing values, rewrites logos to `{base}/logos/{sha256}`, and
//! refuses bad configs. Every expectation is derived here, independently of
//! the plugin's code: name keys with a regex, decisions with plain Rust, and
//! SHA-256 digests pinned from `sha256sum` (the rest are checked for form,
//! consistency and injectivity).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use m3u_plugin_host::abi::{status, Field, FieldSet, MemoryPressureLevel, Stage, StageContext};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, Source};
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::{ErrorKind, OwnedChannel};
use regex::Regex;

use super::common::{
    allowlist_with, default_runtime, example_plugin, playlist, repo_path, runtime_with,
    PLAYLIST_FIXTURE,
};
use super::pipeline::plugin_dir;

/// Channels per `PluginSlot::run` call, as the pipeline's default batch.
const BATCH: usize = 1024;

/// The proxy base URL of the stage context in these tests.
const PROXY_BASE: &str = "http://proxy.local/";

/// `logo_base_url` of the rewriting tests (trailing `/` on purpose).
const CDN_BASE: &str = "https://cdn.example:8443/m3u/";

/// A table logo given to `&privé HD` (the fixture's second channel, which has
/// a tvg-id but no logo) through the tvg-id table.
const PRIVE_LOGO: &str = "https://logos.example/prive.png";

/// SHA-256 (lowercase hex) of URLs, computed with
/// `printf '%s' URL | sha256sum`. Real logos of the fixture chosen at the
/// lengths where SHA-256 padding changes (55, 56, 64, 65 bytes) plus a long
/// one (249 bytes, four blocks), and the table logo above.
const PINNED: [(&str, &str); 7] = [
    (
        "http://66.media.tumblr.com/tumblr_llqajtuVTe1qi24nu.jpg",
        "9d080016f9177eba24e62f99f24bc73ccb969501121ea906c698932a5faa9a5c",
    ),
    (
        "http://roccotv.cl/wp-content/uploads/2015/02/roccotv.png",
        "382162a406aa6482937ea454953935550e0d50d298407b2b18ae03f07d5afb69",
    ),
    (
        "http://mhdtvworld.com/wp-content/uploads/2018/11/acv_in_news.png",
        "48475ebf4918aa4b1fa8f18a05e3dc4199330ccf248794d3916035610af18d3a",
    ),
    (
        "http://aaaa.com.hk/main/wp-content/uploads/2020/02/ViuTV-logo.png",
        "5bede0fcda5d0c247e4f602f0068b2e01a8725ee06eb04516d327a9607f6bd48",
    ),
    (
        "https://ewscripps.brightspotcdn.com/dims4/default/31cd86c/2147483647/strip/true/crop/600x200+0+0/resize/400x133!/quality/90/?url=https%3A%2F%2Fewscripps.brightspotcdn.com%2F09%2F30%2F6709482a41ef96f6ba6259d6ae66%2Fwgba-geographic-locator-600x200.png",
        "5157d8a9fcdb4f40867a856709035ccd102026efd63719a74413c0afc1aa56ef",
    ),
    (
        "https://static.epg.best/in/AndFlix.in.png",
        "414fe9f6c04f8d0bc1be30c1b77995b3f516d90ac65eaf4f222f7b89dccde80a",
    ),
    (
        PRIVE_LOGO,
        "44a2929daad2334a67721ee47ec270f449b827fd21ef56fac407824c4180b28f",
    ),
];

// ---------------------------------------------------------------------------
// Independent model of the documented behaviour
// ---------------------------------------------------------------------------

/// The documented name key (plugins/logo-mapper/README.md), written
/// differently from the plugin: quality tags by regex.
fn key(name: &str) -> String {
    static TAG: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| {
        let tags = "sd|hd|hq|fhd|fullhd|qhd|uhd|2k|4k|8k|hdr|[0-9]{3,4}[pi]";
        Regex::new(&format!(r"(?i)^(?:\(({tags})\)|\[({tags})\]|({tags}))$")).unwrap()
    });
    let lower = |word: &str| {
        word.chars()
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let words: Vec<&str> = name.split_whitespace().collect();
    let kept: Vec<String> = words
        .iter()
        .filter(|word| !(word.is_ascii() && tag.is_match(word)))
        .map(|word| lower(word))
        .collect();
    if kept.is_empty() {
        words
            .iter()
            .map(|word| lower(word))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        kept.join(" ")
    }
}

/// Mapping tables built from the playlist, as the test models them and as
/// config values for the plugin.
struct Tables {
    /// key(name) → (logo, tvg-id); either may be empty.
    names: HashMap<String, (String, String)>,
    /// ASCII-lowercased tvg-id → logo.
    ids: HashMap<String, String>,
    /// `by_name`, `by_name_2`, …, `by_id`, … as given to the plugin.
    config: Vec<(String, String)>,
}

fn usable(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty() && !text.starts_with('#') && !text.contains(['|', '"'])
}

/// Splits table lines into config parts of at most ~6 KB, named `key`,
/// `key_2`, …, to exercise the plugin's numbered parts.
fn parts(key: &str, header: &str, lines: &[String]) -> Vec<(String, String)> {
    let mut parts: Vec<String> = vec![header.to_string()];
    for line in lines {
        if parts.last().unwrap().len() + line.len() > 6000 {
            parts.push(String::new());
        }
        let part = parts.last_mut().unwrap();
        part.push_str(line);
        part.push('\n');
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(index, text)| match index {
            0 => (key.to_string(), text),
            _ => (format!("{key}_{}", index + 1), text),
        })
        .collect()
}

/// Name entries for every 61st channel (by channel name) and every 41st
/// channel whose tvg-name has another key than its name (by tvg-name),
/// written in other spellings the normalisation must see through; tvg-id
/// entries for every 37th channel with a tvg-id, for `&privé HD`, and for
/// every second tvg-id the name table gives.
fn tables(channels: &[OwnedChannel]) -> Tables {
    let mut names: HashMap<String, (String, String)> = HashMap::new();
    let mut name_lines = Vec::new();
    let mut add_name = |name: &str, names: &mut HashMap<String, (String, String)>| {
        let k = key(name);
        if !usable(name) || k.is_empty() || names.contains_key(&k) {
            return;
        }
        let n = names.len();
        let logo = match n % 3 {
            2 => String::new(),
            _ => format!("https://logos.example/name/{n}.png"),
        };
        let tvg_id = match n % 3 {
            1 => String::new(),
            _ => format!("Filled{n}.test"),
        };
        let variant = match n % 4 {
            0 => name.to_uppercase(),
            1 => format!("  {}   HD ", name.trim().replace(' ', "  ")),
            2 => format!("{} (1080p)", name.trim()),
            _ => name.trim().to_string(),
        };
        let written = if key(&variant) == k && usable(&variant) {
            variant
        } else {
            name.trim().to_string()
        };
        name_lines.push(if tvg_id.is_empty() {
            format!("{written} | {logo}")
        } else {
            format!("{written} | {logo} | {tvg_id}")
        });
        names.insert(k, (logo, tvg_id));
    };
    for (index, channel) in channels.iter().enumerate() {
        if index % 61 == 0 {
            add_name(&channel.channel_name, &mut names);
        }
        let tvg_name_key = key(&channel.tvg_name);
        if index % 41 == 0 && !tvg_name_key.is_empty() && tvg_name_key != key(&channel.channel_name)
        {
            add_name(&channel.tvg_name, &mut names);
        }
    }

    let mut ids: HashMap<String, String> = HashMap::new();
    let mut id_lines = Vec::new();
    let mut add_id = |tvg_id: &str, logo: String, ids: &mut HashMap<String, String>| {
        let tvg_id = tvg_id.trim();
        let k = tvg_id.to_ascii_lowercase();
        if !usable(tvg_id) || ids.contains_key(&k) {
            return;
        }
        let written = match ids.len() % 2 {
            0 => tvg_id.to_ascii_uppercase(),
            _ => tvg_id.to_string(),
        };
        id_lines.push(format!("{written} | {logo}"));
        ids.insert(k, logo);
    };
    add_id("priveHD.in", PRIVE_LOGO.to_string(), &mut ids);
    for (index, channel) in channels.iter().enumerate() {
        if index % 37 == 0 && !channel.tvg_id.trim().is_empty() {
            add_id(
                &channel.tvg_id,
                format!("https://logos.example/id/{index}.png"),
                &mut ids,
            );
        }
    }
    let mut filled: Vec<&String> = names.values().map(|(_, id)| id).collect();
    filled.sort();
    for (n, tvg_id) in filled.iter().filter(|id| !id.is_empty()).enumerate() {
        if n % 2 == 0 {
            add_id(
                tvg_id,
                format!("https://logos.example/chain/{n}.png"),
                &mut ids,
            );
        }
    }

    let mut config = parts("by_name", "# name | logo | tvg-id\n\n", &name_lines);
    config.extend(parts("by_id", "# tvg-id | logo\n", &id_lines));
    Tables { names, ids, config }
}

/// The options a test runs the plugin with, as the model sees them.
#[derive(Clone, Copy)]
struct Options<'a> {
    overwrite_logo: bool,
    overwrite_tvg_id: bool,
    /// Base logos are rewritten under (no trailing `/`); `None` = off.
    base: Option<&'a str>,
}

/// What the model expects for one channel's logo.
#[derive(Debug, PartialEq)]
enum Logo {
    /// Exactly this value.
    Is(String),
    /// `{base}/logos/{sha256 of this URL}`.
    CacheOf(String),
}

/// Which rule decided a channel, to prove every rule is exercised.
#[derive(Default, Debug)]
struct Counts {
    ids_filled: usize,
    ids_overwritten: usize,
    ids_kept: usize,
    logos_by_name: usize,
    logos_by_id: usize,
    logos_by_filled_id: usize,
    logos_overwritten: usize,
    logos_kept: usize,
    by_tvg_name: usize,
    rewritten: usize,
    not_http: usize,
}

fn expect(
    channel: &OwnedChannel,
    tables: &Tables,
    options: Options<'_>,
    counts: &mut Counts,
) -> (String, Logo) {
    let by_name = tables.names.get(&key(&channel.channel_name));
    let by_tvg_name = tables.names.get(&key(&channel.tvg_name));
    let entry = by_name.or(by_tvg_name);
    if by_name.is_none() && by_tvg_name.is_some() {
        counts.by_tvg_name += 1;
    }

    let id_missing = channel.tvg_id.trim().is_empty();
    let mut tvg_id = channel.tvg_id.to_string();
    let mut id_filled = false;
    match entry {
        Some((_, id)) if !id.is_empty() && (id_missing || options.overwrite_tvg_id) => {
            id_filled = true;
            if !id_missing && *id != tvg_id {
                counts.ids_overwritten += 1;
            } else if id_missing {
                counts.ids_filled += 1;
            }
            tvg_id = id.clone();
        }
        Some((_, id)) if !id.is_empty() => counts.ids_kept += 1,
        _ => {}
    }

    let logo_missing = channel.tvg_logo.trim().is_empty();
    let mut logo = channel.tvg_logo.to_string();
    let from_id = tables.ids.get(&tvg_id.trim().to_ascii_lowercase());
    let from_name = entry.map(|(logo, _)| logo).filter(|logo| !logo.is_empty());
    if logo_missing || options.overwrite_logo {
        if let Some(found) = from_id.or(from_name) {
            match (logo_missing, from_id.is_some(), id_filled) {
                (false, _, _) if *found != logo => counts.logos_overwritten += 1,
                (false, _, _) => {}
                (true, true, true) => counts.logos_by_filled_id += 1,
                (true, true, false) => counts.logos_by_id += 1,
                (true, false, _) => counts.logos_by_name += 1,
            }
            logo = found.clone();
        }
    } else if from_id.or(from_name).is_some() {
        counts.logos_kept += 1;
    }

    let is_http = {
        let lower = logo.to_ascii_lowercase();
        lower.starts_with("http://") || lower.starts_with("https://")
    };
    let logo = match options.base {
        Some(base) if is_http && !logo.starts_with(&format!("{base}/logos/")) => {
            counts.rewritten += 1;
            Logo::CacheOf(logo)
        }
        _ => {
            if !logo.is_empty() && !is_http {
                counts.not_http += 1;
            }
            Logo::Is(logo)
        }
    };
    (tvg_id, logo)
}

/// Checks `output` against the model channel by channel: tvg-id and tvg-logo
/// as expected, every other field untouched, every cache URL of the form
/// `{base}/logos/<64 lowercase hex>`, equal URLs hashed equally, different
/// URLs differently, and pinned digests exact. Returns the rule counts.
fn check(
    input: &[OwnedChannel],
    output: &[OwnedChannel],
    tables: &Tables,
    options: Options<'_>,
) -> Counts {
    assert_eq!(output.len(), input.len(), "channel count differs");
    let mut counts = Counts::default();
    let mut hash_of: HashMap<String, String> = HashMap::new();
    let mut url_of: HashMap<String, String> = HashMap::new();
    for (index, (got, want)) in output.iter().zip(input).enumerate() {
        let what = format!("channel #{index} {:?}", want.channel_name);
        let (tvg_id, logo) = expect(want, tables, options, &mut counts);
        assert_eq!(got.tvg_id, tvg_id, "{what}: tvg-id");
        match logo {
            Logo::Is(logo) => assert_eq!(got.tvg_logo, logo, "{what}: tvg-logo"),
            Logo::CacheOf(url) => {
                let prefix = format!("{}/logos/", options.base.unwrap());
                let hash = got
                    .tvg_logo
                    .strip_prefix(&prefix)
                    .unwrap_or_else(|| panic!("{what}: {:?} is not under {prefix}", got.tvg_logo));
                assert!(
                    hash.len() == 64
                        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "{what}: {hash:?} is not 64 lowercase hex digits"
                );
                if let Some(first) = hash_of.insert(url.clone(), hash.to_string()) {
                    assert_eq!(first, hash, "{what}: {url} hashed two ways");
                }
                if let Some(other) = url_of.insert(hash.to_string(), url.clone()) {
                    assert_eq!(other, url, "{what}: two URLs share the hash {hash}");
                }
            }
        }
        let mut rest = got.clone();
        rest.tvg_id = want.tvg_id.clone();
        rest.tvg_logo = want.tvg_logo.clone();
        assert_eq!(
            &rest, want,
            "{what}: a field other than tvg-id/tvg-logo changed"
        );
    }
    for (url, digest) in PINNED {
        if let Some(hash) = hash_of.get(url) {
            assert_eq!(hash, digest, "SHA-256 of {url}");
        }
    }
    counts
}

// ---------------------------------------------------------------------------
// Running the plugin
// ---------------------------------------------------------------------------

fn settings(values: &[(String, String)]) -> PluginSettings {
    let values: BTreeMap<String, String> = values.iter().cloned().collect();
    PluginSettings::from([("logo_mapper".to_string(), values)])
}

fn pairs(values: &[(&str, &str)]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn runtime() -> PluginRuntime {
    runtime_with(RuntimeLimits::default(), &allowlist_with(&["get_config"]))
}

fn slot(values: &[(String, String)]) -> PluginSlot {
    let (wasm, path) = example_plugin("logo_mapper.wasm");
    let instance = runtime()
        .load(&wasm, "logo_mapper", &settings(values))
        .unwrap_or_else(|error| panic!("loading logo_mapper failed: {error}"));
    PluginSlot::new(instance, path)
}

/// Runs `input` through the slot at data_mapping, batch by batch, with
/// `base_url` as the proxy's base URL.
fn map_all(slot: &mut PluginSlot, input: &[OwnedChannel], base_url: &str) -> Vec<OwnedChannel> {
    // The base URL reaches plugins once per run, with the run's context.
    let run = m3u_plugin_host::abi::RunContext {
        base_url: base_url.into(),
        ..Default::default()
    };
    assert!(slot
        .instance
        .accepts_pressure(MemoryPressureLevel::Optimal, &run)
        .unwrap());
    let mut output = Vec::with_capacity(input.len());
    for (index, chunk) in input.chunks(BATCH).enumerate() {
        let context = StageContext {
            stage: Stage::DataMapping,
            memory_pressure: MemoryPressureLevel::Optimal,
            available_memory: 1 << 30,
            proxy_name: "integration".into(),
            base_url: base_url.to_string().into(),
            batch_index: index as u32,
        };
        let mut batch = chunk.to_vec();
        slot.run(Stage::DataMapping, &context, &mut batch)
            .unwrap_or_else(|error| panic!("batch {index}: {error}"));
        output.extend(batch);
    }
    output
}

/// Count of channels whose tvg-logo (or tvg-id) differs between two lists.
fn changed(a: &[OwnedChannel], b: &[OwnedChannel], field: fn(&OwnedChannel) -> &str) -> usize {
    a.iter()
        .zip(b)
        .filter(|(a, b)| field(a) != field(b))
        .count()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn declares_data_mapping_and_reads_only_four_fields() {
    let (wasm, path) = example_plugin("logo_mapper.wasm");
    // Its config arrives at init: it does not import get_config and loads
    // under the default allowlist (which lacks it) with its settings in
    // effect.
    let runtime = default_runtime();
    super::common::assert_compiles_without_get_config(&runtime, &wasm);
    let values = pairs(&[
        (
            "by_name",
            "BBC One | https://logos.example/bbc-one.png | bbc1.uk",
        ),
        ("rewrite_logos", "false"),
    ]);
    let instance = runtime
        .load(&wasm, "logo_mapper", &settings(&values))
        .unwrap_or_else(|error| panic!("loading without get_config: {error}"));
    let mut configured = PluginSlot::new(instance, path);
    let input = [OwnedChannel {
        id: 1,
        channel_name: "BBC One HD".into(),
        ..OwnedChannel::default()
    }];
    let output = map_all(&mut configured, &input, PROXY_BASE);
    assert_eq!(output[0].tvg_logo, "https://logos.example/bbc-one.png");
    assert_eq!(output[0].tvg_id, "bbc1.uk");
    // A bad value still fails init, naming the key.
    let error = match runtime.load(
        &wasm,
        "logo_mapper",
        &settings(&pairs(&[("rewrite_logos", "yes")])),
    ) {
        Ok(_) => panic!("rewrite_logos = \"yes\" was accepted"),
        Err(error) => error,
    };
    assert!(
        matches!(
            error.kind(),
            ErrorKind::PluginStatus { function: "m3u_init", status, .. } if *status == status::CONFIG_ERROR
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("rewrite_logos"), "{error}");

    let slot = slot(&[]);
    let info = slot.instance.info();
    assert_eq!(info.name, "logo_mapper");
    assert!(info.supports(Stage::DataMapping));
    for stage in [
        Stage::SourceLoading,
        Stage::Filtering,
        Stage::ChannelNumbering,
        Stage::M3uGeneration,
    ] {
        assert!(!info.supports(stage), "{stage:?}");
    }
    assert_eq!(
        info.reads,
        FieldSet::of(&[
            Field::TvgId,
            Field::TvgName,
            Field::TvgLogo,
            Field::ChannelName
        ])
    );
}

#[test]
fn fills_missing_logos_and_ids_from_the_tables_and_keeps_existing_ones() {
    let channels = playlist();
    let tables = tables(&channels);
    // The tables must be split in parts, or continuation keys go untested.
    assert!(tables.config.iter().any(|(key, _)| key == "by_name_2"));
    let mut values = tables.config.clone();
    values.extend(pairs(&[("rewrite_logos", "false")]));
    let mut slot = slot(&values);
    let output = map_all(&mut slot, &channels, PROXY_BASE);
    let options = Options {
        overwrite_logo: false,
        overwrite_tvg_id: false,
        base: None,
    };
    let counts = check(&channels, &output, &tables, options);
    // Every rule was exercised on the real playlist.
    assert!(counts.ids_filled >= 20, "{counts:?}");
    assert!(counts.ids_kept >= 20, "{counts:?}");
    assert!(counts.logos_by_name >= 20, "{counts:?}");
    assert!(counts.logos_by_id >= 50, "{counts:?}");
    assert!(counts.logos_by_filled_id >= 5, "{counts:?}");
    assert!(counts.logos_kept >= 50, "{counts:?}");
    assert!(counts.by_tvg_name >= 5, "{counts:?}");
    assert_eq!((counts.ids_overwritten, counts.logos_overwritten), (0, 0));
    assert_eq!(counts.rewritten, 0);
    // `&privé HD` got its logo through the tvg-id table.
    assert_eq!(output[1].channel_name, "&privé HD");
    assert_eq!(output[1].tvg_logo, PRIVE_LOGO);
    // Mapping the output again changes nothing: the fills are complete.
    let again = map_all(&mut slot, &output, PROXY_BASE);
    assert_eq!(changed(&again, &output, |c| &c.tvg_logo), 0);
    assert_eq!(changed(&again, &output, |c| &c.tvg_id), 0);
}

#[test]
fn overwrite_options_replace_existing_values_from_the_tables() {
    let channels = playlist();
    let tables = tables(&channels);
    let mut values = tables.config.clone();
    values.extend(pairs(&[
        ("rewrite_logos", "false"),
        ("overwrite_logo", "true"),
        ("overwrite_tvg_id", "true"),
    ]));
    let output = map_all(&mut slot(&values), &channels, PROXY_BASE);
    let options = Options {
        overwrite_logo: true,
        overwrite_tvg_id: true,
        base: None,
    };
    let counts = check(&channels, &output, &tables, options);
    assert!(counts.ids_overwritten >= 20, "{counts:?}");
    assert!(counts.logos_overwritten >= 50, "{counts:?}");
    assert_eq!((counts.ids_kept, counts.logos_kept), (0, 0));
}

#[test]
fn logos_are_rewritten_to_the_configured_base_with_the_sha256_of_the_url() {
    let channels = playlist();
    let tables = tables(&channels);
    let mut values = tables.config.clone();
    values.extend(pairs(&[("logo_base_url", CDN_BASE)]));
    let mut slot = slot(&values);
    // The configured base wins over the proxy's.
    let output = map_all(&mut slot, &channels, PROXY_BASE);
    let base = CDN_BASE.trim_end_matches('/');
    let options = Options {
        overwrite_logo: false,
        overwrite_tvg_id: false,
        base: Some(base),
    };
    let counts = check(&channels, &output, &tables, options);
    assert!(counts.rewritten > 6000, "{counts:?}");
    assert!(counts.not_http >= 4, "non-http logos stay: {counts:?}");
    assert!(
        counts.logos_by_name >= 20 && counts.logos_by_id >= 50,
        "{counts:?}"
    );
    // Every pinned digest was met (check() compares them), at the right URL.
    for (url, digest) in PINNED {
        let expected = format!("{base}/logos/{digest}");
        assert!(
            output.iter().any(|c| c.tvg_logo == expected),
            "no channel's logo became {expected} ({url})"
        );
    }
    // Rewriting is idempotent: cache URLs are not rewritten again.
    let again = map_all(&mut slot, &output, PROXY_BASE);
    assert_eq!(changed(&again, &output, |c| &c.tvg_logo), 0);
}

#[test]
fn the_default_base_is_the_proxy_base_url_and_rewriting_can_be_off() {
    let channels = playlist();
    let with_logo = channels.iter().filter(|c| !c.tvg_logo.is_empty()).count();
    assert!(with_logo > 6000, "only {with_logo} channels have a logo");
    let proxy = PROXY_BASE.trim_end_matches('/');
    let tables = Tables {
        names: HashMap::new(),
        ids: HashMap::new(),
        config: Vec::new(),
    };

    // No config at all: logos go under the proxy's base URL.
    let mut plain = slot(&[]);
    let output = map_all(&mut plain, &channels, PROXY_BASE);
    let options = Options {
        overwrite_logo: false,
        overwrite_tvg_id: false,
        base: Some(proxy),
    };
    let counts = check(&channels, &output, &tables, options);
    assert!(counts.rewritten > 6000, "{counts:?}");
    assert_eq!(
        output[0].tvg_logo,
        format!("{proxy}/logos/414fe9f6c04f8d0bc1be30c1b77995b3f516d90ac65eaf4f222f7b89dccde80a")
    );

    // No base anywhere: nothing to rewrite to, every channel unchanged.
    let unchanged = map_all(&mut plain, &channels, "");
    assert_eq!(unchanged, channels);

    // Rewriting off: unchanged even with a base.
    let off = pairs(&[("rewrite_logos", "false"), ("logo_base_url", CDN_BASE)]);
    let unchanged = map_all(&mut slot(&off), &channels, PROXY_BASE);
    assert_eq!(unchanged, channels);
}

#[test]
fn invalid_config_is_refused_at_load_with_a_config_error() {
    let (wasm, _) = example_plugin("logo_mapper.wasm");
    let runtime = runtime();
    let bad: Vec<Vec<(String, String)>> = vec![
        pairs(&[("rewrite_logos", "yes")]),
        pairs(&[("overwrite_logo", "1")]),
        pairs(&[("overwrite_tvg_id", "")]),
        pairs(&[("logo_base_url", "nas.local:8080")]),
        pairs(&[("logo_base_url", "ftp://nas.local")]),
        pairs(&[("by_name", "BBC One | https://x/1.png | bbc1.uk | extra")]),
        pairs(&[("by_name", "BBC One")]),
        pairs(&[("by_name", " | https://x/1.png")]),
        pairs(&[("by_name", "BBC One | |")]),
        pairs(&[(
            "by_name",
            "BBC One | https://x/1.png\nbbc one HD | https://x/2.png",
        )]),
        pairs(&[("by_name", "BBC One | https://x/\"1.png")]),
        pairs(&[("by_id", "bbc1.uk")]),
        pairs(&[("by_id", "bbc1.uk | ")]),
        pairs(&[(
            "by_id",
            "bbc1.uk | https://x/1.png\nBBC1.UK | https://x/2.png",
        )]),
        pairs(&[
            ("by_name", "A | https://x/a.png"),
            ("by_name_3", "B | https://x/b.png"),
        ]),
    ];
    for values in &bad {
        let error = match runtime.load(&wasm, "logo_mapper", &settings(values)) {
            Ok(_) => panic!("{values:?} was accepted"),
            Err(error) => error,
        };
        assert!(
            matches!(
                error.kind(),
                ErrorKind::PluginStatus { function: "m3u_init", status, .. } if *status == status::CONFIG_ERROR
            ),
            "{values:?}: {error:?}"
        );
        // The error carries the plugin's own reason, naming a key it read.
        let text = error.to_string();
        assert!(text.contains("configuration missing or invalid"), "{text}");
        assert!(
            text.contains("logo_mapper: ")
                && values.iter().any(|(key, _)| text.contains(key.as_str())),
            "{values:?}: {text}"
        );
    }
    // The same keys with valid values load.
    let good = pairs(&[
        ("rewrite_logos", "true"),
        ("overwrite_logo", "false"),
        ("overwrite_tvg_id", "true"),
        ("logo_base_url", "HTTPS://nas.local:8080/"),
        (
            "by_name",
            "# c\nBBC One | https://x/1.png | bbc1.uk\nITV | | itv.uk",
        ),
        ("by_name_2", "Channel 4 | https://x/4.png"),
        ("by_id", "bbc1.uk | https://x/1.png"),
    ]);
    runtime
        .load(&wasm, "logo_mapper", &settings(&good))
        .unwrap_or_else(|error| panic!("valid config refused: {error}"));
    // One value far larger than the SDK's 8 KiB scratch region is read whole
    // in init: all 400 entries count.
    let long_table: String = (0..400)
        .map(|i| {
            format!(
                "Channel {i} | https://logos.example/{i}/{}.png\n",
                "x".repeat(40)
            )
        })
        .collect();
    assert!(long_table.len() > 30_000);
    let instance = runtime
        .load(
            &wasm,
            "logo_mapper",
            &settings(&[("by_name".to_string(), long_table)]),
        )
        .unwrap_or_else(|error| panic!("a 30 KB table refused: {error}"));
    let mut slot = PluginSlot::new(instance, std::path::PathBuf::new());
    let mut batch = vec![OwnedChannel {
        id: 1,
        channel_name: "Channel 399".into(),
        ..OwnedChannel::default()
    }];
    let ctx = StageContext {
        stage: Stage::DataMapping,
        ..StageContext::default()
    };
    slot.run(Stage::DataMapping, &ctx, &mut batch)
        .expect("mapping");
    assert!(
        batch[0].tvg_logo.contains("/399/"),
        "{:?}",
        batch[0].tvg_logo
    );
}

#[test]
fn the_pipeline_runs_logo_mapper_at_data_mapping() {
    let input = playlist();
    let tables = tables(&input);
    let dir = plugin_dir(&["logo_mapper"]);
    let mut plugin_table = toml::Table::new();
    for (key, value) in &tables.config {
        plugin_table.insert(key.clone(), toml::Value::String(value.clone()));
    }
    let mut plugins = toml::Table::new();
    plugins.insert("logo_mapper".into(), toml::Value::Table(plugin_table));
    let mut root = toml::Table::new();
    root.insert("plugins".into(), toml::Value::Table(plugins));
    let text = format!(
        "[proxy]\nbase_url = {PROXY_BASE:?}\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\ndata_mapping = [\"logo_mapper\"]\n{}",
        dir.display().to_string(),
        toml::to_string(&root).unwrap()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let source = Source::open(&repo_path(PLAYLIST_FIXTURE)).unwrap();
    let (output, stats) = pipeline.run_collect(vec![source]).unwrap();

    assert_eq!(stats.stages[1].strategy, "logo_mapper");
    assert_eq!(stats.plugin_failures, 0);
    assert!(stats.fuel_consumed > 0);
    assert_eq!(output.len(), input.len());
    let base = PROXY_BASE.trim_end_matches('/');
    let options = Options {
        overwrite_logo: false,
        overwrite_tvg_id: false,
        base: Some(base),
    };
    // Later stages number the channels; compare what data_mapping decides.
    let mut counts = Counts::default();
    let mut hash_of: HashMap<String, String> = HashMap::new();
    for (index, (got, want)) in output.iter().zip(&input).enumerate() {
        assert_eq!(
            got.channel_name, want.channel_name,
            "channel #{index}: order"
        );
        assert_eq!(got.stream_url, want.stream_url, "channel #{index}: order");
        let (tvg_id, logo) = expect(want, &tables, options, &mut counts);
        assert_eq!(got.tvg_id, tvg_id, "channel #{index}: tvg-id");
        match logo {
            Logo::Is(logo) => assert_eq!(got.tvg_logo, logo, "channel #{index}"),
            Logo::CacheOf(url) => {
                let hash = got
                    .tvg_logo
                    .strip_prefix(&format!("{base}/logos/"))
                    .unwrap_or_else(|| panic!("channel #{index}: {:?}", got.tvg_logo));
                assert_eq!(hash.len(), 64, "channel #{index}");
                let first = hash_of.entry(url).or_insert_with(|| hash.to_string());
                assert_eq!(first, hash, "channel #{index}");
            }
        }
    }
    assert!(
        counts.ids_filled >= 20 && counts.logos_by_id >= 50,
        "{counts:?}"
    );
    for (url, digest) in PINNED {
        assert_eq!(hash_of.get(url).map(String::as_str), Some(digest), "{url}");
    }
}
