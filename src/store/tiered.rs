//! The tiers of one holder: which tier it is in, the move down a tier when
//! memory pressure rises, and the log of every move.

use std::path::PathBuf;

use m3u_proxy_plugin_abi::MemoryPressureLevel;
use serde::Serialize;

use super::blocks::{BlockBackend, BlockId, DiskBlocks, MemoryBlocks};
use super::codec::BlockCodec;
use crate::{OwnedChannel, Result};

/// Where a holder keeps what it holds, from most to least memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// As channels (fastest, ~1.6 KB per channel).
    Plain,
    /// As compressed blocks in memory.
    Compressed,
    /// As compressed blocks in a spill file.
    Disk,
}

impl Tier {
    /// Lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Plain => "plain",
            Tier::Compressed => "compressed",
            Tier::Disk => "disk",
        }
    }
}

/// How a run's holders choose and change tiers (`[store]`).
#[derive(Clone, Debug)]
pub struct StorePolicy {
    /// Compression of blocks.
    pub codec: BlockCodec,
    /// The disk tier's directory; `None`: no disk tier.
    pub spill_directory: Option<PathBuf>,
    /// Pressure from which held data is compressed.
    pub compress_from: MemoryPressureLevel,
    /// Pressure from which held data goes to disk.
    pub disk_from: MemoryPressureLevel,
    /// Lowest tier a holder may use (`compress_held = "always"` starts at
    /// `Compressed`).
    pub floor: Tier,
}

impl StorePolicy {
    /// The tier this pressure level asks for.
    pub fn tier_for(&self, level: MemoryPressureLevel) -> Tier {
        let wanted = if level >= self.disk_from && self.spill_directory.is_some() {
            Tier::Disk
        } else if level >= self.compress_from {
            Tier::Compressed
        } else {
            Tier::Plain
        };
        wanted.max(self.floor)
    }
}

/// One move of a holder down a tier, for logs and statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierSwitch {
    /// The holder (`inmemory_numbering`, `sorted_writer`, …).
    pub holder: String,
    /// Tier before.
    pub from: Tier,
    /// Tier after.
    pub to: Tier,
    /// Channels held when it moved.
    pub at_channels: u64,
    /// Why.
    pub reason: String,
}

/// Where a block is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    Memory(BlockId),
    Disk(BlockId),
}

/// The compressed blocks of one holder, in memory or on disk, and its tier.
pub(crate) struct TieredBlocks {
    pub(crate) holder: &'static str,
    pub(crate) policy: StorePolicy,
    pub(crate) tier: Tier,
    memory: MemoryBlocks,
    disk: Option<DiskBlocks>,
    pub(crate) switches: Vec<TierSwitch>,
    pub(crate) encoded_bytes: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) peak_memory_bytes: u64,
}

impl TieredBlocks {
    pub(crate) fn new(holder: &'static str, policy: StorePolicy, start: Tier) -> Self {
        let tier = start.max(policy.floor);
        TieredBlocks {
            holder,
            policy,
            tier,
            memory: MemoryBlocks::default(),
            disk: None,
            switches: Vec::new(),
            encoded_bytes: 0,
            stored_bytes: 0,
            peak_memory_bytes: 0,
        }
    }

    pub(crate) fn codec(&self) -> &BlockCodec {
        &self.policy.codec
    }

    /// Encodes and stores channels in the current tier (which must not be
    /// `Plain`).
    pub(crate) fn put(&mut self, channels: &[OwnedChannel]) -> Result<Place> {
        let (block, encoded) = self.policy.codec.encode_counted(channels)?;
        self.encoded_bytes += encoded as u64;
        self.stored_bytes += block.len() as u64;
        self.put_block(&block)
    }

    fn put_block(&mut self, block: &[u8]) -> Result<Place> {
        if self.tier == Tier::Disk {
            let disk = self.disk_backend()?;
            return Ok(Place::Disk(disk.put(block)?));
        }
        let id = self.memory.put(block)?;
        self.peak_memory_bytes = self.peak_memory_bytes.max(self.memory.held_bytes());
        Ok(Place::Memory(id))
    }

    fn disk_backend(&mut self) -> Result<&mut DiskBlocks> {
        if self.disk.is_none() {
            let directory = self.policy.spill_directory.clone().unwrap_or_default();
            self.disk = Some(DiskBlocks::create(&directory)?);
        }
        Ok(self.disk.as_mut().expect("created above"))
    }

    /// A block's bytes, taken out of its backend.
    pub(crate) fn take(&mut self, place: Place) -> Result<Vec<u8>> {
        match place {
            Place::Memory(id) => self.memory.take(id),
            Place::Disk(id) => self.disk_backend()?.take(id),
        }
    }

    /// Moves a memory block to disk (the tier must be `Disk`).
    pub(crate) fn demote(&mut self, place: Place) -> Result<Place> {
        match place {
            Place::Memory(id) => {
                let block = self.memory.take(id)?;
                self.put_block(&block)
            }
            Place::Disk(_) => Ok(place),
        }
    }

    /// The tier to move down to before holding more, and why: the tier the
    /// pressure asks for, or compressed once the plain bytes held pass the
    /// budget. `None`: stay.
    pub(crate) fn wanted_move(
        &self,
        level: MemoryPressureLevel,
        plain_bytes: u64,
        plain_budget: u64,
    ) -> Option<(Tier, String)> {
        let by_pressure = self.policy.tier_for(level);
        if by_pressure > self.tier {
            Some((by_pressure, format!("memory pressure is {}", level.name())))
        } else if self.tier == Tier::Plain && plain_bytes > plain_budget {
            Some((
                Tier::Compressed,
                format!(
                    "{} MiB held plain, over the {} MiB the run can spare",
                    plain_bytes >> 20,
                    plain_budget >> 20
                ),
            ))
        } else {
            None
        }
    }

    /// Records a move to `to` (the caller moves what it holds).
    pub(crate) fn switch(&mut self, to: Tier, at_channels: u64, reason: String) {
        let from = self.tier;
        log::info!(
            "{}: holding {} channels, moving from {} to {} ({reason})",
            self.holder,
            at_channels,
            from.name(),
            to.name()
        );
        self.switches.push(TierSwitch {
            holder: self.holder.to_string(),
            from,
            to,
            at_channels,
            reason,
        });
        self.tier = to;
    }

    /// Where the disk tier is, for statistics.
    pub(crate) fn disk_location(&self) -> Option<String> {
        self.disk.as_ref().map(BlockBackend::location)
    }
}
