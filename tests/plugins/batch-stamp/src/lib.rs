//! Test plugin: the `batch_stamp` mapper. It stamps every channel with the
//! attribute `x-batch` = the context's `batch_index` at the stage it runs
//! in, so a test can check which batch the host said a channel was in.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct BatchStamp;

impl Plugin for BatchStamp {
    const DESCRIPTION: &'static str = "Stamps every channel with its batch index (tests only)";
    const READS: FieldSet = FieldSet::NONE;

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for BatchStamp {
    fn map<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        _channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        patches.set_attribute("x-batch", format!("{}", ctx.batch_index));
    }
}

export_plugin!(BatchStamp, "batch_stamp");
