//! The deduplication logic of the `dedup` plugin, free of SDK types: key
//! normalisation, resolution rank, the exact key set, the Bloom filter and
//! the keep decision. It uses only `core` and `alloc`, so a benchmark or a
//! test can compile this very file natively:
//!
//! ```ignore
//! #[path = "../plugins/dedup/src/logic.rs"]
//! mod dedup_logic;
//! use dedup_logic::{Config, Decision, Dedup, Fields};
//!
//! let mut dedup = Dedup::new(Config::default());
//! dedup.start_run(0); // memory pressure level, 0 = Optimal … 4 = Emergency
//! let batch = [Fields { tvg_id: "a.b", name: "A", url: "http://x/1" }];
//! let mut decisions = Vec::new();
//! dedup.decide_batch(&batch, &mut decisions);
//! assert_eq!(decisions, [Decision::Keep]);
//! ```
//!
//! `merge_alternates` splits that call in two: [`Dedup::plan_batch`] decides
//! without remembering anything (a dry run, made at data_mapping and again at
//! filtering) and [`Dedup::commit_batch`] remembers the planned batch's keys
//! (at filtering). [`alternate_urls`] turns a plan into the
//! `x-alternate-urls` values, and [`merge_matches`] tells whether the
//! filtering stage's decisions are the ones the attributes were made from.
//!
//! Keys are never stored as strings: each normalised key is reduced to a
//! 64-bit hash (MurmurHash64A), and the "exact" set stores those hashes.
//! Two different keys with the same hash would make the later one a false
//! duplicate; for n distinct keys that happens with probability about
//! n² / 2⁶⁵ (1e4 keys: 3e-12, 1e6 keys: 3e-8).

extern crate alloc;

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Default of `bloom_false_positive_rate`.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.001;
/// Default of `expected_channels`.
pub const DEFAULT_EXPECTED_CHANNELS: u64 = 1_000_000;
/// Memory pressure level (wire number of `MemoryPressureLevel::High`) from
/// which `mode = "auto"` starts a run with the Bloom filter.
pub const PRESSURE_HIGH: u32 = 2;
/// Smallest `bloom_false_positive_rate` accepted.
pub const MIN_FALSE_POSITIVE_RATE: f64 = 1e-12;
/// Largest Bloom filter `init` accepts, in bytes (a 32-bit plugin could not
/// hold much more beside its arena; `max_memory_per_plugin` must hold it too).
pub const MAX_BLOOM_BYTES: u64 = 512 << 20;

/// Quality tags: removed from names for `key = "name"`, and the resolution
/// rank they stand for (`keep = "best"`). Compared ASCII-case-insensitively
/// with whole alphanumeric words.
pub const QUALITY_TAGS: [(&str, u8); 14] = [
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

/// Which fields make the duplicate key (`key = "tvg_id+url"` sets two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// `tvg_id`: trimmed, ASCII-lowercased tvg-id.
    pub tvg_id: bool,
    /// `name`: the channel name, normalised by [`normalize_name`].
    pub name: bool,
    /// `url`: the trimmed stream URL.
    pub url: bool,
}

impl KeySpec {
    /// The default key: tvg-id only.
    pub const TVG_ID: KeySpec = KeySpec {
        tvg_id: true,
        name: false,
        url: false,
    };

    /// Parses `tvg_id`, `name`, `url` or a `+`-joined combination of them
    /// (spaces around the parts are ignored, each part at most once).
    ///
    /// # Errors
    /// A message that says what is allowed.
    pub fn parse(text: &str) -> Result<KeySpec, String> {
        let invalid = |why: &str| {
            format!(
                "dedup: key = {text:?} is not valid ({why}); use tvg_id, name, url, \
                 or a combination joined with + such as \"tvg_id+url\""
            )
        };
        let mut spec = KeySpec {
            tvg_id: false,
            name: false,
            url: false,
        };
        for part in text.split('+') {
            let flag = match part.trim() {
                "tvg_id" => &mut spec.tvg_id,
                "name" => &mut spec.name,
                "url" => &mut spec.url,
                "" => return Err(invalid("empty part")),
                _ => return Err(invalid(&format!("unknown field {:?}", part.trim()))),
            };
            if *flag {
                return Err(invalid(&format!("{:?} appears twice", part.trim())));
            }
            *flag = true;
        }
        Ok(spec)
    }
}

