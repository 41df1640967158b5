//! Sorted output at any size (`sorted_writer`): an external merge sort over
//! the store.
//!
//! While the sorter is in the plain tier it simply collects channels and
//! sorts them at the end (the fastest path when memory allows). In the
//! compressed and disk tiers it sorts what it collected into a *run* each
//! time the collected channels reach [`SORT_RUN_BYTES`], and writes the run
//! as small blocks; at the end it merges the runs, holding one decoded
//! block window per run. Peak memory is then one run buffer plus one block
//! per run, whatever the playlist's size.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use m3u_proxy_plugin_abi::MemoryPressureLevel;

use super::codec::BlockReader;
use super::tiered::{Place, StorePolicy, Tier, TieredBlocks};
use super::{approx_heap_bytes, HoldStats};
use crate::{OwnedChannel, Result};

/// Plain bytes of channels collected before a run is sorted and written
/// (compressed and disk tiers).
pub const SORT_RUN_BYTES: u64 = 8 << 20;

/// Channels per block of a sorted run: small, because the merge keeps one
/// block of every run decoded.
const RUN_BLOCK_CHANNELS: usize = 128;

/// What channels are sorted by: compared as a tuple, ties keep arrival
/// order.
pub type SortKey = [u64; 3];

/// Computes a channel's [`SortKey`] (shared by the sort and its merge).
pub type KeyFn = std::sync::Arc<dyn Fn(&OwnedChannel) -> SortKey + Send + Sync>;

/// `sorted_writer`'s key: the channel number (`tvg-chno`), unnumbered last.
pub fn by_channel_number(channel: &OwnedChannel) -> SortKey {
    [channel.tvg_chno.parse::<u64>().unwrap_or(u64::MAX), 0, 0]
}

/// The pipeline's arrival order (the ids the loader assigns).
pub fn by_id(channel: &OwnedChannel) -> SortKey {
    [channel.id, 0, 0]
}

/// Collects channels and gives them back sorted by a [`KeyFn`] (stable:
/// equal keys keep arrival order).
pub struct ExternalSorter {
    key: KeyFn,
    blocks: TieredBlocks,
    buffer: Vec<OwnedChannel>,
    buffer_bytes: u64,
    peak_plain_bytes: u64,
    plain_budget: u64,
    runs: Vec<VecDeque<Place>>,
    run_bytes: u64,
    channels: u64,
}

impl ExternalSorter {
    /// An empty sorter starting in tier `start` (see
    /// [`BatchQueue::new`](super::BatchQueue::new) for `plain_budget`).
    pub fn new(policy: StorePolicy, start: Tier, plain_budget: u64) -> Self {
        ExternalSorter::by(
            "sorted_writer",
            std::sync::Arc::new(by_channel_number),
            policy,
            start,
            plain_budget,
        )
    }

    /// An empty sorter for `holder` ordering by `key`.
    pub fn by(
        holder: &'static str,
        key: KeyFn,
        policy: StorePolicy,
        start: Tier,
        plain_budget: u64,
    ) -> Self {
        ExternalSorter {
            key,
            blocks: TieredBlocks::new(holder, policy, start),
            buffer: Vec::new(),
            buffer_bytes: 0,
            peak_plain_bytes: 0,
            plain_budget,
            runs: Vec::new(),
            run_bytes: SORT_RUN_BYTES,
            channels: 0,
        }
    }

    /// The same sorter writing a run every `bytes` of collected channels
    /// (default [`SORT_RUN_BYTES`]).
    pub fn with_run_bytes(mut self, bytes: u64) -> Self {
        self.run_bytes = bytes.max(1);
        self
    }

    /// The current tier.
    pub fn tier(&self) -> Tier {
        self.blocks.tier
    }

