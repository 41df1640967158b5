//! What the bench binaries share (`mod common;` in each).

use m3u_plugin_host::m3u::read_all;
use m3u_plugin_host::OwnedChannel;

/// The real playlist, ids 1..=n as the pipeline assigns them.
pub fn real_channels() -> Vec<OwnedChannel> {
    let text = include_str!("../../tests/fixtures/m3u/iptv-org-index-2021.m3u");
    let (_, mut channels, _) = read_all(text, 0);
    for (id, channel) in channels.iter_mut().enumerate() {
        channel.id = id as u64 + 1;
    }
    channels
}

/// Runs `bench` as the CLI runs pipelines: on a thread with a large stack,
/// where plugin calls get large fuel slices (`runtime::stack_safe_fuel_slice`).
pub fn on_pipeline_thread(bench: fn()) {
    std::thread::Builder::new()
        .stack_size(m3u_plugin_host::PIPELINE_THREAD_STACK)
        .spawn(bench)
        .expect("bench thread")
        .join()
        .expect("bench thread finished");
}
