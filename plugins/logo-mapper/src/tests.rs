//! Native unit tests of `logic.rs` (`cargo test -p logo-mapper`): error
//! messages and edge cases the integration tests cannot see (the host only
//! logs a plugin's config error message).

use std::collections::BTreeMap;

use crate::logic::*;

fn mapper(pairs: &[(&str, &str)]) -> Result<LogoMapper, String> {
    let config: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LogoMapper::new(|key| config.get(key).cloned())
}

fn error(pairs: &[(&str, &str)]) -> String {
    match mapper(pairs) {
        Ok(mapper) => panic!("{pairs:?} was accepted: {mapper:?}"),
        Err(message) => message,
    }
}

fn channel<'a>(name: &'a str, tvg_id: &'a str, tvg_logo: &'a str) -> ChannelFields<'a> {
    ChannelFields {
        channel_name: name,
        tvg_name: "",
        tvg_id,
        tvg_logo,
    }
}

#[test]
fn sha256_matches_the_standard_test_vectors() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        cache_url("http://nas:8080/", "https://example.com/logo.png"),
        "http://nas:8080/logos/adc2cf2dbcde0df0a108066c5f6f973453801b181e7fa92d392540a099f1fd8d"
    );
}

#[test]
fn names_normalise_without_case_whitespace_and_quality_tags() {
    for name in [
        "BBC One",
        "  bbc   one ",
        "BBC One HD",
        "BBC ONE (1080p)",
        "bbc one [FHD]",
        "4K BBC One uhd",
        "BBC\u{a0}One 720i",
    ] {
        assert_eq!(normalize_name(name), "bbc one", "{name:?}");
    }
    assert_eq!(normalize_name("BBC One+1"), "bbc one+1");
    assert_eq!(normalize_name("BBC One (UK)"), "bbc one (uk)");
    assert_eq!(
        normalize_name("HD (720p)"),
        "hd (720p)",
        "all tags: keep them"
    );
    assert_eq!(normalize_name("  "), "");
    assert_eq!(normalize_name("ÉCOLE TV"), "école tv");
    for tag in ["hd", "(HD)", "[4k]", "2160p", "(576p)", "FullHD", "hdr"] {
        assert!(is_quality_tag(tag), "{tag}");
    }
    for word in ["HD+", "(HD", "10p", "12345p", "p", "(uk)", "hd1"] {
        assert!(!is_quality_tag(word), "{word}");
    }
}

#[test]
fn config_errors_name_the_key_and_line() {
    let message = error(&[("rewrite_logos", "yes")]);
    assert!(
        message.contains("rewrite_logos = \"yes\" is not a boolean"),
        "{message}"
    );
    let message = error(&[("logo_base_url", "nas.local/x")]);
    assert!(
        message.contains("logo_base_url = \"nas.local/x\" must be an http"),
        "{message}"
    );
    let message = error(&[("by_name", "# header\n\nBBC One | a | b | c\n")]);
    assert!(message.contains("by_name line 3: expected"), "{message}");
    assert!(message.contains("found 4 column(s)"), "{message}");
    let message = error(&[("by_name", "Solo")]);
    assert!(message.contains("by_name line 1"), "{message}");
    let message = error(&[("by_name", " | http://x/a.png")]);
    assert!(message.contains("the channel name is empty"), "{message}");
    let message = error(&[("by_name", "BBC One | |")]);
    assert!(
        message.contains("gives neither a logo nor a tvg-id"),
        "{message}"
    );
    let message = error(&[(
        "by_name",
        "BBC One | http://x/1.png\nbbc one hd | http://x/2.png",
    )]);
    assert!(
        message.contains("by_name line 2: `bbc one hd` normalises to `bbc one`, like the entry on by_name line 1"),
        "{message}"
    );
    let message = error(&[(
        "by_id",
        "bbc1.uk | http://x/1.png\nBBC1.UK | http://x/2.png",
    )]);
    assert!(
        message.contains("by_id line 2: tvg-id `BBC1.UK` is already mapped on by_id line 1"),
        "{message}"
    );
    let message = error(&[("by_id", "bbc1.uk")]);
    assert!(
        message.contains("expected `tvg-id | logo`, found 1 column(s)"),
        "{message}"
    );
    let message = error(&[("by_id", "bbc1.uk | ")]);
    assert!(message.contains("must be non-empty"), "{message}");
    let message = error(&[("by_name", "A | http://x/\"a.png")]);
    assert!(message.contains("contains `\"`"), "{message}");
    let message = error(&[
        ("by_name", "A | http://x/a.png"),
        ("by_name_3", "B | http://x/b.png"),
    ]);
    assert!(
        message.contains("by_name_3 is set but by_name_2 is not"),
        "{message}"
    );
    let message = error(&[("by_id_2", "a | http://x/a.png")]);
    assert!(
        message.contains("by_id_2 is set but by_id is not"),
        "{message}"
    );
    assert!(error(&[("overwrite_logo", "1")]).contains("overwrite_logo"));
    assert!(error(&[("overwrite_tvg_id", "")]).contains("overwrite_tvg_id"));
}

