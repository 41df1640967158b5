// url_rewriter_as: the twin of plugins/url-rewriter (Rust SDK) in
// AssemblyScript, written against docs/ABI.md (plugin ABI version 2) alone.
//
// At m3u_generation every channel's stream URL becomes
// `{base_url without trailing '/'}/stream/{id}` and the original URL is kept
// in the attribute `x-upstream-url`. With an empty base URL the batch is left
// as it is (KeepAll). Nothing is kept between batches (parallel_safe).
//
// Everything works on bytes in linear memory: no AssemblyScript string or
// object is created at run time, so the module needs no allocator, no GC and
// no import besides `host.log` and `host.write_channels`.
//
// Memory layout (all ours; the stub runtime's allocator is never used):
//   [0, __heap_base)            static data (string literals, digit table)
//   [ARENA, ARENA + ARENA_BYTES) the arena, 1 MiB, as in the Rust SDK
//   [DYN, DYN + prefixCap)      `{base}/stream/` of the current run
//   [DYN + prefixCap, ...)      transient: an answer too large for the arena

// ---- ABI constants (docs/ABI.md §6, §7) ----------------------------------

const OK: i32 = 0;
const PLUGIN_ERROR: i32 = -1;
const DECODE_ERROR: i32 = -2;
const UNSUPPORTED_STAGE: i32 = -3;
const INPUT_TOO_LARGE: i32 = -4;

const STAGE_M3U_GENERATION: i32 = 4;
const FIELD_STREAM_URL: u32 = 7;
const FIELD_ATTRIBUTES: u32 = 12; // first list field (12 Attributes, 13 Extras)
const KNOWN_FIELDS: u32 = 0x3fff;

const ANSWER_KEEP_ALL: u8 = 3;
const ANSWER_CHANGES: u8 = 4;

const LOG_ERROR: i32 = 1;

const ARENA_BYTES: u32 = 1 << 20;
/// Where log lines are staged: the arena's last bytes (an input uses at most
/// half the arena, so this never overlaps one).
const LOG_BYTES: u32 = 512;

// ---- PluginInfo (§7) -------------------------------------------------------

const NAME = "url_rewriter_as";
const VERSION = "0.1.0";
const DESCRIPTION = "Rewrites stream URLs to {base_url}/stream/{id}";
const AUTHOR = "";
const STAGES: u32 = 1 << 4; // m3u_generation
const READS: u32 = 1 << 7; // {StreamUrl}
const RECOMMENDED_BYTES: u32 = 4 * ARENA_BYTES; // what the Rust SDK declares
const MAX_PRESSURE: u32 = 4; // Emergency

const STREAM_PATH = "/stream/";
const UPSTREAM_ATTRIBUTE = "x-upstream-url";

// ---- host functions (§5) ---------------------------------------------------

// @ts-ignore: decorator
@external("host", "log")
declare function host_log(level: i32, ptr: usize, len: u32): void;

// @ts-ignore: decorator
@external("host", "write_channels")
declare function host_write_channels(ptr: usize, len: u32): i32;

// ---- memory ----------------------------------------------------------------

