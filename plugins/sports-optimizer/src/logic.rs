//! The sports optimizer's logic: dictionary parsing, whole-word matching,
//! classification, the country/language check and the number allocator.
//!
//! This file depends on `core` and `alloc` only (no SDK or host types), so a
//! benchmark or a test can compile the very same code natively:
//!
//! ```ignore
//! #[path = "../plugins/sports-optimizer/src/logic.rs"]
//! mod sports_logic;
//! let mut optimizer = sports_logic::SportsOptimizer::new(|key| settings.get(key).cloned())?;
//! ```
//!
//! `lib.rs` is the thin SDK glue around it.

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

/// Highest channel number the host's numbering accepts (`tvg-chno` above it
/// counts as no number); also the highest end of `number_block`.
pub const MAX_CHANNEL_NUMBER: u32 = 9_999_999;

/// Attribute holding the recognised sport.
pub const ATTR_SPORT: &str = "x-sports-sport";
/// Attribute holding the recognised league.
pub const ATTR_LEAGUE: &str = "x-sports-league";
/// Attribute holding the recognised teams, separated by `;`.
pub const ATTR_TEAMS: &str = "x-sports-teams";

/// Every configuration key the optimizer reads.
pub const CONFIG_KEYS: &[&str] = &[
    "keywords",
    "extra_keywords",
    "leagues",
    "extra_leagues",
    "teams",
    "extra_teams",
    "group_prefix",
    "rewrite_group",
    "tag_attributes",
    "allowed_countries",
    "allowed_languages",
    "keep_unlabelled",
    "number_block",
];

/// Built-in `keywords`: generic words, sports, broadcaster brands. An entry
/// with `=Sport` also tells the sport.
pub const DEFAULT_KEYWORDS: &str = "sport; sports; spor; sportv; deporte; deportes; \
esporte; esportes; спорт; \
football=Football; soccer=Football; futbol=Football; fútbol=Football; futebol=Football; \
calcio=Football; basketball=Basketball; baseball=Baseball; hockey=Ice Hockey; \
tennis=Tennis; golf=Golf; cricket=Cricket; rugby=Rugby; boxing=Boxing; \
wrestling=Wrestling; fight=Combat Sports; mma=Combat Sports; volleyball=Volleyball; \
handball=Handball; cycling=Cycling; motorsport|motorsports=Motorsport; racing; \
darts=Darts; snooker=Snooker; olympic|olympics; \
ESPN; beIN; DAZN; Sky Sports; Eurosport; TSN; Sportsnet; BT Sport; Fox Sports; \
NBC Sports; CBS Sports; Bally Sports; Arena Sport; Setanta; SuperSport; Eleven Sports; \
Premier Sports; Star Sports; Ten Sports; Claro Sports; GolTV=Football; \
Tennis Channel=Tennis; Golf Channel=Golf; Fight Network=Combat Sports";

/// Built-in `leagues`, each mapped to its sport (`NCAA` spans several).
pub const DEFAULT_LEAGUES: &str = "Premier League|EPL=Football; La Liga|LaLiga=Football; \
Serie A=Football; Bundesliga=Football; Ligue 1=Football; Eredivisie=Football; \
Champions League|UEFA Champions League=Football; Europa League=Football; \
MLS|Major League Soccer=Football; Liga MX=Football; Copa Libertadores=Football; \
NBA=Basketball; WNBA=Basketball; EuroLeague=Basketball; NFL=American Football; NCAA; \
NHL=Ice Hockey; KHL=Ice Hockey; MLB=Baseball; \
Formula 1|F1|Formula One=Motorsport; MotoGP=Motorsport; NASCAR=Motorsport; \
IndyCar=Motorsport; ATP=Tennis; WTA=Tennis; Wimbledon=Tennis; PGA Tour|PGA=Golf; \
UFC=Combat Sports; WWE=Wrestling; IPL=Cricket; Six Nations=Rugby; NRL=Rugby League; \
AFL=Australian Football; Tour de France=Cycling";

/// Built-in `teams`: none.
pub const DEFAULT_TEAMS: &str = "";

/// Built-in `group_prefix`.
pub const DEFAULT_GROUP_PREFIX: &str = "Sports";

// ---------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharClass {
    Letter,
    Digit,
    Other,
}

