//! Channel numbering, as upstream m3u-proxy does it: channels keep the
//! number their source gave them (`tvg-chno`) when it is free, duplicates
//! move up to the next free number, and channels without a number get the
//! next free number counting from a configured start.
//!
//! Two variants:
//!
//! - [`ChannelNumberer`] is **streaming**: it numbers each channel as it
//!   arrives, remembering only which numbers are taken (a bitset, at most
//!   [`MAX_CHANNEL_NUMBER`] / 8 bytes ≈ 1.2 MiB). A channel without a number
//!   takes the next free number at the time it is seen, so it can take a
//!   number that a later channel asks for explicitly; that later channel is
//!   then moved up as a duplicate.
//! - [`number_in_memory`] sees the whole list: it first reserves every
//!   explicit number (in list order, duplicates moving up), then numbers the
//!   rest from the start. An explicit number is only ever moved by another
//!   explicit number, never by an automatic one.
//!
//! Both give the same result when every explicit number comes before every
//! unnumbered channel, or when no automatic number reaches an explicit one.
//!
//! A valid explicit number is a plain decimal integer (blanks around it are
//! ignored) from 1 to [`MAX_CHANNEL_NUMBER`]. Anything else — empty, `0`,
//! negative, fractional (`5.1`), text, or larger — counts as no number and is
//! replaced by an automatic one.

use std::borrow::Cow;

use crate::abi::Channel;

/// Highest channel number tracked and accepted from a source (9,999,999).
/// Larger `tvg-chno` values count as no number. Should more than this many
/// numbers ever be handed out, further channels get numbers above it,
/// counting up without collision checks (explicit numbers can no longer be
/// there).
pub const MAX_CHANNEL_NUMBER: u32 = 9_999_999;

/// Set of used numbers as a bitset growing up to [`MAX_CHANNEL_NUMBER`].
#[derive(Clone, Debug, Default)]
struct NumberSet {
    words: Vec<u64>,
}

impl NumberSet {
    fn contains(&self, number: u32) -> bool {
        self.words
            .get((number / 64) as usize)
            .is_some_and(|word| word & (1 << (number % 64)) != 0)
    }

    /// Marks `number` (at most [`MAX_CHANNEL_NUMBER`]) as used.
    fn insert(&mut self, number: u32) {
        debug_assert!(number <= MAX_CHANNEL_NUMBER);
        let index = (number / 64) as usize;
        if index >= self.words.len() {
            self.words.resize(index + 1, 0);
        }
        self.words[index] |= 1 << (number % 64);
    }

    /// The smallest free number `>= from` and `<= MAX_CHANNEL_NUMBER`.
    fn next_free(&self, from: u32) -> Option<u32> {
        if from > MAX_CHANNEL_NUMBER {
            return None;
        }
        let mut index = (from / 64) as usize;
        // Bits below `from` in its word count as used.
        let mut below = (1u64 << (from % 64)) - 1;
        while let Some(&word) = self.words.get(index) {
            let taken = word | below;
            if taken != u64::MAX {
                let free = index as u64 * 64 + u64::from((!taken).trailing_zeros());
                return u32::try_from(free)
                    .ok()
                    .filter(|&n| n <= MAX_CHANNEL_NUMBER);
            }
            index += 1;
            below = 0;
        }
        let free = u64::from(from).max(self.words.len() as u64 * 64);
        u32::try_from(free)
            .ok()
            .filter(|&n| n <= MAX_CHANNEL_NUMBER)
    }
}

/// The valid explicit number of `channel` (see the
/// [module documentation](self)), if it has one.
pub fn explicit_number(channel: &Channel<'_>) -> Option<u32> {
    let text = channel.tvg_chno.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_CHANNEL_NUMBER).contains(n))
}

/// Streaming channel numbering (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct ChannelNumberer {
    used: NumberSet,
    start: u32,
    next_auto: u32,
    overflow_next: u32,
    assigned: u64,
}

impl ChannelNumberer {
    /// A numberer handing out automatic numbers from `start` (clamped to
    /// `1..=MAX_CHANNEL_NUMBER`).
    pub fn new(start: u32) -> Self {
        let start = start.clamp(1, MAX_CHANNEL_NUMBER);
        ChannelNumberer {
            used: NumberSet::default(),
            start,
            next_auto: start,
            overflow_next: MAX_CHANNEL_NUMBER + 1,
            assigned: 0,
        }
    }