    /// Sorted runs written so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Takes a batch, first moving down a tier if `level` asks for it.
    ///
    /// # Errors
    /// The store cannot take a run (disk full).
    pub fn push(&mut self, batch: Vec<OwnedChannel>, level: MemoryPressureLevel) -> Result<()> {
        self.adapt(level)?;
        self.channels += batch.len() as u64;
        self.buffer_bytes += batch.iter().map(approx_heap_bytes).sum::<u64>();
        self.peak_plain_bytes = self.peak_plain_bytes.max(self.buffer_bytes);
        self.buffer.extend(batch);
        if self.blocks.tier != Tier::Plain && self.buffer_bytes >= self.run_bytes {
            self.write_run()?;
        }
        Ok(())
    }

    fn adapt(&mut self, level: MemoryPressureLevel) -> Result<()> {
        let Some((wanted, reason)) =
            self.blocks
                .wanted_move(level, self.buffer_bytes, self.plain_budget)
        else {
            return Ok(());
        };
        self.blocks.switch(wanted, self.channels, reason);
        if wanted.is_spilled() {
            for run in &mut self.runs {
                for place in run.iter_mut() {
                    *place = self.blocks.demote(*place)?;
                }
            }
        }
        if !self.buffer.is_empty() {
            self.write_run()?;
        }
        Ok(())
    }

    fn write_run(&mut self) -> Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        buffer.sort_by_cached_key(|channel| (self.key)(channel));
        let mut run = VecDeque::with_capacity(buffer.len().div_ceil(RUN_BLOCK_CHANNELS));
        for block in buffer.chunks(RUN_BLOCK_CHANNELS) {
            run.push_back(self.blocks.put(block)?);
        }
        self.runs.push(run);
        Ok(())
    }

    /// What sorting held.
    pub fn stats(&self) -> HoldStats {
        let mut stats = HoldStats::from_blocks(&self.blocks, self.channels, self.peak_plain_bytes);
        stats.sorted_runs = self.runs.len() as u64;
        stats
    }

    /// Everything collected, sorted, in batches of `batch_size`.
    ///
    /// # Errors
    /// A run that cannot be written or read back.
    pub fn finish(mut self, batch_size: usize) -> Result<SortedBatches> {
        if self.runs.is_empty() {
            let mut all = std::mem::take(&mut self.buffer);
            all.sort_by_cached_key(|channel| (self.key)(channel));
            return Ok(SortedBatches {
                stats: self.stats(),
                source: Sorted::InMemory(all.into_iter()),
                batch_size,
            });
        }
        if !self.buffer.is_empty() {
            self.write_run()?;
        }
        let stats = self.stats();
        let runs = std::mem::take(&mut self.runs);
        let mut merge = Merge {
            key: self.key.clone(),
            blocks: self.blocks,
            cursors: runs
                .into_iter()
                .map(|blocks| Cursor {
                    blocks,
                    reader: BlockReader::default(),
                })
                .collect(),
            heads: BinaryHeap::new(),
            pending: Vec::new(),
        };
        merge.prime()?;
        Ok(SortedBatches {
            stats,
            source: Sorted::Merge(Box::new(merge)),
            batch_size,
        })
    }
}

/// The sorted channels, batch by batch.
pub struct SortedBatches {
    stats: HoldStats,
    source: Sorted,
    batch_size: usize,
}

enum Sorted {
    InMemory(std::vec::IntoIter<OwnedChannel>),
    Merge(Box<Merge>),
}

impl SortedBatches {
    /// What sorting held.
    pub fn stats(&self) -> &HoldStats {
        &self.stats
    }