fn char_class(c: char) -> CharClass {
    if c.is_ascii() {
        if c.is_ascii_alphabetic() {
            CharClass::Letter
        } else if c.is_ascii_digit() {
            CharClass::Digit
        } else {
            CharClass::Other
        }
    } else if c.is_alphabetic() {
        CharClass::Letter
    } else if c.is_numeric() {
        CharClass::Digit
    } else {
        CharClass::Other
    }
}

/// Splits `text` into lowercase words, appending them to `buf` and their
/// byte ranges in `buf` to `words`. The text is lowercased first (Unicode,
/// per character); a word is a maximal run of letters or a maximal run of
/// digits, so `ESPN2` is `espn 2` and `Sky-Sports` is `sky sports`.
fn tokenize_into(text: &str, buf: &mut String, words: &mut Vec<(u32, u32)>) {
    let mut open: Option<(CharClass, usize)> = None;
    let mut push = |c: char, buf: &mut String, words: &mut Vec<(u32, u32)>| {
        let class = char_class(c);
        if let Some((current, start)) = open {
            if current == class {
                buf.push(c);
                return;
            }
            words.push((start as u32, buf.len() as u32));
            open = None;
        }
        if class != CharClass::Other {
            open = Some((class, buf.len()));
            buf.push(c);
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            push(c.to_ascii_lowercase(), buf, words);
        } else {
            for lower in c.to_lowercase() {
                push(lower, buf, words);
            }
        }
    }
    if let Some((_, start)) = open {
        words.push((start as u32, buf.len() as u32));
    }
}

/// The lowercase words of `text` (see [`tokenize_into`]).
pub fn words(text: &str) -> Vec<String> {
    let mut buf = String::new();
    let mut ranges = Vec::new();
    tokenize_into(text, &mut buf, &mut ranges);
    ranges
        .iter()
        .map(|&(start, end)| String::from(&buf[start as usize..end as usize]))
        .collect()
}

// ---------------------------------------------------------------------------
// Dictionaries
// ---------------------------------------------------------------------------

/// One dictionary entry: `Name|Alias…=Sport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The canonical name (the first name of the entry, as written).
    pub name: String,
    /// Every name (canonical first), as written.
    pub names: Vec<String>,
    /// The sport, if the entry names one.
    pub sport: Option<String>,
}

/// Parses a dictionary value: entries separated by `;` or newlines, each
/// `Name[|Alias…][=Sport]`; blanks around parts are ignored, empty entries
/// skipped. `key` names the setting in error messages.
pub fn parse_dictionary(key: &str, text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (position, raw) in text.split([';', '\n']).enumerate() {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let at = || format!("{key}: entry {} ({entry:?})", position + 1);
        let (names, sport) = match entry.split_once('=') {
            None => (entry, None),
            Some((names, sport)) => {
                let sport = sport.trim();
                if sport.contains('=') {
                    return Err(format!(
                        "{}: more than one `=`; write `Name|Alias=Sport`",
                        at()
                    ));
                }
                if sport.is_empty() {
                    return Err(format!(
                        "{}: nothing after `=`; write `Name=Sport` or just `Name`",
                        at()
                    ));
                }
                (names, Some(String::from(sport)))
            }
        };
        let mut list = Vec::new();
        for name in names.split('|') {
            let name = name.trim();
            if name.is_empty() {
                return Err(format!(
                    "{}: empty name; names are separated by `|`, entries by `;`",
                    at()
                ));
            }
            if words(name).is_empty() {
                return Err(format!(
                    "{}: name {name:?} has no letter or digit to match",
                    at()
                ));
            }
            list.push(String::from(name));
        }
        entries.push(Entry {
            name: list[0].clone(),
            names: list,
            sport,
        });
    }
    Ok(entries)
}

/// What a dictionary entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Marks a channel as sports (and may tell the sport).
    Keyword,
    /// A league: tags `x-sports-league`, tells the sport.
    League,
    /// A team: tags `x-sports-teams`, may tell the sport.
    Team,
}

/// One name of one entry, as words.
#[derive(Clone, Debug)]
struct Term {
    words: Vec<String>,
    kind: Kind,
    entry: u32,
}

/// A match of term `term` at word `pos` (name words first, then group words).
#[derive(Clone, Copy, Debug)]
struct Match {
    pos: u32,
    len: u32,
    term: u32,
}

impl Match {
    /// Earlier first, then longer, then earlier in the dictionary.
    fn rank(&self) -> (u32, Reverse<u32>, u32) {
        (self.pos, Reverse(self.len), self.term)
    }
}