/// "00", "01", ..., "99": two ASCII digits per entry (a static segment, so
/// setting up costs no fuel).
const DIGITS: usize = memory.data<u8>([
  0x30, 0x30, 0x30, 0x31, 0x30, 0x32, 0x30, 0x33, 0x30, 0x34, 0x30, 0x35, 0x30, 0x36, 0x30, 0x37, 0x30, 0x38, 0x30, 0x39,
  0x31, 0x30, 0x31, 0x31, 0x31, 0x32, 0x31, 0x33, 0x31, 0x34, 0x31, 0x35, 0x31, 0x36, 0x31, 0x37, 0x31, 0x38, 0x31, 0x39,
  0x32, 0x30, 0x32, 0x31, 0x32, 0x32, 0x32, 0x33, 0x32, 0x34, 0x32, 0x35, 0x32, 0x36, 0x32, 0x37, 0x32, 0x38, 0x32, 0x39,
  0x33, 0x30, 0x33, 0x31, 0x33, 0x32, 0x33, 0x33, 0x33, 0x34, 0x33, 0x35, 0x33, 0x36, 0x33, 0x37, 0x33, 0x38, 0x33, 0x39,
  0x34, 0x30, 0x34, 0x31, 0x34, 0x32, 0x34, 0x33, 0x34, 0x34, 0x34, 0x35, 0x34, 0x36, 0x34, 0x37, 0x34, 0x38, 0x34, 0x39,
  0x35, 0x30, 0x35, 0x31, 0x35, 0x32, 0x35, 0x33, 0x35, 0x34, 0x35, 0x35, 0x35, 0x36, 0x35, 0x37, 0x35, 0x38, 0x35, 0x39,
  0x36, 0x30, 0x36, 0x31, 0x36, 0x32, 0x36, 0x33, 0x36, 0x34, 0x36, 0x35, 0x36, 0x36, 0x36, 0x37, 0x36, 0x38, 0x36, 0x39,
  0x37, 0x30, 0x37, 0x31, 0x37, 0x32, 0x37, 0x33, 0x37, 0x34, 0x37, 0x35, 0x37, 0x36, 0x37, 0x37, 0x37, 0x38, 0x37, 0x39,
  0x38, 0x30, 0x38, 0x31, 0x38, 0x32, 0x38, 0x33, 0x38, 0x34, 0x38, 0x35, 0x38, 0x36, 0x38, 0x37, 0x38, 0x38, 0x38, 0x39,
  0x39, 0x30, 0x39, 0x31, 0x39, 0x32, 0x39, 0x33, 0x39, 0x34, 0x39, 0x35, 0x39, 0x36, 0x39, 0x37, 0x39, 0x38, 0x39, 0x39,
], 16);
let ARENA: usize = 0;
let DYN: usize = 0;

let prefixLen: u32 = 0; // 0 = no base URL: change nothing
let prefixCap: u32 = 0;

/// Grows the memory to cover `[0, end)`; false if it cannot.
function ensureMemory(end: u64): bool {
  const have = <u64>memory.size() << 16;
  if (end <= have) return true;
  const pages = <i32>((end - have + 0xffff) >> 16);
  return memory.grow(pages) >= 0;
}

/// Sets up the arena on first use (the host asks for `m3u_arena_ptr` before
/// anything else, on every fresh instance). `--initialMemory 17` makes the
/// memory large enough from the start, so this normally grows nothing.
function arena(): usize {
  if (ARENA != 0) return ARENA;
  const start = (__heap_base + 15) & ~(<usize>15);
  if (!ensureMemory(<u64>start + ARENA_BYTES)) unreachable();
  ARENA = start;
  DYN = start + ARENA_BYTES;
  return start;
}

// ---- small writers -----------------------------------------------------------

