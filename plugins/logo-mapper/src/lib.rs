//! Fills a missing `tvg-logo` and `tvg-id` from mapping tables in the plugin
//! config (by normalised channel name, and logos by tvg-id), and points logos
//! at the proxy's logo cache, `{base}/logos/{sha256-of-url}`, as upstream
//! m3u-proxy does. It reads four fields and answers with field patches.
//!
//! The logic lives in `logic.rs` (no SDK types); this file is the SDK glue.
use m3u_proxy_plugin_sdk::prelude::*;

mod logic;
#[cfg(test)]
mod tests;

use logic::{ChannelFields, LogoMapper};

#[derive(Default)]
struct LogoMapperPlugin {
    mapper: LogoMapper,
    /// Whether the "rewriting is on but no base URL is known" warning was
    /// logged (once per instance).
    warned_no_base: bool,
}

impl Plugin for LogoMapperPlugin {
    const DESCRIPTION: &'static str =
        "Fills missing tvg-logo/tvg-id from a mapping table and rewrites logos to {base}/logos/{sha256}";
    const READS: FieldSet = FieldSet::of(&[
        Field::TvgId,
        Field::TvgName,
        Field::TvgLogo,
        Field::ChannelName,
    ]);
    const PARALLEL_SAFE: bool = true;

    fn init(&mut self) -> Result<(), PluginError> {
        self.mapper = LogoMapper::new(config::get).map_err(PluginError::Config)?;
        log_info!(
            "logo_mapper: {} name entries, {} tvg-id entries, logo rewriting {}",
            self.mapper.name_entries(),
            self.mapper.id_entries(),
            if self.mapper.rewrites_logos() {
                "on"
            } else {
                "off"
            }
        );
        Ok(())
    }

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for LogoMapperPlugin {
    fn map<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        if !self.warned_no_base
            && self.mapper.rewrites_logos()
            && self.mapper.rewrite_base(&ctx.base_url).is_none()
        {
            self.warned_no_base = true;
            log_warn!(
                "logo_mapper: rewrite_logos is on but neither logo_base_url nor [proxy] \
                 base_url is set; logos are not rewritten"
            );
        }
        let fields = ChannelFields {
            channel_name: channel.name(),
            tvg_name: channel.tvg_name(),
            tvg_id: channel.tvg_id(),
            tvg_logo: channel.tvg_logo(),
        };
        let changes = self.mapper.map_channel(&fields, &ctx.base_url);
        if changes.is_empty() {
            return;
        }
        if let Some(tvg_id) = changes.tvg_id {
            patches.set(Field::TvgId, tvg_id);
        }
        if let Some(tvg_logo) = changes.tvg_logo {
            patches.set(Field::TvgLogo, tvg_logo);
        }
    }
}

export_plugin!(LogoMapperPlugin, "logo_mapper");
