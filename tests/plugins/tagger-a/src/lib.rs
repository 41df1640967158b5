//! Test plugin: the `tagger` mapper, build "a". It stamps every channel with
//! the attribute `tagger-build="a"`, so a test can tell which version of
//! a hot-reloaded plugin produced a playlist. Its twin crate builds "b".
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct Tagger;

impl Plugin for Tagger {
    const VERSION: &'static str = "a";
    const DESCRIPTION: &'static str = "Stamps every channel with its build (tests only)";
    const READS: FieldSet = FieldSet::NONE;

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for Tagger {
    fn map<'a>(
        &mut self,
        _ctx: &StageContext<'_>,
        _channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        patches.set_attribute("tagger-build", "a");
    }
}

export_plugin!(Tagger, "tagger");
