//! (placeholder: filled in by the plugin_sports work)
