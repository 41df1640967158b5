//! The logic of the `logo_mapper` plugin: mapping-table parsing, channel-name
//! normalisation, look-up and the logo-cache URL rewrite (SHA-256).
//!
//! This file depends only on `core`, `alloc` and the `sha2` crate (no SDK
//! type), so a native benchmark can compile the very same file with
//! `#[path = "../plugins/logo-mapper/src/logic.rs"] mod logo_logic;`.
//!
//! Entry points: [`LogoMapper::new`] builds the mapper from a config look-up
//! function, [`LogoMapper::map_channel`] answers per channel with the
//! [`Changes`] to apply.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sha2::{Digest, Sha256};

/// Name of the plugin, used in every error message.
pub const PLUGIN_NAME: &str = "logo_mapper";

/// A table may be split over `key`, `key_2`, …, `key_{MAX_TABLE_PARTS}`.
pub const MAX_TABLE_PARTS: usize = 16;

/// Path segment of the logo cache: logos become `{base}/logos/{sha256}`.
pub const LOGO_PATH: &str = "/logos/";

/// What the name table gives a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameEntry {
    /// Logo URL; empty when the entry gives none.
    pub logo: String,
    /// tvg-id; empty when the entry gives none.
    pub tvg_id: String,
}

/// The fields of one channel the mapper reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelFields<'a> {
    /// The title after the EXTINF comma.
    pub channel_name: &'a str,
    /// `tvg-name` (looked up when `channel_name` has no entry).
    pub tvg_name: &'a str,
    /// `tvg-id`.
    pub tvg_id: &'a str,
    /// `tvg-logo`.
    pub tvg_logo: &'a str,
}

/// New values for one channel; `None` leaves the field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New `tvg-id`.
    pub tvg_id: Option<String>,
    /// New `tvg-logo`.
    pub tvg_logo: Option<String>,
}

impl Changes {
    /// True when the channel stays as it is.
    pub fn is_empty(&self) -> bool {
        self.tvg_id.is_none() && self.tvg_logo.is_none()
    }
}

/// The configured mapper. `Default` is the mapper of an empty config: no
/// table, rewriting on with the proxy's base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoMapper {
    /// Normalised channel name → entry.
    by_name: BTreeMap<String, NameEntry>,
    /// Whether some name entry carries a tvg-id.
    name_ids: bool,
    /// ASCII-lowercased tvg-id → logo URL.
    by_id: BTreeMap<String, String>,
    overwrite_logo: bool,
    overwrite_tvg_id: bool,
    rewrite_logos: bool,
    /// Configured base without trailing `/`; `None` = the proxy's base URL.
    logo_base_url: Option<String>,
}

impl Default for LogoMapper {
    fn default() -> Self {
        LogoMapper {
            by_name: BTreeMap::new(),
            name_ids: false,
            by_id: BTreeMap::new(),
            overwrite_logo: false,
            overwrite_tvg_id: false,
            rewrite_logos: true,
            logo_base_url: None,
        }
    }
}

