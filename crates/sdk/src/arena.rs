//! The fixed arena and the plugin's single instance.
//!
//! A Wasm instance runs one call at a time on one thread, and the host never
//! re-enters a plugin: that is the invariant every `unsafe` below relies on.

use core::cell::UnsafeCell;

/// Size of the arena every SDK plugin reserves (and declares to the host).
pub const ARENA_BYTES: usize = 1 << 20;
/// The arena's tail, kept for log lines and live config look-ups
/// (`config::lookup_live`) so they can run while a stage call holds the
/// data region.
pub const SCRATCH_BYTES: usize = 8 << 10;
/// The arena's head: stage input and output.
pub const DATA_BYTES: usize = ARENA_BYTES - SCRATCH_BYTES;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: wasm32-unknown-unknown plugins are single-threaded and the host
// never runs two calls into one instance at once, so no concurrent access.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));
static DATA_IN_USE: GuestCell<bool> = GuestCell::new(false);
static SCRATCH_IN_USE: GuestCell<bool> = GuestCell::new(false);

/// Address of the arena in linear memory.
pub(crate) fn arena_ptr() -> usize {
    ARENA.0.get() as usize
}

/// Runs `f` with exclusive access to the data region, or returns `None` if
/// it is already lent out (a nested call).
pub(crate) fn with_data<R>(f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
    with_region(&DATA_IN_USE, 0, DATA_BYTES, f)
}

/// Runs `f` with exclusive access to the scratch region, or `None` if it is
/// already lent out.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
    with_region(&SCRATCH_IN_USE, DATA_BYTES, SCRATCH_BYTES, f)
}

/// Runs `f` with the whole arena (data and scratch regions), or returns
/// `None` if either is lent out. For `m3u_init`, whose config table may
/// fill the arena.
pub(crate) fn with_whole_arena<R>(f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let busy = |flag: &GuestCell<bool>| flag.with(|flag| *flag);
    if busy(&DATA_IN_USE) || busy(&SCRATCH_IN_USE) {
        return None;
    }
    DATA_IN_USE.with(|flag| *flag = true);
    SCRATCH_IN_USE.with(|flag| *flag = true);
    let base = ARENA.0.get().cast::<u8>();
    // SAFETY: the range is the whole static. Both in-use flags are set (and
    // cleared below), so no region is lent out mutably meanwhile; the guest
    // is single-threaded.
    let arena = unsafe { core::slice::from_raw_parts(base, ARENA_BYTES) };
    let result = f(arena);
    DATA_IN_USE.with(|flag| *flag = false);
    SCRATCH_IN_USE.with(|flag| *flag = false);
    Some(result)
}

/// Runs `f` with the whole arena, writable: what the host does between
/// calls (the native test host writes inputs and reads answers with it).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn with_whole_arena_mut<R>(f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
    let busy = |flag: &GuestCell<bool>| flag.with(|flag| *flag);
    if busy(&DATA_IN_USE) || busy(&SCRATCH_IN_USE) {
        return None;
    }
    let base = ARENA.0.get().cast::<u8>();
    // SAFETY: the range is the whole static; no region is lent out (checked
    // above) and the test host holds its lock, so nothing else touches the
    // arena while `f` runs.
    let arena = unsafe { core::slice::from_raw_parts_mut(base, ARENA_BYTES) };
    Some(f(arena))
}

/// Marks both regions free. Every export calls this on entry: the host never
/// re-enters a plugin, so nothing can legitimately be lent out then, and a
/// trap in an earlier call (which unwinds nothing) must not leave a region
/// marked busy forever.
pub(crate) fn release_all() {
    DATA_IN_USE.with(|flag| *flag = false);
    SCRATCH_IN_USE.with(|flag| *flag = false);
}

fn with_region<R>(
    in_use: &GuestCell<bool>,
    offset: usize,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> Option<R> {
    if in_use.with(|flag| core::mem::replace(flag, true)) {
        return None;
    }
    let base = ARENA.0.get().cast::<u8>();
    // SAFETY: `offset + len <= ARENA_BYTES`, so the range lies inside the
    // static. The data and scratch regions do not overlap, and the in-use
    // flag (set above, cleared below) guarantees this is the only live
    // reference to this region; the guest is single-threaded.
    let region = unsafe { core::slice::from_raw_parts_mut(base.add(offset), len) };
    let result = f(region);
    in_use.with(|flag| *flag = false);
    Some(result)
}

/// A value owned by the one plugin instance (same invariant as the arena).
pub(crate) struct GuestCell<T>(UnsafeCell<T>);

// SAFETY: single-threaded guest, no re-entrant calls (module docs).
unsafe impl<T> Sync for GuestCell<T> {}

impl<T> GuestCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        GuestCell(UnsafeCell::new(value))
    }

    /// Runs `f` with exclusive access to the value; never nested.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single-threaded guest; each export enters once and the
        // dispatcher does not call `with` on the same cell while inside it.
        let value = unsafe { &mut *self.0.get() };
        f(value)
    }
}
