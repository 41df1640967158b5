/*
 * m3u_plugin.h: a header-only helper for writing m3u-plugin-host plugins in
 * C (or C++), plugin ABI version 2. The contract is docs/ABI.md; section
 * numbers below (§n) refer to it.
 *
 * C99, freestanding: no libc, no allocation. Built with clang and lld:
 *
 *   clang --target=wasm32 -std=c99 -O2 -ffreestanding -nostdlib \
 *         -mbulk-memory -Wl,--no-entry -Wl,--strip-all \
 *         -I path/to/sdk-c -o plugin.wasm plugin.c
 *
 * (do not pass --import-memory). Keep -mbulk-memory: copies become single
 * memory.copy instructions (wasmi charges one fuel per 64 bytes); without
 * it they are byte loops, over ten times the fuel. Check the result with
 * `m3u-plugin-host plugins inspect plugin.wasm`.
 *
 * What it gives you:
 *   - the host functions (module "host"); a function you never call is not
 *     imported, so the module imports only what it uses;
 *   - M3U_EXPORT(name) to export your functions under the ABI's names;
 *   - a fixed static arena and its exports m3u_arena_ptr/m3u_arena_capacity,
 *     and the `m3u_abi_version` custom section (02 00 00 00);
 *   - memcpy, memmove, memset and memcmp, so clang never imports them;
 *   - readers: the stage input (header, ids, columns), the run context and
 *     the config table, all read in place from the arena;
 *   - writers: PluginInfo, and the answers KeepAll, Keep (a bitmask),
 *     Patches and Changes (columns of new values plus patches).
 *
 * What you write: the other five exports of §2, each marked M3U_EXPORT:
 *   int32_t m3u_plugin_info(void)       return m3u_write_plugin_info(&info)
 *   int32_t m3u_init(void)              or m3u_init(int32_t config_len),
 *                                       then see m3u_config_get
 *   int32_t m3u_check_memory_pressure(int32_t level)
 *                                       or (level, context_len), then see
 *                                       m3u_run_context_read
 *   int32_t m3u_execute_stage(int32_t stage, int32_t input_len)
 *                                       m3u_batch_read, then an answer
 *   int32_t m3u_cleanup(void)
 * See plugins/url-rewriter-c/url_rewriter.c for a complete plugin.
 *
 * An answer too large for the arena is built in memory past the arena
 * (grown on demand) and pushed with write_channels, like the Rust SDK
 * does; so a plugin that answers imports host.log and host.write_channels
 * (both in the default allowlist).
 *
 * Not covered (write them with the m3u_writer primitives if you need
 * them): the Rebuild and Channels answers.
 *
 * One translation unit defines the arena, its exports, the ABI section and
 * memcpy & co. A plugin made of several .c files includes this header
 * everywhere but defines M3U_PLUGIN_NO_DEFINITIONS before including it in
 * all files but one.
 *
 * The arena: M3U_ARENA_BYTES (default 1 MiB; define it before including to
 * change it, at least 4096). Its last M3U_SCRATCH_BYTES (default 2 KiB) are
 * kept for log messages; input and answer use the rest (M3U_DATA_BYTES).
 * The host writes the stage input at the arena start, at most half the
 * arena, and the answer goes right after it (§4).
 *
 * Strings: everything the host sends is valid UTF-8 and is used as it is
 * (pointer + length, never NUL-terminated). Whatever you write must be
 * valid UTF-8 too; the host checks it (§8).
 */
#ifndef M3U_PLUGIN_H
#define M3U_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Constants (§6, §7)
 * ---------------------------------------------------------------------- */

#define M3U_ABI_VERSION 2

#ifndef M3U_ARENA_BYTES
#define M3U_ARENA_BYTES (1u << 20)
#endif
#ifndef M3U_SCRATCH_BYTES
#define M3U_SCRATCH_BYTES 2048u
#endif
/* The part of the arena that holds input and answer. */
#define M3U_DATA_BYTES (M3U_ARENA_BYTES - M3U_SCRATCH_BYTES)

/* Status codes (§6). */
enum {
    M3U_STATUS_OK = 0,
    M3U_STATUS_PLUGIN_ERROR = -1,
    M3U_STATUS_DECODE_ERROR = -2,
    M3U_STATUS_UNSUPPORTED_STAGE = -3,
    M3U_STATUS_INPUT_TOO_LARGE = -4,
    M3U_STATUS_CONFIG_ERROR = -5,
    M3U_STATUS_NOT_FOUND = -10,
    M3U_STATUS_KEY_TOO_LONG = -11,
    M3U_STATUS_OUTPUT_LIMIT = -12
};

/* Stages: the `stage` argument of m3u_execute_stage. */
enum {
    M3U_STAGE_SOURCE_LOADING = 0,
    M3U_STAGE_DATA_MAPPING = 1,
    M3U_STAGE_FILTERING = 2,
    M3U_STAGE_CHANNEL_NUMBERING = 3,
    M3U_STAGE_M3U_GENERATION = 4
};
/* A stage's bit in PluginInfo.stages. */
#define M3U_STAGE_BIT(stage) (1u << (stage))

/* Memory pressure levels. */
enum {
    M3U_PRESSURE_OPTIMAL = 0,
    M3U_PRESSURE_MODERATE = 1,
    M3U_PRESSURE_HIGH = 2,
    M3U_PRESSURE_CRITICAL = 3,
    M3U_PRESSURE_EMERGENCY = 4
};

/* Fields, in Channel (and column) order. 0..11 are text fields, 12 and 13
 * list fields. */
enum {
    M3U_FIELD_TVG_ID = 0,
    M3U_FIELD_TVG_NAME = 1,
    M3U_FIELD_TVG_CHNO = 2,
    M3U_FIELD_TVG_LOGO = 3,
    M3U_FIELD_TVG_SHIFT = 4,
    M3U_FIELD_GROUP_TITLE = 5,
    M3U_FIELD_CHANNEL_NAME = 6,
    M3U_FIELD_STREAM_URL = 7,
    M3U_FIELD_DURATION = 8,
    M3U_FIELD_VIDEO_CODEC = 9,
    M3U_FIELD_AUDIO_CODEC = 10,
    M3U_FIELD_RESOLUTION = 11,
    M3U_FIELD_ATTRIBUTES = 12,
    M3U_FIELD_EXTRAS = 13,
    M3U_FIELD_COUNT = 14
};
/* A field's bit in a FieldSet (PluginInfo.reads, StageInput.fields). */
#define M3U_FIELD_BIT(field) (1u << (field))
#define M3U_FIELDS_NONE 0u
#define M3U_FIELDS_ALL 0x3fffu

