//! The fixed arena and the plugin's single instance.
//!
//! A Wasm instance runs one call at a time on one thread, and the host never
//! re-enters a plugin: that is the invariant every `unsafe` below relies on.

use core::cell::UnsafeCell;

/// Size of the arena every SDK plugin reserves, in bytes.
pub const ARENA_BYTES: usize = 1 << 20;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: wasm32-unknown-unknown plugins are single-threaded and the host
// never runs two calls into one instance at once, so no concurrent access.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Address of the arena in linear memory.
pub(crate) fn arena_ptr() -> usize {
    ARENA.0.get() as usize
}

/// Runs `f` with exclusive access to the arena.
///
/// Only the dispatcher calls this, once per export call and never nested.
pub(crate) fn with_arena<R>(f: impl FnOnce(&mut [u8; ARENA_BYTES]) -> R) -> R {
    // SAFETY: see the module docs: one call at a time, and the dispatcher
    // never nests `with_arena`, so this is the only live reference.
    let arena = unsafe { &mut *ARENA.0.get() };
    f(arena)
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
