//! A first-in first-out hold of whole batches (a fully loaded source, the
//! numbering barrier, a stage's held output), moving down a tier when
//! memory pressure rises.

use std::collections::VecDeque;

use m3u_proxy_plugin_abi::MemoryPressureLevel;

use super::tiered::{Place, StorePolicy, Tier, TieredBlocks};
use super::{approx_heap_bytes, HoldStats};
use crate::{OwnedChannel, Result};

enum Held {
    Plain(Vec<OwnedChannel>),
    Block(Place),
}

struct Entry<A> {
    held: Held,
    aux: A,
}

/// Batches held in arrival order, each with a small companion value `A`
/// that stays in memory (the numbering barrier keeps its explicit-number
/// bits there).
pub struct BatchQueue<A = ()> {
    blocks: TieredBlocks,
    entries: VecDeque<Entry<A>>,
    plain_bytes: u64,
    peak_plain_bytes: u64,
    /// Plain bytes above which the queue compresses even if pressure is low
    /// (the need estimate's budget; `u64::MAX`: none).
    plain_budget: u64,
    channels: u64,
}

impl<A> BatchQueue<A> {
    /// An empty queue for `holder`, starting in tier `start` (or the
    /// policy's floor), compressing once plain channels pass
    /// `plain_budget` bytes.
    pub fn new(holder: &'static str, policy: StorePolicy, start: Tier, plain_budget: u64) -> Self {
        BatchQueue {
            blocks: TieredBlocks::new(holder, policy, start),
            entries: VecDeque::new(),
            plain_bytes: 0,
            peak_plain_bytes: 0,
            plain_budget,
            channels: 0,
        }
    }

    /// The current tier.
    pub fn tier(&self) -> Tier {
        self.blocks.tier
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Holds a batch, first moving down a tier if `level` (the memory
    /// pressure now) or the plain budget asks for it.
    ///
    /// # Errors
    /// The store cannot take the batch (disk full): the run must fail.
    pub fn push(
        &mut self,
        channels: Vec<OwnedChannel>,
        aux: A,
        level: MemoryPressureLevel,
    ) -> Result<()> {
        self.adapt(level)?;
        self.channels += channels.len() as u64;
        let held = if self.blocks.tier == Tier::Plain {
            let bytes: u64 = channels.iter().map(approx_heap_bytes).sum();
            self.plain_bytes += bytes;
            self.peak_plain_bytes = self.peak_plain_bytes.max(self.plain_bytes);
            Held::Plain(channels)
        } else {
            Held::Block(self.blocks.put(&channels)?)
        };
        self.entries.push_back(Entry { held, aux });
        Ok(())
    }

    /// Moves what is held down to the tier `level` asks for.
    ///
    /// # Errors
    /// The store cannot take the moved blocks.
    pub fn adapt(&mut self, level: MemoryPressureLevel) -> Result<()> {
        let Some((wanted, reason)) =
            self.blocks
                .wanted_move(level, self.plain_bytes, self.plain_budget)
        else {
            return Ok(());
        };
        self.blocks.switch(wanted, self.channels, reason);
        for entry in &mut self.entries {
            entry.held = match std::mem::replace(&mut entry.held, Held::Plain(Vec::new())) {
                Held::Plain(channels) => {
                    self.plain_bytes -= channels.iter().map(approx_heap_bytes).sum::<u64>();
                    Held::Block(self.blocks.put(&channels)?)
                }
                Held::Block(place) if wanted.is_spilled() => {
                    Held::Block(self.blocks.demote(place)?)
                }
                held => held,
            };
        }
        Ok(())
    }

    /// The oldest batch and its companion value, `None` when empty. Its
    /// block is freed as it comes out.
    ///
    /// # Errors
    /// A block that cannot be read back or decoded.
    pub fn pop(&mut self) -> Result<Option<(Vec<OwnedChannel>, A)>> {
        let Some(entry) = self.entries.pop_front() else {
            return Ok(None);
        };
        let channels = match entry.held {
            Held::Plain(channels) => {
                self.plain_bytes -= channels.iter().map(approx_heap_bytes).sum::<u64>();
                channels
            }
            Held::Block(place) => {
                let block = self.blocks.take(place)?;
                self.blocks.codec().decode(&block)?
            }
        };
        Ok(Some((channels, entry.aux)))
    }

    /// What holding cost so far.
    pub fn stats(&self) -> HoldStats {
        HoldStats::from_blocks(&self.blocks, self.channels, self.peak_plain_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{channels, policy};

    fn drain<A>(queue: &mut BatchQueue<A>) -> Vec<(Vec<OwnedChannel>, A)> {
        std::iter::from_fn(|| queue.pop().unwrap()).collect()
    }

    #[test]
    fn every_tier_gives_back_every_batch_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for start in [Tier::Plain, Tier::Compressed, Tier::Disk] {
            let mut queue = BatchQueue::new("test", policy(dir.path()), start, u64::MAX);
            queue
                .push(channels(1, 100), 'a', MemoryPressureLevel::Optimal)
                .unwrap();
            queue
                .push(channels(101, 7), 'b', MemoryPressureLevel::Optimal)
                .unwrap();
            assert_eq!(queue.tier(), start);
            assert_eq!(
                drain(&mut queue),
                vec![(channels(1, 100), 'a'), (channels(101, 7), 'b')]
            );
            assert_eq!(queue.stats().channels, 107);
        }
    }

    #[test]
    fn rising_pressure_moves_what_is_held_down_a_tier_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = BatchQueue::new("test", policy(dir.path()), Tier::Plain, u64::MAX);
        queue
            .push(channels(1, 50), 1, MemoryPressureLevel::Optimal)
            .unwrap();
        queue
            .push(channels(51, 50), 2, MemoryPressureLevel::High)
            .unwrap();
        assert_eq!(queue.tier(), Tier::Compressed);
        queue
            .push(channels(101, 50), 3, MemoryPressureLevel::Critical)
            .unwrap();
        assert_eq!(queue.tier(), Tier::Disk);
        // Falling pressure does not move anything back up.
        queue
            .push(channels(151, 50), 4, MemoryPressureLevel::Optimal)
            .unwrap();
        let stats = queue.stats();
        assert_eq!(stats.tier, Some(Tier::Disk));
        assert_eq!(
            stats
                .switches
                .iter()
                .map(|s| (s.from, s.to, s.at_channels))
                .collect::<Vec<_>>(),
            vec![
                (Tier::Plain, Tier::Compressed, 50),
                (Tier::Compressed, Tier::Disk, 100)
            ]
        );
        assert!(stats.switches[0].reason.contains("pressure is high"));
        let out = drain(&mut queue);
        assert_eq!(
            out.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let all: Vec<OwnedChannel> = out.into_iter().flat_map(|(c, _)| c).collect();
        assert_eq!(all, channels(1, 200));
    }

    #[test]
    fn a_plain_budget_compresses_without_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = BatchQueue::new("test", policy(dir.path()), Tier::Plain, 10_000);
        for first in [1, 41, 81] {
            queue
                .push(channels(first, 40), (), MemoryPressureLevel::Optimal)
                .unwrap();
        }
        assert_eq!(queue.tier(), Tier::Compressed);
        assert!(queue.stats().switches[0].reason.contains("can spare"));
        let all: Vec<OwnedChannel> = drain(&mut queue).into_iter().flat_map(|(c, _)| c).collect();
        assert_eq!(all, channels(1, 120));
    }
}