/// Which of several duplicates is kept (`keep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The first one seen (default).
    First,
    /// The one with the highest [`resolution_rank`] in its batch; ties keep
    /// the earlier one.
    Best,
}

/// Which structure remembers the keys seen (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Exact set below [`PRESSURE_HIGH`], Bloom filter from it on; an exact
    /// set that reaches `expected_channels` keys moves into a Bloom filter.
    Auto,
    /// Always the exact set of 64-bit key hashes.
    Exact,
    /// Always the Bloom filter.
    Bloom,
    /// The host's key set (`claim_keys`): per run in the host's memory, or
    /// in Redis shared by every proxy instance of one namespace when the
    /// host has `[store.redis]`. `keep = "first"` only.
    Shared,
}

/// The structure a run actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// Exact set of 64-bit key hashes.
    Exact,
    /// Bloom filter.
    Bloom,
}

/// The plugin's configuration (`[plugins.dedup]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `key`, default `tvg_id`.
    pub key: KeySpec,
    /// `keep`, default `first`.
    pub keep: Keep,
    /// `merge_alternates`, default `false`.
    pub merge_alternates: bool,
    /// `mode`, default `auto`.
    pub mode: Mode,
    /// `bloom_false_positive_rate`, default 0.001.
    pub bloom_false_positive_rate: f64,
    /// `expected_channels`, default 1 000 000.
    pub expected_channels: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key: KeySpec::TVG_ID,
            keep: Keep::First,
            merge_alternates: false,
            mode: Mode::Auto,
            bloom_false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE,
            expected_channels: DEFAULT_EXPECTED_CHANNELS,
        }
    }
}

impl Config {
    /// Reads every key through `get` (which returns the value as text, or
    /// `None` when the key is not set); unset keys take their defaults.
    ///
    /// # Errors
    /// A message naming the key, the bad value and what is allowed.
    pub fn from_lookup(mut get: impl FnMut(&str) -> Option<String>) -> Result<Config, String> {
        let mut config = Config::default();
        if let Some(key) = get("key") {
            config.key = KeySpec::parse(&key)?;
        }
        if let Some(keep) = get("keep") {
            config.keep = match keep.trim() {
                "first" => Keep::First,
                "best" => Keep::Best,
                _ => {
                    return Err(format!(
                        "dedup: keep = {keep:?} is not valid; use \"first\" or \"best\""
                    ))
                }
            };
        }
        if let Some(merge) = get("merge_alternates") {
            config.merge_alternates = match merge.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(format!(
                        "dedup: merge_alternates = {merge:?} is not valid; use true or false"
                    ))
                }
            };
        }
        if let Some(mode) = get("mode") {
            config.mode = match mode.trim() {
                "auto" => Mode::Auto,
                "exact" => Mode::Exact,
                "bloom" => Mode::Bloom,
                "shared" => Mode::Shared,
                _ => {
                    return Err(format!(
                        "dedup: mode = {mode:?} is not valid; use \"auto\", \"exact\", \
                         \"bloom\" or \"shared\""
                    ))
                }
            };
        }
        if let Some(rate) = get("bloom_false_positive_rate") {
            config.bloom_false_positive_rate = match rate.trim().parse::<f64>() {
                Ok(p) if (MIN_FALSE_POSITIVE_RATE..1.0).contains(&p) => p,
                _ => {
                    return Err(format!(
                        "dedup: bloom_false_positive_rate = {rate:?} is not valid; use a number \
                         from {MIN_FALSE_POSITIVE_RATE:e} up to (not including) 1, e.g. 0.001"
                    ))
                }
            };
        }
        if let Some(expected) = get("expected_channels") {
            config.expected_channels = match expected.trim().parse::<u64>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                        "dedup: expected_channels = {expected:?} is not valid; use a whole \
                         number of at least 1, e.g. 1000000"
                    ))
                }
            };
        }
        if config.mode == Mode::Shared && (config.keep != Keep::First || config.merge_alternates) {
            return Err(
                "dedup: mode = \"shared\" keeps the first copy each proxy instance \
                        claims: it takes keep = \"first\" without merge_alternates"
                    .to_string(),
            );
        }
        let bloom_bytes =
            Bloom::size_bytes(config.expected_channels, config.bloom_false_positive_rate);
        if bloom_bytes > MAX_BLOOM_BYTES {
            return Err(format!(
                "dedup: a Bloom filter for expected_channels = {} at \
                 bloom_false_positive_rate = {} needs {bloom_bytes} bytes, more than the \
                 {MAX_BLOOM_BYTES} bytes allowed; lower expected_channels or raise the rate",
                config.expected_channels, config.bloom_false_positive_rate
            ));
        }
        Ok(config)
    }
}

