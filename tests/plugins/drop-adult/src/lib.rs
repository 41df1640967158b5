//! The README's "Writing a plugin" example, verbatim below this comment
//! (`layout::the_readme_example_filter_is_the_drop_adult_crate` checks it).
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct DropAdult;

impl Plugin for DropAdult {
    const DESCRIPTION: &'static str = "Drops channels in adult groups";
    const READS: FieldSet = FieldSet::of(&[Field::GroupTitle]); // only this is sent
    const PARALLEL_SAFE: bool = true; // no state kept between batches
    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        Some(self)
    }
}

impl Filter for DropAdult {
    fn keep(&mut self, _ctx: &StageContext<'_>, channel: ChannelRef<'_>) -> bool {
        !channel.group_title().to_ascii_lowercase().contains("adult")
    }
}

export_plugin!(DropAdult, "drop_adult");
