//! The spill store: one place for everything a run holds across batches
//! (a fully loaded source, a stage's held output, the numbering barrier,
//! the sorted writer's runs), with tiers.
//!
//! - **Tiers** ([`Tier`]): plain channels in memory; compressed blocks in
//!   memory ([`BlockCodec`]: LZ4, or zstd with a level and an optional
//!   dictionary trained from the user's playlists); compressed blocks in a
//!   spill file on local disk ([`DiskBlocks`]). A remote backend is one more
//!   [`BlockBackend`].
//! - **Chosen by need** ([`plan_tier`]): a holder starts in the first tier
//!   whose estimated need (from the input's size) fits the memory the run
//!   can spare, and never needs more than the disk tier's bounded buffers.
//! - **Adapting mid-run**: every push reads the memory pressure (cached by
//!   the monitor) and moves what is held down a tier when it crosses
//!   `[store] compress_from` / `disk_from`, or when plain channels pass the
//!   budget. Moves are logged and reported ([`TierSwitch`] in
//!   [`HoldStats`]). Nothing moves back up during a run.
//! - **Bounded**: blocks are written and read back one at a time; a spill
//!   file is unlinked from the moment it exists, so it is gone when the run
//!   ends however it ends. A backend that fails (disk full) fails the run
//!   with [`ErrorKind::Store`](crate::ErrorKind::Store), naming the store
//!   and what to do; no truncated playlist is written.
//!
//! [`BatchQueue`] holds whole batches in order; [`ExternalSorter`] sorts by
//! channel number at any size.

mod blocks;
mod codec;
mod queue;
mod sort;
mod tiered;

use serde::Serialize;

pub(crate) use blocks::store_error;
pub use blocks::{BlockBackend, BlockId, DiskBlocks, MemoryBlocks};
pub use codec::{train_dictionary, BlockCodec, BlockReader};
pub use queue::BatchQueue;
pub use sort::{
    by_channel_number, by_id, ExternalSorter, KeyFn, SortKey, SortedBatches, SORT_RUN_BYTES,
};
pub use tiered::{RemoteSpill, StorePolicy, Tier, TierSwitch};

use crate::OwnedChannel;

/// Average bytes of one M3U entry (EXTINF line, companions and URL) in the
/// real iptv-org playlist: turns an input's size into a channel estimate.
pub const M3U_BYTES_PER_CHANNEL: u64 = 285;

/// What one channel held plain costs in memory (measured: ~1.6 KB per
/// channel for the in-memory path, allocator overhead included).
pub const PLAIN_BYTES_PER_CHANNEL: u64 = 1600;

/// What a holder held during a run (`--stats-json`: `holds`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HoldStats {
    /// The strategy that held (`inmemory_full`, `inmemory_numbering`, …).
    pub holder: String,
    /// The tier it ended in.
    pub tier: Option<Tier>,
    /// Block compression (`lz4`, `zstd-3`, …).
    pub codec: String,
    /// Channels held.
    pub channels: u64,
    /// Postcard bytes of what went into blocks.
    pub encoded_bytes: u64,
    /// Bytes of those blocks after compression.
    pub stored_bytes: u64,
    /// Most plain channel bytes held at once (estimated).
    pub peak_plain_bytes: u64,
    /// Most compressed bytes held in memory at once.
    pub peak_memory_bytes: u64,
    /// Where blocks spilled, if they did: the spill directory, the Redis
    /// server or the bucket.
    pub spill_directory: Option<String>,
    /// Sorted runs written (`sorted_writer` only).
    pub sorted_runs: u64,
    /// Every move down a tier, with its reason.
    pub switches: Vec<TierSwitch>,
}

impl HoldStats {
    fn from_blocks(blocks: &tiered::TieredBlocks, channels: u64, peak_plain_bytes: u64) -> Self {
        HoldStats {
            holder: blocks.holder.to_string(),
            tier: Some(blocks.tier),
            codec: blocks.codec().describe(),
            channels,
            encoded_bytes: blocks.encoded_bytes,
            stored_bytes: blocks.stored_bytes,
            peak_plain_bytes,
            peak_memory_bytes: blocks.peak_memory_bytes,
            spill_directory: blocks.spill_location(),
            sorted_runs: 0,
            switches: blocks.switches.clone(),
        }
    }
}