/* Log levels of m3u_log. */
enum { M3U_LOG_ERROR = 1, M3U_LOG_WARN = 2, M3U_LOG_INFO = 3, M3U_LOG_DEBUG = 4 };

/* First byte of each answer (StageOutput variant) and patch (PatchOp). */
enum {
    M3U_ANSWER_CHANNELS = 0,
    M3U_ANSWER_KEEP = 1,
    M3U_ANSWER_PATCHES = 2,
    M3U_ANSWER_KEEP_ALL = 3,
    M3U_ANSWER_CHANGES = 4,
    M3U_ANSWER_REBUILD = 5
};
enum { M3U_PATCH_SET_FIELD = 0, M3U_PATCH_SET_ATTRIBUTE = 1, M3U_PATCH_REMOVE_ATTRIBUTE = 2 };

/* ------------------------------------------------------------------------
 * Exports and host functions (§2, §5)
 * ---------------------------------------------------------------------- */

/* Exports the function that follows under `name`, e.g.
 * M3U_EXPORT(m3u_init) int32_t m3u_init(int32_t config_len) { ... } */
#define M3U_EXPORT(name) __attribute__((export_name(#name), visibility("default")))

/* Declares a function of the host's import module "host". */
#define M3U_HOST_IMPORT(name) __attribute__((import_module("host"), import_name(#name)))

/* Logs [ptr, ptr+len) (must lie in the arena; use m3u_log). */
M3U_HOST_IMPORT(log) void m3u_host_log(int32_t level, const void *ptr, int32_t len);
/* Current linear-memory size in bytes. */
M3U_HOST_IMPORT(get_memory_usage) int64_t m3u_host_get_memory_usage(void);
/* Copies the next bytes of this call's input to ptr (never needed). */
M3U_HOST_IMPORT(read_channels) int32_t m3u_host_read_channels(void *ptr, int32_t cap);
/* Appends [ptr, ptr+len) to a pushed answer (§4 step 5); 0 or -12. */
M3U_HOST_IMPORT(write_channels) int32_t m3u_host_write_channels(const void *ptr, int32_t len);
/* Looks a key up in [plugins.<name>]; not in the default allowlist. */
M3U_HOST_IMPORT(get_config)
int32_t m3u_host_get_config(const void *key, int32_t key_len, void *out, int32_t out_cap);
/* Claims dedup keys in the plugin's key set; not in the default allowlist. */
M3U_HOST_IMPORT(claim_keys)
int32_t m3u_host_claim_keys(const void *keys, int32_t keys_len, void *out, int32_t out_cap);

/* ------------------------------------------------------------------------
 * Freestanding helpers
 * ---------------------------------------------------------------------- */

/* The compiler may emit calls to these for struct copies and loops; they are
 * defined below (weak) so the module never imports them from `env`. */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* Fuel: wasmi charges the straight-line code of a function body, loop body
 * or `if` arm when it is entered, including code behind a branch that is
 * not taken (clang writes most branches as `block` + `br_if`, which start
 * no new charge). So the helpers that run once per call, or only on
 * failure, are kept out of line: a call pays only for the code it runs. */
#define M3U_OUTLINE static inline __attribute__((noinline))
/* For the same reason, short loops with a small fixed bound are not
 * unrolled: every unrolled copy would be charged on every pass. */
#define M3U_NO_UNROLL _Pragma("clang loop unroll(disable)")

/* Copies used by the helpers below: with -mbulk-memory, clang makes each a
 * single memory.copy / memory.fill instruction. */
#if defined(__wasm_bulk_memory__)
#define M3U_COPY(dst, src, n) __builtin_memcpy((dst), (src), (n))
#define M3U_MOVE(dst, src, n) __builtin_memmove((dst), (src), (n))
#define M3U_FILL(dst, c, n) __builtin_memset((dst), (c), (n))
#else
#define M3U_COPY(dst, src, n) memcpy((dst), (src), (n))
#define M3U_MOVE(dst, src, n) memmove((dst), (src), (n))
#define M3U_FILL(dst, c, n) memset((dst), (c), (n))
#endif

/* A string or byte range: `len` bytes at `ptr`, not NUL-terminated. */
typedef struct {
    const char *ptr;
    uint32_t len;
} m3u_str;

/* Makes an m3u_str from a pointer and a length. */
static inline m3u_str m3u_str_of(const char *ptr, uint32_t len) {
    m3u_str s;
    s.ptr = ptr;
    s.len = len;
    return s;
}

/* Length of a NUL-terminated string. */
static inline uint32_t m3u_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* True if a and b hold the same bytes. */
static inline int m3u_str_eq(m3u_str a, const char *b, uint32_t b_len) {
    return a.len == b_len && memcmp(a.ptr, b, b_len) == 0;
}

/* True if a and b are equal ignoring ASCII case (how the host matches
 * attribute names). */
static inline int m3u_str_eq_ignore_case(m3u_str a, const char *b, uint32_t b_len) {
    uint32_t i;
    if (a.len != b_len) return 0;
    for (i = 0; i < b_len; i++) {
        unsigned char x = (unsigned char)a.ptr[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z') x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z') y = (unsigned char)(y + 32);
        if (x != y) return 0;
    }
    return 1;
}

/* Little-endian u32 at p (any alignment). */
static inline uint32_t m3u_load_u32(const uint8_t *p) {
    uint32_t v;
    __builtin_memcpy(&v, p, 4); /* wasm is little-endian */
    return v;
}

/* Little-endian u64 at p (any alignment). */
static inline uint64_t m3u_load_u64(const uint8_t *p) {
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return v;
}

/* Stores v at p as a little-endian u32. */
static inline void m3u_store_u32(uint8_t *p, uint32_t v) {
    __builtin_memcpy(p, &v, 4);
}

