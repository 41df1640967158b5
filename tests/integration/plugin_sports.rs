//! The sports optimizer plugin (`plugins/sports-optimizer`, built by build.rs
//! into `sports_optimizer.wasm`) on the real playlist. Every expected result
//! is derived here, from the rules in the plugin's README, by code written
//! separately from the plugin's `logic.rs`:
//!
//! - which channels are sports, with which sport, league and teams, with the
//!   documented built-in dictionaries (read from the README) and with custom
//!   ones;
//! - the `Sports/<Sport>` group rewrite and the `x-sports-*` attributes;
//! - the country/language filter (multi-valued attributes, unlabelled
//!   channels);
//! - the number block, including the block-full case and a second run;
//! - non-sports channels are never touched;
//! - config errors fail `init` and say what is wrong;
//! - the whole `Pipeline` with the plugin in data_mapping and filtering and
//!   the numbering stage putting sports channels in the block.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use m3u_plugin_host::abi::{Field, FieldSet, MemoryPressureLevel, Stage, StageContext};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, Source};
use m3u_plugin_host::runtime::{PluginSettings, RuntimeLimits};
use m3u_plugin_host::{ErrorKind, OwnedChannel};

use super::common::{
    allowlist_with, default_runtime, example_plugin, playlist, repo_path, runtime_with,
    PLAYLIST_FIXTURE,
};
use super::pipeline::plugin_dir;

/// The plugin's `logic.rs`, compiled natively: used only to check the text of
/// config error messages (which the host logs but does not return), never to
/// derive expected channels.
#[allow(dead_code)]
#[path = "../../plugins/sports-optimizer/src/logic.rs"]
mod sports_logic;

const PLUGIN: &str = "sports_optimizer";
const BATCH: usize = 1024;
const COUNTRY: &str = "tvg-country";
const LANGUAGE: &str = "tvg-language";

// ---------------------------------------------------------------------------
// The rules, written out independently of the plugin
// ---------------------------------------------------------------------------

/// One dictionary entry, `Name|Alias=Sport`.
#[derive(Clone, Debug)]
struct Entry {
    names: Vec<String>,
    /// The names as [`spaced_words`], computed once.
    needles: Vec<String>,
    sport: Option<String>,
}

