//! Ed25519 signatures of plugin modules.
//!
//! A plugin `name.wasm` may carry a detached signature in `name.wasm.sig`
//! beside it. When the pipeline loads a plugin, [`check_plugin`] verifies that
//! signature against the keys listed in
//! `proxy_generation.wasm_plugins.security.trusted_keys`:
//!
//! - no `.sig` file: the plugin loads as [`SignatureState::Unsigned`], unless
//!   `require_signatures = true`, which refuses it;
//! - a `.sig` file that is malformed, made by a key that is not trusted, or that
//!   does not match the module bytes is **always** refused, even when
//!   signatures are not required: a signature that fails to verify means the
//!   module or its signature was changed, and that is never loaded;
//! - a valid signature by a trusted key loads as [`SignatureState::Signed`].
//!
//! # Formats
//!
//! All keys and signatures are hex; lowercase is written, either case is read.
//!
//! - **Secret key file**: the 32-byte ed25519 seed as 64 hex digits and a
//!   newline. [`write_keypair`] creates it with mode `0600` on Unix and never
//!   overwrites an existing file.
//! - **Public key**: the 32-byte ed25519 public key as 64 hex digits, the form
//!   `trusted_keys` takes.
//! - **Signature file** (`<module>.wasm.sig`): exactly one line
//!
//!   ```text
//!   ed25519 <public key: 64 hex digits> <signature: 128 hex digits>
//!   ```
//!
//!   followed by a newline (`\r\n` is accepted too). The fields are separated
//!   by spaces or tabs. The public key names which trusted key made the
//!   signature; it is only used when it equals (as bytes) one of
//!   `trusted_keys`. The signature covers the exact bytes of the module file
//!   and is checked with ed25519 strict verification
//!   ([`VerifyingKey::verify_strict`]), which rejects non-canonical and
//!   small-order encodings.
//!
//! Anything else — wrong lengths, non-hex digits, another algorithm name,
//! missing or extra fields, more than one line — is refused with a reason that
//! says what is wrong and how to fix it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;

use crate::config::Security;
use crate::error::{Error, ErrorKind};

/// The algorithm name that starts every signature file line.
const ALGORITHM: &str = "ed25519";

/// Signature files larger than this are refused without parsing them (a
/// valid one is 203 bytes).
const MAX_SIGNATURE_FILE_LEN: u64 = 1024;

/// How to make a signature, for error messages.
const SIGN_HINT: &str = "sign it with `m3u-plugin-host plugins sign` using a secret key whose \
                         public key is listed in `proxy_generation.wasm_plugins.security.trusted_keys`";

/// Whether a loaded plugin carries a valid signature by a trusted key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SignatureState {
    /// No signature file; allowed because `require_signatures` is off.
    Unsigned,
    /// A valid signature by a trusted key.
    Signed {
        /// The public key (64 lowercase hex digits) that verified the module.
        key: String,
    },
}

impl SignatureState {
    /// A short, stable label: `"unsigned"` or `"signed"`.
    pub fn label(&self) -> &'static str {
        match self {
            SignatureState::Unsigned => "unsigned",
            SignatureState::Signed { .. } => "signed",
        }
    }
}