/// Keywords, leagues and teams, indexed for whole-word matching.
#[derive(Clone, Debug)]
pub struct Dictionary {
    keywords: Vec<Entry>,
    leagues: Vec<Entry>,
    teams: Vec<Entry>,
    terms: Vec<Term>,
    /// (first word, term index), sorted.
    index: Vec<(String, u32)>,
}

impl Dictionary {
    /// Indexes the three lists (in this order: keywords, leagues, teams).
    pub fn new(keywords: Vec<Entry>, leagues: Vec<Entry>, teams: Vec<Entry>) -> Self {
        let mut terms = Vec::new();
        for (kind, list) in [
            (Kind::Keyword, &keywords),
            (Kind::League, &leagues),
            (Kind::Team, &teams),
        ] {
            for (entry, item) in list.iter().enumerate() {
                for name in &item.names {
                    terms.push(Term {
                        words: words(name),
                        kind,
                        entry: entry as u32,
                    });
                }
            }
        }
        let mut index: Vec<(String, u32)> = terms
            .iter()
            .enumerate()
            .map(|(i, term)| (term.words[0].clone(), i as u32))
            .collect();
        index.sort();
        Dictionary {
            keywords,
            leagues,
            teams,
            terms,
            index,
        }
    }

    /// The keyword entries.
    pub fn keywords(&self) -> &[Entry] {
        &self.keywords
    }

    /// The league entries.
    pub fn leagues(&self) -> &[Entry] {
        &self.leagues
    }

    /// The team entries.
    pub fn teams(&self) -> &[Entry] {
        &self.teams
    }

    fn entry(&self, term: &Term) -> &Entry {
        let list = match term.kind {
            Kind::Keyword => &self.keywords,
            Kind::League => &self.leagues,
            Kind::Team => &self.teams,
        };
        &list[term.entry as usize]
    }

    /// Appends every match of every term within `words[from..to]`.
    fn find(&self, buf: &str, words: &[(u32, u32)], from: usize, to: usize, out: &mut Vec<Match>) {
        let word = |i: usize| &buf[words[i].0 as usize..words[i].1 as usize];
        for pos in from..to {
            let first = word(pos);
            let mut at = self.index.partition_point(|(w, _)| w.as_str() < first);
            while let Some((w, term_index)) = self.index.get(at) {
                if w != first {
                    break;
                }
                at += 1;
                let term = &self.terms[*term_index as usize];
                let len = term.words.len();
                if pos + len > to {
                    continue;
                }
                if term.words[1..]
                    .iter()
                    .enumerate()
                    .all(|(k, w)| w == word(pos + 1 + k))
                {
                    out.push(Match {
                        pos: pos as u32,
                        len: len as u32,
                        term: *term_index,
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{key} = {other:?}: expected true or false")),
    }
}

/// A list of `;`- or `,`-separated values, trimmed, empty ones skipped.
fn parse_list(value: &str) -> Vec<String> {
    value
        .split([';', ','])
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `number_block`: `"<first>-<last>"`, `1 ≤ first ≤ last ≤ 9999999`.
pub fn parse_number_block(value: &str) -> Result<(u32, u32), String> {
    let bad = |why: &str| {
        format!("number_block = {value:?}: {why}; write \"<first>-<last>\", e.g. \"1000-1999\"")
    };
    let (first, last) = value
        .split_once('-')
        .ok_or_else(|| bad("no `-` between first and last number"))?;
    let number = |text: &str| -> Result<u32, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("a number is missing"));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("{text:?} is not a whole number")));
        }
        text.parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_CHANNEL_NUMBER).contains(n))
            .ok_or_else(|| bad(&format!("{text} is not in 1..={MAX_CHANNEL_NUMBER}")))
    };
    let (first, last) = (number(first)?, number(last)?);
    if first > last {
        return Err(bad("the first number is larger than the last"));
    }
    Ok((first, last))
}

/// A dictionary setting: `key` replaces the default, `extra_key` extends it.
fn dictionary_setting(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    extra_key: &str,
    default: &str,
) -> Result<Vec<Entry>, String> {
    let base = get(key);
    let mut entries = parse_dictionary(key, base.as_deref().unwrap_or(default))?;
    if let Some(extra) = get(extra_key) {
        entries.extend(parse_dictionary(extra_key, &extra)?);
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------

/// The valid explicit number in a `tvg-chno` value, by the host's rule: a
/// plain decimal integer (blanks around it ignored) in `1..=9999999`.
pub fn explicit_number(tvg_chno: &str) -> Option<u32> {
    let text = tvg_chno.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_CHANNEL_NUMBER).contains(n))
}