/* Bytes the varint (LEB128) encoding of v takes: 1 to 10. */
static inline uint32_t m3u_varint_len(uint64_t v) {
    uint32_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Writes v as a varint at out (room for 10 bytes); returns its length. */
static inline uint32_t m3u_varint_encode(uint64_t v, uint8_t *out) {
    uint32_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* The loop of m3u_varint_decode, for varints of two bytes or more. */
M3U_OUTLINE int m3u_varint_decode_long(const uint8_t **pos, const uint8_t *end,
                                       uint32_t max_bytes, uint64_t *out) {
    const uint8_t *p = *pos;
    uint64_t v = 0;
    uint32_t i;
    M3U_NO_UNROLL
    for (i = 0; i < max_bytes && p + i < end; i++) {
        uint8_t byte = p[i];
        if (i == 9 && byte > 1) return 0; /* more than 64 bits */
        v |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *pos = p + i + 1;
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* Reads a varint of at most max_bytes (5 for u32, 10 for u64) from
 * [*pos, end) into *out and advances *pos; 0 if cut short or too long. */
static inline int m3u_varint_decode(const uint8_t **pos, const uint8_t *end, uint32_t max_bytes,
                                    uint64_t *out) {
    const uint8_t *p = *pos;
    if (p < end && p[0] < 0x80) { /* one byte: most lengths and enums */
        *pos = p + 1;
        *out = p[0];
        return 1;
    }
    return m3u_varint_decode_long(pos, end, max_bytes, out);
}

/* Number of decimal digits of v: 1 to 20. */
static inline uint32_t m3u_decimal_len(uint64_t v) {
    uint32_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* Writes v in decimal at out (room for 20 bytes); returns its length. */
static inline uint32_t m3u_format_decimal(uint64_t v, char *out) {
    char digits[20];
    uint32_t n = 0;
    do { /* least significant digit first, from the buffer's end */
        digits[19 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    M3U_COPY(out, digits + 20 - n, n);
    return n;
}

/* ------------------------------------------------------------------------
 * The arena (§3 step 3, §4)
 * ---------------------------------------------------------------------- */

/* The arena itself (defined once, below). */
extern uint8_t m3u_arena[M3U_ARENA_BYTES];

/* Start of the arena: where the host writes the input, the config table,
 * the run context, and where PluginInfo goes. */
static inline uint8_t *m3u_arena_start(void) { return m3u_arena; }

/* Logs a message through the host (level M3U_LOG_*). The message is copied
 * to the arena's scratch tail first (the host reads only the arena), cut
 * to M3U_SCRATCH_BYTES. At init, read the config table before logging if
 * it may fill the whole arena. */
M3U_OUTLINE void m3u_log(int32_t level, const char *msg, uint32_t len) {
    uint8_t *scratch = m3u_arena + M3U_DATA_BYTES;
    if (len > M3U_SCRATCH_BYTES) len = M3U_SCRATCH_BYTES;
    M3U_COPY(scratch, msg, len);
    m3u_host_log(level, scratch, (int32_t)len);
}

/* m3u_log for a NUL-terminated message. */
static inline void m3u_log_cstr(int32_t level, const char *msg) {
    m3u_log(level, msg, m3u_strlen(msg));
}

/* ------------------------------------------------------------------------
 * Reading postcard (§7)
 * ---------------------------------------------------------------------- */

/* Reads postcard values from [pos, end); `failed` is set at the first value
 * that does not decode, and every later read returns 0/empty. */
typedef struct {
    const uint8_t *pos;
    const uint8_t *end;
    int failed;
} m3u_reader;

/* A reader over [ptr, ptr+len). */
static inline m3u_reader m3u_reader_of(const uint8_t *ptr, uint32_t len) {
    m3u_reader r;
    r.pos = ptr;
    r.end = ptr + len;
    r.failed = 0;
    return r;
}

/* Reads a u64 varint. */
static inline uint64_t m3u_read_u64(m3u_reader *r) {
    uint64_t v = 0;
    if (r->failed || !m3u_varint_decode(&r->pos, r->end, 10, &v)) {
        r->failed = 1;
        return 0;
    }
    return v;
}

/* Reads a u32 varint (also an enum index, a FieldSet, a length). */
static inline uint32_t m3u_read_u32(m3u_reader *r) {
    uint64_t v = 0;
    if (r->failed || !m3u_varint_decode(&r->pos, r->end, 5, &v) || v > 0xffffffffu) {
        r->failed = 1;
        return 0;
    }
    return (uint32_t)v;
}

/* Reads a byte slice or string: a varint length, then that many bytes
 * (returned in place, not copied). */
static inline m3u_str m3u_read_bytes(m3u_reader *r) {
    uint64_t len = m3u_read_u64(r);
    if (r->failed || len > (uint64_t)(r->end - r->pos)) {
        r->failed = 1;
        return m3u_str_of((const char *)r->end, 0);
    }
    m3u_str s = m3u_str_of((const char *)r->pos, (uint32_t)len);
    r->pos += len;
    return s;
}

/* True if the reader has read every byte without a failure. */
static inline int m3u_reader_done(const m3u_reader *r) {
    return !r->failed && r->pos == r->end;
}

/* ------------------------------------------------------------------------
 * The run context (§3 step 7)
 * ---------------------------------------------------------------------- */

/* RunContext: handed over once per run, in
 * m3u_check_memory_pressure(level, context_len). The strings point into
 * the arena: copy what you keep, the first batch overwrites them. */
typedef struct {
    uint32_t memory_pressure;  /* M3U_PRESSURE_* */
    uint64_t available_memory; /* bytes, 0 if unknown */
    m3u_str proxy_name;        /* [proxy] name */
    m3u_str base_url;          /* [proxy] base_url */
} m3u_run_context;

/* Reads the RunContext of context_len bytes at the arena start; returns 1,
 * or 0 if it does not decode. */
M3U_OUTLINE int m3u_run_context_read(int32_t context_len, m3u_run_context *ctx) {
    m3u_reader r;
    if (context_len < 0 || (uint32_t)context_len > M3U_ARENA_BYTES) return 0;
    r = m3u_reader_of(m3u_arena, (uint32_t)context_len);
    ctx->memory_pressure = m3u_read_u32(&r);
    ctx->available_memory = m3u_read_u64(&r);
    ctx->proxy_name = m3u_read_bytes(&r);
    ctx->base_url = m3u_read_bytes(&r);
    return m3u_reader_done(&r) && ctx->memory_pressure <= M3U_PRESSURE_EMERGENCY;
}

/* ------------------------------------------------------------------------
 * The config table (§3 step 5)
 * ---------------------------------------------------------------------- */

/* Looks `key` up in the PluginConfig of config_len bytes at the arena start
 * (the table m3u_init(config_len) receives; values are text: "5000",
 * "true"). Returns 1 and sets *value (pointing into the arena: copy it
 * during m3u_init), 0 if the key is absent, -1 if the table does not
 * decode. */
M3U_OUTLINE int m3u_config_get(int32_t config_len, const char *key, uint32_t key_len,
                                 m3u_str *value) {
    m3u_reader r;
    uint32_t entries, i;
    if (config_len < 0 || (uint32_t)config_len > M3U_ARENA_BYTES) return -1;
    r = m3u_reader_of(m3u_arena, (uint32_t)config_len);
    entries = m3u_read_u32(&r);
    for (i = 0; i < entries && !r.failed; i++) {
        m3u_str k = m3u_read_bytes(&r);
        m3u_str v = m3u_read_bytes(&r);
        if (!r.failed && m3u_str_eq(k, key, key_len)) {
            *value = v;
            return 1;
        }
    }
    return r.failed ? -1 : 0;
}

/* ------------------------------------------------------------------------
 * The stage input (§4, §7 "Columns")
 * ---------------------------------------------------------------------- */

/* One column: `offsets` holds u32 LE item boundaries into `data`; for a
 * list field `starts` holds count+1 u32 LE item ranges per channel (empty
 * for a text field). All three point into the arena. */
typedef struct {
    const uint8_t *starts;
    uint32_t starts_len; /* bytes */
    const uint8_t *offsets;
    uint32_t offsets_len; /* bytes */
    const uint8_t *data;
    uint32_t data_len; /* bytes */
} m3u_column;

/* A batch, read in place: the StageInput header, the ids and one column per
 * field sent (columns[field]; all zero for a field not sent). */
typedef struct {
    uint32_t batch_index;      /* batch number in the run (halves share it) */
    uint32_t memory_pressure;  /* M3U_PRESSURE_* now */
    uint32_t fields;           /* FieldSet: the columns present */
    uint32_t count;            /* channels in this call */
    const uint8_t *ids;        /* count x u64 LE */
    const uint8_t *source_ids; /* count x u32 LE */
    m3u_column columns[M3U_FIELD_COUNT];
} m3u_batch;

/* Reads one column of a batch of `count` channels for `field` and checks
 * its lengths; 0 if they do not fit. A step of m3u_batch_read. */
static inline int m3u_read_column(m3u_reader *r, uint32_t field, uint32_t count, m3u_column *c) {
    m3u_str starts = m3u_read_bytes(r);
    m3u_str offsets = m3u_read_bytes(r);
    m3u_str data = m3u_read_bytes(r);
    uint32_t items = count; /* a text field: one item per channel */
    if (r->failed) return 0;
    if (field >= M3U_FIELD_ATTRIBUTES) { /* a list field: count + 1 starts */
        if ((uint64_t)starts.len != ((uint64_t)count + 1) * 4 ||
            m3u_load_u32((const uint8_t *)starts.ptr) != 0)
            return 0;
        items = m3u_load_u32((const uint8_t *)starts.ptr + 4 * (size_t)count);
    } else if (starts.len != 0) {
        return 0;
    }
    if ((uint64_t)offsets.len != ((uint64_t)items + 1) * 4 ||
        m3u_load_u32((const uint8_t *)offsets.ptr) != 0 ||
        m3u_load_u32((const uint8_t *)offsets.ptr + 4 * (size_t)items) != data.len)
        return 0;
    c->starts = (const uint8_t *)starts.ptr;
    c->starts_len = starts.len;
    c->offsets = (const uint8_t *)offsets.ptr;
    c->offsets_len = offsets.len;
    c->data = (const uint8_t *)data.ptr;
    c->data_len = data.len;
    return 1;
}

/* Reads the StageInput of input_len bytes at the arena start into *b and
 * checks its lengths like the host's BatchView (O(fields), not
 * O(channels)). Returns M3U_STATUS_OK, or M3U_STATUS_DECODE_ERROR (return
 * it from m3u_execute_stage). */
M3U_OUTLINE int32_t m3u_batch_read(int32_t input_len, m3u_batch *b) {
    m3u_reader r;
    m3u_str ids, source_ids;
    uint32_t rest, given, read = 0;
    if (input_len < 0 || (uint32_t)input_len > M3U_DATA_BYTES) return M3U_STATUS_DECODE_ERROR;
    M3U_FILL(b, 0, sizeof *b);
    r = m3u_reader_of(m3u_arena, (uint32_t)input_len);
    b->batch_index = m3u_read_u32(&r);
    b->memory_pressure = m3u_read_u32(&r);
    b->fields = m3u_read_u32(&r);
    b->count = m3u_read_u32(&r);
    ids = m3u_read_bytes(&r);
    source_ids = m3u_read_bytes(&r);
    given = m3u_read_u32(&r);
    if (r.failed || b->memory_pressure > M3U_PRESSURE_EMERGENCY ||
        (uint64_t)ids.len != (uint64_t)b->count * 8 ||
        (uint64_t)source_ids.len != (uint64_t)b->count * 4)
        return M3U_STATUS_DECODE_ERROR;
    b->ids = (const uint8_t *)ids.ptr;
    b->source_ids = (const uint8_t *)source_ids.ptr;
    /* One column per known field in `fields`, in field order (bits above
     * 13 name no field and have no column). */
    rest = b->fields & M3U_FIELDS_ALL;
    while (rest) {
        uint32_t field = (uint32_t)__builtin_ctz(rest);
        rest &= rest - 1;
        if (read++ == given || !m3u_read_column(&r, field, b->count, &b->columns[field]))
            return M3U_STATUS_DECODE_ERROR;
    }
    if (read != given || !m3u_reader_done(&r)) return M3U_STATUS_DECODE_ERROR;
    return M3U_STATUS_OK;
}

/* The host's id of channel i (unique in the run). */
static inline uint64_t m3u_batch_id(const m3u_batch *b, uint32_t i) {
    return m3u_load_u64(b->ids + 8 * (size_t)i);
}

/* The source index of channel i. */
static inline uint32_t m3u_batch_source_id(const m3u_batch *b, uint32_t i) {
    return m3u_load_u32(b->source_ids + 4 * (size_t)i);
}

/* Item k of a column: data[offsets[k] .. offsets[k+1]] (empty if k is out
 * of range or the column was not sent). */
static inline m3u_str m3u_column_item(const m3u_column *c, uint32_t k) {
    uint32_t start, end;
    if ((uint64_t)k + 2 > c->offsets_len / 4) return m3u_str_of("", 0);
    start = m3u_load_u32(c->offsets + 4 * (size_t)k);
    end = m3u_load_u32(c->offsets + 4 * (size_t)k + 4);
    if (start > end || end > c->data_len) return m3u_str_of("", 0);
    return m3u_str_of((const char *)c->data + start, end - start);
}

/* Channel i's value of a text field (M3U_FIELD_TVG_ID .. RESOLUTION):
 * two offset look-ups. Empty if the field was not sent. */
static inline m3u_str m3u_batch_text(const m3u_batch *b, uint32_t field, uint32_t i) {
    if (field >= M3U_FIELD_ATTRIBUTES) return m3u_str_of("", 0);
    return m3u_column_item(&b->columns[field], i);
}

/* Channel i's items of a list field (M3U_FIELD_ATTRIBUTES or EXTRAS): sets
 * *first to its first item's index and returns how many it has (attributes
 * take two items each: name, value). 0 if the field was not sent. */
static inline uint32_t m3u_batch_items(const m3u_batch *b, uint32_t field, uint32_t i,
                                       uint32_t *first) {
    const m3u_column *c;
    uint32_t start, end;
    *first = 0;
    if (field < M3U_FIELD_ATTRIBUTES || field >= M3U_FIELD_COUNT) return 0;
    c = &b->columns[field];
    if ((uint64_t)i + 2 > c->starts_len / 4) return 0;
    start = m3u_load_u32(c->starts + 4 * (size_t)i);
    end = m3u_load_u32(c->starts + 4 * (size_t)i + 4);
    if (start > end) return 0;
    *first = start;
    return end - start;
}

/* Channel i's extra attribute `name`, matched ignoring ASCII case (needs
 * M3U_FIELD_ATTRIBUTES in reads). Returns 1 and sets *value, or 0. */
static inline int m3u_batch_attribute(const m3u_batch *b, uint32_t i, const char *name,
                                      uint32_t name_len, m3u_str *value) {
    const m3u_column *c = &b->columns[M3U_FIELD_ATTRIBUTES];
    uint32_t first, k, items = m3u_batch_items(b, M3U_FIELD_ATTRIBUTES, i, &first);
    for (k = 0; k + 1 < items; k += 2) {
        if (m3u_str_eq_ignore_case(m3u_column_item(c, first + k), name, name_len)) {
            *value = m3u_column_item(c, first + k + 1);
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Writing postcard
 * ---------------------------------------------------------------------- */

/* Writes bytes into [start, end). The first failure (no room, misuse) is
 * kept in `error`; every later write is then skipped, and
 * m3u_answer_finish logs it and returns an error status.
 *
 * An answer writer may spill: when the answer outgrows the arena, what is
 * written so far moves to the spill region past the end of linear memory
 * (grown with memory.grow, kept for later calls) and writing goes on
 * there; m3u_answer_finish then pushes it. So keep positions in an answer
 * as offsets from `start`, never as pointers, across writes (a pointer a
 * write function returns is good until the next write; the open column of
 * values is moved along). */
typedef struct m3u_values m3u_values;
typedef struct {
    uint8_t *start;
    uint8_t *pos;
    uint8_t *end;
    const char *error;
    uint8_t *home;          /* an answer writer: where it started in the arena (else NULL) */
    m3u_values *column;     /* the open column (its pointers move with a spill) */
} m3u_writer;

/* Records the first failure of w. */
M3U_OUTLINE void m3u_writer_fail(m3u_writer *w, const char *why) {
    if (!w->error) w->error = why;
}

/* Moves the open column's pointers by delta bytes (defined below). */
static inline void m3u_values_moved(m3u_values *v, ptrdiff_t delta);

/* Start of the spill region (defined once, below): NULL until an answer
 * first outgrows the arena; from there to the end of linear memory. */
extern uint8_t *m3u_spill;

/* Makes room for n more bytes: moves an answer writer's bytes from the
 * arena to the spill region and grows linear memory as needed (past the
 * host's max_memory_per_plugin the call fails). Returns 1 if the n bytes
 * fit now, else fails w. */
M3U_OUTLINE int m3u_writer_grow(m3u_writer *w, uint32_t n) {
    size_t used = (size_t)(w->pos - w->start);
    size_t memory_end = __builtin_wasm_memory_size(0) * 65536;
    size_t base, need = used + n, pages;
    if (!w->home) {
        m3u_writer_fail(w, "the value does not fit the arena");
        return 0;
    }
    base = m3u_spill ? (size_t)m3u_spill : memory_end;
    if (memory_end - base < need) {
        pages = (need - (memory_end - base) + 65535) / 65536;
        if (pages < 4) pages = 4; /* at least 256 KiB at a time */
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) {
            m3u_writer_fail(w, "the answer does not fit in memory");
            return 0;
        }
        memory_end += pages * 65536;
    }
    m3u_spill = (uint8_t *)base;
    if (w->start != m3u_spill) {
        M3U_COPY(m3u_spill, w->start, used);
        m3u_values_moved(w->column, m3u_spill - w->start);
        w->start = m3u_spill;
        w->pos = m3u_spill + used;
    }
    w->end = (uint8_t *)memory_end;
    return 1;
}

/* Reserves n bytes at the write position and returns them, or NULL (and
 * fails w) if they do not fit. */
static inline uint8_t *m3u_write_reserve(m3u_writer *w, uint32_t n) {
    uint8_t *p;
    if (w->error) return NULL;
    if ((size_t)(w->end - w->pos) < n && !m3u_writer_grow(w, n)) return NULL;
    p = w->pos;
    w->pos += n;
    return p;
}

/* Writes one raw byte. */
static inline void m3u_write_byte(m3u_writer *w, uint8_t v) {
    uint8_t *p = m3u_write_reserve(w, 1);
    if (p) *p = v;
}

/* Writes a varint (u32, u64, enum index, FieldSet, length). */
static inline void m3u_write_varint(m3u_writer *w, uint64_t v) {
    uint8_t *p = m3u_write_reserve(w, m3u_varint_len(v));
    if (p) m3u_varint_encode(v, p);
}

/* Writes raw bytes (no length prefix). */
static inline void m3u_write_raw(m3u_writer *w, const void *ptr, uint32_t len) {
    uint8_t *p = m3u_write_reserve(w, len);
    if (p) M3U_COPY(p, ptr, len);
}

/* Writes a string or byte slice: varint length, then the bytes. */
static inline void m3u_write_str(m3u_writer *w, const char *ptr, uint32_t len) {
    m3u_write_varint(w, len);
    m3u_write_raw(w, ptr, len);
}

/* Writes v in decimal, as raw bytes (no length prefix). */
static inline void m3u_write_decimal(m3u_writer *w, uint64_t v) {
    char digits[20];
    m3u_write_raw(w, digits, m3u_format_decimal(v, digits));
}

/* ------------------------------------------------------------------------
 * PluginInfo (§3 steps 4 and 6)
 * ---------------------------------------------------------------------- */

/* One StageReads entry: what the plugin reads at one stage. */
typedef struct {
    uint32_t stage;  /* M3U_STAGE_* */
    uint32_t fields; /* FieldSet */
} m3u_stage_reads;

/* PluginInfo. Strings are NUL-terminated (NULL = ""); name 1..64 bytes,
 * version <= 64, description <= 1024, author <= 256, no control chars. */
typedef struct {
    const char *name;
    const char *version;
    const char *description;
    const char *author;
    uint32_t stages;            /* M3U_STAGE_BIT(...) | ... */
    uint32_t reads;             /* FieldSet sent at stages not in stage_reads */
    uint64_t min_bytes;         /* informational */
    uint64_t recommended_bytes; /* informational */
    uint32_t max_pressure;      /* M3U_PRESSURE_*: highest level it runs at;
                                   0 (OPTIMAL) skips the plugin under any
                                   pressure: most plugins want EMERGENCY */
    int parallel_safe;          /* 1: keeps no state from batch to batch */
    uint32_t stage_reads_count;
    const m3u_stage_reads *stage_reads; /* per-stage overrides of `reads` */
} m3u_info;

/* Writes info (postcard PluginInfo) at the arena start and returns its
 * length: what m3u_plugin_info returns. M3U_STATUS_PLUGIN_ERROR if it does
 * not fit. */
M3U_OUTLINE int32_t m3u_write_plugin_info(const m3u_info *info) {
    m3u_writer w;
    const char *text[4];
    uint32_t i;
    w.start = w.pos = m3u_arena;
    w.end = m3u_arena + M3U_DATA_BYTES;
    w.error = NULL;
    w.home = NULL;
    w.column = NULL;
    text[0] = info->name;
    text[1] = info->version;
    text[2] = info->description;
    text[3] = info->author;
    for (i = 0; i < 4; i++) {
        const char *s = text[i] ? text[i] : "";
        m3u_write_str(&w, s, m3u_strlen(s));
    }
    m3u_write_varint(&w, info->stages);
    m3u_write_varint(&w, info->reads);
    m3u_write_varint(&w, info->min_bytes);
    m3u_write_varint(&w, info->recommended_bytes);
    m3u_write_varint(&w, info->max_pressure);
    m3u_write_byte(&w, info->parallel_safe ? 1 : 0);
    m3u_write_varint(&w, info->stage_reads_count);
    for (i = 0; i < info->stage_reads_count; i++) {
        m3u_write_varint(&w, info->stage_reads[i].stage);
        m3u_write_varint(&w, info->stage_reads[i].fields);
    }
    return w.error ? M3U_STATUS_PLUGIN_ERROR : (int32_t)(w.pos - w.start);
}

/* ------------------------------------------------------------------------
 * Answers (§4 step 5, §7, §8)
 * ---------------------------------------------------------------------- */

/* A writer for the answer of m3u_execute_stage(stage, input_len): right
 * after the input, up to the end of the data region; it spills to the
 * spill buffer if the answer outgrows that. */
static inline m3u_writer m3u_answer_writer(int32_t input_len) {
    m3u_writer w;
    uint32_t at = input_len < 0 ? 0 : (uint32_t)input_len;
    if (at > M3U_DATA_BYTES) at = M3U_DATA_BYTES;
    w.start = w.pos = m3u_arena + at;
    w.end = m3u_arena + M3U_DATA_BYTES;
    w.error = input_len < 0 || (uint32_t)input_len > M3U_DATA_BYTES ? "the input is too large"
                                                                    : NULL;
    w.home = w.start;
    w.column = NULL;
    return w;
}

/* What m3u_execute_stage returns: the answer's length (written in place,
 * right after the input), or 0 once a spilled answer has been pushed
 * through the free part of the arena with write_channels (§4 step 5).
 * On a failure it logs the reason at error level and returns
 * M3U_STATUS_PLUGIN_ERROR (or write_channels' -12 OUTPUT_LIMIT). */
M3U_OUTLINE int32_t m3u_answer_finish(m3u_writer *w) {
    uint8_t *stage, *from;
    size_t room, left;
    if (!w->error && w->pos == w->start) m3u_writer_fail(w, "empty answer");
    if (w->error) {
        m3u_log_cstr(M3U_LOG_ERROR, w->error);
        return M3U_STATUS_PLUGIN_ERROR;
    }
    if (w->start == w->home) return (int32_t)(w->pos - w->start); /* in place */
    /* Spilled: pushed in chunks staged in the arena after the input (the
     * writer's home, free again); the host concatenates them. */
    stage = w->home;
    room = (size_t)(m3u_arena + M3U_DATA_BYTES - w->home);
    for (from = w->start, left = (size_t)(w->pos - w->start); left > 0;) {
        size_t chunk = left < room ? left : room;
        int32_t status;
        if (chunk == 0) {
            m3u_log_cstr(M3U_LOG_ERROR, "no room in the arena to push the answer");
            return M3U_STATUS_PLUGIN_ERROR;
        }
        M3U_COPY(stage, from, chunk);
        status = m3u_host_write_channels(stage, (int32_t)chunk);
        if (status != M3U_STATUS_OK) {
            m3u_log_cstr(M3U_LOG_ERROR, "write_channels refused the answer (too large)");
            return status;
        }
        from += chunk;
        left -= chunk;
    }
    return 0;
}

/* KeepAll: nothing changes (the one byte 03). Valid at every stage. */
static inline void m3u_write_keep_all(m3u_writer *w) {
    m3u_write_byte(w, M3U_ANSWER_KEEP_ALL);
}

/* Keep: starts a keep mask for n channels with every channel kept and
 * returns the mask bytes (ceil(n/8); good until the next write to w), or
 * NULL on a failure. Change it with m3u_keep_drop. Valid at filtering,
 * source_loading, m3u_generation. A whole filter's execute_stage:
 *
 *     m3u_batch batch;
 *     int32_t status = m3u_batch_read(input_len, &batch);
 *     if (status != M3U_STATUS_OK) return status;
 *     m3u_writer w = m3u_answer_writer(input_len);
 *     uint8_t *mask = m3u_write_keep(&w, batch.count);
 *     if (!mask) return M3U_STATUS_PLUGIN_ERROR;
 *     for (uint32_t i = 0; i < batch.count; i++)
 *         if (!wanted(m3u_batch_text(&batch, M3U_FIELD_GROUP_TITLE, i)))
 *             m3u_keep_drop(mask, i);
 *     return m3u_answer_finish(&w);
 */
M3U_OUTLINE uint8_t *m3u_write_keep(m3u_writer *w, uint32_t n) {
    uint32_t bytes = (uint32_t)(((uint64_t)n + 7) / 8);
    uint8_t *mask;
    m3u_write_byte(w, M3U_ANSWER_KEEP);
    m3u_write_varint(w, bytes);
    mask = m3u_write_reserve(w, bytes);
    if (mask) {
        M3U_FILL(mask, 0xff, bytes);
        if (n % 8) mask[bytes - 1] = (uint8_t)((1u << (n % 8)) - 1); /* no bits past n */
    }
    return mask;
}

/* Drops channel i: clears bit i % 8 of byte i / 8. */
static inline void m3u_keep_drop(uint8_t *mask, uint32_t i) {
    if (mask) mask[i / 8] &= (uint8_t)~(1u << (i % 8));
}

/* Keeps channel i again. */
static inline void m3u_keep_set(uint8_t *mask, uint32_t i) {
    if (mask) mask[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* A list whose element count is not known until it ends: 5 bytes are
 * reserved for the count, which m3u_list_close writes as the shortest
 * varint, moving the elements down. */
typedef struct {
    uint32_t count_at; /* offset of the reserved bytes from the writer's start */
    uint32_t count;    /* elements written so far: count them yourself */
    int open;
} m3u_list;

/* Opens a list at the write position. */
static inline void m3u_list_open(m3u_writer *w, m3u_list *l) {
    uint8_t *p = m3u_write_reserve(w, 5);
    l->count = 0;
    l->open = p != NULL;
    if (p) l->count_at = (uint32_t)(p - w->start);
}

/* Writes the list's count and closes the gap left by the reservation. */
M3U_OUTLINE void m3u_list_close(m3u_writer *w, m3u_list *l) {
    uint8_t *at, *body;
    uint32_t width;
    if (!l->open) return;
    l->open = 0;
    if (w->error) return;
    at = w->start + l->count_at;
    body = at + 5;
    width = m3u_varint_encode(l->count, at);
    M3U_MOVE(at + width, body, (size_t)(w->pos - body));
    w->pos -= 5 - width;
}

/* A column of new values (FieldValues or AttributeValues): `indices` (u32
 * LE channel positions), `offsets` (u32 LE, one more) and `data` (UTF-8).
 * It reserves room for `max` values; m3u_values_end packs it. One column
 * of a writer is open at a time. */
struct m3u_values {
    m3u_writer *w;
    uint8_t *start;   /* where the encoding begins */
    uint8_t *indices; /* max x u32 reserved */
    uint8_t *offsets; /* (max + 1) x u32 reserved */
    uint8_t *data;    /* the values, written at w->pos */
    uint32_t max;
    uint32_t count;
    int open; /* between m3u_values_begin and m3u_values_end */
};

/* Moves the open column's pointers by delta bytes, after a spill. */
static inline void m3u_values_moved(m3u_values *v, ptrdiff_t delta) {
    if (!v) return;
    v->start += delta;
    v->indices += delta;
    v->offsets += delta;
    v->data += delta;
}

/* Starts a column for at most max values at the write position. */
M3U_OUTLINE void m3u_values_begin(m3u_writer *w, m3u_values *v, uint32_t max) {
    uint64_t room = 5 + 4 * (uint64_t)max + 5 + 4 * ((uint64_t)max + 1) + 5;
    v->w = w;
    v->max = max;
    v->count = 0;
    v->open = 0;
    v->start = room > 0xffffffffu ? NULL : m3u_write_reserve(w, (uint32_t)room);
    if (!v->start) {
        m3u_writer_fail(w, "the answer does not fit");
        v->max = 0; /* every m3u_value_begin now fails */
        return;
    }
    v->indices = v->start + 5;
    v->offsets = v->indices + 4 * (size_t)max + 5;
    v->data = v->offsets + 4 * ((size_t)max + 1) + 5;
    m3u_store_u32(v->offsets, 0);
    v->open = 1;
    w->column = v;
}

/* Starts the value for channel `index`; write its bytes with
 * m3u_write_raw / m3u_write_decimal on v->w, then call m3u_value_end. */
static inline void m3u_value_begin(m3u_values *v, uint32_t index) {
    if (v->count >= v->max) {
        m3u_writer_fail(v->w, "more values than the column reserved");
        return;
    }
    m3u_store_u32(v->indices + 4 * (size_t)v->count, index);
}

/* Ends the value started by m3u_value_begin. */
static inline void m3u_value_end(m3u_values *v) {
    if (v->w->error) return;
    v->count++;
    m3u_store_u32(v->offsets + 4 * (size_t)v->count, (uint32_t)(v->w->pos - v->data));
}

/* Adds the value [ptr, ptr+len) for channel `index`. */
static inline void m3u_values_push(m3u_values *v, uint32_t index, const char *ptr, uint32_t len) {
    m3u_value_begin(v, index);
    m3u_write_raw(v->w, ptr, len);
    m3u_value_end(v);
}

/* Ends the column: writes the three slices' lengths and packs them. */
M3U_OUTLINE void m3u_values_end(m3u_values *v) {
    m3u_writer *w = v->w;
    uint8_t *p;
    uint32_t k = v->count, data_len;
    if (!v->open) return;
    v->open = 0;
    w->column = NULL;
    if (w->error) return;
    data_len = (uint32_t)(w->pos - v->data);
    p = v->start; /* every move goes down, into room already read */
    p += m3u_varint_encode(4 * (uint64_t)k, p);
    M3U_MOVE(p, v->indices, 4 * (size_t)k);
    p += 4 * (size_t)k;
    p += m3u_varint_encode(4 * ((uint64_t)k + 1), p);
    M3U_MOVE(p, v->offsets, 4 * ((size_t)k + 1));
    p += 4 * ((size_t)k + 1);
    p += m3u_varint_encode(data_len, p);
    M3U_MOVE(p, v->data, data_len);
    w->pos = p + data_len;
}

/* A Changes (4) or Patches (2) answer, built in three sections that must
 * come in this order (each function moves on by itself, closing what is
 * open):
 *   1. field columns      m3u_changes_field      (Changes only)
 *   2. patches            m3u_changes_set_field, m3u_changes_set_attribute,
 *                         m3u_changes_remove_attribute
 *   3. attribute columns  m3u_changes_attribute  (Changes only)
 * then m3u_changes_end. The host applies field columns, then patches, then
 * attribute columns; a later value for the same channel wins. Not valid at
 * filtering. Limits (§8): 64 KiB per value, 64 changes per channel, 4 KiB
 * written per channel of the batch. */
typedef struct {
    m3u_writer *w;
    m3u_list list;     /* the section's list */
    m3u_values column; /* the open column, if any */
    int section;       /* 0 fields, 1 patches, 2 attributes, 3 ended */
    int patches_only;  /* a Patches answer */
} m3u_changes;

/* Starts a Changes answer. */
M3U_OUTLINE void m3u_changes_begin(m3u_changes *c, m3u_writer *w) {
    c->w = w;
    c->section = 0;
    c->patches_only = 0;
    c->column.open = 0;
    m3u_write_byte(w, M3U_ANSWER_CHANGES);
    m3u_list_open(w, &c->list);
}

/* Starts a Patches answer: patches only, no columns. */
M3U_OUTLINE void m3u_patches_begin(m3u_changes *c, m3u_writer *w) {
    c->w = w;
    c->section = 1;
    c->patches_only = 1;
    c->column.open = 0;
    m3u_write_byte(w, M3U_ANSWER_PATCHES);
    m3u_list_open(w, &c->list);
}

/* Moves the builder on to `section`, closing the open column and lists. */
M3U_OUTLINE void m3u_changes_section(m3u_changes *c, int section) {
    m3u_values_end(&c->column);
    if (section < c->section) {
        m3u_writer_fail(c->w, "changes out of order: field columns, patches, attribute columns");
        return;
    }
    while (c->section < section) {
        m3u_list_close(c->w, &c->list);
        c->section++;
        if (c->section <= 2 && !c->patches_only) m3u_list_open(c->w, &c->list);
    }
}

/* Opens a column of new values for text field `field` (one value per
 * changed channel, at most max), for the Changes answer. */
M3U_OUTLINE m3u_values *m3u_changes_field(m3u_changes *c, uint32_t field, uint32_t max) {
    if (c->patches_only) m3u_writer_fail(c->w, "a Patches answer has no columns");
    m3u_changes_section(c, 0);
    m3u_write_varint(c->w, field);
    c->list.count++;
    m3u_values_begin(c->w, &c->column, max);
    return &c->column;
}

/* Opens a column of values for extra attribute `name` (set, or added when
 * the channel lacks it; names match ignoring ASCII case), at most max. */
M3U_OUTLINE m3u_values *m3u_changes_attribute(m3u_changes *c, const char *name,
                                                uint32_t name_len, uint32_t max) {
    if (c->patches_only) m3u_writer_fail(c->w, "a Patches answer has no columns");
    m3u_changes_section(c, 2);
    m3u_write_str(c->w, name, name_len);
    c->list.count++;
    m3u_values_begin(c->w, &c->column, max);
    return &c->column;
}

/* Patch: sets text field `field` of channel `index` to [value, +len). */
static inline void m3u_changes_set_field(m3u_changes *c, uint32_t index, uint32_t field,
                                         const char *value, uint32_t len) {
    m3u_changes_section(c, 1);
    m3u_write_varint(c->w, index);
    m3u_write_byte(c->w, M3U_PATCH_SET_FIELD);
    m3u_write_varint(c->w, field);
    m3u_write_str(c->w, value, len);
    c->list.count++;
}

/* Patch: sets (or adds) extra attribute `name` of channel `index`. */
static inline void m3u_changes_set_attribute(m3u_changes *c, uint32_t index, const char *name,
                                             uint32_t name_len, const char *value, uint32_t len) {
    m3u_changes_section(c, 1);
    m3u_write_varint(c->w, index);
    m3u_write_byte(c->w, M3U_PATCH_SET_ATTRIBUTE);
    m3u_write_str(c->w, name, name_len);
    m3u_write_str(c->w, value, len);
    c->list.count++;
}

/* Patch: removes every extra attribute `name` (any case) of channel
 * `index`. */
static inline void m3u_changes_remove_attribute(m3u_changes *c, uint32_t index, const char *name,
                                                uint32_t name_len) {
    m3u_changes_section(c, 1);
    m3u_write_varint(c->w, index);
    m3u_write_byte(c->w, M3U_PATCH_REMOVE_ATTRIBUTE);
    m3u_write_str(c->w, name, name_len);
    c->list.count++;
}

/* Ends the answer (closing every section); then return
 * m3u_answer_finish(w). */
M3U_OUTLINE void m3u_changes_end(m3u_changes *c) {
    m3u_changes_section(c, 3);
}

/* ------------------------------------------------------------------------
 * Definitions: once per plugin (see the top of the file)
 * ---------------------------------------------------------------------- */
#ifndef M3U_PLUGIN_NO_DEFINITIONS

#if M3U_ARENA_BYTES < 4096 || M3U_ARENA_BYTES <= M3U_SCRATCH_BYTES
#error "M3U_ARENA_BYTES must be at least 4096 and larger than M3U_SCRATCH_BYTES"
#endif

/* The ABI version custom section, `m3u_abi_version` = 02 00 00 00 (§1).
 * The assembler makes a `.custom_section.NAME` section a Wasm custom
 * section. (A C array with __attribute__((section(...))) would become a
 * data segment instead, at least up to clang 14.) */
__asm__(".section .custom_section.m3u_abi_version,\"\",@\n"
        ".int8 2\n.int8 0\n.int8 0\n.int8 0\n" /* M3U_ABI_VERSION, LE u32 */
        ".text\n");

/* The arena, and the start of the spill region (see m3u_writer_grow). */
__attribute__((aligned(16))) uint8_t m3u_arena[M3U_ARENA_BYTES];
uint8_t *m3u_spill;

/* Export m3u_arena_ptr: the arena's address. */
M3U_EXPORT(m3u_arena_ptr) int32_t m3u_arena_ptr(void) {
    return (int32_t)(uintptr_t)m3u_arena;
}

/* Export m3u_arena_capacity: the arena's size. */
M3U_EXPORT(m3u_arena_capacity) int32_t m3u_arena_capacity(void) {
    return (int32_t)M3U_ARENA_BYTES;
}

/* With -mbulk-memory these compile to single memory.copy / memory.fill
 * instructions (cheap in fuel); without it, to plain loops (no_builtin keeps
 * clang from turning a loop back into a call to itself). */
#if defined(__wasm_bulk_memory__)
__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) {
    __builtin_memcpy(dst, src, n);
    return dst;
}
__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
    __builtin_memmove(dst, src, n);
    return dst;
}
__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
    __builtin_memset(dst, c, n);
    return dst;
}
#else
__attribute__((weak, no_builtin)) void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
    return dst;
}
__attribute__((weak, no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}
__attribute__((weak, no_builtin)) void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}
#endif
/* memcmp: -1, 0 or 1 (a byte loop; clang has no bulk instruction for it). */
__attribute__((weak, no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    size_t i;
    for (i = 0; i < n; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

#endif /* M3U_PLUGIN_NO_DEFINITIONS */

#ifdef __cplusplus
}
#endif

#endif /* M3U_PLUGIN_H */