// @ts-ignore: decorator
@inline function varintLen(v: u64): u32 {
  let n: u32 = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/// Writes `v` as a postcard varint at `p`; returns the end.
function putVarint(p: usize, v: u64): usize {
  while (v >= 0x80) {
    store<u8>(p++, <u8>(v | 0x80));
    v >>= 7;
  }
  store<u8>(p, <u8>v);
  return p + 1;
}

/// Copies an ASCII string literal's characters as bytes; returns the end.
function putAscii(p: usize, s: string): usize {
  const chars = changetype<usize>(s);
  const n = <usize>s.length;
  for (let i: usize = 0; i < n; i++) {
    store<u8>(p + i, <u8>load<u16>(chars + (i << 1)));
  }
  return p + n;
}

/// A postcard `str` from an ASCII literal: varint length, bytes.
function putStr(p: usize, s: string): usize {
  return putAscii(putVarint(p, <u64>s.length), s);
}

/// Writes `v` in decimal at `p`; returns the end.
// @ts-ignore: decorator
@inline function putDecimal(p: usize, v: u64): usize {
  if (v >= 0x1_0000_0000) return putDecimal64(p, v);
  let x = <u32>v;
  const digits: usize = x < 100000
    ? (x < 100 ? (x < 10 ? 1 : 2) : (x < 1000 ? 3 : (x < 10000 ? 4 : 5)))
    : (x < 10000000
      ? (x < 1000000 ? 6 : 7)
      : (x < 100000000 ? 8 : (x < 1000000000 ? 9 : 10)));
  const end = p + digits;
  let q = end;
  while (x >= 100) {
    const r = x % 100;
    x /= 100;
    q -= 2;
    store<u16>(q, load<u16>(DIGITS + (r << 1)));
  }
  if (x >= 10) {
    store<u16>(q - 2, load<u16>(DIGITS + (x << 1)));
  } else {
    store<u8>(q - 1, <u8>(0x30 + x));
  }
  return end;
}

/// Ids from 2^32 up (channels a plugin added get ids from 2^48): rare.
function putDecimal64(p: usize, v: u64): usize {
  let digits: usize = 1;
  for (let t = v; t >= 10; t /= 10) digits++;
  const end = p + digits;
  let q = end;
  do {
    store<u8>(--q, <u8>(0x30 + v % 10));
    v /= 10;
  } while (v != 0);
  return end;
}

function logError(message: string): void {
  const at = arena() + ARENA_BYTES - LOG_BYTES;
  const end = putAscii(at, message);
  host_log(LOG_ERROR, at, <u32>(end - at));
}

// ---- reading postcard in place ---------------------------------------------

let rp: usize = 0; // cursor
let rend: usize = 0; // end of the input
let bad = false; // set by any read past the end or malformed varint
let slicePtr: usize = 0; // start of the last slice read

function readVarint32(): u32 {
  // Almost every varint of an input is one byte.
  if (rp < rend) {
    const b = <u32>load<u8>(rp);
    if (b < 0x80) {
      rp++;
      return b;
    }
  }
  return readVarint32Long();
}

function readVarint32Long(): u32 {
  let v: u32 = 0;
  for (let shift: u32 = 0; shift < 35; shift += 7) {
    if (rp >= rend) break;
    const b = <u32>load<u8>(rp++);
    if (shift == 28 && b > 0x0f) break;
    v |= (b & 0x7f) << shift;
    if (b < 0x80) return v;
  }
  bad = true;
  return 0;
}

function skipVarint64(): void {
  for (let i = 0; i < 10; i++) {
    if (rp >= rend) break;
    const b = load<u8>(rp++);
    if (b < 0x80) {
      if (i == 9 && b > 0x01) break;
      return;
    }
  }
  bad = true;
}

/// A byte slice or str: its length, its start in `slicePtr`.
function readSlice(): u32 {
  const len = readVarint32();
  if (bad || <usize>len > rend - rp) {
    bad = true;
    return 0;
  }
  slicePtr = rp;
  rp += len;
  return len;
}

// ---- exports (§2) ----------------------------------------------------------

export function m3u_arena_ptr(): i32 {
  return <i32>arena();
}

export function m3u_arena_capacity(): i32 {
  return <i32>ARENA_BYTES;
}

/// PluginInfo at the arena start; the same answer before and after init.
export function m3u_plugin_info(): i32 {
  const a = arena();
  let p = putStr(a, NAME);
  p = putStr(p, VERSION);
  p = putStr(p, DESCRIPTION);
  p = putStr(p, AUTHOR);
  p = putVarint(p, STAGES);
  p = putVarint(p, READS);
  p = putVarint(p, 0); // memory.min_bytes
  p = putVarint(p, RECOMMENDED_BYTES); // memory.recommended_bytes
  p = putVarint(p, MAX_PRESSURE); // memory.max_pressure
  store<u8>(p++, 1); // parallel_safe: true
  store<u8>(p++, 0); // stage_reads: none (reads is the same at every stage)
  return <i32>(p - a);
}

/// No settings: the form without the config table.
export function m3u_init(): i32 {
  arena();
  return OK;
}

export function m3u_cleanup(): i32 {
  return OK;
}

/// A run starts: keeps `{base_url without trailing '/'}/stream/` from the
/// RunContext (§7) at the arena start; runs at every pressure level.
export function m3u_check_memory_pressure(level: i32, contextLen: i32): i32 {
  if (<u32>level > MAX_PRESSURE) return 0;
  const a = arena();
  rp = a;
  rend = a + <usize>contextLen;
  bad = <u32>contextLen > ARENA_BYTES;
  if (!bad && readVarint32() > 4) bad = true; // memory_pressure
  if (bad) {
    logError("the run context from the host does not decode");
    return 0;
  }
  skipVarint64(); // available_memory
  readSlice(); // proxy_name
  let len = readSlice(); // base_url
  if (bad) {
    logError("the run context from the host does not decode");
    return 0;
  }
  const base = slicePtr;
  while (len > 0 && load<u8>(base + len - 1) == 0x2f) len--; // trim '/'
  if (len == 0) {
    prefixLen = 0;
    return 1;
  }
  const need = len + <u32>STREAM_PATH.length;
  if (need > prefixCap) {
    if (!ensureMemory(<u64>DYN + need)) {
      logError("no memory for the base URL");
      return 0;
    }
    prefixCap = need;
  }
  memory.copy(DYN, base, len);
  putAscii(DYN + len, STREAM_PATH);
  prefixLen = need;
  return 1;
}

/// One batch: reads the stream URL column in place, answers Changes (a
/// column of new stream URLs and an `x-upstream-url` attribute column)
/// right after the input, or KeepAll without a base URL.
export function m3u_execute_stage(stage: i32, inputLen: i32): i32 {
  if (stage != STAGE_M3U_GENERATION) return UNSUPPORTED_STAGE;
  if (inputLen < 0) return DECODE_ERROR;
  if (<u32>inputLen >= ARENA_BYTES) return INPUT_TOO_LARGE;
  const a = arena();
  rp = a;
  rend = a + <usize>inputLen;
  bad = false;

  readVarint32(); // batch_index
  if (readVarint32() > 4) bad = true; // memory_pressure
  const fields = readVarint32();
  const n = readVarint32();
  const idsLen = readSlice();
  const ids = slicePtr;
  const sourceIdsLen = readSlice();
  const columns = readVarint32();
  if (
    bad ||
    <u64>idsLen != (<u64>n << 3) ||
    <u64>sourceIdsLen != (<u64>n << 2) ||
    columns != <u32>popcnt(fields & KNOWN_FIELDS)
  ) {
    return decodeError();
  }

  // The columns come in Field order; only the stream URL one is used.
  let urlOffsets: usize = 0;
  let urlData: usize = 0;
  let urlDataLen: u32 = 0;
  for (let left = fields & KNOWN_FIELDS; left != 0; left &= left - 1) {
    const field = <u32>ctz(left);
    const startsLen = readSlice();
    const starts = slicePtr;
    const offsetsLen = readSlice();
    const offsets = slicePtr;
    const dataLen = readSlice();
    const data = slicePtr;
    if (bad) return decodeError();
    let items: u32 = n;
    if (field < FIELD_ATTRIBUTES) {
      if (startsLen != 0) return decodeError();
    } else {
      if (<u64>startsLen != (<u64>n + 1) << 2 || load<u32>(starts) != 0) {
        return decodeError();
      }
      items = load<u32>(starts + (<usize>n << 2));
    }
    if (
      <u64>offsetsLen != (<u64>items + 1) << 2 ||
      load<u32>(offsets) != 0 ||
      load<u32>(offsets + (<usize>items << 2)) != dataLen
    ) {
      return decodeError();
    }
    if (field == FIELD_STREAM_URL) {
      urlOffsets = offsets;
      urlData = data;
      urlDataLen = dataLen;
    }
  }

  const out = a + <usize>inputLen;
  const room = ARENA_BYTES - <u32>inputLen;
  if (prefixLen == 0 || n == 0) {
    store<u8>(out, ANSWER_KEEP_ALL);
    return 1;
  }

  // Upper bound of the answer (20 digits per id): in place if it fits.
  const nn = <u64>n;
  const bound: u64 = 64 + (nn << 4) + 8 + nn * (<u64>prefixLen + 20) + <u64>urlDataLen;
  if (bound <= <u64>room) {
    return <i32>writeChanges(out, ids, n, urlOffsets, urlData, urlDataLen);
  }
  return pushLarge(out, room, bound, ids, n, urlOffsets, urlData, urlDataLen);
}

function decodeError(): i32 {
  logError("the stage input does not decode");
  return DECODE_ERROR;
}

/// Writes `StageOutput::Changes` at `out`; returns its length.
///
/// ```
/// 04                   Changes
/// 01 07                fields: one column, StreamUrl
///    indices  varint(4n) 0, 1, ... n-1 (u32 LE)
///    offsets  varint(4n + 4)
///    data     varint(len) "{prefix}{id}" per channel
/// 00                   patches: none
/// 01                   attributes: one column
///    0e "x-upstream-url"
///    indices  as above
///    offsets  the input column's offsets, verbatim
///    data     the input column's data, verbatim
/// ```
function writeChanges(
  out: usize,
  ids: usize,
  n: u32,
  urlOffsets: usize,
  urlData: usize,
  urlDataLen: u32,
): usize {
  const prefix = DYN;
  const plen = <usize>prefixLen;
  store<u8>(out, ANSWER_CHANGES);
  store<u8>(out + 1, 1);
  store<u8>(out + 2, <u8>FIELD_STREAM_URL);
  const indexBytes = <usize>n << 2;
  const indices = putVarint(out + 3, indexBytes);
  const offsetsAt = putVarint(indices + indexBytes, indexBytes + 4);
  const afterOffsets = offsetsAt + indexBytes + 4;

  // The data's length prefix is written after the data; guess its size
  // from the shortest possible data and move the data if the guess is short.
  const guess = varintLen(<u64>n * (plen + 1));
  let data = afterOffsets + guess;
  let q = data;
  store<u32>(offsetsAt, 0);
  // Ids mostly follow each other (the host numbers channels in load order):
  // then the new URL is the previous one with its last digit raised, one
  // copy and one byte, unless that digit is a 9. Any other id is written
  // out in full.
  let previousId = load<u64>(ids); // never equal to ids[0] + 1
  let previousStart = q;
  let previousLen: usize = 0;
  for (let i: usize = 0, e = <usize>n; i < e; i++) {
    store<u32>(indices + (i << 2), <u32>i);
    const id = load<u64>(ids + (i << 3));
    const last = <u32>load<u8>(q - 1);
    // (`id != 0`: u64::MAX + 1 wraps to 0, whose URL is not "...616".)
    if ((id == previousId + 1) & (last != 0x39) & (id != 0)) {
      memory.copy(q, previousStart, previousLen);
      previousStart = q;
      q += previousLen;
      store<u8>(q - 1, last + 1);
    } else {
      previousStart = q;
      memory.copy(q, prefix, plen);
      q = putDecimal(q + plen, id);
      previousLen = q - previousStart;
    }
    previousId = id;
    store<u32>(offsetsAt + 4 + (i << 2), <u32>(q - data));
  }
  const dataLen = q - data;
  const lenBytes = varintLen(dataLen);
  if (lenBytes != guess) {
    memory.copy(afterOffsets + lenBytes, data, dataLen);
    data = afterOffsets + lenBytes;
  }
  putVarint(afterOffsets, dataLen);
  let p = data + dataLen;

  store<u8>(p++, 0); // patches: none
  store<u8>(p++, 1); // attributes: one column
  p = putStr(p, UPSTREAM_ATTRIBUTE);
  p = putVarint(p, indexBytes);
  memory.copy(p, indices, indexBytes);
  p += indexBytes;
  p = putVarint(p, indexBytes + 4);
  if (urlOffsets != 0) {
    memory.copy(p, urlOffsets, indexBytes + 4);
  } else {
    memory.fill(p, 0, indexBytes + 4); // no URL column sent: "" each
  }
  p += indexBytes + 4;
  p = putVarint(p, urlDataLen);
  memory.copy(p, urlData, urlDataLen);
  return p + urlDataLen - out;
}

/// An answer that may not fit beside the input: built past the arena and
/// sent in arena-sized chunks with `write_channels` (§4 step 5), or copied
/// in place if it turns out to fit.
function pushLarge(
  out: usize,
  room: u32,
  bound: u64,
  ids: usize,
  n: u32,
  urlOffsets: usize,
  urlData: usize,
  urlDataLen: u32,
): i32 {
  const buffer = (DYN + <usize>prefixCap + 15) & ~(<usize>15);
  if (bound > 0x7000_0000 || !ensureMemory(<u64>buffer + bound)) {
    logError("the answer does not fit in memory");
    return PLUGIN_ERROR;
  }
  const len = writeChanges(buffer, ids, n, urlOffsets, urlData, urlDataLen);
  if (len <= <usize>room) {
    memory.copy(out, buffer, len);
    return <i32>len;
  }
  for (let sent: usize = 0; sent < len; ) {
    const chunk = min<usize>(len - sent, <usize>room);
    memory.copy(out, buffer + sent, chunk);
    const status = host_write_channels(out, <u32>chunk);
    if (status != OK) return status;
    sent += chunk;
  }
  return 0;
}