/// The fields of one channel that keys are made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    /// `tvg-id`.
    pub tvg_id: &'a str,
    /// The channel name (the title after the EXTINF comma).
    pub name: &'a str,
    /// The stream URL.
    pub url: &'a str,
}

/// What happens to one channel of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Kept (a first occurrence, or a channel with an empty key).
    Keep,
    /// Dropped as a duplicate. `kept` is the index, in the same batch, of the
    /// channel it duplicates, when that one is in this batch and the decision
    /// tracked it ([`Dedup::plan_batch`] always does; `decide_batch` does
    /// unless `keep = "first"` without `merge_alternates`); `None` when the
    /// key was seen in an earlier batch (or not tracked).
    Drop {
        /// Index of the kept duplicate in this batch.
        kept: Option<u32>,
    },
}

impl Decision {
    /// True for [`Decision::Keep`].
    pub fn is_keep(self) -> bool {
        matches!(self, Decision::Keep)
    }
}

/// The attribute `merge_alternates` sets on a kept channel: the stream URLs
/// of the copies dropped in favour of it in the same batch.
pub const ALTERNATES_ATTRIBUTE: &str = "x-alternate-urls";

/// Separates the URLs in [`ALTERNATES_ATTRIBUTE`]: one space (a URL has no
/// raw space; see [`alternate_urls`] for the rare one that does).
pub const ALTERNATES_SEPARATOR: char = ' ';