    /// The next batch in order, `None` at the end.
    ///
    /// # Errors
    /// A run block that cannot be read back or decoded.
    pub fn next_batch(&mut self) -> Result<Option<Vec<OwnedChannel>>> {
        let mut batch = Vec::with_capacity(self.batch_size.min(4096));
        while batch.len() < self.batch_size {
            let next = match &mut self.source {
                Sorted::InMemory(channels) => channels.next(),
                Sorted::Merge(merge) => merge.next()?,
            };
            match next {
                Some(channel) => batch.push(channel),
                None => break,
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

struct Cursor {
    blocks: VecDeque<Place>,
    reader: BlockReader,
}

struct Merge {
    key: KeyFn,
    blocks: TieredBlocks,
    cursors: Vec<Cursor>,
    /// (key, run index): the smallest key first, the earlier run on ties
    /// (runs are in arrival order, so the merge is stable).
    heads: BinaryHeap<Reverse<(SortKey, usize)>>,
    /// The channel at the head of each run.
    pending: Vec<Option<OwnedChannel>>,
}

impl Merge {
    fn prime(&mut self) -> Result<()> {
        self.pending = (0..self.cursors.len()).map(|_| None).collect();
        for run in 0..self.cursors.len() {
            self.advance(run)?;
        }
        Ok(())
    }

    /// Loads the next channel of `run` into `pending` and the heap.
    fn advance(&mut self, run: usize) -> Result<()> {
        let cursor = &mut self.cursors[run];
        loop {
            if let Some(channel) = cursor.reader.next_channel()? {
                self.heads.push(Reverse(((self.key)(&channel), run)));
                self.pending[run] = Some(channel);
                return Ok(());
            }
            let Some(place) = cursor.blocks.pop_front() else {
                cursor.reader = BlockReader::default();
                return Ok(());
            };
            let block = self.blocks.take(place)?;
            cursor.reader = BlockReader::new(self.blocks.codec().decompress(&block)?);
        }
    }

    fn next(&mut self) -> Result<Option<OwnedChannel>> {
        let Some(Reverse((_, run))) = self.heads.pop() else {
            return Ok(None);
        };
        let channel = self.pending[run].take();
        self.advance(run)?;
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{channels, policy};

    fn sorted_all(mut sorted: SortedBatches) -> Vec<OwnedChannel> {
        std::iter::from_fn(|| sorted.next_batch().unwrap())
            .flatten()
            .collect()
    }

    /// Channels with numbers in a scrambled order, duplicates and
    /// unnumbered ones among them.
    fn scrambled(n: u64) -> Vec<OwnedChannel> {
        let mut all = channels(1, n);
        for channel in &mut all {
            let id = channel.id;
            channel.tvg_chno = match id % 10 {
                0 => String::new().into(),
                1 => "42".into(),
                _ => format!("{}", (id * 7919) % 1000).into(),
            };
        }
        all
    }

    fn expected(all: &[OwnedChannel]) -> Vec<OwnedChannel> {
        let mut sorted = all.to_vec();
        sorted.sort_by_key(by_channel_number);
        sorted
    }

    #[test]
    fn every_tier_sorts_stably() {
        let dir = tempfile::tempdir().unwrap();
        let all = scrambled(3000);
        for (start, budget) in [
            (Tier::Plain, u64::MAX),
            (Tier::Compressed, u64::MAX),
            (Tier::Disk, u64::MAX),
            (Tier::Plain, 200_000),
        ] {
            let mut sorter = ExternalSorter::new(policy(dir.path()), start, budget);
            for batch in all.chunks(256) {
                sorter
                    .push(batch.to_vec(), MemoryPressureLevel::Optimal)
                    .unwrap();
            }
            let sorted = sorter.finish(100).unwrap();
            assert_eq!(sorted_all(sorted), expected(&all), "{start:?} {budget}");
        }
    }

    #[test]
    fn small_runs_merge_into_one_order() {
        let dir = tempfile::tempdir().unwrap();
        let all = scrambled(5000);
        let mut sorter =
            ExternalSorter::new(policy(dir.path()), Tier::Plain, u64::MAX).with_run_bytes(64 << 10);
        let levels = [
            MemoryPressureLevel::Optimal,
            MemoryPressureLevel::High,
            MemoryPressureLevel::Critical,
        ];
        for (i, batch) in all.chunks(100).enumerate() {
            sorter
                .push(batch.to_vec(), levels[(i / 10).min(2)])
                .unwrap();
        }
        assert!(sorter.runs() > 20, "{} runs", sorter.runs());
        let stats = sorter.stats();
        assert_eq!(stats.switches.len(), 2);
        assert_eq!(stats.tier, Some(Tier::Disk));
        let sorted = sorter.finish(333).unwrap();
        let out = sorted_all(sorted);
        assert_eq!(out.len(), 5000);
        assert_eq!(out, expected(&all));
    }
}