/// Entries separated by `;` or newlines; `Name|Alias…[=Sport]`.
fn entries(text: &str) -> Vec<Entry> {
    text.split([';', '\n'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (names, sport) = match entry.split_once('=') {
                Some((names, sport)) => (names, Some(sport.trim().to_string())),
                None => (entry, None),
            };
            let names: Vec<String> = names.split('|').map(|n| n.trim().to_string()).collect();
            Entry {
                needles: names.iter().map(|n| spaced_words(n)).collect(),
                names,
                sport,
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Spec {
    keywords: Vec<Entry>,
    leagues: Vec<Entry>,
    teams: Vec<Entry>,
    prefix: String,
}

/// The words of `text` as `" w1 w2 … "`: lowercased, a word being a run of
/// letters or a run of digits. A term occurs as whole words exactly when its
/// own spaced form is a substring.
fn spaced_words(text: &str) -> String {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Digit,
        Other,
    }
    let mut out = String::from(" ");
    let mut previous = Class::Other;
    for c in text.chars().flat_map(char::to_lowercase) {
        let class = if c.is_alphabetic() {
            Class::Letter
        } else if c.is_numeric() {
            Class::Digit
        } else {
            Class::Other
        };
        if class != previous && !out.ends_with(' ') {
            out.push(' ');
        }
        if class != Class::Other {
            out.push(c);
        }
        previous = class;
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
    out
}

/// Where a term was found: (text: 0 name / 1 group, byte position, longer
/// first, entry, alias). Smaller is better.
type Rank = (usize, usize, Reverse<usize>, usize, usize);

/// For each entry that occurs, its best rank.
fn occurrences(list: &[Entry], texts: &[String; 2]) -> Vec<(Rank, usize)> {
    let mut found = Vec::new();
    for (entry_index, entry) in list.iter().enumerate() {
        let mut best: Option<Rank> = None;
        for (alias, needle) in entry.needles.iter().enumerate() {
            for (text_index, text) in texts.iter().enumerate() {
                if let Some(position) = text.find(needle.as_str()) {
                    let rank = (
                        text_index,
                        position,
                        Reverse(needle.len()),
                        entry_index,
                        alias,
                    );
                    best = Some(best.map_or(rank, |b| b.min(rank)));
                }
            }
        }
        if let Some(rank) = best {
            found.push((rank, entry_index));
        }
    }
    found.sort();
    found
}

#[derive(Clone, Debug, PartialEq)]
struct Expected {
    sport: Option<String>,
    league: Option<String>,
    teams: Vec<String>,
}

/// `Some(sport)` when `group` is `<prefix>` or `<prefix>/<Sport>`.
fn prefix_form(prefix: &str, group: &str) -> Option<Option<String>> {
    let group = group.trim();
    if group.len() < prefix.len()
        || !group.is_char_boundary(prefix.len())
        || !group[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        return None;
    }
    let rest = &group[prefix.len()..];
    if rest.is_empty() {
        return Some(None);
    }
    let sport = rest.strip_prefix('/')?.trim();
    Some((!sport.is_empty()).then(|| sport.to_string()))
}

/// Ids of the channels the README's rules call sports.
fn sports_ids(spec: &Spec, channels: &[OwnedChannel]) -> HashSet<u64> {
    channels
        .iter()
        .filter(|c| classify(spec, &c.channel_name, &c.group_title).is_some())
        .map(|c| c.id)
        .collect()
}

/// The README's classification rules.
fn classify(spec: &Spec, name: &str, group: &str) -> Option<Expected> {
    let texts = [spaced_words(name), spaced_words(group)];
    let keywords = occurrences(&spec.keywords, &texts);
    let leagues = occurrences(&spec.leagues, &texts);
    let teams = occurrences(&spec.teams, &texts);
    let prefixed = prefix_form(&spec.prefix, group);
    if keywords.is_empty() && leagues.is_empty() && teams.is_empty() && prefixed.is_none() {
        return None;
    }
    let league = leagues.first().map(|&(_, i)| &spec.leagues[i]);
    let team_entries: Vec<&Entry> = teams.iter().map(|&(_, i)| &spec.teams[i]).collect();
    let sport = league
        .and_then(|l| l.sport.clone())
        .or_else(|| team_entries.iter().find_map(|t| t.sport.clone()))
        .or_else(|| {
            keywords
                .iter()
                .find_map(|&(_, i)| spec.keywords[i].sport.clone())
        })
        .or(prefixed.flatten());
    Some(Expected {
        sport,
        league: league.map(|l| l.names[0].clone()),
        teams: team_entries.iter().map(|t| t.names[0].clone()).collect(),
    })
}

/// The channel after the data_mapping stage (without number hints).
fn mapped(spec: &Spec, channel: &OwnedChannel, tag: bool, regroup: bool) -> OwnedChannel {
    let mut out = channel.clone();
    let Some(found) = classify(spec, &channel.channel_name, &channel.group_title) else {
        return out;
    };
    if regroup {
        out.group_title = match &found.sport {
            Some(sport) => format!("{}/{sport}", spec.prefix),
            None => spec.prefix.clone(),
        }
        .into();
    }
    if tag {
        let mut set = |name: &'static str, value: String| {
            out.set_attribute(Cow::Borrowed(name), Cow::Owned(value));
        };
        if let Some(sport) = found.sport {
            set("x-sports-sport", sport);
        }
        if let Some(league) = found.league {
            set("x-sports-league", league);
        }
        if !found.teams.is_empty() {
            set("x-sports-teams", found.teams.join(";"));
        }
    }
    out
}

/// An allowed-list check: with a list, some `;`-separated value must be in it
/// (any case); a channel without values passes only if `keep_unlabelled`.
fn allowed(value: Option<&str>, list: &[&str], keep_unlabelled: bool) -> bool {
    if list.is_empty() {
        return true;
    }
    let values: Vec<String> = value
        .unwrap_or("")
        .split(';')
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return keep_unlabelled;
    }
    values
        .iter()
        .any(|v| list.iter().any(|a| a.to_lowercase() == *v))
}

/// The host's notion of an explicit number.
fn explicit_number(chno: &str) -> Option<u32> {
    let text = chno.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=9_999_999).contains(n))
}

/// The built-in dictionaries as the README documents them (the TOML block
/// between `<!-- defaults:begin -->` and `<!-- defaults:end -->`).
fn readme_defaults() -> Spec {
    let path = repo_path("plugins/sports-optimizer/README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let block = text
        .split("<!-- defaults:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- defaults:end -->").next())
        .expect("the README marks its defaults block");
    let toml_text = block
        .trim()
        .strip_prefix("```toml")
        .and_then(|t| t.strip_suffix("```"))
        .expect("the defaults block is a ```toml fence");
    let table: toml::Table = toml::from_str(toml_text).expect("the defaults block is TOML");
    let values = table["plugins"]["sports_optimizer"].as_table().unwrap();
    let text = |key: &str| values[key].as_str().unwrap().to_string();
    Spec {
        keywords: entries(&text("keywords")),
        leagues: entries(&text("leagues")),
        teams: entries(&text("teams")),
        prefix: text("group_prefix"),
    }
}