/// The [`ALTERNATES_ATTRIBUTE`] values of one batch: `out` is cleared and
/// gets `(index, value)` for every channel that `decisions` (from
/// [`Dedup::plan_batch`] over `batch`) keeps and that has copies dropped in
/// favour of it (`Decision::Drop { kept: Some(index) }`), in index order.
/// The value lists the copies' trimmed stream URLs in arrival order,
/// joined by [`ALTERNATES_SEPARATOR`], each URL once, without empty URLs
/// and without the kept channel's own (trimmed) URL; a kept channel left
/// with no URL gets no entry. Inside a URL, a space, an ASCII control
/// character or `"` is written percent-encoded (`%20`, `%09`, `%22`, …),
/// so the value always splits back into the URLs at the separator.
pub fn alternate_urls(batch: &[Fields<'_>], decisions: &[Decision], out: &mut Vec<(u32, String)>) {
    out.clear();
    let mut drops: Vec<(u32, u32)> = decisions
        .iter()
        .zip(batch)
        .enumerate()
        .filter_map(|(index, (decision, _))| match decision {
            Decision::Drop { kept: Some(kept) } => Some((*kept, index as u32)),
            _ => None,
        })
        .collect();
    if drops.is_empty() {
        return;
    }
    // By kept channel, then by arrival.
    drops.sort_unstable();
    let mut listed: BTreeSet<&str> = BTreeSet::new();
    for group in drops.chunk_by(|a, b| a.0 == b.0) {
        let kept = group[0].0;
        let Some(own) = batch.get(kept as usize) else {
            continue;
        };
        let own = trim(own.url);
        listed.clear();
        let mut value = String::new();
        for &(_, index) in group {
            let url = trim(batch[index as usize].url);
            if url.is_empty() || url == own || !listed.insert(url) {
                continue;
            }
            if !value.is_empty() {
                value.push(ALTERNATES_SEPARATOR);
            }
            push_url(&mut value, url);
        }
        if !value.is_empty() {
            out.push((kept, value));
        }
    }
}

/// Appends `url` with spaces, ASCII control characters and `"` percent-encoded.
fn push_url(out: &mut String, url: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for c in url.chars() {
        if c == ' ' || c == '"' || c.is_ascii_control() {
            let byte = c as u8;
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push(c);
        }
    }
}

/// Whether the attributes written from `mapped` (a dry run at data_mapping,
/// [`Dedup::plan_batch`]) are exactly what `filtered` (the decisions that
/// are committed at filtering, for the same channels) calls for on every
/// channel `filtered` keeps: each copy `filtered` drops in favour of a kept
/// channel was dropped in favour of that same channel in `mapped`, and no
/// copy `mapped` merged into a channel that `filtered` keeps is anything
/// else in `filtered`. Copies of keys of earlier batches may differ (a
/// channel they were merged into is dropped too). False when the lengths
/// differ.
pub fn merge_matches(mapped: &[Decision], filtered: &[Decision]) -> bool {
    mapped.len() == filtered.len()
        && mapped
            .iter()
            .zip(filtered)
            .all(|(&mapped_decision, &filtered_decision)| {
                if mapped_decision == filtered_decision {
                    return true;
                }
                match (mapped_decision, filtered_decision) {
                    (_, Decision::Drop { kept: Some(_) }) => false,
                    (Decision::Drop { kept: Some(kept) }, _) => !filtered
                        .get(kept as usize)
                        .is_some_and(|decision| decision.is_keep()),
                    _ => true,
                }
            })
}

/// Trims ASCII whitespace (space, `\t`, `\n`, `\x0C`, `\r`) from both ends.
pub fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// Appends the normalised tvg-id to `out`: trimmed, ASCII-lowercased.
pub fn normalize_tvg_id(tvg_id: &str, out: &mut String) {
    for c in trim(tvg_id).chars() {
        out.push(c.to_ascii_lowercase());
    }
}

/// Appends the normalised name to `out`: the name lowercased character by
/// character (`char::to_lowercase`), everything inside `(…)` and `[…]`
/// removed (nesting counted, an unclosed bracket runs to the end), the rest
/// split into words at every non-alphanumeric character, words that are
/// quality tags ([`QUALITY_TAGS`]) dropped, and the remaining words
/// concatenated. "BBC One HD (1080p)" becomes "bbcone".
pub fn normalize_name(name: &str, out: &mut String) {
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
        end_word(out, word_start);
        word_start = out.len();
    }
    end_word(out, word_start);
}

/// Drops the word `out[word_start..]` if it is a quality tag.
fn end_word(out: &mut String, word_start: usize) {
    if is_quality_tag(&out[word_start..]) {
        out.truncate(word_start);
    }
}

fn is_quality_tag(word: &str) -> bool {
    !word.is_empty()
        && QUALITY_TAGS
            .iter()
            .any(|(tag, _)| tag.eq_ignore_ascii_case(word))
}

/// The resolution rank of a channel name: the highest rank of any whole
/// word (brackets included) that is a quality tag: 4 for 4K/2160p/UHD,
/// 3 for 1080p/1080i/FHD/FullHD, 2 for 720p/HD, 1 for SD/576p/576i/480p/480i,
/// 0 when none appears.
pub fn resolution_rank(name: &str) -> u8 {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .filter_map(|word| {
            QUALITY_TAGS
                .iter()
                .find(|(tag, _)| tag.eq_ignore_ascii_case(word))
                .map(|(_, rank)| *rank)
        })
        .max()
        .unwrap_or(0)
}