/// The signature file of a module: `<file>.wasm.sig` beside the module.
pub fn signature_path(wasm_path: &Path) -> PathBuf {
    let mut name = wasm_path.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Checks the detached signature of a module against
/// `security.trusted_keys`.
///
/// `wasm` is the exact content of the module file at `wasm_path`; the
/// signature is read from [`signature_path`]`(wasm_path)`.
///
/// # Errors
/// [`ErrorKind::Signature`] when the signature file is missing and
/// `require_signatures` is set, or when it is present but malformed, made by
/// a key that is not in `trusted_keys`, or does not match the bytes (whether
/// or not signatures are required). [`ErrorKind::Io`] when the signature
/// file exists but cannot be read, [`ErrorKind::Config`] when a trusted key
/// is not a valid public key.
pub fn check_plugin(
    wasm: &[u8],
    wasm_path: &Path,
    security: &Security,
) -> crate::Result<SignatureState> {
    let sig_path = signature_path(wasm_path);
    let refuse = |reason: String| -> Error {
        ErrorKind::Signature {
            path: wasm_path.to_path_buf(),
            reason,
        }
        .into()
    };

    let text = match read_signature_file(&sig_path) {
        Ok(Some(text)) => text,
        Ok(None) if security.require_signatures => {
            return Err(refuse(format!(
                "unsigned plugin (no {}) and `require_signatures` is on; {SIGN_HINT}",
                sig_path.display()
            )));
        }
        Ok(None) => return Ok(SignatureState::Unsigned),
        Err(SigFileError::Io(error)) => return Err(Error::io(&sig_path, error)),
        Err(SigFileError::Malformed(reason)) => {
            return Err(refuse(malformed_reason(&sig_path, &reason)));
        }
    };

    let (key_bytes, signature_bytes) = parse_signature_line(&text)
        .map_err(|reason| refuse(malformed_reason(&sig_path, &reason)))?;

    let trusted = trusted_keys(security)?;
    if !trusted.contains(&key_bytes) {
        return Err(refuse(format!(
            "{} was made by key {}, which is not in \
             `proxy_generation.wasm_plugins.security.trusted_keys`; add that key if you trust \
             whoever holds it, or re-sign the plugin with a trusted key",
            sig_path.display(),
            encode_hex(&key_bytes)
        )));
    }

    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| {
        refuse(format!(
            "the public key in {} is not a valid ed25519 key; re-create the signature with \
             `m3u-plugin-host plugins sign`",
            sig_path.display()
        ))
    })?;
    let signature = Signature::from_bytes(&signature_bytes);
    key.verify_strict(wasm, &signature).map_err(|_| {
        refuse(format!(
            "the signature in {} does not match the module: the module or its signature was \
             changed after signing; restore the original files, or re-sign the module if this \
             build is trusted",
            sig_path.display()
        ))
    })?;

    Ok(SignatureState::Signed {
        key: encode_hex(&key_bytes),
    })
}

/// A new key pair as (secret seed hex, public key hex), 64 hex digits each.
pub fn generate_keypair() -> (String, String) {
    let key = SigningKey::generate(&mut OsRng);
    (
        encode_hex(&key.to_bytes()),
        encode_hex(key.verifying_key().as_bytes()),
    )
}

/// Signs module bytes with a secret seed (64 hex digits, an optional trailing
/// newline is ignored); returns the signature file content (one line, ending
/// in a newline).
///
/// # Errors
/// [`ErrorKind::Config`] when `secret_hex` is not an ed25519 secret key.
pub fn sign(wasm: &[u8], secret_hex: &str) -> crate::Result<String> {
    let key = parse_secret(secret_hex).map_err(Error::config)?;
    Ok(signature_line(wasm, &key))
}

/// Writes `<wasm>.sig` for the file at `wasm_path` using the secret key file
/// at `key_path`, replacing an older signature file. Returns the path of the
/// signature file.
///
/// # Errors
/// [`ErrorKind::Io`] when a file cannot be read or written, or when the key
/// file is not an ed25519 secret key.
pub fn sign_file(wasm_path: &Path, key_path: &Path) -> crate::Result<PathBuf> {
    let key = read_secret_file(key_path)?;
    let wasm = fs::read(wasm_path).map_err(|error| Error::io(wasm_path, error))?;
    let line = signature_line(&wasm, &key);
    let sig_path = signature_path(wasm_path);
    fs::write(&sig_path, line).map_err(|error| Error::io(&sig_path, error))?;
    Ok(sig_path)
}

/// Writes a new secret key file at `secret_path` (mode `0600` on Unix,
/// refusing to overwrite an existing file) and returns its public key hex.
///
/// # Errors
/// [`ErrorKind::Io`] when the file exists already or cannot be written.
pub fn write_keypair(secret_path: &Path) -> crate::Result<String> {
    let (secret, public) = generate_keypair();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(secret_path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::io(
                secret_path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing key file; choose another path or \
                     remove the old key first",
                ),
            )
        } else {
            Error::io(secret_path, error)
        }
    })?;
    let written = file
        .write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(error) = written {
        drop(file);
        // Do not leave a truncated key behind.
        let _ = fs::remove_file(secret_path);
        return Err(Error::io(secret_path, error));
    }
    Ok(public)
}

/// The public key (64 hex digits) of the secret key file at `secret_path`.
///
/// # Errors
/// [`ErrorKind::Io`] when the file cannot be read or is not an ed25519
/// secret key file.
pub fn public_key_of(secret_path: &Path) -> crate::Result<String> {
    let key = read_secret_file(secret_path)?;
    Ok(encode_hex(key.verifying_key().as_bytes()))
}