/// Hands out the numbers of a block in increasing order, skipping numbers
/// already reserved (explicit `tvg-chno` values seen in the block).
#[derive(Clone, Debug)]
pub struct NumberAllocator {
    first: u32,
    last: u32,
    /// Every number below `next` (within the block) is handed out or skipped.
    next: u32,
    reserved: Vec<u64>,
    refused: u64,
}

impl NumberAllocator {
    /// An allocator for `first..=last` (`first ≤ last`).
    pub fn new(first: u32, last: u32) -> Self {
        let size = (last - first) as usize + 1;
        NumberAllocator {
            first,
            last,
            next: first,
            reserved: vec![0; size.div_ceil(64)],
            refused: 0,
        }
    }

    /// The block, `(first, last)`.
    pub fn block(&self) -> (u32, u32) {
        (self.first, self.last)
    }

    /// Marks `number` as taken if it lies in the block.
    pub fn reserve(&mut self, number: u32) {
        if (self.first..=self.last).contains(&number) {
            let bit = (number - self.first) as usize;
            self.reserved[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn is_reserved(&self, number: u32) -> bool {
        let bit = (number - self.first) as usize;
        self.reserved[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// The next free number of the block, or `None` once it is used up
    /// (counted in [`NumberAllocator::refused`]).
    pub fn allocate(&mut self) -> Option<u32> {
        while self.next <= self.last {
            let number = self.next;
            self.next += 1;
            if !self.is_reserved(number) {
                return Some(number);
            }
        }
        self.refused += 1;
        None
    }

    /// How many allocations found the block full since the last reset.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Forgets everything: a new pipeline run.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.reserved.iter_mut().for_each(|word| *word = 0);
        self.refused = 0;
    }
}

// ---------------------------------------------------------------------------
// The optimizer
// ---------------------------------------------------------------------------

/// What was recognised in a sports channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classification {
    /// The sport (canonical spelling of the dictionary), if known.
    pub sport: Option<String>,
    /// The league (canonical name), if one matched.
    pub league: Option<String>,
    /// The teams (canonical names), in order of first appearance.
    pub teams: Vec<String>,
}

/// The changes the data_mapping stage makes to one sports channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// New `group-title`, when it changes.
    pub group_title: Option<String>,
    /// Attributes to set (`x-sports-*`), in this order.
    pub attributes: Vec<(&'static str, String)>,
    /// `tvg-chno` hint from the number block.
    pub tvg_chno: Option<u32>,
    /// What was recognised.
    pub classification: Classification,
}

/// The parsed configuration plus the per-run state (number allocation).
#[derive(Clone, Debug)]
pub struct SportsOptimizer {
    dictionary: Dictionary,
    group_prefix: String,
    rewrite_group: bool,
    tag_attributes: bool,
    /// Lowercased.
    allowed_countries: Vec<String>,
    /// Lowercased.
    allowed_languages: Vec<String>,
    keep_unlabelled: bool,
    numbers: Option<NumberAllocator>,
    buf: String,
    words: Vec<(u32, u32)>,
    matches: Vec<Match>,
}

fn lowercase(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

impl SportsOptimizer {
    /// Reads every setting through `get` (key → value as text, `None` when
    /// unset; see [`CONFIG_KEYS`]). Errors name the key and say what is wrong.
    pub fn new(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get: &dyn Fn(&str) -> Option<String> = &get;
        let keywords = dictionary_setting(get, "keywords", "extra_keywords", DEFAULT_KEYWORDS)?;
        let leagues = dictionary_setting(get, "leagues", "extra_leagues", DEFAULT_LEAGUES)?;
        let teams = dictionary_setting(get, "teams", "extra_teams", DEFAULT_TEAMS)?;
        if keywords.is_empty() && leagues.is_empty() && teams.is_empty() {
            return Err(String::from(
                "keywords, leagues and teams are all empty: nothing would be recognised as sports",
            ));
        }
        let group_prefix = match get("group_prefix") {
            None => String::from(DEFAULT_GROUP_PREFIX),
            Some(prefix) => {
                let prefix = prefix.trim();
                if prefix.is_empty() || prefix.ends_with('/') {
                    return Err(format!(
                        "group_prefix = {prefix:?}: must be non-empty and not end with `/` \
                         (groups become \"<prefix>/<Sport>\"); set rewrite_group = false \
                         to keep groups as they are"
                    ));
                }
                String::from(prefix)
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, String> {
            get(key).map_or(Ok(default), |value| parse_bool(key, &value))
        };
        let rewrite_group = flag("rewrite_group", true)?;
        let tag_attributes = flag("tag_attributes", true)?;
        let keep_unlabelled = flag("keep_unlabelled", false)?;
        let list = |key: &str| -> Vec<String> {
            get(key)
                .map(|value| parse_list(&value).iter().map(|v| lowercase(v)).collect())
                .unwrap_or_default()
        };
        let allowed_countries = list("allowed_countries");
        let allowed_languages = list("allowed_languages");
        let numbers = match get("number_block") {
            Some(value) if !value.trim().is_empty() => {
                let (first, last) = parse_number_block(&value)?;
                Some(NumberAllocator::new(first, last))
            }
            _ => None,
        };
        Ok(SportsOptimizer {
            dictionary: Dictionary::new(keywords, leagues, teams),
            group_prefix,
            rewrite_group,
            tag_attributes,
            allowed_countries,
            allowed_languages,
            keep_unlabelled,
            numbers,
            buf: String::new(),
            words: Vec::new(),
            matches: Vec::new(),
        })
    }

    /// The built-in configuration.
    pub fn with_defaults() -> Self {
        match SportsOptimizer::new(|_| None) {
            Ok(optimizer) => optimizer,
            Err(error) => panic!("the built-in sports dictionaries do not parse: {error}"),
        }
    }

    /// The dictionaries in use.
    pub fn dictionary(&self) -> &Dictionary {
        &self.dictionary
    }

    /// The group prefix (`Sports`).
    pub fn group_prefix(&self) -> &str {
        &self.group_prefix
    }

    /// The number allocator, when `number_block` is set.
    pub fn numbers(&self) -> Option<&NumberAllocator> {
        self.numbers.as_ref()
    }

    /// Whether the country or language filter is on.
    pub fn filters(&self) -> bool {
        !self.allowed_countries.is_empty() || !self.allowed_languages.is_empty()
    }

    /// `Some(sport)` if `group` already has the form `<prefix>` (`Some(None)`)
    /// or `<prefix>/<Sport>`; compared ASCII-case-insensitively.
    fn prefix_form<'g>(&self, group: &'g str) -> Option<Option<&'g str>> {
        let group = group.trim();
        let prefix = self.group_prefix.as_str();
        let head = group.get(..prefix.len())?;
        if !head.eq_ignore_ascii_case(prefix) {
            return None;
        }
        let rest = &group[prefix.len()..];
        if rest.is_empty() {
            return Some(None);
        }
        let sport = rest.strip_prefix('/')?.trim();
        Some((!sport.is_empty()).then_some(sport))
    }

    /// Whether the channel is a sports channel, and what it is about; `None`
    /// for every other channel. Matching is whole-word and case-insensitive
    /// over the channel name, then the group-title.
    pub fn classify(&mut self, channel_name: &str, group_title: &str) -> Option<Classification> {
        self.buf.clear();
        self.words.clear();
        self.matches.clear();
        tokenize_into(channel_name, &mut self.buf, &mut self.words);
        let name_words = self.words.len();
        tokenize_into(group_title, &mut self.buf, &mut self.words);
        let total = self.words.len();
        let dictionary = &self.dictionary;
        dictionary.find(&self.buf, &self.words, 0, name_words, &mut self.matches);
        dictionary.find(&self.buf, &self.words, name_words, total, &mut self.matches);
        let prefix_form = self.prefix_form(group_title);
        if self.matches.is_empty() && prefix_form.is_none() {
            return None;
        }

        let terms = &dictionary.terms;
        let best = |kind: Kind, with_sport: bool| {
            self.matches
                .iter()
                .filter(|m| {
                    let term = &terms[m.term as usize];
                    term.kind == kind && (!with_sport || dictionary.entry(term).sport.is_some())
                })
                .min_by_key(|m| m.rank())
                .map(|m| dictionary.entry(&terms[m.term as usize]))
        };
        let league = best(Kind::League, false);
        let mut team_matches: Vec<&Match> = self
            .matches
            .iter()
            .filter(|m| terms[m.term as usize].kind == Kind::Team)
            .collect();
        team_matches.sort_by_key(|m| m.rank());
        let mut teams: Vec<&Entry> = Vec::new();
        for m in team_matches {
            let entry = dictionary.entry(&terms[m.term as usize]);
            if !teams.iter().any(|t| core::ptr::eq(*t, entry)) {
                teams.push(entry);
            }
        }
        let sport = league
            .and_then(|l| l.sport.as_deref())
            .or_else(|| teams.iter().find_map(|t| t.sport.as_deref()))
            .or_else(|| best(Kind::Keyword, true).and_then(|k| k.sport.as_deref()))
            .or(prefix_form.flatten());
        Some(Classification {
            sport: sport.map(String::from),
            league: league.map(|l| l.name.clone()),
            teams: teams.iter().map(|t| t.name.clone()).collect(),
        })
    }

    /// The group-title for a sports channel of `sport`: `<prefix>/<Sport>`,
    /// or `<prefix>` when the sport is unknown.
    pub fn group_for(&self, sport: Option<&str>) -> String {
        match sport {
            Some(sport) => format!("{}/{sport}", self.group_prefix),
            None => self.group_prefix.clone(),
        }
    }

    /// The country/language check for a sports channel: `country` and
    /// `language` are the `tvg-country` / `tvg-language` values (`None` when
    /// absent), each possibly several values separated by `;`. With an
    /// allowed list set, at least one value must be in it
    /// (case-insensitively); a channel without any value passes only with
    /// `keep_unlabelled`.
    pub fn passes_country_language(&self, country: Option<&str>, language: Option<&str>) -> bool {
        self.allowed(&self.allowed_countries, country)
            && self.allowed(&self.allowed_languages, language)
    }

    fn allowed(&self, allowed: &[String], value: Option<&str>) -> bool {
        if allowed.is_empty() {
            return true;
        }
        let mut labelled = false;
        for value in value.unwrap_or("").split(';') {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            labelled = true;
            let matches = |a: &String| a.chars().eq(value.chars().flat_map(char::to_lowercase));
            if allowed.iter().any(matches) {
                return true;
            }
        }
        !labelled && self.keep_unlabelled
    }

    /// The filtering stage: `false` drops the channel. Only sports channels
    /// that fail [`SportsOptimizer::passes_country_language`] are dropped.
    pub fn keep(
        &mut self,
        channel_name: &str,
        group_title: &str,
        country: Option<&str>,
        language: Option<&str>,
    ) -> bool {
        if !self.filters() {
            return true;
        }
        self.classify(channel_name, group_title).is_none()
            || self.passes_country_language(country, language)
    }

    /// A new pipeline run: the number block starts again.
    pub fn start_run(&mut self) {
        if let Some(numbers) = &mut self.numbers {
            numbers.reset();
        }
    }

    /// The data_mapping stage for one channel: `None` leaves it unchanged
    /// (every non-sports channel). An explicit `tvg-chno` inside the number
    /// block is reserved (for channels this plugin keeps); a sports channel
    /// without one that passes the country/language check gets the next
    /// free number of the block, if any is left.
    pub fn map_channel(
        &mut self,
        channel_name: &str,
        group_title: &str,
        tvg_chno: &str,
        country: Option<&str>,
        language: Option<&str>,
    ) -> Option<Mapping> {
        let classification = self.classify(channel_name, group_title);
        let kept = classification.is_none() || self.passes_country_language(country, language);
        let explicit = explicit_number(tvg_chno);
        if let (Some(numbers), Some(number), true) = (&mut self.numbers, explicit, kept) {
            numbers.reserve(number);
        }
        let classification = classification?;
        let mut mapping = Mapping::default();
        if self.rewrite_group {
            let group = self.group_for(classification.sport.as_deref());
            if group != group_title {
                mapping.group_title = Some(group);
            }
        }
        if self.tag_attributes {
            if let Some(sport) = &classification.sport {
                mapping.attributes.push((ATTR_SPORT, sport.clone()));
            }
            if let Some(league) = &classification.league {
                mapping.attributes.push((ATTR_LEAGUE, league.clone()));
            }
            if !classification.teams.is_empty() {
                mapping
                    .attributes
                    .push((ATTR_TEAMS, classification.teams.join(";")));
            }
        }
        if explicit.is_none() && kept {
            if let Some(numbers) = &mut self.numbers {
                mapping.tvg_chno = numbers.allocate();
            }
        }
        mapping.classification = classification;
        Some(mapping)
    }
}
