//! (placeholder: filled in by the plugin_dedup_wat work)
