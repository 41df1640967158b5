//! Derives a larger playlist from the real one by repeating its entries with
//! rewritten ids and URLs (same shape, same attributes, unique keys):
//! `cargo run --release --example derive_playlist -- 1000000 > big.m3u`.

use std::io::{BufWriter, Write};

use m3u_plugin_host::m3u::{read_all, M3uWriter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wanted: usize = std::env::args()
        .nth(1)
        .ok_or("usage: derive_playlist <channels>")?
        .parse()?;
    let text = include_str!("../tests/fixtures/m3u/iptv-org-index-2021.m3u");
    let (header, channels, _) = read_all(text, 0);
    let stdout = std::io::stdout().lock();
    let mut writer = M3uWriter::new(BufWriter::new(stdout), &header)?;
    for (index, original) in channels.iter().cycle().take(wanted).enumerate() {
        let round = index / channels.len();
        let mut channel = original.clone();
        if round > 0 {
            if !channel.tvg_id.is_empty() {
                channel.tvg_id = format!("{}.r{round}", channel.tvg_id).into();
            }
            let separator = if channel.stream_url.contains('?') {
                '&'
            } else {
                '?'
            };
            channel.stream_url = format!("{}{separator}copy={round}", channel.stream_url).into();
        }
        writer.write_channel(&channel)?;
    }
    writer.finish()?.flush()?;
    Ok(())
}
