//! drop_adult_zig: a filtering-stage plugin for m3u-plugin-host, written in
//! Zig against docs/ABI.md (ABI version 2) alone. It is the twin of the Rust
//! test plugin tests/plugins/drop-adult: it reads only `group_title` and drops
//! every channel whose group title, ASCII-lowercased, contains "adult".
//!
//! No libc, no WASI, no allocator, and no host function: the input is read in
//! place from the arena and the answer is written right after it (ABI.md §4),
//! so the module imports nothing.
//!
//! Build (what build.sh runs; Zig 0.14.1 from `pip install ziglang==0.14.1`):
//!   python3 -m ziglang build-exe drop_adult.zig -target wasm32-freestanding \
//!     -O ReleaseSmall -fno-entry -rdynamic --stack 65536 -flld \
//!     -femit-bin=drop_adult_zig.wasm

// ABI.md §1: the ABI version, a Wasm custom section "m3u_abi_version" whose
// content is the u32 2, little-endian. Zig has no attribute for a custom
// section (a `linksection("m3u_abi_version")` constant becomes ordinary data
// in memory, and the host refuses the module), so it is written in global
// assembly: LLVM emits a section named ".custom_section.NAME" as the custom
// section NAME, and LLD copies it into the module. Zig's own wasm linker
// (-fno-lld) drops it, hence -flld. Check with `m3u-plugin-host plugins
// inspect`.
comptime {
    asm (
        \\.section .custom_section.m3u_abi_version,"",@
        \\.int8 2
        \\.int8 0
        \\.int8 0
        \\.int8 0
        \\.text
    );
}

// --- Constants from docs/ABI.md -------------------------------------------

const STAGE_FILTERING: i32 = 2; // Stage index (§7)
const GROUP_TITLE: u32 = 0x20; // FieldSet bit of Field::GroupTitle (§7)
const MAX_PRESSURE_EMERGENCY: i32 = 4; // MemoryPressureLevel::Emergency

// Status codes (§6).
const OK: i32 = 0;
const DECODE_ERROR: i32 = -2;
const UNSUPPORTED_STAGE: i32 = -3;
const INPUT_TOO_LARGE: i32 = -4;

// StageOutput variant tags (§7).
const ANSWER_KEEP: u8 = 1;
const ANSWER_KEEP_ALL: u8 = 3;

// --- The arena (§4) ---------------------------------------------------------

// 1 MiB, like the SDK's: the host writes at most half of it as input, the
// answer goes right after the input. Zero-initialised (.bss), so it costs no
// data segment.
const ARENA_BYTES = 1 << 20;
var arena: [ARENA_BYTES]u8 align(16) = undefined;

export fn m3u_arena_ptr() i32 {
    return @intCast(@intFromPtr(&arena));
}

export fn m3u_arena_capacity() i32 {
    return ARENA_BYTES;
}

// --- PluginInfo (§3 step 4, §7), built at compile time ----------------------

/// A postcard `str`: varint length (all strings here are < 128 bytes, so one
/// byte) followed by the UTF-8 bytes.
fn str(comptime s: []const u8) []const u8 {
    if (s.len >= 128) @compileError("string needs a multi-byte varint");
    return &[_]u8{s.len} ++ s;
}

const PLUGIN_INFO: []const u8 =
    str("drop_adult_zig") ++ // name
    str("0.1.0") ++ // version
    str("Drops channels in adult groups") ++ // description
    str("") ++ // author
    &[_]u8{
        0x04, // stages: 1 << Filtering
        0x20, // reads: FieldSet {GroupTitle}
        0x00, // memory.min_bytes 0
        0x00, // memory.recommended_bytes 0 (informational only)
        0x04, // memory.max_pressure Emergency
        0x01, // parallel_safe: true (nothing kept between batches)
        0x00, // stage_reads: none (`reads` holds for every stage)
    };

/// Asked before and after m3u_init: copy the info into the arena, return its
/// length.
export fn m3u_plugin_info() i32 {
    @memcpy(arena[0..PLUGIN_INFO.len], PLUGIN_INFO); // one memory.copy
    return PLUGIN_INFO.len;
}

/// No settings, so the parameterless form: nothing is written into the arena.
export fn m3u_init() i32 {
    return OK;
}

export fn m3u_cleanup() i32 {
    return OK;
}

/// Once per run. The one-parameter form: this plugin needs no RunContext.
/// 1 = runs at this level (every known level, 0 Optimal .. 4 Emergency).
export fn m3u_check_memory_pressure(level: i32) i32 {
    return @intFromBool(level >= 0 and level <= MAX_PRESSURE_EMERGENCY);
}

// --- Reading the StageInput in place (§7) ------------------------------------