/// MurmurHash64A of `data` with `seed`.
pub fn hash_bytes(seed: u64, data: &[u8]) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let mut k = u64::from_le_bytes(word);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = 0u64;
        for (i, byte) in rest.iter().enumerate() {
            tail |= u64::from(*byte) << (8 * i);
        }
        h ^= tail;
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// A second, independent-looking 64-bit value derived from a hash (the
/// splitmix64 finaliser), for the Bloom filter's double hashing.
fn remix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Natural logarithm for `x > 0` (finite, normal), using only `core`:
/// exponent from the bits, mantissa by the atanh series.
pub fn ln(x: f64) -> f64 {
    const LN_2: f64 = core::f64::consts::LN_2;
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let s = (mantissa - 1.0) / (mantissa + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut n = 1.0;
    for _ in 0..20 {
        sum += term / n;
        term *= s2;
        n += 2.0;
    }
    exponent as f64 * LN_2 + 2.0 * sum
}

/// An open-addressing set of 64-bit hashes (linear probing, at most 3/4
/// full, 8 bytes per slot). Hash 0 marks an empty slot and is stored as 1.
#[derive(Clone, Debug)]
pub struct HashSet64 {
    slots: Vec<u64>,
    len: usize,
}

impl Default for HashSet64 {
    fn default() -> Self {
        HashSet64::new()
    }
}

impl HashSet64 {
    const INITIAL_SLOTS: usize = 1024;

    /// An empty set (1024 slots, 8 KiB).
    pub fn new() -> HashSet64 {
        HashSet64 {
            slots: vec![0; Self::INITIAL_SLOTS],
            len: 0,
        }
    }

    /// Number of hashes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the slot table.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * 8
    }

    fn slot_of(slots: &[u64], hash: u64) -> usize {
        let mask = slots.len() - 1;
        let mut index = (hash as usize) & mask;
        loop {
            let slot = slots[index];
            if slot == hash || slot == 0 {
                return index;
            }
            index = (index + 1) & mask;
        }
    }

    /// True if `hash` is in the set.
    pub fn contains(&self, hash: u64) -> bool {
        let hash = hash.max(1);
        self.slots[Self::slot_of(&self.slots, hash)] == hash
    }

    /// Adds `hash`; true if it was not there before.
    pub fn insert(&mut self, hash: u64) -> bool {
        let hash = hash.max(1);
        let index = Self::slot_of(&self.slots, hash);
        if self.slots[index] == hash {
            return false;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
            let index = Self::slot_of(&self.slots, hash);
            self.slots[index] = hash;
        } else {
            self.slots[index] = hash;
        }
        self.len += 1;
        true
    }

    fn grow(&mut self) {
        let mut slots = vec![0u64; self.slots.len() * 2];
        for &hash in self.slots.iter().filter(|&&h| h != 0) {
            let index = Self::slot_of(&slots, hash);
            slots[index] = hash;
        }
        self.slots = slots;
    }

    /// Every hash held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().copied().filter(|&h| h != 0)
    }
}

/// A Bloom filter over 64-bit key hashes: `m` bits, `k` probes by double
/// hashing (`h1 + i·h2 mod m`, `h2` derived from the hash).
#[derive(Clone, Debug)]
pub struct Bloom {
    bits: Vec<u64>,
    m: u64,
    k: u32,
}

impl Bloom {
    /// Bits for `n` keys at false-positive rate `p`: ⌈n · ln(1/p) / ln²2⌉,
    /// at least 64.
    pub fn size_bits(n: u64, p: f64) -> u64 {
        let ln2 = core::f64::consts::LN_2;
        let bits = n as f64 * -ln(p) / (ln2 * ln2);
        let whole = bits as u64;
        let bits = if (whole as f64) < bits {
            whole + 1
        } else {
            whole
        };
        bits.max(64)
    }