/// Approximate heap and inline bytes of one channel held plain.
pub fn approx_heap_bytes(channel: &OwnedChannel) -> u64 {
    // Each owned string is one allocation; allocators round up and keep a
    // header, about 16 bytes each.
    const PER_ALLOCATION: usize = 16;
    let text = |s: &str| {
        if s.is_empty() {
            0
        } else {
            s.len() + PER_ALLOCATION
        }
    };
    let fields = [
        &channel.tvg_id,
        &channel.tvg_name,
        &channel.tvg_chno,
        &channel.tvg_logo,
        &channel.tvg_shift,
        &channel.group_title,
        &channel.channel_name,
        &channel.stream_url,
        &channel.duration,
        &channel.video_codec,
        &channel.audio_codec,
        &channel.resolution,
    ];
    let mut bytes = std::mem::size_of::<OwnedChannel>();
    bytes += fields.iter().map(|field| text(field)).sum::<usize>();
    bytes += channel
        .attributes
        .iter()
        .map(|a| std::mem::size_of_val(a) + text(&a.name) + text(&a.value))
        .sum::<usize>();
    bytes += channel
        .extras
        .iter()
        .map(|e| std::mem::size_of_val(e) + text(e))
        .sum::<usize>();
    bytes as u64
}

/// Memory a holder of the whole playlist needs in `tier` for an M3U input
/// of `input_bytes` (the design's `estimated_memory_usage(input_size)`):
/// ~1.6 KB per channel plain, the codec's measured share of the input
/// compressed, and only its bounded buffers (one block per batch or sorted
/// run, not counted here) on disk.
pub fn estimated_memory_usage(codec: &BlockCodec, tier: Tier, input_bytes: u64) -> u64 {
    match tier {
        Tier::Plain => input_bytes / M3U_BYTES_PER_CHANNEL * PLAIN_BYTES_PER_CHANNEL,
        Tier::Compressed => input_bytes * codec.expected_ratio_percent() / 100,
        Tier::Disk | Tier::Redis | Tier::S3 => 0,
    }
}

/// The starting tier of a holder, and its plain budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPlan {
    /// The tier to start in.
    pub tier: Tier,
    /// Plain bytes past which it compresses anyway.
    pub plain_budget: u64,
    /// Why, for the stage's reason and the log.
    pub reason: String,
}

