//! Channels held behind the numbering barrier (`inmemory_numbering`), plain
//! or compressed.
//!
//! A streaming pipeline holds only the batch in flight, so compressing
//! batches between stages would save nothing: the memory an in-memory
//! strategy costs is what it *holds* until the input ends. Under high memory
//! pressure ([`HoldMode::Compressed`]) each held batch is encoded with
//! postcard and compressed with LZ4 (pure Rust); at the end the batches come
//! back one at a time, and each compressed block is freed as it is
//! decompressed, so the host never keeps both copies of more than one batch.

use super::HeldStats;
use crate::{Error, OwnedChannel, Result};

/// How held batches are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldMode {
    /// As channels (fastest, largest).
    Plain,
    /// As LZ4-compressed postcard blocks, one per batch.
    Compressed,
}

/// One held batch: its channels and the explicit-number bits of the first
/// numbering pass (`reserve_explicit_numbers`).
pub(crate) struct HeldBatch {
    pub channels: Vec<OwnedChannel>,
    pub explicit: Vec<u64>,
}

/// Batches held until the input ends, in arrival order.
pub(crate) struct HeldBatches {
    mode: HoldMode,
    plain: Vec<HeldBatch>,
    blocks: Vec<(Vec<u8>, Vec<u64>)>,
    channels: u64,
    encoded_bytes: u64,
    compressed_bytes: u64,
}

impl HeldBatches {
    pub(crate) fn new(mode: HoldMode) -> Self {
        HeldBatches {
            mode,
            plain: Vec::new(),
            blocks: Vec::new(),
            channels: 0,
            encoded_bytes: 0,
            compressed_bytes: 0,
        }
    }

    /// What holding cost, for the run's statistics.
    pub(crate) fn stats(&self) -> HeldStats {
        HeldStats {
            mode: match self.mode {
                HoldMode::Plain => "plain",
                HoldMode::Compressed => "compressed",
            }
            .to_string(),
            channels: self.channels,
            encoded_bytes: self.encoded_bytes,
            compressed_bytes: self.compressed_bytes,
        }
    }

    /// Holds `batch` (consumed: in compressed mode only the block remains).
    pub(crate) fn push(&mut self, batch: HeldBatch) -> Result<()> {
        if batch.channels.is_empty() {
            return Ok(());
        }
        self.channels += batch.channels.len() as u64;
        match self.mode {
            HoldMode::Plain => self.plain.push(batch),
            HoldMode::Compressed => {
                let encoded = postcard::to_allocvec(&batch.channels)
                    .map_err(|error| Error::malformed(format!("held batch: {error}")))?;
                drop(batch.channels);
                let mut block = lz4_flex::compress_prepend_size(&encoded);
                block.shrink_to_fit();
                self.encoded_bytes += encoded.len() as u64;
                self.compressed_bytes += block.len() as u64;
                self.blocks.push((block, batch.explicit));
            }
        }
        Ok(())
    }

    /// The held batches in arrival order, each decompressed only when asked
    /// for; a block is freed as soon as its batch is out.
    pub(crate) fn into_batches(self) -> impl Iterator<Item = Result<HeldBatch>> {
        let plain = self.plain.into_iter().map(Ok);
        let compressed = self.blocks.into_iter().map(|(block, explicit)| {
            Ok(HeldBatch {
                channels: decode_block(&block)?,
                explicit,
            })
        });
        plain.chain(compressed)
    }
}

fn decode_block(block: &[u8]) -> Result<Vec<OwnedChannel>> {
    let encoded = lz4_flex::decompress_size_prepended(block)
        .map_err(|error| Error::malformed(format!("held block does not decompress: {error}")))?;
    let batch: Vec<crate::abi::Channel<'_>> = postcard::from_bytes(&encoded)
        .map_err(|error| Error::malformed(format!("held block does not decode: {error}")))?;
    Ok(batch
        .into_iter()
        .map(crate::abi::Channel::into_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{Attribute, Channel};

    fn batch(first_id: u64, n: u64) -> Vec<OwnedChannel> {
        (first_id..first_id + n)
            .map(|id| Channel {
                id,
                source_id: 1,
                channel_name: format!("Channel {id} HD").into(),
                group_title: "News".into(),
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

    fn held(channels: Vec<OwnedChannel>) -> HeldBatch {
        let explicit = vec![channels.len() as u64; channels.len().div_ceil(64)];
        HeldBatch { channels, explicit }
    }

    /// Each batch given back, with its explicit-number bits.
    type Returned = Vec<(Vec<OwnedChannel>, Vec<u64>)>;

    fn round_trip(mode: HoldMode) -> (Returned, HeldStats) {
        let mut batches = HeldBatches::new(mode);
        batches.push(held(batch(1, 100))).unwrap();
        batches.push(held(Vec::new())).unwrap();
        batches.push(held(batch(101, 7))).unwrap();
        let stats = batches.stats();
        let out = batches
            .into_batches()
            .map(|b| b.map(|b| (b.channels, b.explicit)))
            .collect::<Result<Vec<_>>>()
            .unwrap();
        (out, stats)
    }

    #[test]
    fn both_modes_give_back_every_batch_in_order() {
        let expected = vec![(batch(1, 100), vec![100, 100]), (batch(101, 7), vec![7])];
        for mode in [HoldMode::Plain, HoldMode::Compressed] {
            let (out, stats) = round_trip(mode);
            assert_eq!(out, expected, "{mode:?}");
            assert_eq!(stats.channels, 107);
        }
    }

    #[test]
    fn compressed_blocks_are_smaller_than_their_encoding() {
        let (_, stats) = round_trip(HoldMode::Compressed);
        assert!(stats.encoded_bytes > 0);
        assert!(
            stats.compressed_bytes * 2 < stats.encoded_bytes,
            "{stats:?}"
        );
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let mut batches = HeldBatches::new(HoldMode::Compressed);
        batches.push(held(batch(1, 10))).unwrap();
        let block = &mut batches.blocks[0].0;
        block.truncate(block.len() / 2);
        let results: Vec<_> = batches.into_batches().collect();
        assert!(results[0].is_err());
    }
}