// ---------------------------------------------------------------------------
// Running the plugin
// ---------------------------------------------------------------------------

fn context(stage: Stage, batch_index: u32) -> StageContext<'static> {
    StageContext {
        stage,
        memory_pressure: MemoryPressureLevel::Optimal,
        available_memory: 1 << 30,
        proxy_name: "integration".into(),
        base_url: String::new().into(),
        batch_index,
    }
}

fn settings(pairs: &[(&str, &str)]) -> PluginSettings {
    let values: BTreeMap<String, String> = pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    PluginSettings::from([(PLUGIN.to_string(), values)])
}

fn try_slot(pairs: &[(&str, &str)]) -> m3u_plugin_host::Result<PluginSlot> {
    let (wasm, path) = example_plugin("sports_optimizer.wasm");
    let runtime = runtime_with(RuntimeLimits::default(), &allowlist_with(&["get_config"]));
    let instance = runtime.load(&wasm, PLUGIN, &settings(pairs))?;
    Ok(PluginSlot::new(instance, path))
}

fn slot(pairs: &[(&str, &str)]) -> PluginSlot {
    try_slot(pairs).unwrap_or_else(|error| panic!("loading {PLUGIN} with {pairs:?}: {error}"))
}

/// Runs `input` through one stage of the slot as a pipeline run does: the
/// pressure check that opens the run, then batch by batch (indexes from 0).
fn run_stage(slot: &mut PluginSlot, stage: Stage, input: &[OwnedChannel]) -> Vec<OwnedChannel> {
    assert!(slot
        .instance
        .accepts_pressure(
            MemoryPressureLevel::Optimal,
            &m3u_plugin_host::abi::RunContext::default()
        )
        .expect("pressure check"));
    let mut output = Vec::with_capacity(input.len());
    for (index, chunk) in input.chunks(BATCH).enumerate() {
        let mut batch = chunk.to_vec();
        slot.run(stage, &context(stage, index as u32), &mut batch)
            .unwrap_or_else(|error| panic!("{} batch {index}: {error}", stage.name()));
        output.extend(batch);
    }
    output
}

fn assert_same_channels(actual: &[OwnedChannel], expected: &[OwnedChannel]) {
    for (index, (got, want)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(
            got, want,
            "channel #{index} (id {}, {:?}, group {:?}) differs",
            want.id, want.channel_name, want.group_title
        );
    }
    assert_eq!(actual.len(), expected.len(), "channel count differs");
}

fn find<'c>(channels: &'c [OwnedChannel], name: &str) -> &'c OwnedChannel {
    channels
        .iter()
        .find(|c| c.channel_name == name)
        .unwrap_or_else(|| panic!("the fixture has no channel named {name:?}"))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// With no settings the plugin applies the dictionaries the README documents:
/// every channel of the real playlist is classified, regrouped and tagged as
/// derived here, every other channel comes back byte for byte, and the answer
/// is patches for the four fields it reads.
#[test]
fn builtin_dictionaries_classify_group_and_tag_the_real_playlist_as_documented() {
    let channels = playlist();
    let spec = readme_defaults();
    let expected: Vec<OwnedChannel> = channels
        .iter()
        .map(|c| mapped(&spec, c, true, true))
        .collect();
    let found: Vec<Option<Expected>> = channels
        .iter()
        .map(|c| classify(&spec, &c.channel_name, &c.group_title))
        .collect();

    // The input exercises the rules, or this test proves little.
    let sports = found.iter().flatten().count();
    assert!(sports > 200, "only {sports} sports channels");
    assert!(
        channels.len() - sports > 9000,
        "most channels are not sports"
    );
    let sports_names: BTreeSet<&str> = found
        .iter()
        .flatten()
        .filter_map(|f| f.sport.as_deref())
        .collect();
    for sport in [
        "Football",
        "Baseball",
        "American Football",
        "Motorsport",
        "Combat Sports",
        "Golf",
    ] {
        assert!(
            sports_names.contains(sport),
            "no {sport} channel: {sports_names:?}"
        );
    }
    assert!(found.iter().flatten().any(|f| f.sport.is_none()));
    assert!(
        found
            .iter()
            .flatten()
            .filter(|f| f.league.is_some())
            .count()
            > 10
    );
    for (channel, found) in channels.iter().zip(&found) {
        if channel.group_title == "Sports" {
            assert!(
                found.is_some(),
                "{:?} is in group Sports",
                channel.channel_name
            );
        }
    }
    // Spot checks of the rules on real entries.
    let spot = |name: &str| {
        let index = channels
            .iter()
            .position(|c| c.channel_name == name)
            .unwrap();
        (&expected[index], found[index].clone())
    };
    let (mlb, _) = spot("MLB Network");
    assert_eq!(mlb.group_title, "Sports/Baseball");
    assert_eq!(mlb.attribute("x-sports-league"), Some("MLB"));
    assert_eq!(
        spot("Fight Network").0.attribute("x-sports-sport"),
        Some("Combat Sports")
    );
    assert_eq!(spot("ESPN 2 (720p)").0.group_title, "Sports", "ESPN: brand");
    assert!(spot("Niederbayern TV").1.is_none());
    assert_eq!(
        find(&channels, "Niederbayern TV"),
        spot("Niederbayern TV").0
    );

    let (wasm, path) = example_plugin("sports_optimizer.wasm");
    let runtime = runtime_with(RuntimeLimits::default(), &allowlist_with(&["get_config"]));
    let instance = runtime
        .load(&wasm, PLUGIN, &PluginSettings::new())
        .expect("loads without settings");
    let info = instance.info();
    assert_eq!(info.name, PLUGIN);
    assert!(info.supports(Stage::DataMapping) && info.supports(Stage::Filtering));
    assert_eq!(
        info.reads,
        FieldSet::of(&[
            Field::TvgChno,
            Field::GroupTitle,
            Field::ChannelName,
            Field::Attributes
        ])
    );
    let mut slot = PluginSlot::new(instance, path);
    let output = run_stage(&mut slot, Stage::DataMapping, &channels);
    assert_same_channels(&output, &expected);
    // Only sports channels change (some already were in group "Sports" with
    // nothing more to tell), and many do.
    let mut changed = 0;
    for ((got, before), found) in output.iter().zip(&channels).zip(&found) {
        if found.is_none() {
            assert_eq!(got, before, "a non-sports channel changed");
        } else if got != before {
            changed += 1;
        }
    }
    assert!(changed > 100, "only {changed} sports channels changed");
    // Patches for a few hundred channels are far smaller than the input.
    let stats = slot.instance.stats();
    assert!(
        stats.bytes_out * 10 < stats.bytes_in,
        "answered with patches: {} bytes out for {} in",
        stats.bytes_out,
        stats.bytes_in
    );
    // Without filter settings the filtering stage keeps everything.
    assert_same_channels(
        &run_stage(&mut slot, Stage::Filtering, &channels),
        &channels,
    );
}

/// Replaced and extended dictionaries, teams with aliases and a custom group
/// prefix; and with both rewrites switched off nothing changes at all.
#[test]
fn custom_dictionaries_teams_and_prefix_replace_and_extend_the_defaults() {
    let channels = playlist();
    let pairs = [
        ("keywords", "sport; sports; deportes; fútbol=Football"),
        (
            "extra_keywords",
            "Racing=Horse Racing\nFight|Fighting=Combat Sports",
        ),
        ("leagues", "NFL=American Football; MLB=Baseball"),
        ("extra_leagues", "Formula 1|F1=Motorsport; NCAA"),
        ("teams", "Real Madrid=Football; Chelsea|Chelsea TV=Football"),
        ("extra_teams", "Bayern; Porto|FC Porto=Football"),
        ("group_prefix", "Sport Zone"),
    ];
    let text = |key: &str| pairs.iter().find(|(k, _)| *k == key).unwrap().1;
    let join = |a: &str, b: &str| format!("{};{}", text(a), text(b));
    let spec = Spec {
        keywords: entries(&join("keywords", "extra_keywords")),
        leagues: entries(&join("leagues", "extra_leagues")),
        teams: entries(&join("teams", "extra_teams")),
        prefix: text("group_prefix").to_string(),
    };
    let expected: Vec<OwnedChannel> = channels
        .iter()
        .map(|c| mapped(&spec, c, true, true))
        .collect();
    let teams: BTreeSet<String> = expected
        .iter()
        .filter_map(|c| c.attribute("x-sports-teams").map(String::from))
        .collect();
    for team in ["Real Madrid", "Chelsea", "Bayern", "Porto"] {
        assert!(
            teams.contains(team),
            "no channel tagged with {team}: {teams:?}"
        );
    }
    // Whole words: "Niederbayern" is not "Bayern".
    let niederbayern = find(&channels, "Niederbayern TV");
    assert_eq!(&mapped(&spec, niederbayern, true, true), niederbayern);
    assert!(expected
        .iter()
        .any(|c| c.attribute("x-sports-sport") == Some("Horse Racing")));
    assert!(expected.iter().any(|c| c.group_title == "Sport Zone"));

    let mut slot = slot(&pairs);
    assert_same_channels(
        &run_stage(&mut slot, Stage::DataMapping, &channels),
        &expected,
    );

    let mut quiet = slot_with_extra(
        &pairs,
        &[("rewrite_group", "false"), ("tag_attributes", "false")],
    );
    assert_same_channels(
        &run_stage(&mut quiet, Stage::DataMapping, &channels),
        &channels,
    );
    let tags_only = slot_with_extra(&pairs, &[("rewrite_group", "false")]);
    let expected_tags: Vec<OwnedChannel> = channels
        .iter()
        .map(|c| mapped(&spec, c, true, false))
        .collect();
    let mut tags_only = tags_only;
    assert_same_channels(
        &run_stage(&mut tags_only, Stage::DataMapping, &channels),
        &expected_tags,
    );
}