impl LogoMapper {
    /// Builds the mapper from the plugin's config: `get(key)` returns the
    /// value of `[plugins.logo_mapper] key` as text, or `None` when unset.
    ///
    /// # Errors
    /// A message naming the key (and table line) that is invalid.
    pub fn new(get: impl Fn(&str) -> Option<String>) -> Result<LogoMapper, String> {
        let mut mapper = LogoMapper {
            overwrite_logo: parse_bool(&get, "overwrite_logo", false)?,
            overwrite_tvg_id: parse_bool(&get, "overwrite_tvg_id", false)?,
            rewrite_logos: parse_bool(&get, "rewrite_logos", true)?,
            logo_base_url: parse_base(&get)?,
            ..LogoMapper::default()
        };
        // Where each key came from, for duplicate errors.
        let mut name_lines: BTreeMap<String, String> = BTreeMap::new();
        for (key, text) in table_parts(&get, "by_name")? {
            for (line_no, columns) in table_lines(&text) {
                let here = format!("{key} line {line_no}");
                if columns.len() < 2 || columns.len() > 3 {
                    return Err(format!(
                        "{PLUGIN_NAME}: {here}: expected `name | logo` or `name | logo | tvg-id`, \
                         found {} column(s)",
                        columns.len()
                    ));
                }
                let name = columns[0];
                let logo = columns[1];
                let tvg_id = columns.get(2).copied().unwrap_or("");
                if name.is_empty() {
                    return Err(format!("{PLUGIN_NAME}: {here}: the channel name is empty"));
                }
                if logo.is_empty() && tvg_id.is_empty() {
                    return Err(format!(
                        "{PLUGIN_NAME}: {here}: `{name}` gives neither a logo nor a tvg-id"
                    ));
                }
                check_value(&here, "logo", logo)?;
                check_value(&here, "tvg-id", tvg_id)?;
                let normalized = normalize_name(name);
                if let Some(first) = name_lines.get(&normalized) {
                    return Err(format!(
                        "{PLUGIN_NAME}: {here}: `{name}` normalises to `{normalized}`, \
                         like the entry on {first}"
                    ));
                }
                mapper.name_ids |= !tvg_id.is_empty();
                mapper.by_name.insert(
                    normalized.clone(),
                    NameEntry {
                        logo: logo.into(),
                        tvg_id: tvg_id.into(),
                    },
                );
                name_lines.insert(normalized, here);
            }
        }
        let mut id_lines: BTreeMap<String, String> = BTreeMap::new();
        for (key, text) in table_parts(&get, "by_id")? {
            for (line_no, columns) in table_lines(&text) {
                let here = format!("{key} line {line_no}");
                if columns.len() != 2 {
                    return Err(format!(
                        "{PLUGIN_NAME}: {here}: expected `tvg-id | logo`, found {} column(s)",
                        columns.len()
                    ));
                }
                let (tvg_id, logo) = (columns[0], columns[1]);
                if tvg_id.is_empty() || logo.is_empty() {
                    return Err(format!(
                        "{PLUGIN_NAME}: {here}: both the tvg-id and the logo must be non-empty"
                    ));
                }
                check_value(&here, "logo", logo)?;
                let key = tvg_id.to_ascii_lowercase();
                if let Some(first) = id_lines.get(&key) {
                    return Err(format!(
                        "{PLUGIN_NAME}: {here}: tvg-id `{tvg_id}` is already mapped on {first} \
                         (ids compare ASCII case-insensitively)"
                    ));
                }
                mapper.by_id.insert(key.clone(), logo.into());
                id_lines.insert(key, here);
            }
        }
        Ok(mapper)
    }

    /// Entries of the name table.
    pub fn name_entries(&self) -> usize {
        self.by_name.len()
    }

    /// Entries of the tvg-id table.
    pub fn id_entries(&self) -> usize {
        self.by_id.len()
    }

    /// Whether logo rewriting is on (`rewrite_logos`).
    pub fn rewrites_logos(&self) -> bool {
        self.rewrite_logos
    }

    /// The base logos are rewritten to, without trailing `/`: the configured
    /// `logo_base_url`, else `default_base` (the proxy's base URL). `None`
    /// when rewriting is off or both are empty.
    pub fn rewrite_base<'s>(&'s self, default_base: &'s str) -> Option<&'s str> {
        if !self.rewrite_logos {
            return None;
        }
        let base = match &self.logo_base_url {
            Some(base) => base.as_str(),
            None => default_base.trim().trim_end_matches('/'),
        };
        (!base.is_empty()).then_some(base)
    }

    /// The name-table entry for this channel: `channel_name` first, then
    /// `tvg_name`, both normalised with [`normalize_name`].
    pub fn name_entry(&self, channel: &ChannelFields<'_>) -> Option<&NameEntry> {
        if self.by_name.is_empty() {
            return None;
        }
        [channel.channel_name, channel.tvg_name]
            .into_iter()
            .map(normalize_name)
            .filter(|key| !key.is_empty())
            .find_map(|key| self.by_name.get(&key))
    }

