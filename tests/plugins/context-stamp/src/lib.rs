//! Test plugin: the `context_stamp` mapper. It stamps every channel with the
//! attribute `x-proxy` = the run context's proxy name, and traps on a batch
//! holding a channel named `TRAP`, so a test can check that the instance
//! that replaces it mid-run still has the run's context.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct ContextStamp;

impl Plugin for ContextStamp {
    const DESCRIPTION: &'static str = "Stamps the run's proxy name; traps on TRAP (tests only)";
    const READS: FieldSet = FieldSet::of(&[Field::ChannelName]);

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for ContextStamp {
    fn map<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        if channel.name() == "TRAP" {
            trap()
        }
        patches.set_attribute("x-proxy", String::from(ctx.proxy_name.as_ref()));
    }
}

/// A Wasm trap (`unreachable`); natively a panic stands in for it.
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    panic!("context_stamp: trap");
}

export_plugin!(ContextStamp, "context_stamp");
