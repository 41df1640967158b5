//! (placeholder: filled in by the plugin_dedup work)