/// Chooses where a holder starts, from what it will need
/// (`estimated_memory_usage(input_size)`): `input_bytes` (the sources'
/// size, if known) and `spare_bytes` (the memory the run can use before
/// pressure reaches `high`, shared by the run's holders). `None` when even
/// the last tier does not fit (no spill directory and too little memory).
pub fn plan_tier(
    policy: &StorePolicy,
    level: m3u_proxy_plugin_abi::MemoryPressureLevel,
    input_bytes: Option<u64>,
    spare_bytes: u64,
) -> Option<TierPlan> {
    let by_pressure = policy.tier_for(level);
    let mib = |bytes: u64| bytes >> 20;
    let Some(input) = input_bytes else {
        let by_pressure = by_pressure.max(policy.floor);
        return Some(TierPlan {
            tier: by_pressure,
            plain_budget: spare_bytes,
            reason: format!(
                "input size unknown: starts {}, moves down past {} MiB",
                by_pressure.name(),
                mib(spare_bytes)
            ),
        });
    };
    let plain_need = estimated_memory_usage(&policy.codec, Tier::Plain, input);
    let compressed_need = estimated_memory_usage(&policy.codec, Tier::Compressed, input);
    let (by_need, why) = if policy.floor > Tier::Plain && compressed_need <= spare_bytes {
        (
            Tier::Compressed,
            format!(
                "always compressed ({}): needs ~{} MiB",
                policy.codec.describe(),
                mib(compressed_need).max(1)
            ),
        )
    } else if policy.floor == Tier::Plain && plain_need <= spare_bytes {
        (
            Tier::Plain,
            format!("needs ~{} MiB plain", mib(plain_need).max(1)),
        )
    } else if compressed_need <= spare_bytes {
        (
            Tier::Compressed,
            format!(
                "~{} MiB plain would not fit in {} MiB; ~{} MiB compressed does",
                mib(plain_need),
                mib(spare_bytes),
                mib(compressed_need).max(1)
            ),
        )
    } else if let Some(spill) = policy.spill_tier() {
        (
            spill,
            format!(
                "~{} MiB compressed would not fit in {} MiB: spills to {}",
                mib(compressed_need),
                mib(spare_bytes),
                spill.name()
            ),
        )
    } else {
        return None;
    };
    let tier = by_need.max(by_pressure);
    let reason = if tier == by_need {
        why
    } else {
        format!("{why}; pressure {} asks for {}", level.name(), tier.name())
    };
    Some(TierPlan {
        tier,
        plain_budget: spare_bytes,
        reason,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::abi::{Attribute, Channel};
    use m3u_proxy_plugin_abi::MemoryPressureLevel;

    pub(crate) fn channels(first_id: u64, n: u64) -> Vec<OwnedChannel> {
        (first_id..first_id + n)
            .map(|id| Channel {
                id,
                source_id: 1,
                channel_name: format!("Channel {id} HD").into(),
                group_title: "News".into(),
                tvg_chno: format!("{}", 100_000 - id).into(),
                stream_url: format!("http://example.com/live/{id}.m3u8").into(),
                attributes: vec![Attribute {
                    name: "tvg-country".into(),
                    value: "US".into(),
                }],
                extras: vec!["#EXTVLCOPT:http-user-agent=VLC".into()],
                ..Channel::default()
            })
            .collect()
    }

    pub(crate) fn policy(spill: &std::path::Path) -> StorePolicy {
        StorePolicy {
            codec: BlockCodec::Lz4,
            spill_directory: Some(spill.to_path_buf()),
            remote: None,
            compress_from: MemoryPressureLevel::High,
            disk_from: MemoryPressureLevel::Critical,
            floor: Tier::Plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::policy;
    use super::*;
    use m3u_proxy_plugin_abi::MemoryPressureLevel::{Critical, Optimal};

    #[test]
    fn the_tier_is_chosen_by_what_the_input_will_need() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path());
        let mib = 1u64 << 20;
        // 10k channels (~2.8 MiB of M3U): ~15 MiB plain fits in 100 MiB.
        let small = plan_tier(&policy, Optimal, Some(2_850_000), 100 * mib).unwrap();
        assert_eq!(small.tier, Tier::Plain);
        // 200k channels in a 256 MiB box with ~120 MiB to spare: compressed.
        let medium = plan_tier(&policy, Optimal, Some(57 * mib), 120 * mib).unwrap();
        assert_eq!(medium.tier, Tier::Compressed, "{}", medium.reason);
        // 1M channels with 20 MiB to spare: disk.
        let large = plan_tier(&policy, Optimal, Some(285 * mib), 20 * mib).unwrap();
        assert_eq!(large.tier, Tier::Disk, "{}", large.reason);
        assert!(large.reason.contains("spills to disk"), "{}", large.reason);
        // Pressure can only push further down.
        let pressed = plan_tier(&policy, Critical, Some(2_850_000), 100 * mib).unwrap();
        assert_eq!(pressed.tier, Tier::Disk);
        // Without a spill directory, what does not fit is not usable.
        let no_disk = StorePolicy {
            spill_directory: None,
            ..policy.clone()
        };
        assert_eq!(
            plan_tier(&no_disk, Optimal, Some(285 * mib), 20 * mib),
            None
        );
        // Unknown size: starts by pressure, budget from what is spare.
        let unknown = plan_tier(&policy, Optimal, None, 30 * mib).unwrap();
        assert_eq!(
            (unknown.tier, unknown.plain_budget),
            (Tier::Plain, 30 * mib)
        );
    }

    #[test]
    fn plain_size_estimate_is_between_the_encoding_and_the_measured_figure() {
        // Held plain, a channel costs more than its postcard encoding (every
        // field is an owned string with a header) but no more than the
        // measured ~1.6 KB per real channel (on 32-bit targets, less).
        let all = test_support::channels(1, 100);
        let estimated = all.iter().map(approx_heap_bytes).sum::<u64>();
        let encoded = BlockCodec::None.encode(&all).unwrap().len() as u64;
        assert!(estimated > 2 * encoded, "{estimated} vs {encoded}");
        assert!(estimated / 100 < PLAIN_BYTES_PER_CHANNEL, "{estimated}");
    }
}