    /// Bytes of the bit array for `n` keys at rate `p`.
    pub fn size_bytes(n: u64, p: f64) -> u64 {
        Self::size_bits(n, p).div_ceil(64) * 8
    }

    /// Probes per key: round(m/n · ln 2), between 1 and 30.
    pub fn probes(n: u64, p: f64) -> u32 {
        let m = Self::size_bits(n, p);
        let k = m as f64 / n as f64 * core::f64::consts::LN_2 + 0.5;
        (k as u32).clamp(1, 30)
    }

    /// A filter sized for `expected` keys at false-positive rate `p`.
    pub fn with_rate(expected: u64, p: f64) -> Bloom {
        let m = Self::size_bits(expected, p);
        Bloom {
            bits: vec![0; m.div_ceil(64) as usize],
            m,
            k: Self::probes(expected, p),
        }
    }

    /// Number of bits.
    pub fn bits(&self) -> u64 {
        self.m
    }

    /// Number of probes per key.
    pub fn probe_count(&self) -> u32 {
        self.k
    }

    /// Bytes of the bit array.
    pub fn memory_bytes(&self) -> usize {
        self.bits.len() * 8
    }

    fn positions(&self, hash: u64) -> impl Iterator<Item = u64> {
        let (m, k) = (self.m, self.k);
        let h2 = remix(hash) | 1;
        (0..u64::from(k)).map(move |i| hash.wrapping_add(i.wrapping_mul(h2)) % m)
    }

    /// True if `hash` may have been inserted (false positives possible,
    /// false negatives not).
    pub fn contains(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Adds `hash`; true if every bit was already set (it may have been seen).
    pub fn insert(&mut self, hash: u64) -> bool {
        let mut present = true;
        let (m, k) = (self.m, self.k);
        let h2 = remix(hash) | 1;
        for i in 0..u64::from(k) {
            let bit = hash.wrapping_add(i.wrapping_mul(h2)) % m;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if self.bits[word] & mask == 0 {
                present = false;
                self.bits[word] |= mask;
            }
        }
        present
    }
}

/// The keys seen so far in this run.
#[derive(Clone, Debug)]
enum Seen {
    Exact(HashSet64),
    Bloom(Bloom),
}

/// Per-batch map from key hash to the index of the channel kept for it
/// (open addressing, cleared per batch).
#[derive(Clone, Debug, Default)]
struct BatchMap {
    slots: Vec<(u64, u32)>,
}

impl BatchMap {
    fn reset(&mut self, channels: usize) {
        let size = (channels * 2).next_power_of_two().max(16);
        self.slots.clear();
        self.slots.resize(size, (0, u32::MAX));
    }

