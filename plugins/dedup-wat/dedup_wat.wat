;; dedup_wat: a filtering plugin written by hand in WebAssembly text against
;; the ABI (version 2) only (no Rust SDK). It keeps the first channel for each
;; distinct stream URL (trimmed of surrounding ASCII whitespace), drops later
;; ones and always keeps channels whose URL is empty. The set of URLs seen in
;; the current run is an open-addressing (linear probing) hash table of 64-bit
;; FNV-1a hashes in linear memory that doubles with `memory.grow`.
;; See README.md next to this file for the layout, config keys and limits.
;;
;; Memory layout (64 KiB pages; initial 18 pages, module maximum 1024 = 64 MiB):
;;   0x000000 .. 0x00ffff  constants: PluginInfo, config keys, log messages
;;   0x010000 .. 0x10ffff  the arena (1 MiB):
;;                           [0x010000, +len)      the StageInput the host wrote
;;                                                 (at most half the arena)
;;                           [+len, ...)           the answer: KeepAll or Keep
;;                           [0x10fc00, 0x110000)  staging for log lines
;;   0x110000 ..           the hash table: $cap slots of 8 bytes (i64 hash,
;;                         0 = empty), $cap a power of two, initially 8192
;;                         (64 KiB); while growing, the doubled table is built
;;                         right after the old one, then moved down over it.
(module
  (@custom "m3u_abi_version" "\02\00\00\00")

  (import "host" "log" (func $log (param i32 i32 i32)))
  ;; Not called since ABI 2 (the host writes the input into the arena and the
  ;; answer is returned in place), still imported so the plugin's import list
  ;; and the allowlist it needs stay as they were.
  (import "host" "read_channels" (func $read_channels (param i32 i32) (result i32)))
  (import "host" "write_channels" (func $write_channels (param i32 i32) (result i32)))
  (import "host" "get_config" (func $get_config (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 18 1024)

  (global $ARENA i32 (i32.const 0x10000))
  (global $ARENA_CAP i32 (i32.const 0x100000))
  (global $INPUT_MAX i32 (i32.const 0x80000))        ;; floor(ARENA_CAP / 2)
  (global $LOG_BUF i32 (i32.const 0x10fc00))         ;; last 1 KiB of the arena
  (global $TABLE i32 (i32.const 0x110000))           ;; just past the arena

  ;; The URL set.
  (global $cap (mut i32) (i32.const 8192))           ;; slots, a power of two
  (global $count (mut i32) (i32.const 0))            ;; non-zero hashes stored
  (global $zero_seen (mut i32) (i32.const 0))        ;; hash 0 has no slot: a flag
  ;; 1 while a memory.grow is in flight: still 1 on the next entry means the
  ;; host trapped it (its memory limit), so the table must stay as it is.
  (global $growing (mut i32) (i32.const 0))
  ;; 1 once growing failed: the table then fills up to 7/8, then batches fail.
  (global $grow_failed (mut i32) (i32.const 0))

  ;; Decoder state: cursor, end of input, error flag; $trim's result.
  (global $pos (mut i32) (i32.const 0))
  (global $end (mut i32) (i32.const 0))
  (global $bad (mut i32) (i32.const 0))
  (global $trimmed_start (mut i32) (i32.const 0))
  (global $trimmed_end (mut i32) (i32.const 0))

  ;; postcard PluginInfo, 132 bytes:
  ;;   name "dedup_wat", version "0.1.0", description (86 bytes), author,
  ;;   stages = 1 << 2 (filtering), reads = {StreamUrl} = 0x80 (80 01),
  ;;   memory { min_bytes 1179648 (18 pages), recommended_bytes 26279936
  ;;   (enough for 1M distinct URLs), max_pressure Emergency },
  ;;   parallel_safe = false (the URL set spans batches), stage_reads = []
  ;;   (every stage reads `reads`). The same answer before and after init.
  (data (i32.const 0x100)
    "\09" "dedup_wat"
    "\05" "0.1.0"
    "\56" "Keeps the first channel per trimmed stream URL, drops later repeats (hand-written WAT)"
    "\0f" "m3u-plugin-host"
    "\04"
    "\80\01"
    "\80\80\48"
    "\80\80\c4\0c"
    "\04"
    "\00"
    "\00")

  ;; Config keys and the only value each may have (the Rust twin `dedup`'s
  ;; keys, in the mode this plugin implements).
  (data (i32.const 0x400) "key")               ;; 3
  (data (i32.const 0x410) "url")               ;; 3
  (data (i32.const 0x420) "keep")              ;; 4
  (data (i32.const 0x430) "first")             ;; 5
  (data (i32.const 0x440) "mode")              ;; 4
  (data (i32.const 0x450) "exact")             ;; 5
  (data (i32.const 0x460) "merge_alternates")  ;; 16
  (data (i32.const 0x480) "false")             ;; 5

  ;; Log lines.
  (data (i32.const 0x500)      ;; 119 bytes
    "unsupported config value: dedup_wat supports only key = \22url\22, "
    "keep = \22first\22, mode = \22exact\22, merge_alternates = false")
  (data (i32.const 0x600)      ;; 109 bytes
    "memory limit reached: the URL table keeps its size; dedup stays exact "
    "until it is 7/8 full, then batches fail")
  (data (i32.const 0x700)      ;; 96 bytes
    "URL table full (7/8 of its slots, memory limit reached): batch refused, nothing recorded"
    " from it")

  (func (export "m3u_arena_ptr") (result i32) (global.get $ARENA))
  (func (export "m3u_arena_capacity") (result i32) (global.get $ARENA_CAP))

  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (global.get $ARENA) (i32.const 0x100) (i32.const 132))
    (i32.const 132))

  ;; Refuses (CONFIG_ERROR, -5) any value of the known keys other than the one
  ;; mode it implements; absent keys take that mode's value.
  (func (export "m3u_init") (result i32)
    (if (i32.or
          (i32.or
            (call $config_is (i32.const 0x400) (i32.const 3) (i32.const 0x410) (i32.const 3))
            (call $config_is (i32.const 0x420) (i32.const 4) (i32.const 0x430) (i32.const 5)))
          (i32.or
            (call $config_is (i32.const 0x440) (i32.const 4) (i32.const 0x450) (i32.const 5))
            (call $config_is (i32.const 0x460) (i32.const 16) (i32.const 0x480) (i32.const 5))))
      (then
        (call $log_static (i32.const 1) (i32.const 0x500) (i32.const 119))
        (return (i32.const -5))))
    (call $reset)
    (i32.const 0))

  (func (export "m3u_cleanup") (result i32)
    (call $reset)
    (i32.const 0))

  ;; Called by the host once at the start of every pipeline run (the plugin
  ;; declares one stage): a new run starts with an empty URL set. The
  ;; one-parameter form: the plugin has no use for the run context the
  ;; two-parameter form would receive.
  (func (export "m3u_check_memory_pressure") (param $level i32) (result i32)
    (call $recover)
    (if (i32.gt_u (local.get $level) (i32.const 4))
      (then (return (i32.const 0))))
    (call $reset)
    (i32.const 1))

  ;; The host has written a postcard StageInput of `len` bytes at the arena
  ;; start (see README.md): batch_index, memory_pressure, fields, count, ids
  ;; (8 bytes each), source_ids (4 bytes each), then one column per field.
  ;; This plugin reads only StreamUrl, so there is exactly one column:
  ;; `starts` (empty), `offsets` (count + 1 little-endian u32s) and `data`;
  ;; channel i's URL is data[offsets[i] .. offsets[i + 1]]. The answer goes
  ;; right after the input; the return value is its length.
  (func (export "m3u_execute_stage") (param $stage i32) (param $len i32) (result i32)
    (local $n i32) (local $n_url i32) (local $i i32) (local $b i32)
    (local $offs i32) (local $data i32) (local $data_len i32)
    (local $p i32) (local $prev i32) (local $cur i32) (local $s i32) (local $e i32)
    (local $out i32) (local $mask i32) (local $mask_len i32)
    (local $keep i32) (local $kept i32) (local $bits i32)
    (call $recover)
    (if (i32.ne (local.get $stage) (i32.const 2))
      (then (return (i32.const -3))))                     ;; UNSUPPORTED_STAGE
    (if (i32.lt_s (local.get $len) (i32.const 0))
      (then (return (i32.const -2))))                     ;; DECODE_ERROR
    (if (i32.gt_u (local.get $len) (global.get $INPUT_MAX))
      (then (return (i32.const -4))))                     ;; INPUT_TOO_LARGE

    (block $checked
      (block $malformed
        ;; 1. The header and the layout: O(1) checks, no per-channel work.
        (global.set $pos (global.get $ARENA))
        (global.set $end (i32.add (global.get $ARENA) (local.get $len)))
        (global.set $bad (i32.const 0))
        (call $skip_varint)                               ;; batch_index
        (call $skip_varint)                               ;; memory_pressure
        (br_if $malformed (i32.ne (call $varint) (i32.const 0x80)))  ;; fields = {StreamUrl}
        (local.set $n (call $varint))                     ;; count
        (br_if $malformed (global.get $bad))
        ;; every channel takes at least 16 more bytes (id, source id, offset):
        ;; this also keeps 8 * n from overflowing below
        (br_if $malformed (i32.gt_u (local.get $n)
          (i32.shr_u (i32.sub (global.get $end) (global.get $pos)) (i32.const 4))))
        (br_if $malformed (i32.ne (call $varint) (i32.shl (local.get $n) (i32.const 3))))
        (call $skip (i32.shl (local.get $n) (i32.const 3)))           ;; ids
        (br_if $malformed (i32.ne (call $varint) (i32.shl (local.get $n) (i32.const 2))))
        (call $skip (i32.shl (local.get $n) (i32.const 2)))           ;; source_ids
        (br_if $malformed (i32.ne (call $varint) (i32.const 1)))      ;; one column
        (br_if $malformed (i32.ne (call $varint) (i32.const 0)))      ;; starts: empty
        (local.set $b (i32.shl (i32.add (local.get $n) (i32.const 1)) (i32.const 2)))
        (br_if $malformed (i32.ne (call $varint) (local.get $b)))     ;; offsets
        (local.set $offs (global.get $pos))
        (call $skip (local.get $b))
        (local.set $data_len (call $varint))              ;; data
        (local.set $data (global.get $pos))
        (br_if $malformed (global.get $bad))
        (br_if $malformed (i32.ne (local.get $data_len)
                                  (i32.sub (global.get $end) (global.get $pos))))
        (br_if $malformed (i32.load (local.get $offs)))   ;; offsets[0] = 0
        (br_if $malformed (i32.ne
          (i32.load (i32.add (local.get $offs) (i32.shl (local.get $n) (i32.const 2))))
          (local.get $data_len)))                         ;; offsets[n] = data.len()

        ;; 2. Check the offsets (non-decreasing, within the data) before
        ;;    touching the URL set (under twenty instructions per channel).
        (local.set $p (i32.add (local.get $offs) (i32.const 4)))
        (local.set $e (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
        (block $valid
          (loop $offset
            (br_if $valid (i32.ge_u (local.get $p) (local.get $e)))
            (local.set $cur (i32.load (local.get $p)))
            (br_if $malformed (i32.lt_u (local.get $cur) (local.get $prev)))
            (local.set $prev (local.get $cur))
            (local.set $p (i32.add (local.get $p) (i32.const 4)))
            (br $offset)))
        ;; (non-decreasing up to offsets[n] = data.len(): all within the data)
        (br $checked))
      (return (i32.const -2)))                            ;; DECODE_ERROR

    ;; 3. The batch adds at most one hash per non-empty URL. While the table
    ;;    has room for one per channel, that bound is enough; otherwise count
    ;;    the URLs that have a byte other than ASCII whitespace.
    (local.set $n_url (local.get $n))
    (if (i32.gt_u (i32.add (global.get $count) (local.get $n))
                  (i32.shr_u (global.get $cap) (i32.const 1)))
      (then
        (local.set $n_url (i32.const 0))
        (local.set $p (i32.add (local.get $offs) (i32.const 4)))
        (local.set $prev (i32.const 0))
        (block $counted
          (loop $channel
            (br_if $counted (i32.ge_u (local.get $i) (local.get $n)))
            (local.set $cur (i32.load (local.get $p)))
            (local.set $s (i32.add (local.get $data) (local.get $prev)))
            (local.set $e (i32.add (local.get $data) (local.get $cur)))
            (block $empty
              (loop $byte
                (br_if $empty (i32.ge_u (local.get $s) (local.get $e)))
                (if (call $is_space (i32.load8_u (local.get $s)))
                  (then
                    (local.set $s (i32.add (local.get $s) (i32.const 1)))
                    (br $byte)))
                (local.set $n_url (i32.add (local.get $n_url) (i32.const 1)))))
            (local.set $prev (local.get $cur))
            (local.set $p (i32.add (local.get $p) (i32.const 4)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $channel)))))

    ;;    Make room for n_url more hashes (may grow the table); if the memory
    ;;    limit leaves no room, refuse the batch before recording anything.
    (if (i32.eqz (call $reserve (local.get $n_url)))
      (then (return (i32.const -1))))                     ;; PLUGIN_ERROR

    ;; 4. The answer right after the input: variant 1 (Keep), varint(ceil(n/8)),
    ;;    then the mask, written a byte at a time as the channels go by.
    (local.set $out (i32.add (global.get $ARENA) (local.get $len)))
    (local.set $mask_len (i32.shr_u (i32.add (local.get $n) (i32.const 7)) (i32.const 3)))
    (i32.store8 (local.get $out) (i32.const 1))
    (global.set $pos (i32.add (local.get $out) (i32.const 1)))
    (call $put_varint (local.get $mask_len))
    (local.set $mask (global.get $pos))

    ;; 5. Walk the (checked) column again: keep = empty URL or first sighting.
    (local.set $p (i32.add (local.get $offs) (i32.const 4)))
    (local.set $prev (i32.const 0))
    (local.set $i (i32.const 0))
    (block $done
      (loop $channel
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $cur (i32.load (local.get $p)))
        (local.set $s (i32.add (local.get $data) (local.get $prev)))
        (local.set $e (i32.add (local.get $data) (local.get $cur)))
        ;; trim surrounding ASCII whitespace (one compare per end for the
        ;; usual URL that has none)
        (block $front
          (loop $next
            (br_if $front (i32.ge_u (local.get $s) (local.get $e)))
            (local.set $b (i32.load8_u (local.get $s)))
            (br_if $front (i32.gt_u (local.get $b) (i32.const 0x20)))
            (br_if $front (i32.eqz (call $is_space (local.get $b))))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $next)))
        (block $back
          (loop $next
            (br_if $back (i32.ge_u (local.get $s) (local.get $e)))
            (local.set $b (i32.load8_u (i32.sub (local.get $e) (i32.const 1))))
            (br_if $back (i32.gt_u (local.get $b) (i32.const 0x20)))
            (br_if $back (i32.eqz (call $is_space (local.get $b))))
            (local.set $e (i32.sub (local.get $e) (i32.const 1)))
            (br $next)))
        (local.set $keep
          (if (result i32) (i32.lt_u (local.get $s) (local.get $e))
            (then (call $insert (call $fnv1a (local.get $s) (local.get $e))))
            (else (i32.const 1))))                        ;; empty URL: always kept
        (local.set $kept (i32.add (local.get $kept) (local.get $keep)))
        (local.set $bits (i32.or (local.get $bits)
          (i32.shl (local.get $keep) (i32.and (local.get $i) (i32.const 7)))))
        (if (i32.eq (i32.and (local.get $i) (i32.const 7)) (i32.const 7))
          (then
            (i32.store8 (i32.add (local.get $mask) (i32.shr_u (local.get $i) (i32.const 3)))
                        (local.get $bits))
            (local.set $bits (i32.const 0))))
        (local.set $prev (local.get $cur))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $channel)))
    (if (i32.and (local.get $n) (i32.const 7))                ;; the last, partial byte
      (then (i32.store8 (i32.add (local.get $mask) (i32.shr_u (local.get $n) (i32.const 3)))
                        (local.get $bits))))

    ;; Nothing dropped: the one-byte KeepAll (variant 3) instead of the mask.
    (if (i32.eq (local.get $kept) (local.get $n))
      (then
        (i32.store8 (local.get $out) (i32.const 3))
        (return (i32.const 1))))
    (i32.sub (i32.add (local.get $mask) (local.get $mask_len)) (local.get $out)))

  ;; ------------------------------------------------------------------------
  ;; Config

  ;; 0 if the key is absent or has the wanted value (surrounding ASCII
  ;; whitespace ignored, as the Rust twin does), else 1.
  (func $config_is (param $key i32) (param $key_len i32) (param $want i32) (param $want_len i32)
    (result i32)
    (local $value i32) (local $got i32) (local $i i32)
    ;; key and answer must both lie in the arena
    (memory.copy (global.get $ARENA) (local.get $key) (local.get $key_len))
    (local.set $got (call $get_config
      (global.get $ARENA) (local.get $key_len)
      (i32.add (global.get $ARENA) (i32.const 256)) (i32.const 256)))
    (if (i32.eq (local.get $got) (i32.const -10))         ;; NOT_FOUND: default
      (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $got) (i32.const 256))       ;; longer than any accepted value
      (then (return (i32.const 1))))
    (call $trim (i32.add (global.get $ARENA) (i32.const 256)) (local.get $got))
    (local.set $value (global.get $trimmed_start))
    (if (i32.ne (i32.sub (global.get $trimmed_end) (global.get $trimmed_start)) (local.get $want_len))
      (then (return (i32.const 1))))
    (block $differs
      (loop $byte
        (if (i32.ge_u (local.get $i) (local.get $want_len))
          (then (return (i32.const 0))))
        (br_if $differs (i32.ne
          (i32.load8_u (i32.add (local.get $value) (local.get $i)))
          (i32.load8_u (i32.add (local.get $want) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $byte)))
    (i32.const 1))

  (func $log_static (param $level i32) (param $msg i32) (param $len i32)
    (memory.copy (global.get $LOG_BUF) (local.get $msg) (local.get $len))
    (call $log (local.get $level) (global.get $LOG_BUF) (local.get $len)))

  ;; ------------------------------------------------------------------------
  ;; The URL set

  ;; Empties the set (memory never shrinks, so the capacity stays).
  (func $reset
    (memory.fill (global.get $TABLE) (i32.const 0) (i32.shl (global.get $cap) (i32.const 3)))
    (global.set $count (i32.const 0))
    (global.set $zero_seen (i32.const 0)))

  ;; A memory.grow that never returned: the host stopped it at its memory
  ;; limit (a trap, so the previous call failed and its batch went to the
  ;; fallback). The table was not touched; from now on it does not grow.
  (func $recover
    (if (global.get $growing)
      (then
        (global.set $growing (i32.const 0))
        (call $grow_refused))))

  (func $grow_refused
    (if (i32.eqz (global.get $grow_failed))
      (then (call $log_static (i32.const 2) (i32.const 0x600) (i32.const 109))))
    (global.set $grow_failed (i32.const 1)))

  ;; 1 if `extra` more hashes fit: below 1/2 load normally (growing the table
  ;; as needed), below 7/8 once growing failed. 0 (and a log line) if not.
  (func $reserve (param $extra i32) (result i32)
    (local $need i32)
    (local.set $need (i32.add (global.get $count) (local.get $extra)))
    (loop $again
      (if (i32.le_u (local.get $need) (i32.shr_u (global.get $cap) (i32.const 1)))
        (then (return (i32.const 1))))
      (if (global.get $grow_failed)
        (then
          (if (i32.le_u (local.get $need)
                        (i32.sub (global.get $cap) (i32.shr_u (global.get $cap) (i32.const 3))))
            (then (return (i32.const 1))))
          (call $log_static (i32.const 1) (i32.const 0x700) (i32.const 96))
          (return (i32.const 0))))
      (call $grow)                                        ;; doubles $cap or sets $grow_failed
      (br $again))
    (unreachable))

  ;; Doubles the table: builds the new one at TABLE + old size, rehashes into
  ;; it, then moves it down to TABLE. Globals change only at the very end, so
  ;; a trap anywhere in between leaves the old table intact and in use.
  (func $grow
    (local $old_bytes i32) (local $new i32) (local $need_pages i32) (local $have i32)
    (local $i i32) (local $h i64) (local $mask i32) (local $j i32)
    (local.set $old_bytes (i32.shl (global.get $cap) (i32.const 3)))
    (local.set $new (i32.add (global.get $TABLE) (local.get $old_bytes)))
    (local.set $need_pages
      (i32.shr_u
        (i32.add (i32.add (local.get $new) (i32.shl (local.get $old_bytes) (i32.const 1)))
                 (i32.const 0xffff))
        (i32.const 16)))
    (local.set $have (memory.size))
    (if (i32.gt_u (local.get $need_pages) (local.get $have))
      (then
        (global.set $growing (i32.const 1))
        (if (i32.eq (memory.grow (i32.sub (local.get $need_pages) (local.get $have)))
                    (i32.const -1))
          (then
            (global.set $growing (i32.const 0))
            (call $grow_refused)
            (return)))
        (global.set $growing (i32.const 0))))
    (memory.fill (local.get $new) (i32.const 0) (i32.shl (local.get $old_bytes) (i32.const 1)))
    (local.set $mask (i32.sub (i32.shl (global.get $cap) (i32.const 1)) (i32.const 1)))
    (block $done
      (loop $slot
        (br_if $done (i32.ge_u (local.get $i) (global.get $cap)))
        (local.set $h (i64.load (i32.add (global.get $TABLE) (i32.shl (local.get $i) (i32.const 3)))))
        (if (i64.ne (local.get $h) (i64.const 0))
          (then
            (local.set $j (i32.and (call $home (local.get $h)) (local.get $mask)))
            (block $free
              (loop $probe
                (br_if $free (i64.eqz
                  (i64.load (i32.add (local.get $new) (i32.shl (local.get $j) (i32.const 3))))))
                (local.set $j (i32.and (i32.add (local.get $j) (i32.const 1)) (local.get $mask)))
                (br $probe)))
            (i64.store (i32.add (local.get $new) (i32.shl (local.get $j) (i32.const 3)))
                       (local.get $h))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $slot)))
    (memory.copy (global.get $TABLE) (local.get $new) (i32.shl (local.get $old_bytes) (i32.const 1)))
    (global.set $cap (i32.shl (global.get $cap) (i32.const 1))))

  ;; Home slot of a hash (before masking): the two halves folded together.
  (func $home (param $h i64) (result i32)
    (i32.wrap_i64 (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 32)))))

  ;; Adds a hash; 1 if it was new (keep the channel), 0 if already there.
  ;; $reserve made sure a free slot exists.
  (func $insert (param $h i64) (result i32)
    (local $mask i32) (local $j i32) (local $at i32) (local $v i64)
    (if (i64.eqz (local.get $h))
      (then
        (if (global.get $zero_seen) (then (return (i32.const 0))))
        (global.set $zero_seen (i32.const 1))
        (return (i32.const 1))))
    (local.set $mask (i32.sub (global.get $cap) (i32.const 1)))
    (local.set $j (i32.and (call $home (local.get $h)) (local.get $mask)))
    (loop $probe
      (local.set $at (i32.add (global.get $TABLE) (i32.shl (local.get $j) (i32.const 3))))
      (local.set $v (i64.load (local.get $at)))
      (if (i64.eqz (local.get $v))
        (then
          (i64.store (local.get $at) (local.get $h))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (return (i32.const 1))))
      (if (i64.eq (local.get $v) (local.get $h))
        (then (return (i32.const 0))))
      (local.set $j (i32.and (i32.add (local.get $j) (i32.const 1)) (local.get $mask)))
      (br $probe))
    (unreachable))

  ;; 64-bit FNV-1a of the bytes [start, end): h = (h ^ byte) * 0x100000001b3
  ;; for each byte, from 0xcbf29ce484222325. Eight bytes per round (five
  ;; instructions each, the hash kept on the operand stack), then the rest
  ;; one at a time. `end` is an address in the arena, so `end - 8` does not
  ;; wrap.
  (func $fnv1a (param $start i32) (param $end i32) (result i64)
    (local $h i64) (local $last i32)
    (local.set $h (i64.const 0xcbf29ce484222325))
    (local.set $last (i32.sub (local.get $end) (i32.const 8)))
    (block $tail
      (loop $eight
        (br_if $tail (i32.gt_u (local.get $start) (local.get $last)))
        local.get $h
        local.get $start  i64.load8_u offset=0  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=1  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=2  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=3  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=4  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=5  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=6  i64.xor  i64.const 0x100000001b3  i64.mul
        local.get $start  i64.load8_u offset=7  i64.xor  i64.const 0x100000001b3  i64.mul
        local.set $h
        (local.set $start (i32.add (local.get $start) (i32.const 8)))
        (br $eight)))
    (block $done
      (loop $byte
        (br_if $done (i32.ge_u (local.get $start) (local.get $end)))
        (local.set $h (i64.mul
          (i64.xor (local.get $h) (i64.load8_u (local.get $start)))
          (i64.const 0x100000001b3)))
        (local.set $start (i32.add (local.get $start) (i32.const 1)))
        (br $byte)))
    (local.get $h))

  ;; ------------------------------------------------------------------------
  ;; Decoding helpers (postcard); every read is checked against $end and a
  ;; failure sets $bad.

  ;; Sets $trimmed_start/$trimmed_end to [ptr, ptr + len) without
  ;; surrounding ASCII whitespace (space, \t, \n, \x0c, \r: Rust's
  ;; u8::is_ascii_whitespace). Used for config values; the URL loop in
  ;; m3u_execute_stage trims inline.
  (func $trim (param $ptr i32) (param $len i32)
    (local $start i32) (local $end i32)
    (local.set $start (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $front
      (loop $next
        (br_if $front (i32.ge_u (local.get $start) (local.get $end)))
        (br_if $front (i32.eqz (call $is_space (i32.load8_u (local.get $start)))))
        (local.set $start (i32.add (local.get $start) (i32.const 1)))
        (br $next)))
    (block $back
      (loop $next
        (br_if $back (i32.ge_u (local.get $start) (local.get $end)))
        (br_if $back (i32.eqz (call $is_space
          (i32.load8_u (i32.sub (local.get $end) (i32.const 1))))))
        (local.set $end (i32.sub (local.get $end) (i32.const 1)))
        (br $next)))
    (global.set $trimmed_start (local.get $start))
    (global.set $trimmed_end (local.get $end)))

  ;; 1 for the bytes `u8::is_ascii_whitespace` accepts: bits 9, 10, 12, 13
  ;; and 32 of 0x1_0000_3600.
  (func $is_space (param $b i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $b) (i32.const 0x20))
      (then (i32.const 0))
      (else
        (i32.wrap_i64 (i64.and
          (i64.shr_u (i64.const 0x100003600) (i64.extend_i32_u (local.get $b)))
          (i64.const 1))))))

  ;; A varint that must fit in 31 bits (lengths, counts, FieldSet).
  (func $varint (result i32)
    (local $result i32) (local $shift i32) (local $byte i32)
    (loop $next
      (if (i32.ge_u (global.get $pos) (global.get $end))
        (then (global.set $bad (i32.const 1)) (return (i32.const 0))))
      (local.set $byte (i32.load8_u (global.get $pos)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      ;; fifth byte: at most 3 more bits and no continuation
      (if (i32.and (i32.eq (local.get $shift) (i32.const 28))
                   (i32.gt_u (local.get $byte) (i32.const 7)))
        (then (global.set $bad (i32.const 1)) (return (i32.const 0))))
      (local.set $result (i32.or (local.get $result)
        (i32.shl (i32.and (local.get $byte) (i32.const 0x7f)) (local.get $shift))))
      (local.set $shift (i32.add (local.get $shift) (i32.const 7)))
      (br_if $next (i32.and (local.get $byte) (i32.const 0x80))))
    (local.get $result))

  ;; Skips a varint of up to 10 bytes (u64).
  (func $skip_varint
    (local $k i32) (local $byte i32)
    (loop $next
      (if (i32.or (i32.ge_u (global.get $pos) (global.get $end))
                  (i32.ge_u (local.get $k) (i32.const 10)))
        (then (global.set $bad (i32.const 1)) (return)))
      (local.set $byte (i32.load8_u (global.get $pos)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $next (i32.and (local.get $byte) (i32.const 0x80)))))

  ;; Skips `len` bytes.
  (func $skip (param $len i32)
    (if (i32.gt_u (local.get $len) (i32.sub (global.get $end) (global.get $pos)))
      (then (global.set $bad (i32.const 1)) (return)))
    (global.set $pos (i32.add (global.get $pos) (local.get $len))))

  ;; Writes $v as unsigned LEB128 at $pos; advances $pos.
  (func $put_varint (param $v i32)
    (block $last
      (loop $next
        (br_if $last (i32.lt_u (local.get $v) (i32.const 0x80)))
        (i32.store8 (global.get $pos) (i32.or (local.get $v) (i32.const 0x80)))
        (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
        (local.set $v (i32.shr_u (local.get $v) (i32.const 7)))
        (br $next)))
    (i32.store8 (global.get $pos) (local.get $v))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1))))
)
