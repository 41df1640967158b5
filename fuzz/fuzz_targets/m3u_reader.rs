//! Arbitrary bytes through `M3uReader`: no panic, and parse → write → parse
//! gives back the same channels and header up to the writer's documented
//! replacements, then writing is a fixed point: the property is in
//! `tests/support/m3u_round_trip.rs`, shared with the regression tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/m3u_round_trip.rs"]
mod m3u_round_trip;

fuzz_target!(|data: &[u8]| {
    m3u_round_trip::assert_round_trip(data);
});
