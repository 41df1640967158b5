//! Test plugin: the `tagger` mapper, build "b". It stamps every channel with
//! the attribute `tagger-build="b"`, so a test can tell which version of
//! a hot-reloaded plugin produced a playlist. Its twin crate builds "a".
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct Tagger;

impl Plugin for Tagger {
    const VERSION: &'static str = "b";
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
        patches.set_attribute("tagger-build", "b");
    }
}

export_plugin!(Tagger, "tagger");
