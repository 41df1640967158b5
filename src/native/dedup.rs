//! Native duplicate removal (`[filtering.dedup]`): the same keys as the
//! `dedup` plugin (tvg-id, name, stream URL, or a `+`-joined combination;
//! the same normalisation), applied by the native filtering strategies.
//!
//! - Streaming (`native_filter`, `bitmask_filter`): the first copy of a key
//!   in the run stays; keys are kept as 64-bit hashes in a set.
//! - Whole playlist (`inmemory_filter`, [`PlaylistDedup`]): every copy of a
//!   key is compared, however far apart they arrive: `keep = "best"` keeps
//!   the highest resolution of the whole playlist, and `merge_alternates`
//!   lists the stream URLs of every dropped copy on the kept one. It is an
//!   external sort over the spill store: channels sorted by (key, rank,
//!   arrival), each group decided, the survivors sorted back into arrival
//!   order, so memory stays bounded by the store's tier at any size.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use m3u_proxy_plugin_abi::MemoryPressureLevel;
use serde::Deserialize;

use crate::abi::Attribute;
use crate::store::{by_id, ExternalSorter, HoldStats, SortKey, SortedBatches, StorePolicy, Tier};
use crate::{Error, OwnedChannel, Result};

/// The attribute that lists the dropped copies' stream URLs.
pub const ALTERNATES_ATTRIBUTE: &str = "x-alternate-urls";

/// Most URLs listed in one `x-alternate-urls` (the earliest copies).
pub const MAX_ALTERNATES: usize = 64;

/// Quality tags and the resolution rank they stand for (as the `dedup`
/// plugin's): dropped from names for `key = "name"`, ranked by `keep =
/// "best"`.
const QUALITY_TAGS: [(&str, u8); 14] = [
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

/// `[filtering.dedup]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// `tvg_id`, `name`, `url` or a `+`-joined combination (all must match).
    #[serde(default = "default_key")]
    pub key: String,
    /// `first` or `best` (the highest resolution; whole playlist only with
    /// `inmemory_filter`).
    #[serde(default = "default_keep")]
    pub keep: String,
    /// List the dropped copies' URLs on the kept channel
    /// (`x-alternate-urls`; `inmemory_filter` only).
    #[serde(default)]
    pub merge_alternates: bool,
}

fn default_key() -> String {
    "tvg_id".to_string()
}
fn default_keep() -> String {
    "first".to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyPart {
    TvgId,
    Name,
    Url,
}

/// The parsed `[filtering.dedup]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dedup {
    parts: Vec<KeyPart>,
    keep_best: bool,
    merge_alternates: bool,
}

impl Dedup {
    /// Checks and parses the configuration.
    ///
    /// # Errors
    /// An unknown key part or `keep` value, naming what is allowed.
    pub fn parse(config: &DedupConfig) -> Result<Dedup> {
        let mut parts = Vec::new();
        for part in config.key.split('+').map(str::trim) {
            let part = match part {
                "tvg_id" => KeyPart::TvgId,
                "name" => KeyPart::Name,
                "url" => KeyPart::Url,
                other => {
                    return Err(Error::config_key(
                        "filtering.dedup.key",
                        format!(
                            "`{other}` is not a key part: use tvg_id, name, url, or several \
                             joined with + (e.g. \"tvg_id+url\")"
                        ),
                    ))
                }
            };
            if parts.contains(&part) {
                return Err(Error::config_key(
                    "filtering.dedup.key",
                    format!("`{}` names a part twice", config.key),
                ));
            }
            parts.push(part);
        }
        let keep_best = match config.keep.as_str() {
            "first" => false,
            "best" => true,
            other => {
                return Err(Error::config_key(
                    "filtering.dedup.keep",
                    format!("`{other}` is not a keep rule: use first or best"),
                ))
            }
        };
        Ok(Dedup {
            parts,
            keep_best,
            merge_alternates: config.merge_alternates,
        })
    }

    /// True if only the whole playlist can do what is asked (`best`,
    /// `merge_alternates`): streaming filters keep the first copy.
    pub fn needs_whole_playlist(&self) -> bool {
        self.keep_best || self.merge_alternates
    }