/// The signature file line for `wasm` signed by `key`.
fn signature_line(wasm: &[u8], key: &SigningKey) -> String {
    let signature = key.sign(wasm);
    format!(
        "{ALGORITHM} {} {}\n",
        encode_hex(key.verifying_key().as_bytes()),
        encode_hex(&signature.to_bytes())
    )
}

/// Why a signature file could not be read as text.
enum SigFileError {
    /// It exists but cannot be read.
    Io(std::io::Error),
    /// It is too large or not UTF-8.
    Malformed(String),
}

/// The signature file's text, `None` if there is none.
fn read_signature_file(sig_path: &Path) -> Result<Option<String>, SigFileError> {
    // Never more than one byte past the limit, whatever the file's size.
    let read = crate::watch::open_regular_file(sig_path).and_then(|file| {
        let mut bytes = Vec::new();
        file.take(MAX_SIGNATURE_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    });
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SigFileError::Io(error)),
    };
    if bytes.len() as u64 > MAX_SIGNATURE_FILE_LEN {
        return Err(SigFileError::Malformed(format!(
            "it is more than {MAX_SIGNATURE_FILE_LEN} bytes long; a signature file is one \
             short line"
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| SigFileError::Malformed("it is not UTF-8 text".to_string()))
}

/// The full reason for a malformed signature file.
fn malformed_reason(sig_path: &Path, detail: &str) -> String {
    format!(
        "malformed signature file {}: {detail}; expected one line \
         `{ALGORITHM} <public key: 64 hex digits> <signature: 128 hex digits>`; re-create it \
         with `m3u-plugin-host plugins sign`",
        sig_path.display()
    )
}

/// Strips one trailing newline (`\n` or `\r\n`) and refuses more lines.
fn single_line(text: &str) -> Result<&str, String> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains(['\n', '\r']) {
        return Err("it has more than one line".to_string());
    }
    Ok(line)
}

/// Parses a signature file line into (public key, signature) bytes.
fn parse_signature_line(text: &str) -> Result<([u8; 32], [u8; 64]), String> {
    let line = single_line(text)?;
    let fields: Vec<&str> = line
        .split([' ', '\t'])
        .filter(|field| !field.is_empty())
        .collect();
    match fields.as_slice() {
        [] => Err("it is empty".to_string()),
        [algorithm, ..] if *algorithm != ALGORITHM => Err(format!(
            "it starts with `{}`, not `{ALGORITHM}`",
            truncate(algorithm)
        )),
        [_, key, signature] => {
            let key = decode_hex::<32>(key).map_err(|e| format!("public key: {e}"))?;
            let signature = decode_hex::<64>(signature).map_err(|e| format!("signature: {e}"))?;
            Ok((key, signature))
        }
        _ => Err(format!(
            "it has {} fields, expected 3 (algorithm, public key, signature)",
            fields.len()
        )),
    }
}

/// The configured trusted keys as bytes.
fn trusted_keys(security: &Security) -> crate::Result<Vec<[u8; 32]>> {
    security
        .trusted_keys
        .iter()
        .map(|key| {
            decode_hex::<32>(key).map_err(|error| {
                Error::config_key(
                    "proxy_generation.wasm_plugins.security.trusted_keys",
                    format!("`{}` is not an ed25519 public key: {error}", truncate(key)),
                )
            })
        })
        .collect()
}

/// Parses a secret key (64 hex digits, optional trailing newline).
fn parse_secret(text: &str) -> Result<SigningKey, String> {
    let line = single_line(text)?;
    let seed = decode_hex::<32>(line.trim_matches([' ', '\t']))
        .map_err(|error| format!("not an ed25519 secret key: {error}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads and parses a secret key file.
fn read_secret_file(path: &Path) -> crate::Result<SigningKey> {
    let bytes = fs::read(path).map_err(|error| Error::io(path, error))?;
    let invalid = |message: String| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{message}; a secret key file holds 64 hex digits, as written by \
                     `m3u-plugin-host keygen`"
                ),
            ),
        )
    };
    if bytes.len() > 1024 {
        return Err(invalid(format!(
            "not an ed25519 secret key: it is {} bytes long",
            bytes.len()
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid("not an ed25519 secret key: it is not UTF-8 text".to_string()))?;
    parse_secret(&text).map_err(invalid)
}

/// Lowercase hex of `bytes`.
fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Decodes exactly `N` bytes from `2 * N` hex digits of either case.
fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if let Some((index, c)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{}` at position {} is not a hex digit",
            c.escape_debug(),
            text[..index].chars().count() + 1
        ));
    }
    if text.len() != 2 * N {
        return Err(format!(
            "expected {} hex digits, found {}",
            2 * N,
            text.len()
        ));
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Ok(out)
}

/// The value of one ASCII hex digit (checked by the caller).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// At most 80 characters of `text`, for quoting user input in messages.
fn truncate(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0 pretend this is a plugin";

    fn scratch(label: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "m3u-plugin-host-signing-{}-{label}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn security(trusted: &[&str], require: bool) -> Security {
        Security {
            trusted_keys: trusted.iter().map(|k| k.to_string()).collect(),
            require_signatures: require,
            ..Security::default()
        }
    }

    /// A module file and its signature in a fresh directory.
    fn signed_module(label: &str, secret: &str) -> PathBuf {
        let dir = scratch(label);
        let wasm = dir.join("plugin.wasm");
        fs::write(&wasm, MODULE).unwrap();
        fs::write(signature_path(&wasm), sign(MODULE, secret).unwrap()).unwrap();
        wasm
    }

    /// The reason of a signature error (panics on anything else).
    fn refusal(result: crate::Result<SignatureState>) -> String {
        let error = result.expect_err("should be refused");
        match error.kind() {
            ErrorKind::Signature { reason, .. } => reason.clone(),
            other => panic!("expected a signature error, got {other:?}"),
        }
    }

    fn flip_sig_digit(wasm: &Path, field: usize, index: usize) {
        let sig = signature_path(wasm);
        let text = fs::read_to_string(&sig).unwrap();
        let mut fields: Vec<String> = text.trim_end().split(' ').map(str::to_string).collect();
        let mut chars: Vec<char> = fields[field].chars().collect();
        chars[index] = if chars[index] == '0' { '1' } else { '0' };
        fields[field] = chars.into_iter().collect();
        fs::write(&sig, format!("{}\n", fields.join(" "))).unwrap();
    }

    #[test]
    fn signature_path_appends_sig() {
        assert_eq!(
            signature_path(Path::new("/plugins/a.wasm")),
            PathBuf::from("/plugins/a.wasm.sig")
        );
    }

    #[test]
    fn hex_round_trip_and_case() {
        let bytes: Vec<u8> = (0..=255).collect();
        let hex = encode_hex(&bytes[..32]);
        assert_eq!(decode_hex::<32>(&hex).unwrap(), bytes[..32]);
        assert_eq!(decode_hex::<32>(&hex.to_uppercase()).unwrap(), bytes[..32]);
        assert!(decode_hex::<32>(&hex[..62])
            .unwrap_err()
            .contains("expected 64"));
        assert!(decode_hex::<2>("12g4").unwrap_err().contains("position 3"));
        assert!(decode_hex::<2>("12é4").is_err());
    }

    #[test]
    fn round_trip_signs_and_verifies() {
        let (secret, public) = generate_keypair();
        assert_eq!(secret.len(), 64);
        assert_eq!(public.len(), 64);
        assert_ne!(secret, public);
        let line = sign(MODULE, &secret).unwrap();
        assert!(line.starts_with(&format!("ed25519 {public} ")));
        assert!(line.ends_with('\n'));
        assert_eq!(line.len(), 7 + 1 + 64 + 1 + 128 + 1);

        let wasm = signed_module("round-trip", &secret);
        let state = check_plugin(MODULE, &wasm, &security(&[&public], true)).unwrap();
        assert_eq!(
            state,
            SignatureState::Signed {
                key: public.clone()
            }
        );
        assert_eq!(state.label(), "signed");
        // Also accepted when signatures are not required.
        let state = check_plugin(MODULE, &wasm, &security(&[&public], false)).unwrap();
        assert_eq!(state.label(), "signed");
    }

    #[test]
    fn flipped_module_byte_is_refused() {
        let (secret, public) = generate_keypair();
        let wasm = signed_module("flip-module", &secret);
        let mut tampered = MODULE.to_vec();
        tampered[10] ^= 0x01;
        let reason = refusal(check_plugin(&tampered, &wasm, &security(&[&public], false)));
        assert!(reason.contains("does not match the module"), "{reason}");
        // One byte more is a change too.
        let mut longer = MODULE.to_vec();
        longer.push(0);
        refusal(check_plugin(&longer, &wasm, &security(&[&public], false)));
    }

    #[test]
    fn flipped_signature_byte_is_refused() {
        let (secret, public) = generate_keypair();
        for index in [0, 63, 64, 127] {
            let wasm = signed_module("flip-sig", &secret);
            flip_sig_digit(&wasm, 2, index);
            let reason = refusal(check_plugin(MODULE, &wasm, &security(&[&public], false)));
            assert!(
                reason.contains("does not match the module"),
                "{index}: {reason}"
            );
        }
    }

    #[test]
    fn flipped_key_in_signature_file_is_refused() {
        let (secret, public) = generate_keypair();
        let wasm = signed_module("flip-key", &secret);
        flip_sig_digit(&wasm, 1, 5);
        let reason = refusal(check_plugin(MODULE, &wasm, &security(&[&public], false)));
        assert!(reason.contains("not in"), "{reason}");
    }

    #[test]
    fn unknown_key_is_refused_even_when_not_required() {
        let (secret, _) = generate_keypair();
        let (_, other_public) = generate_keypair();
        let wasm = signed_module("unknown-key", &secret);
        for require in [false, true] {
            let reason = refusal(check_plugin(
                MODULE,
                &wasm,
                &security(&[&other_public], require),
            ));
            assert!(reason.contains("not in"), "{reason}");
            assert!(reason.contains("trusted_keys"), "{reason}");
        }
        // No trusted keys at all: still refused, a signature is never ignored.
        let reason = refusal(check_plugin(MODULE, &wasm, &security(&[], false)));
        assert!(reason.contains("not in"), "{reason}");
    }

    #[test]
    fn a_trusted_key_that_signed_other_bytes_is_refused() {
        let (secret, public) = generate_keypair();
        let wasm = signed_module("other-bytes", &secret);
        fs::write(
            signature_path(&wasm),
            sign(b"another module", &secret).unwrap(),
        )
        .unwrap();
        let reason = refusal(check_plugin(MODULE, &wasm, &security(&[&public], false)));
        assert!(reason.contains("does not match"), "{reason}");
    }

    #[test]
    fn unsigned_without_requirement_is_unsigned() {
        let dir = scratch("unsigned");
        let wasm = dir.join("plugin.wasm");
        fs::write(&wasm, MODULE).unwrap();
        let (_, public) = generate_keypair();
        assert_eq!(
            check_plugin(MODULE, &wasm, &security(&[], false)).unwrap(),
            SignatureState::Unsigned
        );
        let state = check_plugin(MODULE, &wasm, &security(&[&public], false)).unwrap();
        assert_eq!(state, SignatureState::Unsigned);
        assert_eq!(state.label(), "unsigned");
    }

    #[test]
    fn unsigned_with_requirement_is_refused() {
        let dir = scratch("unsigned-required");
        let wasm = dir.join("plugin.wasm");
        fs::write(&wasm, MODULE).unwrap();
        let (_, public) = generate_keypair();
        let error = check_plugin(MODULE, &wasm, &security(&[&public], true)).unwrap_err();
        assert_eq!(error.label(), "signature");
        let message = error.to_string();
        assert!(message.contains("unsigned plugin"), "{message}");
        assert!(message.contains("plugins sign"), "{message}");
        assert!(message.contains("plugin.wasm"), "{message}");
    }

    #[test]
    fn malformed_signature_files_are_refused_with_reasons() {
        let (secret, public) = generate_keypair();
        let good = sign(MODULE, &secret).unwrap();
        let fields: Vec<&str> = good.trim_end().split(' ').collect();
        let (key, sig) = (fields[1], fields[2]);
        let bad_hex_sig = format!("{}zz", &sig[..126]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("\n".to_string(), "empty"),
            (
                format!("ed25519 {key} {}\n", &sig[..100]),
                "expected 128 hex digits",
            ),
            (
                format!("ed25519 {} {sig}\n", &key[..40]),
                "expected 64 hex digits",
            ),
            (format!("ed25519 {key} {bad_hex_sig}\n"), "not a hex digit"),
            (format!("ed25519 {key}x {sig}\n"), "not a hex digit"),
            (format!("rsa {key} {sig}\n"), "not `ed25519`"),
            (format!("ED25519 {key} {sig}\n"), "not `ed25519`"),
            (format!("{key} {sig}\n"), "not `ed25519`"),
            (format!("ed25519 {key}\n"), "2 fields"),
            (format!("ed25519 {key} {sig} extra\n"), "4 fields"),
            (
                format!("ed25519 {key} {sig}\ned25519 {key} {sig}\n"),
                "more than one line",
            ),
            ("x".repeat(5000), "bytes long"),
        ];
        for require in [false, true] {
            for (index, (text, want)) in cases.iter().enumerate() {
                let dir = scratch("malformed");
                let wasm = dir.join("plugin.wasm");
                fs::write(&wasm, MODULE).unwrap();
                fs::write(signature_path(&wasm), text).unwrap();
                let reason = refusal(check_plugin(MODULE, &wasm, &security(&[&public], require)));
                assert!(reason.contains(want), "case {index}: {reason}");
                assert!(
                    reason.contains("malformed signature file"),
                    "case {index}: {reason}"
                );
                assert!(reason.contains("plugins sign"), "case {index}: {reason}");
            }
        }
        // Not UTF-8.
        let dir = scratch("malformed-bin");
        let wasm = dir.join("plugin.wasm");
        fs::write(signature_path(&wasm), [0xff, 0xfe, 0x00]).unwrap();
        let reason = refusal(check_plugin(MODULE, &wasm, &security(&[&public], false)));
        assert!(reason.contains("not UTF-8"), "{reason}");
        // CRLF and tabs are fine.
        let crlf = format!("ed25519\t{key}  {sig}\r\n");
        fs::write(signature_path(&wasm), crlf).unwrap();
        assert_eq!(
            check_plugin(MODULE, &wasm, &security(&[&public], true))
                .unwrap()
                .label(),
            "signed"
        );
    }

    #[test]
    fn keys_are_case_insensitive() {
        let (secret, public) = generate_keypair();
        // Upper-case trusted key, upper-case secret, upper-case fields in the file.
        let line = sign(MODULE, &secret.to_uppercase()).unwrap();
        assert_eq!(line, sign(MODULE, &secret).unwrap());
        let wasm = signed_module("case", &secret);
        let upper = security(&[&public.to_uppercase()], true);
        assert_eq!(
            check_plugin(MODULE, &wasm, &upper).unwrap(),
            SignatureState::Signed {
                key: public.clone()
            }
        );
        let text = fs::read_to_string(signature_path(&wasm)).unwrap();
        let upper_line = format!(
            "ed25519{}\n",
            text.trim_end()["ed25519".len()..].to_uppercase()
        );
        fs::write(signature_path(&wasm), upper_line).unwrap();
        assert_eq!(
            check_plugin(MODULE, &wasm, &security(&[&public], true)).unwrap(),
            SignatureState::Signed { key: public }
        );
    }

    #[test]
    fn key_file_round_trip() {
        let dir = scratch("keyfile");
        let key_path = dir.join("plugins.key");
        let public = write_keypair(&key_path).unwrap();
        assert_eq!(public.len(), 64);
        assert_eq!(public_key_of(&key_path).unwrap(), public);
        let text = fs::read_to_string(&key_path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(text[..64].bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Never overwrites.
        let error = write_keypair(&key_path).unwrap_err();
        assert!(
            error.to_string().contains("refusing to overwrite"),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&key_path).unwrap(), text);

        // sign_file writes a signature that check_plugin accepts.
        let wasm = dir.join("plugin.wasm");
        fs::write(&wasm, MODULE).unwrap();
        let sig_path = sign_file(&wasm, &key_path).unwrap();
        assert_eq!(sig_path, signature_path(&wasm));
        assert_eq!(
            check_plugin(MODULE, &wasm, &security(&[&public], true)).unwrap(),
            SignatureState::Signed { key: public }
        );
    }

    #[test]
    fn bad_secret_keys_are_refused() {
        let dir = scratch("bad-secret");
        let key_path = dir.join("bad.key");
        fs::write(&key_path, "not a key\n").unwrap();
        let error = public_key_of(&key_path).unwrap_err();
        assert!(
            error.to_string().contains("not an ed25519 secret key"),
            "{error}"
        );
        assert!(error.to_string().contains("bad.key"), "{error}");
        let wasm = dir.join("plugin.wasm");
        fs::write(&wasm, MODULE).unwrap();
        assert!(sign_file(&wasm, &key_path).is_err());
        assert!(!signature_path(&wasm).exists());
        assert!(sign(MODULE, "abcd").is_err());
        assert!(sign(MODULE, &"0".repeat(66)).is_err());
        let missing = public_key_of(&dir.join("missing.key")).unwrap_err();
        assert_eq!(missing.label(), "io");
    }
}