    /// The logo the tvg-id table gives `tvg_id` (trimmed, ASCII
    /// case-insensitive).
    pub fn id_logo(&self, tvg_id: &str) -> Option<&str> {
        let tvg_id = tvg_id.trim();
        if self.by_id.is_empty() || tvg_id.is_empty() {
            return None;
        }
        self.by_id
            .get(&tvg_id.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// What changes for one channel; `default_base` is the proxy's base URL
    /// (`StageContext::base_url`), used when `logo_base_url` is unset.
    ///
    /// 1. tvg-id: if it is empty (after trimming) or `overwrite_tvg_id` is
    ///    on, and the name entry gives one, it becomes the entry's.
    /// 2. tvg-logo: if it is empty (after trimming) or `overwrite_logo` is
    ///    on, it becomes the tvg-id table's logo for the (new) tvg-id, else
    ///    the name entry's logo, if either exists.
    /// 3. The resulting logo is rewritten to `{base}/logos/{sha256}` when
    ///    rewriting is on, a base is known, the logo starts with `http://` or
    ///    `https://` (any case) and is not already under `{base}/logos/`.
    ///
    /// A field is reported only when its final value differs from the input.
    pub fn map_channel(&self, channel: &ChannelFields<'_>, default_base: &str) -> Changes {
        let want_id = self.name_ids && (self.overwrite_tvg_id || channel.tvg_id.trim().is_empty());
        let want_logo = (self.overwrite_logo || channel.tvg_logo.trim().is_empty())
            && !(self.by_name.is_empty() && self.by_id.is_empty());
        let entry = if want_id || want_logo {
            self.name_entry(channel)
        } else {
            None
        };
        let mut tvg_id = channel.tvg_id;
        if want_id {
            if let Some(entry) = entry.filter(|entry| !entry.tvg_id.is_empty()) {
                tvg_id = &entry.tvg_id;
            }
        }
        let mut logo = channel.tvg_logo;
        if want_logo {
            let from_table = self.id_logo(tvg_id).or_else(|| {
                entry
                    .filter(|entry| !entry.logo.is_empty())
                    .map(|entry| entry.logo.as_str())
            });
            if let Some(found) = from_table {
                logo = found;
            }
        }
        let rewritten = match self.rewrite_base(default_base) {
            Some(base) if should_rewrite(logo, base) => Some(cache_url(base, logo)),
            _ => None,
        };
        let tvg_logo = match rewritten {
            Some(url) => Some(url),
            None if logo != channel.tvg_logo => Some(String::from(logo)),
            None => None,
        };
        Changes {
            tvg_id: (tvg_id != channel.tvg_id).then(|| String::from(tvg_id)),
            tvg_logo,
        }
    }
}

/// The key a channel name is matched by:
///
/// 1. split at Unicode whitespace (surrounding and repeated whitespace go);
/// 2. drop every word that is a quality tag ([`is_quality_tag`]);
/// 3. lowercase every character (`char::to_lowercase`) and join the words
///    with one space.
///
/// If every word is a quality tag (a channel called "4K"), none is dropped.
/// `"  BBC One  HD "`, `"bbc one (1080p)"` and `"BBC ONE [FHD]"` all give
/// `"bbc one"`; `"BBC One+1"` gives `"bbc one+1"`.
pub fn normalize_name(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for word in name.split_whitespace().filter(|w| !is_quality_tag(w)) {
        push_lowercase_word(&mut key, word);
    }
    if key.is_empty() {
        for word in name.split_whitespace() {
            push_lowercase_word(&mut key, word);
        }
    }
    key
}

fn push_lowercase_word(key: &mut String, word: &str) {
    if !key.is_empty() {
        key.push(' ');
    }
    for c in word.chars() {
        key.extend(c.to_lowercase());
    }
}

/// Whether `word` is a quality tag, bare or in one pair of `()` or `[]`,
/// ASCII case-insensitive: `SD`, `HD`, `HQ`, `FHD`, `FullHD`, `QHD`, `UHD`,
/// `2K`, `4K`, `8K`, `HDR`, or 3–4 digits followed by `p` or `i` (`720p`,
/// `1080i`, `2160p`).
pub fn is_quality_tag(word: &str) -> bool {
    let inner = match word.as_bytes() {
        [b'(', .., b')'] | [b'[', .., b']'] => &word[1..word.len() - 1],
        _ => word,
    };
    const TAGS: [&str; 11] = [
        "sd", "hd", "hq", "fhd", "fullhd", "qhd", "uhd", "2k", "4k", "8k", "hdr",
    ];
    if TAGS.iter().any(|tag| inner.eq_ignore_ascii_case(tag)) {
        return true;
    }
    match inner.as_bytes() {
        [digits @ .., b'p' | b'P' | b'i' | b'I'] => {
            (3..=4).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// Lowercase hex SHA-256 of `bytes` (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// The logo-cache URL of `logo_url`: `{base}/logos/{sha256_hex(logo_url)}`,
/// hashing the URL's bytes exactly as given. The extension is not kept.
/// Trailing `/` of `base` are ignored.
pub fn cache_url(base: &str, logo_url: &str) -> String {
    let base = base.trim_end_matches('/');
    let hash = sha256_hex(logo_url.as_bytes());
    let mut url = String::with_capacity(base.len() + LOGO_PATH.len() + hash.len());
    url.push_str(base);
    url.push_str(LOGO_PATH);
    url.push_str(&hash);
    url
}

/// Whether `logo` is rewritten under `base` (no trailing `/`): an
/// `http://`/`https://` URL not already under `{base}/logos/`.
pub fn should_rewrite(logo: &str, base: &str) -> bool {
    let is_http = starts_with_ignore_ascii_case(logo, "http://")
        || starts_with_ignore_ascii_case(logo, "https://");
    let cached = logo
        .strip_prefix(base)
        .is_some_and(|rest| rest.starts_with(LOGO_PATH));
    is_http && !cached
}

fn starts_with_ignore_ascii_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: bool,
) -> Result<bool, String> {
    match get(key) {
        None => Ok(default),
        Some(value) => match value.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!(
                "{PLUGIN_NAME}: {key} = {other:?} is not a boolean; write {key} = true or false"
            )),
        },
    }
}

fn parse_base(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let Some(value) = get("logo_base_url") else {
        return Ok(None);
    };
    let base = value.trim().trim_end_matches('/');
    if base.is_empty() {
        return Ok(None);
    }
    let scheme_len = if starts_with_ignore_ascii_case(base, "http://") {
        7
    } else if starts_with_ignore_ascii_case(base, "https://") {
        8
    } else {
        0
    };
    if scheme_len == 0 || base.len() == scheme_len {
        return Err(format!(
            "{PLUGIN_NAME}: logo_base_url = {value:?} must be an http:// or https:// URL \
             such as \"http://nas.local:8080\""
        ));
    }
    if base.contains(|c: char| c.is_whitespace() || c == '"') {
        return Err(format!(
            "{PLUGIN_NAME}: logo_base_url = {value:?} must not contain whitespace or `\"`"
        ));
    }
    Ok(Some(String::from(base)))
}

/// The parts of a table: `key`, `key_2`, … `key_{MAX_TABLE_PARTS}`, as
/// (key, text). A part set after an unset one is an error, since the SDK
/// reports a value too large to deliver as unset.
fn table_parts(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut parts = Vec::new();
    let mut first_missing: Option<String> = None;
    for part in 1..=MAX_TABLE_PARTS {
        let name = if part == 1 {
            String::from(key)
        } else {
            format!("{key}_{part}")
        };
        match (get(&name), &first_missing) {
            (Some(_), Some(missing)) => {
                return Err(format!(
                    "{PLUGIN_NAME}: {name} is set but {missing} is not; number the parts of a \
                     table without gaps"
                ));
            }
            (Some(text), None) => parts.push((name, text)),
            (None, None) => first_missing = Some(name),
            (None, Some(_)) => {}
        }
    }
    Ok(parts)
}

/// The non-empty, non-comment lines of a table as (1-based line number,
/// trimmed `|`-separated columns).
fn table_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        Some((index + 1, line.split('|').map(str::trim).collect()))
    })
}

fn check_value(here: &str, what: &str, value: &str) -> Result<(), String> {
    if value.contains('"') {
        return Err(format!(
            "{PLUGIN_NAME}: {here}: the {what} `{value}` contains `\"`, which cannot be \
             written into an EXTINF attribute"
        ));
    }
    Ok(())
}
