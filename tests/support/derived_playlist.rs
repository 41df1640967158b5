//! Larger playlists derived from the real one (shared by the tests and the
//! benches through `#[path]`): the real playlist repeated, each round's
//! `tvg-id`s and stream URLs rewritten, so the shape and attributes are the
//! real ones and every key is unique.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use m3u_plugin_host::m3u::{read_all, M3uWriter};

/// Writes `channels` derived channels to `path`.
pub fn write_derived(path: &Path, channels: usize) {
    let text = include_str!("../fixtures/m3u/iptv-org-index-2021.m3u");
    let (header, originals, _) = read_all(text, 0);
    // Written under a temporary name: a run cut short leaves no half file.
    // (unique per thread, so two tests deriving the same file do not mix).
    let partial = path.with_extension(format!(
        "{}-{:?}.partial",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&partial).expect("create derived playlist");
    let mut writer = M3uWriter::new(BufWriter::new(file), &header).expect("writer");
    for (index, original) in originals.iter().cycle().take(channels).enumerate() {
        let round = index / originals.len();
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
        writer.write_channel(&channel).expect("write");
    }
    writer.finish().expect("finish").flush().expect("flush");
    std::fs::rename(&partial, path).expect("move derived playlist into place");
}

/// `dir/derived-<channels>.m3u`, written once and reused.
pub fn derived_input(dir: &Path, channels: usize) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the derived playlists' directory");
    let path = dir.join(format!("derived-{channels}.m3u"));
    if !path.exists() {
        write_derived(&path, channels);
    }
    path
}