    /// The 64-bit hash of a channel's key; `None` when the key is empty (a
    /// channel without a key is never a duplicate).
    pub fn key_hash(&self, channel: &OwnedChannel) -> Option<u64> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut normalized = String::new();
        for part in &self.parts {
            normalized.clear();
            match part {
                KeyPart::TvgId => normalized.extend(
                    trim(&channel.tvg_id)
                        .chars()
                        .map(|c| c.to_ascii_lowercase()),
                ),
                KeyPart::Name => normalize_name(&channel.channel_name, &mut normalized),
                KeyPart::Url => normalized.push_str(trim(&channel.stream_url)),
            }
            if normalized.is_empty() {
                return None;
            }
            normalized.hash(&mut hasher);
        }
        Some(hasher.finish())
    }

    /// The channel's normalized key as text (parts joined by U+001F), the
    /// form shared with other instances through Redis (stable across
    /// versions, unlike [`Dedup::key_hash`]); `false` when the key is empty.
    pub fn key_text(&self, channel: &OwnedChannel, out: &mut String) -> bool {
        out.clear();
        for (index, part) in self.parts.iter().enumerate() {
            if index > 0 {
                out.push('\u{1f}');
            }
            let start = out.len();
            match part {
                KeyPart::TvgId => out.extend(
                    trim(&channel.tvg_id)
                        .chars()
                        .map(|c| c.to_ascii_lowercase()),
                ),
                KeyPart::Name => {
                    let mut normalized = String::new();
                    normalize_name(&channel.channel_name, &mut normalized);
                    out.push_str(&normalized);
                }
                KeyPart::Url => out.push_str(trim(&channel.stream_url)),
            }
            if out.len() == start {
                return false;
            }
        }
        true
    }

    /// Streaming, against keys claimed in Redis (`redis_spill`): keeps the
    /// channels whose key this instance owns and meets first in this run
    /// ([`crate::remote::RedisClaims`]); keyless channels stay.
    ///
    /// # Errors
    /// Redis failed: the batch is left as it was.
    pub fn retain_claimed(
        &self,
        batch: &mut Vec<OwnedChannel>,
        claims: &mut crate::remote::RedisClaims,
    ) -> Result<()> {
        let mut text = String::new();
        let mut keys = Vec::new();
        let has_key: Vec<bool> = batch
            .iter()
            .map(|channel| {
                let has = self.key_text(channel, &mut text);
                if has {
                    keys.push(text.as_bytes().to_vec());
                }
                has
            })
            .collect();
        let kept = claims.claim(&keys)?;
        let mut kept = kept.into_iter();
        let mut has_key = has_key.into_iter();
        batch.retain(|_| {
            if has_key.next().unwrap_or(false) {
                kept.next().unwrap_or(true)
            } else {
                true
            }
        });
        Ok(())
    }

    /// Streaming: drops every channel whose key was seen earlier in the run.
    pub fn retain_first(&self, batch: &mut Vec<OwnedChannel>, seen: &mut HashSet<u64>) {
        batch.retain(|channel| match self.key_hash(channel) {
            Some(hash) => seen.insert(hash),
            None => true,
        });
    }

    /// The grouping key of the whole-playlist pass: (key hash, best first,
    /// arrival). Keyless channels each get a group of their own.
    fn group_key(&self, channel: &OwnedChannel) -> SortKey {
        match self.key_hash(channel) {
            Some(hash) => {
                let rank = if self.keep_best {
                    resolution_rank(&channel.channel_name)
                } else {
                    0
                };
                [hash, u64::from(u8::MAX - rank), channel.id]
            }
            // No key: alone in its group (ids are unique; the high bit keeps
            // these apart from hashes in practice, and a collision would
            // only put a keyless channel first in a group, where it is
            // kept anyway).
            None => [channel.id | 1 << 63, 0, channel.id],
        }
    }
}