#[test]
fn tables_fill_only_missing_values_unless_overwrite_is_on() {
    let tables = [
        (
            "by_name",
            "BBC One | http://x/bbc1.png | bbc1.uk\nITV | | itv.uk",
        ),
        ("by_name_2", "# part two\nChannel 4 | http://x/c4.png"),
        (
            "by_id",
            "ITV.uk | http://x/itv.png\nother.uk | http://x/other.png",
        ),
        ("rewrite_logos", "false"),
    ];
    let m = mapper(&tables).unwrap();
    assert_eq!((m.name_entries(), m.id_entries()), (3, 2));
    // Both missing: filled from the name entry.
    let changes = m.map_channel(&channel("bbc one hd", "", ""), "");
    assert_eq!(changes.tvg_id.as_deref(), Some("bbc1.uk"));
    assert_eq!(changes.tvg_logo.as_deref(), Some("http://x/bbc1.png"));
    // The id filled from the name table selects the logo of the id table.
    let changes = m.map_channel(&channel("ITV", " ", ""), "");
    assert_eq!(changes.tvg_id.as_deref(), Some("itv.uk"));
    assert_eq!(changes.tvg_logo.as_deref(), Some("http://x/itv.png"));
    // Existing values are kept.
    let kept = m.map_channel(&channel("BBC One", "mine", "http://mine/l.png"), "");
    assert!(kept.is_empty(), "{kept:?}");
    // tvg_name is the second chance.
    let by_tvg_name = ChannelFields {
        channel_name: "Something else",
        tvg_name: "Channel 4 FHD",
        tvg_id: "",
        tvg_logo: "",
    };
    let changes = m.map_channel(&by_tvg_name, "");
    assert_eq!(changes.tvg_id, None, "the entry has no tvg-id");
    assert_eq!(changes.tvg_logo.as_deref(), Some("http://x/c4.png"));
    // Logo by an existing tvg-id, no name entry.
    let changes = m.map_channel(&channel("Unknown", "OTHER.uk", ""), "");
    assert_eq!(changes.tvg_logo.as_deref(), Some("http://x/other.png"));
    assert!(m.map_channel(&channel("Unknown", "", ""), "").is_empty());

    let mut overwrite = tables.to_vec();
    overwrite.extend([("overwrite_logo", "true"), ("overwrite_tvg_id", "true")]);
    let m = mapper(&overwrite).unwrap();
    let changes = m.map_channel(&channel("BBC One", "mine", "http://mine/l.png"), "");
    assert_eq!(changes.tvg_id.as_deref(), Some("bbc1.uk"));
    assert_eq!(changes.tvg_logo.as_deref(), Some("http://x/bbc1.png"));
    // Nothing in the tables: the existing values stay.
    assert!(m
        .map_channel(&channel("Unknown", "mine", "http://mine/l.png"), "")
        .is_empty());
}

#[test]
fn logos_are_rewritten_once_under_the_right_base() {
    let logo = "https://example.com/logo.png";
    let hash = "adc2cf2dbcde0df0a108066c5f6f973453801b181e7fa92d392540a099f1fd8d";
    // Default: the proxy's base URL.
    let m = mapper(&[]).unwrap();
    let changes = m.map_channel(&channel("x", "", logo), "http://proxy.local/");
    let rewritten = format!("http://proxy.local/logos/{hash}");
    assert_eq!(changes.tvg_logo.as_deref(), Some(rewritten.as_str()));
    // Already rewritten: unchanged.
    assert!(m
        .map_channel(&channel("x", "", &rewritten), "http://proxy.local")
        .is_empty());
    // No base known, or not an http(s) URL: unchanged.
    assert!(m.map_channel(&channel("x", "", logo), "").is_empty());
    assert!(m
        .map_channel(&channel("x", "", "data:image/png;base64,AAAA"), "http://p")
        .is_empty());
    assert!(m.map_channel(&channel("x", "", ""), "http://p").is_empty());
    // A configured base wins over the proxy's.
    let m = mapper(&[("logo_base_url", " https://cdn.example/ ")]).unwrap();
    let changes = m.map_channel(&channel("x", "", "HTTP://EXAMPLE.COM/a.png"), "http://p");
    let url = changes.tvg_logo.unwrap();
    assert!(url.starts_with("https://cdn.example/logos/"), "{url}");
    assert_eq!(url.len(), "https://cdn.example/logos/".len() + 64);
    // Off.
    let m = mapper(&[("rewrite_logos", "false")]).unwrap();
    assert!(!m.rewrites_logos());
    assert!(LogoMapper::default().rewrites_logos());
    assert!(m
        .map_channel(&channel("x", "", logo), "http://p")
        .is_empty());
    assert_eq!(m.rewrite_base("http://p"), None);
}