fn slot_with_extra(pairs: &[(&str, &str)], extra: &[(&str, &str)]) -> PluginSlot {
    let mut all = pairs.to_vec();
    all.extend_from_slice(extra);
    slot(&all)
}

/// The filtering stage drops exactly the sports channels whose country or
/// language is not allowed, on the raw playlist and after its own mapping
/// (where groups were rewritten to a prefix that is no keyword).
#[test]
fn country_and_language_filter_drops_only_sports_channels_outside_the_lists() {
    let channels = playlist();
    let spec = readme_defaults();
    let countries = ["US", "UK", "it", "Es"];
    let languages = ["English", "italian", "Spanish"];
    let pairs = [
        ("allowed_countries", "US; UK, it;Es"),
        ("allowed_languages", "English, italian; Spanish"),
    ];
    let sports_ids = sports_ids(&spec, &channels);
    let is_sports = |c: &OwnedChannel| sports_ids.contains(&c.id);
    let keeps = |c: &OwnedChannel, keep_unlabelled: bool, languages: &[&str]| {
        !is_sports(c)
            || (allowed(c.attribute(COUNTRY), &countries, keep_unlabelled)
                && allowed(c.attribute(LANGUAGE), languages, keep_unlabelled))
    };
    let expected: Vec<OwnedChannel> = channels
        .iter()
        .filter(|c| keeps(c, false, &languages))
        .cloned()
        .collect();
    let dropped = channels.len() - expected.len();
    let kept_sports = expected.iter().filter(|c| is_sports(c)).count();
    assert!(
        dropped > 100 && kept_sports > 50,
        "{dropped} dropped, {kept_sports} kept"
    );
    // A kept channel whose only allowed country is not its first one.
    assert!(expected.iter().any(|c| {
        let values: Vec<&str> = c.attribute(COUNTRY).unwrap_or("").split(';').collect();
        is_sports(c) && values.len() > 1 && !allowed(Some(values[0]), &countries, false)
    }));

    let mut filter = slot(&pairs);
    let output = run_stage(&mut filter, Stage::Filtering, &channels);
    assert_same_channels(&output, &expected);

    // Unlabelled channels: dropped above, kept with keep_unlabelled.
    let unlabelled = channels
        .iter()
        .filter(|c| is_sports(c) && c.attribute(COUNTRY).unwrap_or("").trim().is_empty())
        .count();
    assert!(
        unlabelled > 10,
        "only {unlabelled} sports channels without a country"
    );
    let mut lenient = slot(&[
        ("allowed_countries", "US; UK, it;Es"),
        ("keep_unlabelled", "true"),
    ]);
    let expected_lenient: Vec<OwnedChannel> = channels
        .iter()
        .filter(|c| keeps(c, true, &[]))
        .cloned()
        .collect();
    assert!(expected_lenient.len() > expected.len());
    assert_same_channels(
        &run_stage(&mut lenient, Stage::Filtering, &channels),
        &expected_lenient,
    );

    // Mapping first (groups become "Deportivo/…", no keyword) and then
    // filtering keeps the same channels as filtering the raw input.
    let mut both = slot(&[
        ("allowed_countries", "US; UK, it;Es"),
        ("allowed_languages", "English, italian; Spanish"),
        ("keywords", "sports; football=Football"),
        ("group_prefix", "Deportivo"),
    ]);
    let narrow = Spec {
        keywords: entries("sports; football=Football"),
        prefix: "Deportivo".into(),
        ..spec.clone()
    };
    let narrow_keeps = |c: &OwnedChannel| {
        classify(&narrow, &c.channel_name, &c.group_title).is_none()
            || (allowed(c.attribute(COUNTRY), &countries, false)
                && allowed(c.attribute(LANGUAGE), &languages, false))
    };
    let expected_ids: Vec<u64> = channels
        .iter()
        .filter(|c| narrow_keeps(c))
        .map(|c| c.id)
        .collect();
    let regrouped = run_stage(&mut both, Stage::DataMapping, &channels);
    let only_by_group = regrouped
        .iter()
        .zip(&channels)
        .filter(|(after, before)| {
            after.group_title == "Deportivo"
                && before.group_title == "Sports"
                && classify(&narrow, &before.channel_name, "").is_none()
                && !narrow_keeps(before)
        })
        .count();
    assert!(
        only_by_group > 10,
        "channels recognised only by their old group"
    );
    let kept_ids: Vec<u64> = run_stage(&mut both, Stage::Filtering, &regrouped)
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(kept_ids, expected_ids);
}