    /// The slot for `hash` (occupied by it, or empty).
    fn slot(&mut self, hash: u64) -> &mut (u64, u32) {
        let mask = self.slots.len() - 1;
        let mut index = (hash as usize) & mask;
        while self.slots[index].1 != u32::MAX && self.slots[index].0 != hash {
            index = (index + 1) & mask;
        }
        &mut self.slots[index]
    }
}

/// The deduplicator: remembers the keys of one pipeline run and decides per
/// batch which channels to keep.
#[derive(Clone, Debug)]
pub struct Dedup {
    config: Config,
    seen: Seen,
    started: bool,
    key_buffer: String,
    hashes: Vec<Option<u64>>,
    earlier: Vec<bool>,
    batch_map: BatchMap,
    /// `hashes` holds a planned batch that is not committed yet.
    planned: bool,
}

impl Dedup {
    /// A deduplicator for `config`; [`Dedup::start_run`] picks the structure.
    pub fn new(config: Config) -> Dedup {
        Dedup {
            config,
            seen: Seen::Exact(HashSet64::new()),
            started: false,
            key_buffer: String::new(),
            hashes: Vec::new(),
            earlier: Vec::new(),
            batch_map: BatchMap::default(),
            planned: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Forgets every key and chooses the structure for a new run from the
    /// memory pressure level (0 = Optimal … 4 = Emergency): `auto` uses the
    /// exact set below [`PRESSURE_HIGH`], the Bloom filter from it on.
    pub fn start_run(&mut self, pressure_level: u32) {
        let bloom = match self.config.mode {
            Mode::Exact | Mode::Shared => false,
            Mode::Bloom => true,
            Mode::Auto => pressure_level >= PRESSURE_HIGH,
        };
        self.seen = if bloom {
            Seen::Bloom(self.new_bloom())
        } else {
            Seen::Exact(HashSet64::new())
        };
        self.started = true;
        self.planned = false;
    }

    fn new_bloom(&self) -> Bloom {
        Bloom::with_rate(
            self.config.expected_channels,
            self.config.bloom_false_positive_rate,
        )
    }

    /// The structure in use.
    pub fn structure(&self) -> Structure {
        match self.seen {
            Seen::Exact(_) => Structure::Exact,
            Seen::Bloom(_) => Structure::Bloom,
        }
    }

    /// Distinct keys held by the exact set (`None` for the Bloom filter).
    pub fn exact_len(&self) -> Option<usize> {
        match &self.seen {
            Seen::Exact(set) => Some(set.len()),
            Seen::Bloom(_) => None,
        }
    }

    /// Bytes held by the key structure.
    pub fn memory_bytes(&self) -> usize {
        match &self.seen {
            Seen::Exact(set) => set.memory_bytes(),
            Seen::Bloom(bloom) => bloom.memory_bytes(),
        }
    }

    /// The channel's normalised key as text (its parts joined by U+001F),
    /// what `mode = "shared"` claims; `false` when the key is empty.
    pub fn key_text(&self, fields: Fields<'_>, out: &mut String) -> bool {
        let key = self.config.key;
        out.clear();
        let part = |out: &mut String, write: &dyn Fn(&mut String)| {
            if !out.is_empty() {
                out.push('\u{1f}');
            }
            let start = out.len();
            write(out);
            out.len() > start
        };
        (!key.tvg_id || part(out, &|out| normalize_tvg_id(fields.tvg_id, out)))
            && (!key.name || part(out, &|out| normalize_name(fields.name, out)))
            && (!key.url || part(out, &|out| out.push_str(trim(fields.url))))
    }

    /// The 64-bit hash of the channel's normalised key, or `None` when the
    /// key is empty (any of its parts is empty after normalisation): such a
    /// channel is never a duplicate.
    pub fn key_hash(&mut self, fields: Fields<'_>) -> Option<u64> {
        let key = self.config.key;
        let mut hash = 0x6465_6475_705f_6b65; // "dedup_ke"
        if key.tvg_id {
            self.key_buffer.clear();
            normalize_tvg_id(fields.tvg_id, &mut self.key_buffer);
            if self.key_buffer.is_empty() {
                return None;
            }
            hash = hash_bytes(hash ^ 1, self.key_buffer.as_bytes());
        }
        if key.name {
            self.key_buffer.clear();
            normalize_name(fields.name, &mut self.key_buffer);
            if self.key_buffer.is_empty() {
                return None;
            }
            hash = hash_bytes(hash ^ 2, self.key_buffer.as_bytes());
        }
        if key.url {
            let url = trim(fields.url);
            if url.is_empty() {
                return None;
            }
            hash = hash_bytes(hash ^ 3, url.as_bytes());
        }
        Some(hash)
    }

    /// Adds `hash` to the run's keys; true if it was new (for the Bloom
    /// filter: not every bit was set). In `auto` mode an exact set that
    /// reaches `expected_channels` keys moves into a Bloom filter.
    fn remember(&mut self, hash: u64) -> bool {
        let new = match &mut self.seen {
            Seen::Exact(set) => set.insert(hash),
            Seen::Bloom(bloom) => !bloom.insert(hash),
        };
        if let Seen::Exact(set) = &self.seen {
            if self.config.mode == Mode::Auto && set.len() as u64 >= self.config.expected_channels {
                let mut bloom = self.new_bloom();
                for hash in set.iter() {
                    bloom.insert(hash);
                }
                self.seen = Seen::Bloom(bloom);
            }
        }
        new
    }

    fn seen_before(&self, hash: u64) -> bool {
        match &self.seen {
            Seen::Exact(set) => set.contains(hash),
            Seen::Bloom(bloom) => bloom.contains(hash),
        }
    }

    /// Decides one batch and commits it: `decisions` is cleared and gets one
    /// entry per channel, in order. Keys are remembered for the rest of the
    /// run, so a key kept in an earlier batch drops every later copy. With
    /// `keep = "first"` (and no merging) each channel is decided in one pass;
    /// otherwise this is [`Dedup::plan_batch`] followed by
    /// [`Dedup::commit_batch`].
    pub fn decide_batch(&mut self, batch: &[Fields<'_>], decisions: &mut Vec<Decision>) {
        if self.config.keep == Keep::First && !self.config.merge_alternates {
            if !self.started {
                self.start_run(0);
            }
            self.planned = false;
            decisions.clear();
            for &fields in batch {
                let decision = match self.key_hash(fields) {
                    Some(hash) if !self.remember(hash) => Decision::Drop { kept: None },
                    _ => Decision::Keep,
                };
                decisions.push(decision);
            }
            return;
        }
        self.plan_batch(batch, decisions);
        self.commit_batch();
    }

    /// Decides one batch against the keys of the earlier batches *without
    /// remembering anything* (a dry run): the same state and the same batch
    /// always give the same decisions. `decisions` is cleared and gets one
    /// entry per channel, in order. Duplicates *within the batch* are
    /// compared first: with `keep = "best"` the highest rank wins (ties keep
    /// the earlier), otherwise the first; `Decision::Drop { kept }` names the
    /// winner. A key of an earlier batch drops every copy (`kept: None`).
    /// [`Dedup::commit_batch`] then remembers this batch's keys.
    pub fn plan_batch(&mut self, batch: &[Fields<'_>], decisions: &mut Vec<Decision>) {
        if !self.started {
            self.start_run(0);
        }
        decisions.clear();
        let best = self.config.keep == Keep::Best;
        self.hashes.clear();
        self.earlier.clear();
        self.batch_map.reset(batch.len());
        for (index, &fields) in batch.iter().enumerate() {
            let hash = self.key_hash(fields);
            self.hashes.push(hash);
            let Some(hash) = hash else {
                self.earlier.push(false);
                continue;
            };
            let earlier = self.seen_before(hash);
            self.earlier.push(earlier);
            if earlier {
                continue;
            }
            let slot = self.batch_map.slot(hash);
            if slot.1 == u32::MAX {
                *slot = (hash, index as u32);
            } else if best
                && resolution_rank(fields.name) > resolution_rank(batch[slot.1 as usize].name)
            {
                slot.1 = index as u32;
            }
        }
        for index in 0..batch.len() {
            let decision = match self.hashes[index] {
                None => Decision::Keep,
                Some(_) if self.earlier[index] => Decision::Drop { kept: None },
                Some(hash) => {
                    let kept = self.batch_map.slot(hash).1;
                    if kept == index as u32 {
                        Decision::Keep
                    } else {
                        Decision::Drop { kept: Some(kept) }
                    }
                }
            };
            decisions.push(decision);
        }
        self.planned = true;
    }

    /// Remembers the keys of the batch last given to [`Dedup::plan_batch`],
    /// once: a second call, or a call without a plan (or after
    /// [`Dedup::decide_batch`] or [`Dedup::start_run`]), does nothing.
    pub fn commit_batch(&mut self) {
        if !core::mem::replace(&mut self.planned, false) {
            return;
        }
        for index in 0..self.hashes.len() {
            if let Some(hash) = self.hashes[index] {
                self.remember(hash);
            }
        }
    }
}
