//! Plugin signatures through `Pipeline::new`: a real plugin signed by a
//! trusted key loads as signed; a tampered module or signature, an untrusted
//! key, or a missing signature when `require_signatures` is on keeps it out
//! with a load error that names the signature problem; unsigned plugins still
//! load when signatures are not required.

use std::path::{Path, PathBuf};

use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::Pipeline;
use m3u_plugin_host::signing::{self, SignatureState};

use super::pipeline::plugin_dir;

/// A config loading every plugin of `dir`, with extra `[security]` lines.
fn config(dir: &Path, security: &str) -> Config {
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         {security}\n\
         [proxy_generation.wasm_plugins.strategies]\nfiltering = [\"passthrough\"]\n",
        dir.display().to_string()
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `[security]` lines trusting `keys`.
fn trusting(keys: &[&str], require: bool) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!(
        "trusted_keys = [{}]\nrequire_signatures = {require}",
        keys.join(", ")
    )
}

/// A scratch dir with the passthrough plugin, signed by a new key written
/// into the same dir (the key file does not end in `.wasm`, so it is not
/// loaded). Returns (dir, module path, public key).
fn signed_passthrough() -> (PathBuf, PathBuf, String) {
    let dir = plugin_dir(&["passthrough"]);
    let wasm = dir.join("passthrough.wasm");
    let key_path = dir.join("signing.key");
    let public = signing::write_keypair(&key_path).unwrap();
    let sig = signing::sign_file(&wasm, &key_path).unwrap();
    assert_eq!(sig, dir.join("passthrough.wasm.sig"));
    (dir, wasm, public)
}

/// Builds the pipeline, which must come up with no plugin and one load error
/// about the passthrough signature; returns that error.
fn refused(config: Config) -> String {
    let pipeline = Pipeline::new(config).unwrap();
    assert!(
        pipeline.plugins().is_empty(),
        "plugin should not load: {pipeline:?}"
    );
    let errors = pipeline.load_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0].clone();
    assert!(error.contains("passthrough.wasm"), "{error}");
    assert!(error.contains("signature check of"), "{error}");
    error
}

fn flip_byte(path: &Path, index: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[index] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn signed_plugin_with_a_trusted_key_loads_as_signed() {
    let (dir, _, public) = signed_passthrough();
    for require in [false, true] {
        let pipeline = Pipeline::new(config(&dir, &trusting(&[&public], require))).unwrap();
        assert!(
            pipeline.load_errors().is_empty(),
            "{:?}",
            pipeline.load_errors()
        );
        assert_eq!(pipeline.plugins().len(), 1);
        assert_eq!(pipeline.plugins()[0].name(), "passthrough");
        assert_eq!(
            pipeline.plugins()[0].signature,
            SignatureState::Signed {
                key: public.clone()
            }
        );
        assert_eq!(pipeline.plugins()[0].signature.label(), "signed");
    }
    // The trusted key may be written in upper case.
    let upper = public.to_uppercase();
    let pipeline = Pipeline::new(config(&dir, &trusting(&[&upper], true))).unwrap();
    assert_eq!(pipeline.plugins().len(), 1, "{:?}", pipeline.load_errors());
}

#[test]
fn flipped_byte_in_the_module_is_refused() {
    let (dir, wasm, public) = signed_passthrough();
    let len = std::fs::metadata(&wasm).unwrap().len() as usize;
    // A byte in the middle of the code, so the module is still plausible
    // Wasm; only the signature can tell.
    flip_byte(&wasm, len / 2);
    for require in [false, true] {
        let error = refused(config(&dir, &trusting(&[&public], require)));
        assert!(error.contains("does not match the module"), "{error}");
    }
}

#[test]
fn flipped_byte_in_the_signature_is_refused() {
    let (dir, wasm, public) = signed_passthrough();
    let sig = signing::signature_path(&wasm);
    let text = std::fs::read_to_string(&sig).unwrap();
    // Change one hex digit of the signature field (the last field).
    let at = text.trim_end().len() - 10;
    let mut chars: Vec<char> = text.chars().collect();
    chars[at] = if chars[at] == '0' { '1' } else { '0' };
    std::fs::write(&sig, chars.into_iter().collect::<String>()).unwrap();
    let error = refused(config(&dir, &trusting(&[&public], false)));
    assert!(error.contains("does not match the module"), "{error}");
}

#[test]
fn signature_by_an_untrusted_key_is_refused() {
    let (dir, _, _) = signed_passthrough();
    let (_, other) = signing::generate_keypair();
    for require in [false, true] {
        let error = refused(config(&dir, &trusting(&[&other], require)));
        assert!(error.contains("not in"), "{error}");
        assert!(error.contains("trusted_keys"), "{error}");
    }
    // With no trusted keys at all a present signature is still checked.
    let error = refused(config(&dir, ""));
    assert!(error.contains("not in"), "{error}");
}

#[test]
fn malformed_signature_file_is_refused() {
    let (dir, wasm, public) = signed_passthrough();
    std::fs::write(signing::signature_path(&wasm), "ed25519 abc\n").unwrap();
    let error = refused(config(&dir, &trusting(&[&public], false)));
    assert!(error.contains("malformed signature file"), "{error}");
}

#[test]
fn unsigned_plugin_is_refused_when_signatures_are_required() {
    let dir = plugin_dir(&["passthrough"]);
    let (_, public) = signing::generate_keypair();
    let error = refused(config(&dir, &trusting(&[&public], true)));
    assert!(error.contains("unsigned plugin"), "{error}");
    assert!(error.contains("plugins sign"), "{error}");
}

#[test]
fn unsigned_plugin_loads_as_unsigned_when_not_required() {
    let dir = plugin_dir(&["passthrough"]);
    let (_, public) = signing::generate_keypair();
    for security in [String::new(), trusting(&[&public], false)] {
        let pipeline = Pipeline::new(config(&dir, &security)).unwrap();
        assert!(
            pipeline.load_errors().is_empty(),
            "{:?}",
            pipeline.load_errors()
        );
        assert_eq!(pipeline.plugins().len(), 1);
        assert_eq!(pipeline.plugins()[0].signature, SignatureState::Unsigned);
        assert_eq!(pipeline.plugins()[0].signature.label(), "unsigned");
    }
}

#[test]
fn require_signatures_without_trusted_keys_is_a_config_error() {
    let dir = plugin_dir(&["passthrough"]);
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\nrequire_signatures = true\n",
        dir.display().to_string()
    );
    let error = Config::from_toml(&text).unwrap_err();
    assert!(error.to_string().contains("trusted_keys"), "{error}");
}
