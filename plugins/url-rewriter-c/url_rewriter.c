/*
 * url_rewriter_c: the C twin of plugins/url-rewriter (Rust).
 *
 * At m3u_generation it points every stream URL at the proxy:
 * stream_url = {base_url without trailing '/'}/stream/{channel id}, and the
 * provider's URL is kept in the attribute x-upstream-url. base_url is the
 * host's [proxy] base_url, handed over once per run in
 * m3u_check_memory_pressure(level, context_len). With an empty base_url it
 * changes nothing (KeepAll).
 *
 * It reads only the stream URL and answers like the Rust plugin, with a
 * Changes answer: one column of new stream URLs and one column of
 * x-upstream-url values. It keeps nothing from batch to batch
 * (parallel_safe). Build: see README.md.
 */
#include "m3u_plugin.h"

/* "{base_url}/stream/", copied from the run context (which the first batch
 * overwrites). Empty: no base URL, change nothing. */
#define PREFIX_CAP 8192
static char prefix[PREFIX_CAP];
static uint32_t prefix_len;

static const m3u_info INFO = {
    "url_rewriter_c",                                      /* name */
    "0.1.0",                                               /* version */
    "Rewrites stream URLs to {base_url}/stream/{id} (C)", /* description */
    "",                                                    /* author */
    M3U_STAGE_BIT(M3U_STAGE_M3U_GENERATION),               /* stages */
    M3U_FIELD_BIT(M3U_FIELD_STREAM_URL),                   /* reads */
    0,                                                     /* min_bytes */
    4u * M3U_ARENA_BYTES,                                  /* recommended_bytes */
    M3U_PRESSURE_EMERGENCY,                                /* max_pressure */
    1,                                                     /* parallel_safe */
    0, 0                                                   /* no stage_reads */
};

M3U_EXPORT(m3u_plugin_info) int32_t m3u_plugin_info(void) {
    return m3u_write_plugin_info(&INFO);
}

/* No settings: the form without the config table. */
M3U_EXPORT(m3u_init) int32_t m3u_init(void) {
    return M3U_STATUS_OK;
}

M3U_EXPORT(m3u_cleanup) int32_t m3u_cleanup(void) {
    return M3U_STATUS_OK;
}

/* A run starts: keep "{base_url}/stream/" for its batches. */
M3U_EXPORT(m3u_check_memory_pressure)
int32_t m3u_check_memory_pressure(int32_t level, int32_t context_len) {
    static const char STREAM[] = "/stream/";
    m3u_run_context ctx;
    uint32_t base_len;
    if (level < M3U_PRESSURE_OPTIMAL || level > M3U_PRESSURE_EMERGENCY) return 0;
    prefix_len = 0;
    if (!m3u_run_context_read(context_len, &ctx)) {
        m3u_log_cstr(M3U_LOG_ERROR, "the run context from the host does not decode");
        return 0;
    }
    base_len = ctx.base_url.len;
    while (base_len > 0 && ctx.base_url.ptr[base_len - 1] == '/') base_len--;
    if (base_len == 0) return 1; /* no base URL: KeepAll for every batch */
    if (base_len + sizeof STREAM - 1 > PREFIX_CAP) {
        m3u_log_cstr(M3U_LOG_ERROR, "base_url is longer than 8 KiB");
        return 0;
    }
    memcpy(prefix, ctx.base_url.ptr, base_len);
    memcpy(prefix + base_len, STREAM, sizeof STREAM - 1);
    prefix_len = base_len + (uint32_t)(sizeof STREAM - 1);
    return 1;
}

/* The answer for a batch: new stream URLs and x-upstream-url values, as
 * two columns of a Changes answer (what the Rust SDK's Patches sends). Out
 * of line, so a call that answers KeepAll is not charged its fuel. */
__attribute__((noinline)) static int32_t rewrite(const m3u_batch *batch, m3u_writer *w) {
    static const char UPSTREAM[] = "x-upstream-url";
    m3u_changes changes;
    m3u_values *column;
    uint32_t i, n = batch->count;

    m3u_changes_begin(&changes, w);
    /* stream_url = prefix + id, for every channel */
    column = m3u_changes_field(&changes, M3U_FIELD_STREAM_URL, n);
    for (i = 0; i < n; i++) {
        m3u_value_begin(column, i);
        m3u_write_raw(w, prefix, prefix_len);
        m3u_write_decimal(w, m3u_batch_id(batch, i));
        m3u_value_end(column);
    }
    /* x-upstream-url = the URL the channel had */
    column = m3u_changes_attribute(&changes, UPSTREAM, sizeof UPSTREAM - 1, n);
    for (i = 0; i < n; i++) {
        m3u_str url = m3u_batch_text(batch, M3U_FIELD_STREAM_URL, i);
        m3u_values_push(column, i, url.ptr, url.len);
    }
    m3u_changes_end(&changes);
    return m3u_answer_finish(w);
}

M3U_EXPORT(m3u_execute_stage) int32_t m3u_execute_stage(int32_t stage, int32_t input_len) {
    m3u_batch batch;
    m3u_writer w;
    int32_t status;

    if (stage != M3U_STAGE_M3U_GENERATION) return M3U_STATUS_UNSUPPORTED_STAGE;
    if (input_len < 0) return M3U_STATUS_DECODE_ERROR;
    if ((uint32_t)input_len > M3U_DATA_BYTES) return M3U_STATUS_INPUT_TOO_LARGE;
    status = m3u_batch_read(input_len, &batch);
    if (status != M3U_STATUS_OK) return status;

    w = m3u_answer_writer(input_len);
    if (prefix_len == 0) { /* no base URL: change nothing */
        m3u_write_keep_all(&w);
        return m3u_answer_finish(&w);
    }
    return rewrite(&batch, &w);
}
