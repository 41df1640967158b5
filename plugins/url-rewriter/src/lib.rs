//! Points every stream URL at the proxy: `{base_url}/stream/{id}` (the
//! `[proxy] base_url` of the host's config), keeping the provider URL in the
//! `x-upstream-url` attribute. It runs at m3u_generation as a patch plugin:
//! it reads only the stream URL and answers with the changed fields.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct UrlRewriter {
    /// `{base_url}/stream/`, built once per call.
    prefix: String,
}

impl Plugin for UrlRewriter {
    const DESCRIPTION: &'static str = "Rewrites stream URLs to {base_url}/stream/{id}";
    const READS: FieldSet = FieldSet::of(&[Field::StreamUrl]);
    const PARALLEL_SAFE: bool = true;

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for UrlRewriter {
    fn stages(&self) -> &'static [Stage] {
        &[Stage::M3uGeneration]
    }

    fn map_batch<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
        patches: &mut Patches<'a>,
    ) {
        let base = ctx.base_url.trim_end_matches('/');
        if base.is_empty() {
            return;
        }
        self.prefix.clear();
        self.prefix.push_str(base);
        self.prefix.push_str("/stream/");
        let mut url = String::new();
        for channel in batch.iter() {
            url.clear();
            url.push_str(&self.prefix);
            push_decimal(&mut url, channel.id());
            patches.point_at(channel.index());
            patches.set(Field::StreamUrl, &url);
            patches.set_attribute("x-upstream-url", channel.url());
        }
    }
}

export_plugin!(UrlRewriter, "url_rewriter");

#[cfg(test)]
mod tests {
    use super::*;
    use m3u_proxy_plugin_sdk::testing::TestHost;

    #[test]
    fn rewrites_the_url_and_keeps_the_upstream_one() {
        let mut host = TestHost::<UrlRewriter>::new(&[]).unwrap();
        assert_eq!(
            host.reads(Stage::M3uGeneration),
            FieldSet::of(&[Field::StreamUrl])
        );
        host.start_run(MemoryPressureLevel::Optimal, "http://proxy:8080/")
            .unwrap();
        let mut batch = vec![Channel {
            id: 42,
            channel_name: "A".into(),
            stream_url: "http://up/1".into(),
            ..Channel::default()
        }];
        host.run(Stage::M3uGeneration, &mut batch).unwrap();
        assert_eq!(batch[0].stream_url, "http://proxy:8080/stream/42");
        assert_eq!(batch[0].attribute("x-upstream-url"), Some("http://up/1"));
        assert_eq!(batch[0].channel_name, "A", "fields it does not read stay");
    }

    #[test]
    fn without_a_base_url_nothing_changes() {
        let mut host = TestHost::<UrlRewriter>::new(&[]).unwrap();
        let mut batch = vec![Channel {
            stream_url: "http://up/1".into(),
            ..Channel::default()
        }];
        let before = batch.clone();
        host.run(Stage::M3uGeneration, &mut batch).unwrap();
        assert_eq!(batch, before);
    }
}