/// Sports channels without a valid number get the next free number of the
/// block, skipping explicit numbers seen in it; channels the filter drops use
/// none; once the block is full the rest get no hint; a second run starts
/// the block again.
#[test]
fn number_block_hints_free_numbers_and_stops_when_the_block_is_full() {
    let spec = readme_defaults();
    let languages = ["English"];
    // Explicit numbers: some in the block, some outside, some invalid.
    let channels: Vec<OwnedChannel> = playlist()
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            if i % 50 == 0 {
                c.tvg_chno = (1000 + i / 50).to_string().into();
            } else if i % 77 == 3 {
                c.tvg_chno = "5.1".into();
            } else if i % 91 == 5 {
                c.tvg_chno = " 42 ".into();
            }
            c
        })
        .collect();
    let sports_ids = sports_ids(&spec, &channels);
    let is_sports = |c: &OwnedChannel| sports_ids.contains(&c.id);
    let hints = |first: u32, last: u32| -> Vec<Option<u32>> {
        let mut reserved = HashSet::new();
        let mut next = first;
        channels
            .iter()
            .map(|c| {
                let sports = is_sports(c);
                let kept = !sports || allowed(c.attribute(LANGUAGE), &languages, false);
                let explicit = explicit_number(&c.tvg_chno);
                if let (true, Some(n)) = (kept, explicit) {
                    reserved.insert(n);
                }
                if !(sports && kept && explicit.is_none()) {
                    return None;
                }
                while next <= last && reserved.contains(&next) {
                    next += 1;
                }
                (next <= last).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    let expected = |hints: &[Option<u32>]| -> Vec<OwnedChannel> {
        channels
            .iter()
            .zip(hints)
            .map(|(c, hint)| {
                let mut out = mapped(&spec, c, true, true);
                if let Some(n) = hint {
                    out.tvg_chno = n.to_string().into();
                }
                out
            })
            .collect()
    };
    let wants_number = |c: &OwnedChannel| {
        is_sports(c)
            && allowed(c.attribute(LANGUAGE), &languages, false)
            && explicit_number(&c.tvg_chno).is_none()
    };
    let wanting = channels.iter().filter(|c| wants_number(c)).count();

    // A block of 100: full before every sports channel has a number.
    let small = hints(1000, 1099);
    let given: BTreeSet<u32> = small.iter().flatten().copied().collect();
    let reserved_in_block: BTreeSet<u32> = channels
        .iter()
        .filter_map(|c| explicit_number(&c.tvg_chno))
        .filter(|n| (1000..=1099).contains(n))
        .collect();
    assert!(
        !reserved_in_block.is_empty(),
        "explicit numbers in the block"
    );
    assert_eq!(
        given.len(),
        small.iter().flatten().count(),
        "no number twice"
    );
    // Every number of the block is given or was explicit (an explicit
    // number that arrives after the block passed it collides; the numbering
    // stage moves one of the two).
    assert!(
        (1000..=1099).all(|n| given.contains(&n) || reserved_in_block.contains(&n)),
        "the block is used up"
    );
    assert!(
        reserved_in_block.iter().any(|n| !given.contains(n)),
        "explicit numbers are skipped"
    );
    assert!(given.iter().all(|n| (1000..=1099).contains(n)));
    assert!(
        wanting > given.len(),
        "{wanting} channels want one of {} numbers",
        given.len()
    );
    assert!(channels
        .iter()
        .any(|c| c.tvg_chno == "5.1" && wants_number(c)));
    let mut full = slot(&[
        ("allowed_languages", "English"),
        ("number_block", "1000-1099"),
    ]);
    let first_run = run_stage(&mut full, Stage::DataMapping, &channels);
    assert_same_channels(&first_run, &expected(&small));
    // A second run (opened by its pressure check) gets the same numbers.
    assert_same_channels(
        &run_stage(&mut full, Stage::DataMapping, &channels),
        &expected(&small),
    );

    // A block large enough: every kept sports channel without a number has one.
    let large = hints(1000, 1999);
    assert_eq!(large.iter().flatten().count(), wanting);
    let mut roomy = slot(&[
        ("allowed_languages", "English"),
        ("number_block", " 1000 - 1999 "),
    ]);
    assert_same_channels(
        &run_stage(&mut roomy, Stage::DataMapping, &channels),
        &expected(&large),
    );
}

/// Invalid settings make `init` fail with the configuration status (the
/// plugin is not loaded), and the messages name the key and the problem.
/// The settings arrive at init, so none of this needs `get_config`.
#[test]
fn config_errors_fail_init_with_clear_messages() {
    let cases: [(&str, &str, &str); 12] = [
        (
            "number_block",
            "2000-1000",
            "first number is larger than the last",
        ),
        (
            "number_block",
            "1000",
            "no `-` between first and last number",
        ),
        ("number_block", "0-10", "0 is not in 1..=9999999"),
        (
            "number_block",
            "1-10000000",
            "10000000 is not in 1..=9999999",
        ),
        ("number_block", "a-b", "\"a\" is not a whole number"),
        ("number_block", "5-", "a number is missing"),
        (
            "leagues",
            "NBA=Basketball; NFL=",
            "leagues: entry 2 (\"NFL=\"): nothing after `=`",
        ),
        (
            "extra_teams",
            "A||B=Football",
            "extra_teams: entry 1 (\"A||B=Football\"): empty name",
        ),
        (
            "keywords",
            "a=b=c",
            "keywords: entry 1 (\"a=b=c\"): more than one `=`",
        ),
        (
            "extra_keywords",
            "ok; ---",
            "extra_keywords: entry 2 (\"---\"): name \"---\" has no letter or digit",
        ),
        (
            "rewrite_group",
            "yes",
            "rewrite_group = \"yes\": expected true or false",
        ),
        (
            "group_prefix",
            "Sports/",
            "group_prefix = \"Sports/\": must be non-empty",
        ),
    ];
    for (key, value, message) in cases {
        let error = try_slot(&[(key, value)])
            .err()
            .unwrap_or_else(|| panic!("{key} = {value:?} loaded"));
        assert!(
            matches!(error.kind(), ErrorKind::PluginStatus { status: -5, .. }),
            "{key} = {value:?}: {error}"
        );
        let text = sports_logic::SportsOptimizer::new(|k| (k == key).then(|| value.to_string()))
            .err()
            .unwrap_or_else(|| panic!("{key} = {value:?} accepted"));
        assert!(
            text.contains(message),
            "{key} = {value:?}: {text:?} lacks {message:?}"
        );
    }
    let empty = [("keywords", ""), ("leagues", "")];
    let Err(error) = try_slot(&empty) else {
        panic!("empty dictionaries accepted");
    };
    assert!(matches!(
        error.kind(),
        ErrorKind::PluginStatus { status: -5, .. }
    ));
    let text = sports_logic::SportsOptimizer::new(|k| {
        empty
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    })
    .err()
    .unwrap();
    assert!(
        text.contains("nothing would be recognised as sports"),
        "{text}"
    );

    // Valid edge values load.
    slot(&[
        ("number_block", "9999999-9999999"),
        ("keep_unlabelled", "true"),
        ("leagues", ""),
    ]);

    // The settings arrive at init: the plugin does not import get_config and
    // loads under the default allowlist (which lacks it), where a bad value
    // still fails init with its reason, naming the key, and a good one takes
    // effect.
    let (wasm, path) = example_plugin("sports_optimizer.wasm");
    let runtime = default_runtime();
    super::common::assert_compiles_without_get_config(&runtime, &wasm);
    for (key, value, message) in [cases[0], cases[10], cases[11]] {
        let Err(error) = runtime.load(&wasm, PLUGIN, &settings(&[(key, value)])) else {
            panic!("{key} = {value:?} loaded without get_config on the allowlist");
        };
        match error.kind() {
            ErrorKind::PluginStatus {
                function: "m3u_init",
                status: -5,
                message: Some(reason),
            } => assert!(
                reason.contains(key) && reason.contains(message),
                "{key} = {value:?}: {reason:?} lacks {message:?}"
            ),
            _ => panic!("{key} = {value:?}: {error:?}"),
        }
        let text = error.to_string();
        assert!(text.contains(message), "{key} = {value:?}: {text}");
    }
    let instance = runtime
        .load(&wasm, PLUGIN, &settings(&[("group_prefix", "Games")]))
        .unwrap_or_else(|error| panic!("loading without get_config on the allowlist: {error}"));
    let mut slot = PluginSlot::new(instance, path);
    let nba = OwnedChannel {
        id: 1,
        channel_name: "NBA TV".into(),
        stream_url: "http://streams.example/nba".into(),
        ..OwnedChannel::default()
    };
    let out = run_stage(&mut slot, Stage::DataMapping, &[nba]);
    assert_eq!(
        out[0].group_title, "Games/Basketball",
        "group_prefix = \"Games\" took effect"
    );
}

/// The whole pipeline: the plugin maps and filters, the native numbering
/// keeps its hints, so the kept sports channels hold 1000, 1001, … in order
/// and every other channel is numbered outside the block; again on a second
/// run, and with streaming numbering when the block lies below the start.
#[test]
fn pipeline_with_mapping_filtering_and_numbering_puts_sports_channels_in_the_block() {
    let spec = readme_defaults();
    let input = playlist();
    assert!(
        input.iter().all(|c| c.tvg_chno.is_empty()),
        "the fixture has no numbers"
    );
    let expected: Vec<OwnedChannel> = input
        .iter()
        .filter(|c| {
            classify(&spec, &c.channel_name, &c.group_title).is_none()
                || allowed(c.attribute(LANGUAGE), &["English"], false)
        })
        .map(|c| mapped(&spec, c, true, true))
        .collect();
    let sports_ids = sports_ids(&spec, &input);
    let is_sports = |c: &OwnedChannel| sports_ids.contains(&c.id);
    let sports = expected.iter().filter(|c| is_sports(c)).count();
    assert!(
        sports > 50 && sports < 1000,
        "{sports} kept sports channels"
    );
    assert!(
        expected.len() < input.len(),
        "the filter drops some channels"
    );

    let text = std::fs::read(repo_path(PLAYLIST_FIXTURE)).unwrap();
    let dir = plugin_dir(&[PLUGIN]);
    for (numbering, start) in [("inmemory_numbering", 1), ("streaming_numbering", 2000)] {
        let toml_text = format!(
            "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
             [proxy_generation.wasm_plugins.security]\n\
             allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
             [proxy_generation.wasm_plugins.strategies]\n\
             data_mapping = [\"sports_optimizer\"]\nfiltering = [\"sports_optimizer\"]\n\
             channel_numbering = [\"{numbering}\"]\n\
             [numbering]\nstart = {start}\n\
             [plugins.sports_optimizer]\nallowed_languages = \"English\"\nnumber_block = \"1000-1999\"\n",
            dir.display().to_string()
        );
        let config = Config::from_toml(&toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        let mut pipeline = Pipeline::new(config).unwrap();
        pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
        let mut first_numbers = None;
        // Two runs of the same pipeline (the plugin must notice the second).
        let runs = if numbering == "inmemory_numbering" {
            2
        } else {
            1
        };
        for run in 0..runs {
            let source = Source::from_reader("real", std::io::Cursor::new(text.clone()));
            let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
            let strategies: Vec<&str> = stats.stages.iter().map(|s| s.strategy.as_str()).collect();
            assert_eq!(
                &strategies[1..4],
                &[PLUGIN, PLUGIN, numbering],
                "{numbering} run {run}"
            );
            assert_eq!(stats.plugin_failures, 0);
            assert_eq!(out.len(), expected.len(), "{numbering} run {run}");
            let mut block = 1000;
            let mut numbers = HashSet::new();
            for (got, want) in out.iter().zip(&expected) {
                let number: u32 = got.tvg_chno.parse().unwrap();
                assert!(numbers.insert(number), "{number} given twice");
                let mut got_rest = got.clone();
                got_rest.tvg_chno = want.tvg_chno.clone();
                got_rest.id = want.id;
                assert_eq!(&got_rest, want, "{numbering} run {run}");
                if is_sports(want) {
                    assert_eq!(
                        number, block,
                        "{:?} ({numbering} run {run})",
                        want.channel_name
                    );
                    block += 1;
                } else {
                    // Block numbers no sports channel uses may go to others
                    // when `start` lies below the block; with `start` above
                    // it, the block is the sports channels' alone.
                    let used = 1000..1000 + sports as u32;
                    assert!(
                        !used.contains(&number),
                        "{:?} got {number}",
                        want.channel_name
                    );
                    assert!(number >= start, "{:?} got {number}", want.channel_name);
                }
            }
            assert_eq!(block - 1000, sports as u32);
            let numbers: Vec<String> = out.iter().map(|c| c.tvg_chno.to_string()).collect();
            match &first_numbers {
                None => first_numbers = Some(numbers),
                Some(first) => assert_eq!(first, &numbers, "the second run numbers the same"),
            }
        }
    }
}
