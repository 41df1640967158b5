//! Points every stream URL at the proxy: `{base_url}/stream/{id}` (the
//! `[proxy] base_url` of the host's config), keeping the provider URL in the
//! `x-upstream-url` attribute. It runs at m3u_generation and rewrites whole
//! channels, so it shows the cost of the full-channel path.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct UrlRewriter;

impl Plugin for UrlRewriter {
    const DESCRIPTION: &'static str = "Rewrites stream URLs to {base_url}/stream/{id}";
    const READS: FieldSet = FieldSet::ALL;

    fn as_transformer(&mut self) -> Option<&mut dyn Transformer> {
        Some(self)
    }
}

impl Transformer for UrlRewriter {
    fn stages(&self) -> &'static [Stage] {
        &[Stage::M3uGeneration]
    }

    fn transform<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        mut channels: Vec<Channel<'a>>,
    ) -> Vec<Channel<'a>> {
        let base = ctx.base_url.trim_end_matches('/');
        if base.is_empty() {
            return channels;
        }
        for channel in &mut channels {
            let upstream = core::mem::take(&mut channel.stream_url);
            channel.stream_url = Cow::Owned(format!("{base}/stream/{}", channel.id));
            channel.set_attribute(Cow::Borrowed("x-upstream-url"), upstream);
        }
        channels
    }
}

export_plugin!(UrlRewriter, "url_rewriter");