    /// The first automatic number.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// True if `number` was handed out already.
    pub fn is_used(&self, number: u32) -> bool {
        number <= MAX_CHANNEL_NUMBER && self.used.contains(number)
    }

    /// How many channels were numbered.
    pub fn assigned(&self) -> u64 {
        self.assigned
    }

    /// Numbers `channel`: keeps its explicit number if free, moves it up to
    /// the next free number if taken, or gives it the next free number from
    /// the start if it has none. Writes the number into `tvg_chno` and
    /// returns it.
    pub fn assign(&mut self, channel: &mut Channel<'_>) -> u32 {
        let number = match explicit_number(channel) {
            Some(wanted) => self.claim_from(wanted),
            None => {
                let number = self.claim_from(self.next_auto);
                self.next_auto = number.saturating_add(1);
                number
            }
        };
        self.assigned += 1;
        let text = number.to_string();
        if channel.tvg_chno != text.as_str() {
            channel.tvg_chno = Cow::Owned(text);
        }
        number
    }

    /// Takes the smallest free number `>= from`.
    fn claim_from(&mut self, from: u32) -> u32 {
        match self.used.next_free(from) {
            Some(number) => {
                self.used.insert(number);
                number
            }
            None => {
                let number = self.overflow_next.max(from);
                self.overflow_next = number.saturating_add(1);
                number
            }
        }
    }
}

impl Default for ChannelNumberer {
    /// Numbering from 1.
    fn default() -> Self {
        ChannelNumberer::new(1)
    }
}