/// A cursor over the input bytes `arena[0..end]`. Every read is bounds-checked;
/// a read past `end` returns error.Decode.
const Reader = struct {
    pos: u32 = 0,
    end: u32,

    /// Unsigned LEB128 u32.
    fn varint(r: *Reader) error{Decode}!u32 {
        var value: u32 = 0;
        var shift: u5 = 0;
        while (true) {
            if (r.pos >= r.end) return error.Decode;
            const b = arena[r.pos];
            r.pos += 1;
            value |= @as(u32, b & 0x7f) << shift;
            if (b & 0x80 == 0) return value;
            if (shift == 28) return error.Decode; // more than 5 bytes
            shift += 7;
        }
    }

    /// A byte slice: varint length, then the bytes. Returns the offset of the
    /// bytes in the arena and skips over them.
    fn slice(r: *Reader, len_out: *u32) error{Decode}!u32 {
        const len = try r.varint();
        if (len > r.end - r.pos) return error.Decode;
        const start = r.pos;
        r.pos += len;
        len_out.* = len;
        return start;
    }
};

fn u32le(at: u32) u32 {
    return @as(u32, arena[at]) | @as(u32, arena[at + 1]) << 8 |
        @as(u32, arena[at + 2]) << 16 | @as(u32, arena[at + 3]) << 24;
}

/// True if `arena[start..end]` contains "adult", ASCII case-insensitively.
/// `b | 0x20` maps 'A'..'Z' to 'a'..'z' and never turns any other byte into
/// one of the letters of "adult", so this is exactly Rust's
/// `to_ascii_lowercase().contains("adult")` on the UTF-8 bytes.
fn containsAdult(start: u32, end: u32) bool {
    if (end - start < 5) return false;
    var i = start;
    while (i <= end - 5) : (i += 1) {
        if (arena[i] | 0x20 == 'a' and arena[i + 1] | 0x20 == 'd' and
            arena[i + 2] | 0x20 == 'u' and arena[i + 3] | 0x20 == 'l' and
            arena[i + 4] | 0x20 == 't') return true;
    }
    return false;
}

// --- The stage call (§4) ------------------------------------------------------

/// The StageInput is at arena[0..input_len]. The answer goes right after it:
/// KeepAll (`03`) if no channel is dropped, else Keep(mask):
/// `01`, varint(⌈n/8⌉), mask (bit i%8 of byte i/8 set = keep channel i).
/// Returns the answer's length or a negative status.
export fn m3u_execute_stage(stage: i32, input_len: i32) i32 {
    if (stage != STAGE_FILTERING) return UNSUPPORTED_STAGE;
    if (input_len <= 0) return DECODE_ERROR;
    if (input_len > ARENA_BYTES / 2) return INPUT_TOO_LARGE;
    return filter(@intCast(input_len)) catch |err| switch (err) {
        error.Decode => DECODE_ERROR,
        error.NoRoom => INPUT_TOO_LARGE, // no room left for the answer
    };
}

fn filter(input_len: u32) error{ Decode, NoRoom }!i32 {
    var r = Reader{ .end = input_len };
    _ = try r.varint(); // batch_index
    _ = try r.varint(); // memory_pressure
    // fields is what we declared in `reads`: exactly one column, group_title.
    if (try r.varint() != GROUP_TITLE) return error.Decode;
    const n = try r.varint(); // count
    var len: u32 = undefined;
    _ = try r.slice(&len); // ids: n × u64 LE (not needed)
    if (len / 8 != n or len % 8 != 0) return error.Decode;
    _ = try r.slice(&len); // source_ids: n × u32 LE (not needed)
    if (try r.varint() != 1) return error.Decode; // columns: one
    _ = try r.slice(&len); // starts: empty for a text field
    if (len != 0) return error.Decode;
    const offsets = try r.slice(&len); // n + 1 offsets, u32 LE
    if (len / 4 != n + 1 or len % 4 != 0) return error.Decode;
    var data_len: u32 = undefined;
    const data = try r.slice(&data_len); // the group titles, one UTF-8 blob
    if (r.pos != input_len) return error.Decode; // trailing bytes

    // The answer: tag, varint(mask_len), mask. Check it fits the arena.
    const mask_len = (n + 7) / 8;
    const header: u32 = 1 + varintLen(mask_len);
    if (ARENA_BYTES - input_len < header + mask_len) return error.NoRoom;
    const out = input_len;
    const mask = out + header;

    var dropped = false;
    var byte: u8 = 0;
    var i: u32 = 0;
    var prev = u32le(offsets);
    while (i < n) : (i += 1) {
        const next = u32le(offsets + 4 * (i + 1));
        if (prev > next or next > data_len) return error.Decode;
        if (containsAdult(data + prev, data + next)) {
            dropped = true;
        } else {
            byte |= @as(u8, 1) << @intCast(i % 8);
        }
        if (i % 8 == 7 or i + 1 == n) {
            arena[mask + i / 8] = byte;
            byte = 0;
        }
        prev = next;
    }

    if (!dropped) {
        arena[out] = ANSWER_KEEP_ALL;
        return 1;
    }
    arena[out] = ANSWER_KEEP;
    writeVarint(out + 1, mask_len);
    return @intCast(header + mask_len);
}

fn varintLen(v: u32) u32 {
    var len: u32 = 1;
    var x = v >> 7;
    while (x != 0) : (x >>= 7) len += 1;
    return len;
}

fn writeVarint(at: u32, v: u32) void {
    var p = at;
    var x = v;
    while (x >= 0x80) : (x >>= 7) {
        arena[p] = @as(u8, @truncate(x)) | 0x80;
        p += 1;
    }
    arena[p] = @truncate(x);
}