/// Trims ASCII whitespace from both ends.
fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// The name key: lowercased, everything inside `(…)` and `[…]` removed,
/// split into words at non-alphanumeric characters, quality tags dropped,
/// the rest concatenated ("BBC One HD (1080p)" → "bbcone").
fn normalize_name(name: &str, out: &mut String) {
    let mut depth = 0u32;
    let mut word_start = out.len();
    for c in name.chars().flat_map(char::to_lowercase) {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 && c.is_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => {}
        }
        if is_quality_tag(&out[word_start..]) {
            out.truncate(word_start);
        }
        word_start = out.len();
    }
    if is_quality_tag(&out[word_start..]) {
        out.truncate(word_start);
    }
}

fn is_quality_tag(word: &str) -> bool {
    !word.is_empty() && QUALITY_TAGS.iter().any(|(tag, _)| *tag == word)
}

/// The highest resolution rank among a name's words (0: none).
fn resolution_rank(name: &str) -> u8 {
    name.split(|c: char| !c.is_alphanumeric())
        .filter_map(|word| {
            QUALITY_TAGS
                .iter()
                .find(|(tag, _)| tag.eq_ignore_ascii_case(word))
                .map(|(_, rank)| *rank)
        })
        .max()
        .unwrap_or(0)
}

/// A URL as one space-separated item: ASCII whitespace trimmed; spaces,
/// control characters and `"` percent-encoded.
fn alternate_url(url: &str, out: &mut String) {
    for c in trim(url).chars() {
        if c == ' ' || c == '"' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
}

/// One key's copies while the grouping sort is read: the key hash, the
/// kept channel, and the (id, stream URL) of each dropped copy.
type Group = (u64, OwnedChannel, Vec<(u64, String)>);

/// Whole-playlist duplicate removal over the spill store (see the module
/// docs): channels go in as they are filtered, and come out deduplicated,
/// in arrival order, once the input has ended.
pub struct PlaylistDedup {
    dedup: Dedup,
    phase: Phase,
    policy: StorePolicy,
    tier: Tier,
    plain_budget: u64,
    batch_size: usize,
    stats: Vec<HoldStats>,
}

enum Phase {
    Collecting(ExternalSorter),
    Emitting(SortedBatches),
    Done,
}

impl PlaylistDedup {
    /// An empty whole-playlist dedup holding in the store as `policy` and
    /// the tier plan say.
    pub fn new(
        dedup: Dedup,
        policy: StorePolicy,
        tier: Tier,
        plain_budget: u64,
        batch_size: usize,
    ) -> PlaylistDedup {
        let key_of = dedup.clone();
        let grouping = ExternalSorter::by(
            "inmemory_filter (dedup)",
            Arc::new(move |channel: &OwnedChannel| key_of.group_key(channel)),
            policy.clone(),
            tier,
            plain_budget,
        );
        PlaylistDedup {
            dedup,
            phase: Phase::Collecting(grouping),
            policy,
            tier,
            plain_budget,
            batch_size,
            stats: Vec::new(),
        }
    }

    /// Takes a batch (already filtered).
    ///
    /// # Errors
    /// The store cannot take it.
    pub fn push(&mut self, batch: Vec<OwnedChannel>, level: MemoryPressureLevel) -> Result<()> {
        let Phase::Collecting(sorter) = &mut self.phase else {
            return Err(Error::config(
                "dedup: a batch arrived after the input ended",
            ));
        };
        sorter.push(batch, level)
    }

    /// The next deduplicated batch, in arrival order; `None` at the end.
    ///
    /// # Errors
    /// The store fails.
    pub fn pop(&mut self, level: MemoryPressureLevel) -> Result<Option<Vec<OwnedChannel>>> {
        if let Phase::Collecting(_) = self.phase {
            self.decide(level)?;
        }
        match &mut self.phase {
            Phase::Emitting(sorted) => {
                let next = sorted.next_batch()?;
                if next.is_none() {
                    self.stats.push(sorted.stats().clone());
                    self.phase = Phase::Done;
                }
                Ok(next)
            }
            Phase::Collecting(_) | Phase::Done => Ok(None),
        }
    }

    /// Groups copies (sorted by key), keeps one per group, and sorts the
    /// survivors back into arrival order.
    fn decide(&mut self, level: MemoryPressureLevel) -> Result<()> {
        let Phase::Collecting(grouping) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        let mut groups = grouping.finish(self.batch_size)?;
        let mut survivors = ExternalSorter::by(
            "inmemory_filter (dedup, arrival order)",
            Arc::new(by_id),
            self.policy.clone(),
            self.tier,
            self.plain_budget,
        );
        let mut kept: Vec<OwnedChannel> = Vec::with_capacity(self.batch_size);
        let mut current: Option<Group> = None;
        while let Some(batch) = groups.next_batch()? {
            for channel in batch {
                let key = self.dedup.group_key(&channel);
                match &mut current {
                    Some((group, _, alternates)) if *group == key[0] => {
                        if self.dedup.merge_alternates {
                            alternates.push((channel.id, channel.stream_url.to_string()));
                            if alternates.len() >= 4 * MAX_ALTERNATES {
                                // Keep the earliest copies only: memory
                                // stays bounded however many copies a key has.
                                alternates.sort_unstable_by_key(|(id, _)| *id);
                                alternates.truncate(MAX_ALTERNATES);
                            }
                        }
                    }
                    _ => {
                        if let Some(done) = current.take() {
                            kept.push(self.finish_group(done));
                        }
                        current = Some((key[0], channel, Vec::new()));
                    }
                }
            }
            if kept.len() >= self.batch_size {
                survivors.push(std::mem::take(&mut kept), level)?;
            }
        }
        if let Some(done) = current.take() {
            kept.push(self.finish_group(done));
        }
        survivors.push(kept, level)?;
        self.stats.push(groups.stats().clone());
        self.phase = Phase::Emitting(survivors.finish(self.batch_size)?);
        Ok(())
    }

    /// The kept channel of a group, with its copies' URLs if asked.
    fn finish_group(&self, (_, mut kept, mut dropped): Group) -> OwnedChannel {
        if !self.dedup.merge_alternates || dropped.is_empty() {
            return kept;
        }
        dropped.sort_unstable_by_key(|(id, _)| *id);
        dropped.truncate(MAX_ALTERNATES);
        // Copies in arrival order; each URL once; not the kept one's own.
        let own = trim(&kept.stream_url).to_string();
        let mut seen = HashSet::new();
        let mut value = String::new();
        for (_, url) in &dropped {
            let url = trim(url);
            if url.is_empty() || url == own || !seen.insert(url.to_string()) {
                continue;
            }
            if !value.is_empty() {
                value.push(' ');
            }
            alternate_url(url, &mut value);
        }
        if value.is_empty() {
            return kept;
        }
        kept.attributes
            .retain(|attribute| attribute.name != ALTERNATES_ATTRIBUTE);
        kept.attributes.push(Attribute {
            name: ALTERNATES_ATTRIBUTE.into(),
            value: value.into(),
        });
        kept
    }

    /// What deduplicating held (the grouping sort and the arrival-order
    /// sort).
    pub fn stats(&self) -> Vec<HoldStats> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Channel;
    use crate::store::test_support::policy;

    fn channel(id: u64, tvg_id: &str, name: &str, url: &str) -> OwnedChannel {
        Channel {
            id,
            tvg_id: tvg_id.to_string().into(),
            channel_name: name.to_string().into(),
            stream_url: url.to_string().into(),
            ..Channel::default()
        }
    }

    fn dedup(key: &str, keep: &str, merge_alternates: bool) -> Dedup {
        Dedup::parse(&DedupConfig {
            key: key.into(),
            keep: keep.into(),
            merge_alternates,
        })
        .unwrap()
    }

    #[test]
    fn names_are_normalized_like_the_plugin_does() {
        let mut out = String::new();
        normalize_name("BBC One HD (1080p) [Geo-blocked]", &mut out);
        assert_eq!(out, "bbcone");
        out.clear();
        normalize_name("Canal+ 4K", &mut out);
        assert_eq!(out, "canal");
        assert_eq!(resolution_rank("BBC One FHD (720p)"), 3);
        assert_eq!(resolution_rank("Plain"), 0);
        let by_name = dedup("name", "first", false);
        assert_eq!(
            by_name.key_hash(&channel(1, "", "BBC One HD", "a")),
            by_name.key_hash(&channel(2, "", "bbc one (backup)", "b"))
        );
        assert_eq!(by_name.key_hash(&channel(3, "", "[HD]", "c")), None);
    }

    #[test]
    fn bad_settings_say_what_is_allowed() {
        let bad = |key: &str, keep: &str| {
            Dedup::parse(&DedupConfig {
                key: key.into(),
                keep: keep.into(),
                merge_alternates: false,
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad("tvg", "first").contains("use tvg_id, name, url"));
        assert!(bad("url+url", "first").contains("twice"));
        assert!(bad("url", "last").contains("use first or best"));
    }

    #[test]
    fn streaming_keeps_the_first_copy_of_the_run() {
        let by_id = dedup("tvg_id", "first", false);
        let mut seen = HashSet::new();
        let mut first = vec![channel(1, "a", "A", "u1"), channel(2, " A ", "A2", "u2")];
        by_id.retain_first(&mut first, &mut seen);
        let mut second = vec![channel(3, "a", "A3", "u3"), channel(4, "", "x", "u4")];
        by_id.retain_first(&mut second, &mut seen);
        assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), [1]);
        assert_eq!(second.iter().map(|c| c.id).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn the_whole_playlist_keeps_the_best_copy_and_lists_the_others_in_every_tier() {
        let spill = tempfile::tempdir().unwrap();
        // Copies of "a" in the first and the last batch; the best (1080p)
        // in the middle; a keyless channel; a copy with the kept URL.
        let batches = vec![
            vec![
                channel(1, "a", "A SD", "http://one/a"),
                channel(2, "b", "B", "http://b"),
            ],
            vec![
                channel(3, "", "No id", "http://n"),
                channel(4, "A", "A 1080p", "http://two/a"),
            ],
            vec![
                channel(5, "a", "A 720p", "http://three/a x"),
                channel(6, "a", "A", "http://two/a"),
            ],
        ];
        for tier in [Tier::Plain, Tier::Compressed, Tier::Disk] {
            let mut whole = PlaylistDedup::new(
                dedup("tvg_id", "best", true),
                policy(spill.path()),
                tier,
                u64::MAX,
                2,
            );
            for batch in &batches {
                whole
                    .push(batch.clone(), MemoryPressureLevel::Optimal)
                    .unwrap();
            }
            let out: Vec<OwnedChannel> =
                std::iter::from_fn(|| whole.pop(MemoryPressureLevel::Optimal).unwrap())
                    .flatten()
                    .collect();
            assert_eq!(
                out.iter().map(|c| c.id).collect::<Vec<_>>(),
                [2, 3, 4],
                "{tier:?}"
            );
            let alternates = out[2]
                .attributes
                .iter()
                .find(|a| a.name == ALTERNATES_ATTRIBUTE)
                .map(|a| a.value.to_string());
            assert_eq!(
                alternates.as_deref(),
                Some("http://one/a http://three/a%20x"),
                "{tier:?}"
            );
            assert!(out[0].attributes.is_empty());
            assert_eq!(whole.stats().len(), 2);
        }
    }

    #[test]
    fn keep_first_over_the_whole_playlist_is_the_earliest_copy() {
        let spill = tempfile::tempdir().unwrap();
        let mut whole = PlaylistDedup::new(
            dedup("url", "first", false),
            policy(spill.path()),
            Tier::Disk,
            0,
            10,
        );
        whole
            .push(
                vec![
                    channel(1, "", "x 4K", "u"),
                    channel(2, "", "y", "v"),
                    channel(3, "", "z HD", "u"),
                ],
                MemoryPressureLevel::Optimal,
            )
            .unwrap();
        let out: Vec<u64> = std::iter::from_fn(|| whole.pop(MemoryPressureLevel::Optimal).unwrap())
            .flatten()
            .map(|c| c.id)
            .collect();
        assert_eq!(out, [1, 2]);
    }
}