/// In-memory channel numbering (see the [module documentation](self)):
/// explicit numbers are reserved first, in order, then channels without a
/// valid number are numbered from `start`. Writes every number into
/// `tvg_chno`.
pub fn number_in_memory(channels: &mut [Channel<'_>], start: u32) {
    let mut numberer = ChannelNumberer::new(start);
    let explicit = reserve_explicit_numbers(&mut numberer, channels);
    number_the_rest(&mut numberer, channels, &explicit);
}

/// First pass of in-memory numbering, run batch by batch as channels arrive:
/// channels with an explicit number get it (or the next free one). Returns
/// which channels those were, one bit per channel (bit `i % 64` of word
/// `i / 64`), for [`number_the_rest`].
pub fn reserve_explicit_numbers(
    numberer: &mut ChannelNumberer,
    channels: &mut [Channel<'_>],
) -> Vec<u64> {
    let mut explicit = vec![0u64; channels.len().div_ceil(64)];
    for (index, channel) in channels.iter_mut().enumerate() {
        if explicit_number(channel).is_some() {
            numberer.assign(channel);
            explicit[index / 64] |= 1 << (index % 64);
        }
    }
    explicit
}

/// Second pass, over the same channels in the same order once every
/// explicit number is reserved: numbers the channels whose bit in
/// `explicit` is clear.
pub fn number_the_rest(
    numberer: &mut ChannelNumberer,
    channels: &mut [Channel<'_>],
    explicit: &[u64],
) {
    for (index, channel) in channels.iter_mut().enumerate() {
        let reserved = explicit
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0);
        if !reserved {
            numberer.assign(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OwnedChannel;

    fn channels(numbers: &[&str]) -> Vec<OwnedChannel> {
        numbers
            .iter()
            .enumerate()
            .map(|(i, n)| Channel {
                id: i as u64,
                tvg_chno: n.to_string().into(),
                ..Channel::default()
            })
            .collect()
    }

    fn streaming(numbers: &[&str], start: u32) -> Vec<u32> {
        let mut numberer = ChannelNumberer::new(start);
        let mut list = channels(numbers);
        let assigned: Vec<u32> = list.iter_mut().map(|c| numberer.assign(c)).collect();
        let written: Vec<u32> = list
            .iter()
            .map(|c| c.tvg_chno.parse().expect("numeric"))
            .collect();
        assert_eq!(assigned, written);
        assert_eq!(numberer.assigned(), numbers.len() as u64);
        assigned
    }

    fn in_memory(numbers: &[&str], start: u32) -> Vec<u32> {
        let mut list = channels(numbers);
        number_in_memory(&mut list, start);
        list.iter()
            .map(|c| c.tvg_chno.parse().expect("numeric"))
            .collect()
    }

    #[test]
    fn explicit_numbers_are_kept() {
        assert_eq!(streaming(&["5", "", "3"], 1), vec![5, 1, 3]);
        assert_eq!(in_memory(&["5", "", "3"], 1), vec![5, 1, 3]);
    }

    #[test]
    fn collisions_move_to_the_next_free_number() {
        assert_eq!(streaming(&["5", "5", "6", "5"], 1), vec![5, 6, 7, 8]);
        assert_eq!(in_memory(&["5", "5", "6", "5"], 1), vec![5, 6, 7, 8]);
        assert_eq!(
            streaming(&["10", "12", "10", "10"], 1),
            vec![10, 12, 11, 13]
        );
    }

    #[test]
    fn the_rest_counts_from_start_skipping_used_numbers() {
        assert_eq!(streaming(&["", "", ""], 100), vec![100, 101, 102]);
        assert_eq!(streaming(&["2", "", "", ""], 1), vec![2, 1, 3, 4]);
        assert_eq!(
            in_memory(&["", "101", "", ""], 100),
            vec![100, 101, 102, 103]
        );
    }

    #[test]
    fn streaming_and_in_memory_differ_on_late_explicit_numbers() {
        // The third channel asks for 1, which streaming already gave away.
        assert_eq!(streaming(&["", "", "1"], 1), vec![1, 2, 3]);
        assert_eq!(in_memory(&["", "", "1"], 1), vec![2, 3, 1]);
        // Same when the explicit number is ahead of the automatic cursor.
        assert_eq!(streaming(&["", "", "", "2"], 1), vec![1, 2, 3, 4]);
        assert_eq!(in_memory(&["", "", "", "2"], 1), vec![1, 3, 4, 2]);
    }

    #[test]
    fn invalid_numbers_are_replaced() {
        assert_eq!(
            streaming(&["abc", "0", "-5", "1.5", "10000000", "+3", " 7 "], 1),
            vec![1, 2, 3, 4, 5, 6, 7]
        );
        let mut list = channels(&[" 7 "]);
        number_in_memory(&mut list, 1);
        assert_eq!(list[0].tvg_chno, "7");
    }

    #[test]
    fn start_is_clamped() {
        assert_eq!(ChannelNumberer::new(0).start(), 1);
        assert_eq!(streaming(&["", ""], 0), vec![1, 2]);
        assert_eq!(ChannelNumberer::new(u32::MAX).start(), MAX_CHANNEL_NUMBER);
    }

    #[test]
    fn numbers_past_the_maximum_count_up_without_panicking() {
        let max = MAX_CHANNEL_NUMBER.to_string();
        let got = streaming(&[&max, &max, &max, ""], MAX_CHANNEL_NUMBER);
        assert_eq!(
            got,
            vec![
                MAX_CHANNEL_NUMBER,
                MAX_CHANNEL_NUMBER + 1,
                MAX_CHANNEL_NUMBER + 2,
                MAX_CHANNEL_NUMBER + 3
            ]
        );
    }

    #[test]
    fn is_used_tracks_assignments() {
        let mut numberer = ChannelNumberer::default();
        let mut list = channels(&["64", ""]);
        numberer.assign(&mut list[0]);
        numberer.assign(&mut list[1]);
        assert!(numberer.is_used(64));
        assert!(numberer.is_used(1));
        assert!(!numberer.is_used(2));
        assert!(!numberer.is_used(u32::MAX));
    }

    #[test]
    fn bitset_next_free_across_words() {
        let mut set = NumberSet::default();
        for n in 0..130 {
            set.insert(n);
        }
        assert_eq!(set.next_free(0), Some(130));
        assert_eq!(set.next_free(64), Some(130));
        assert_eq!(set.next_free(131), Some(131));
        assert_eq!(set.next_free(500), Some(500));
        set.insert(63);
        set.insert(200);
        assert_eq!(set.next_free(200), Some(201));
        assert!(set.contains(129));
        assert!(!set.contains(130));
        assert!(!set.contains(1_000_000));
        set.insert(MAX_CHANNEL_NUMBER);
        assert_eq!(set.next_free(MAX_CHANNEL_NUMBER), None);
        assert_eq!(set.next_free(MAX_CHANNEL_NUMBER + 1), None);
        assert_eq!(
            set.next_free(MAX_CHANNEL_NUMBER - 1),
            Some(MAX_CHANNEL_NUMBER - 1)
        );
    }

    #[test]
    fn existing_correct_number_is_not_reallocated() {
        let mut list = channels(&["12"]);
        let before = list[0].tvg_chno.clone();
        ChannelNumberer::new(1).assign(&mut list[0]);
        assert_eq!(list[0].tvg_chno, before);
    }
}
