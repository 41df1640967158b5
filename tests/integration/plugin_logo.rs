//! (placeholder: filled in by the plugin_logo work)
