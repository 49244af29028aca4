//! Signed checkpoints: Ed25519 keys and signed notes in the C2SP
//! `signed-note` format, carrying a C2SP `tlog-checkpoint` body.
//!
//! # Keys
//!
//! - signer (private) key: `PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01 || seed32)>`
//! - verifier (public) key: `<name>+<hash8hex>+<base64(0x01 || pub32)>`
//!
//! where `0x01` is the Ed25519 algorithm byte and the key hash is the first
//! four bytes of SHA-256(`name` || `\n` || `0x01` || `pub32`), written as 8
//! lowercase hex digits. These are the text forms of Go's
//! `golang.org/x/mod/sumdb/note`, so its tools (and every witness or
//! verifier built on it) read our keys and notes.
//!
//! # Notes
//!
//! A note is UTF-8 text ending in `\n`, a blank line, then one line per
//! signature: `— <name> <base64(keyhash4 || sig64)>\n` (U+2014 em dash).
//! The signature is over the text including its final newline, not the
//! blank line.
//!
//! # Checkpoints
//!
//! The text of a checkpoint note (C2SP `tlog-checkpoint`):
//!
//! ```text
//! <origin>
//! <records covered, decimal>
//! <base64 of the 32-byte hash of the last record covered>
//! <extension lines: mode, policy, db, time>
//! ```

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The Ed25519 algorithm byte of the signed-note key encodings.
const ALG_ED25519: u8 = 0x01;

/// The signature line's prefix: U+2014 em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// What is wrong with a key, a note or a key file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("not a signed-note {what} key: {why}")]
    Key { what: &'static str, why: String },
    #[error("key name {name:?}: {why}")]
    Name { name: String, why: String },
    #[error("not a signed note: {0}")]
    Malformed(String),
    #[error("the note has no signature by key {name} (hash {key_hash}); it is signed by: {found}")]
    NotSigned {
        name: String,
        key_hash: String,
        found: String,
    },
    #[error(
        "the signature by {name} (hash {key_hash}) does not verify: the note was altered or signed by another key"
    )]
    BadSignature { name: String, key_hash: String },
    #[error("not a checkpoint: {0}")]
    Checkpoint(String),
}

/// Why a key file cannot be used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {what}: {error}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error(
        "{}: the private key is readable by group or others (mode {mode:04o}); it must be 0600 or 0400 (chmod 600)",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: {error}", path.display())]
    Form { path: PathBuf, error: NoteError },
}

/// The four-byte key hash of an Ed25519 key named `name`.
fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn hex4(b: [u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(b))
}

/// A key name: non-empty, no `+` (the key encoding's separator), no
/// whitespace and no control characters (the signature line is
/// space-separated).
pub fn check_name(name: &str) -> Result<(), NoteError> {
    let bad = |why: &str| {
        Err(NoteError::Name {
            name: name.to_owned(),
            why: why.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.contains('+') {
        return bad("contains '+'");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains whitespace or a control character");
    }
    Ok(())
}

/// Splits `<name>+<hash8hex>+<base64>` and checks the hash against the key
/// bytes the caller derives from the decoded payload.
fn split_key<'a>(
    what: &'static str,
    text: &'a str,
) -> Result<(&'a str, [u8; 4], Vec<u8>), NoteError> {
    let err = |why: &str| NoteError::Key {
        what,
        why: why.to_owned(),
    };
    // The name has no '+', the hash neither; base64 may (so split twice).
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(hash), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err("expected <name>+<hash>+<key>"));
    };
    check_name(name).map_err(|e| err(&e.to_string()))?;
    if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err("the key hash is not 8 hex digits"));
    }
    let hash = u32::from_str_radix(hash, 16)
        .map_err(|_| err("the key hash is not 8 hex digits"))?
        .to_be_bytes();
    let data = B64
        .decode(data)
        .map_err(|e| err(&format!("the key is not base64: {e}")))?;
    if data.len() != 33 || data[0] != ALG_ED25519 {
        return Err(err("the key is not 0x01 (Ed25519) followed by 32 bytes"));
    }
    Ok((name, hash, data))
}

/// A verifier (public) key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    hash: [u8; 4],
    key: VerifyingKey,
}

impl VerifierKey {
    /// Parses `<name>+<hash8hex>+<base64(0x01||pub32)>` (surrounding
    /// whitespace ignored, so a file's trailing newline is fine).
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let (name, hash, data) = split_key("verifier", text.trim())?;
        let mut public = [0u8; 32];
        public.copy_from_slice(&data[1..]);
        let err = |why: &str| NoteError::Key {
            what: "verifier",
            why: why.to_owned(),
        };
        if key_hash(name, &public) != hash {
            return Err(err("the key hash does not match the name and key"));
        }
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| err("the key is not a valid Ed25519 point"))?;
        Ok(VerifierKey {
            name: name.to_owned(),
            hash,
            key,
        })
    }

    /// Reads a verifier key file.
    pub fn load(path: &Path) -> Result<VerifierKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Io {
            path: path.to_owned(),
            what: "reading the public key",
            error,
        })?;
        VerifierKey::parse(&text).map_err(|error| KeyFileError::Form {
            path: path.to_owned(),
            error,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash as 8 hex digits.
    pub fn key_hash(&self) -> String {
        hex4(self.hash)
    }

    /// Verifies `note` (text, blank line, signature lines) and returns its
    /// text (up to and including the last text line's newline). Signatures
    /// by other keys are ignored: co-signers (witnesses) may add theirs.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (text, sigs) = split_note(note)?;
        let mut found = Vec::new();
        for line in sigs.lines() {
            let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
                NoteError::Malformed(format!(
                    "signature line {line:?} does not start with \"— \""
                ))
            })?;
            let Some((name, sig)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(format!(
                    "signature line {line:?} is not \"— <name> <signature>\""
                )));
            };
            let sig = B64.decode(sig).map_err(|e| {
                NoteError::Malformed(format!("signature by {name} is not base64: {e}"))
            })?;
            if sig.len() < 4 {
                return Err(NoteError::Malformed(format!(
                    "signature by {name} is shorter than its key hash"
                )));
            }
            let hash = [sig[0], sig[1], sig[2], sig[3]];
            found.push(format!("{name}+{}", hex4(hash)));
            if name != self.name || hash != self.hash {
                continue;
            }
            let bad = || NoteError::BadSignature {
                name: self.name.clone(),
                key_hash: self.key_hash(),
            };
            let sig = Signature::from_slice(&sig[4..]).map_err(|_| bad())?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| bad())?;
            return Ok(text);
        }
        Err(NoteError::NotSigned {
            name: self.name.clone(),
            key_hash: self.key_hash(),
            found: if found.is_empty() {
                "nobody".into()
            } else {
                found.join(", ")
            },
        })
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut data = Vec::with_capacity(33);
        data.push(ALG_ED25519);
        data.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.name, hex4(self.hash), B64.encode(data))
    }
}

/// A note's text (ending in `\n`) and its signature lines: the text ends
/// at the last blank line, after which only signature lines follow.
fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    if !note.ends_with('\n') {
        return Err(NoteError::Malformed(
            "it does not end with a newline".into(),
        ));
    }
    let Some(blank) = note.rfind("\n\n") else {
        return Err(NoteError::Malformed(
            "no blank line before the signatures".into(),
        ));
    };
    let (text, sigs) = (&note[..=blank], &note[blank + 2..]);
    if sigs.is_empty() {
        return Err(NoteError::Malformed("no signature lines".into()));
    }
    Ok((text, sigs))
}

/// A signer (private) key. Its Debug shows only the name: a key must never
/// reach a log.
#[derive(Clone)]
pub struct SignerKey {
    name: String,
    hash: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerKey")
            .field("name", &self.name)
            .field("hash", &hex4(self.hash))
            .finish_non_exhaustive()
    }
}

impl SignerKey {
    /// A new key named `name`, its seed from the kernel's random source.
    pub fn generate(name: &str) -> Result<SignerKey, NoteError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| NoteError::Key {
            what: "signer",
            why: format!("no random bytes from the kernel: {e}"),
        })?;
        Ok(SignerKey::from_seed(name, seed))
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> SignerKey {
        let key = SigningKey::from_bytes(&seed);
        SignerKey {
            name: name.to_owned(),
            hash: key_hash(name, key.verifying_key().as_bytes()),
            key,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01||seed32)>`.
    pub fn parse(text: &str) -> Result<SignerKey, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::Key {
                what: "signer",
                why: "it does not start with PRIVATE+KEY+".into(),
            })?;
        let (name, hash, data) = split_key("signer", rest)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&data[1..]);
        let key = SignerKey::from_seed(name, seed);
        if key.hash != hash {
            return Err(NoteError::Key {
                what: "signer",
                why: "the key hash does not match the name and key".into(),
            });
        }
        Ok(key)
    }

    /// Reads a signer key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<SignerKey, KeyFileError> {
        let io = |what| {
            let path = path.to_owned();
            move |error| KeyFileError::Io { path, what, error }
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io("opening the private key"))?;
        let mode = file.metadata().map_err(io("reading its mode"))?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &file, &mut text)
            .map_err(io("reading the private key"))?;
        SignerKey::parse(&text).map_err(|error| KeyFileError::Form {
            path: path.to_owned(),
            error,
        })
    }

    /// Writes the key to a new file, mode 0600; an existing file is never
    /// overwritten (O_EXCL).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |what| {
            let path = path.to_owned();
            move |error| KeyFileError::Io { path, what, error }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io("creating the private key (it must not exist)"))?;
        f.write_all(format!("{}\n", self.private_text()).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io("writing the private key"))
    }

    /// The private key's text form. Only for its file.
    pub fn private_text(&self) -> String {
        let mut data = Vec::with_capacity(33);
        data.push(ALG_ED25519);
        data.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(self.hash),
            B64.encode(data)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            hash: self.hash,
            key: self.key.verifying_key(),
        }
    }

    /// The signature line for `text` (with its `\n`).
    pub fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut data = Vec::with_capacity(68);
        data.extend_from_slice(&self.hash);
        data.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(data))
    }

    /// The signed note: `text` (which must end with `\n` and hold no blank
    /// line), a blank line, the signature line.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || text.contains("\n\n") || text.starts_with('\n') {
            return Err(NoteError::Malformed(
                "the text must end with a newline and hold no blank line".into(),
            ));
        }
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }
}

/// The body of a checkpoint note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointBody {
    /// Who speaks: the host's origin name.
    pub origin: String,
    /// Records covered: the records with seq 1..=size.
    pub size: u64,
    /// The hash (64 lowercase hex) of record `size` (64 zeros for none).
    pub hash: String,
    /// Lines after the first three (`mode enforce`, `policy <hex>`, …).
    pub extensions: Vec<String>,
}

impl CheckpointBody {
    /// The note text (every line ends with `\n`).
    pub fn text(&self) -> Result<String, NoteError> {
        let bytes = hex32(&self.hash).ok_or_else(|| {
            NoteError::Checkpoint(format!("hash {:?} is not 64 hex digits", self.hash))
        })?;
        let mut t = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(bytes));
        for e in &self.extensions {
            t.push_str(e);
            t.push('\n');
        }
        Ok(t)
    }

    /// Parses a checkpoint note's text (as [`VerifierKey::open`] returns).
    pub fn parse(text: &str) -> Result<CheckpointBody, NoteError> {
        let bad = |why: String| NoteError::Checkpoint(why);
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line".into()))?;
        let size = lines.next().ok_or_else(|| bad("no size line".into()))?;
        // Decimal without leading zeros or signs, as the format says.
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(format!("size {size:?} is not a decimal number")));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad(format!("size {size:?} is too large")))?;
        let root = lines.next().ok_or_else(|| bad("no hash line".into()))?;
        let root = B64
            .decode(root)
            .map_err(|e| bad(format!("hash line {root:?} is not base64: {e}")))?;
        if root.len() != 32 {
            return Err(bad(format!("the hash is {} bytes, not 32", root.len())));
        }
        let hash = root.iter().map(|b| format!("{b:02x}")).collect();
        Ok(CheckpointBody {
            origin: origin.to_owned(),
            size,
            hash,
            extensions: lines.map(str::to_owned).collect(),
        })
    }

    /// The value of the first extension line starting with `key `.
    pub fn extension(&self, key: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
    }
}

fn hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What the writer signs checkpoints with: the key, and the origin the
/// notes name (the first line).
#[derive(Clone, Debug)]
pub struct NoteSigner {
    pub key: SignerKey,
    pub origin: String,
}

impl NoteSigner {
    /// The signed checkpoint note over `body`.
    pub fn sign(&self, body: &CheckpointBody) -> Result<String, NoteError> {
        self.key.sign(&body.text()?)
    }
}

/// A checkpoint note verified against a key, and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub body: CheckpointBody,
    pub note: String,
}

impl SignedCheckpoint {
    /// Verifies `note` with `key` and parses its body.
    pub fn open(note: &str, key: &VerifierKey) -> Result<SignedCheckpoint, NoteError> {
        let text = key.open(note)?;
        Ok(SignedCheckpoint {
            body: CheckpointBody::parse(text)?,
            note: note.to_owned(),
        })
    }
}

/// `<log>.checkpoint`: the latest signed checkpoint, beside the log.
pub fn checkpoint_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".checkpoint");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of golang.org/x/mod/sumdb/note's documentation (the
    // format's reference implementation).
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const SIGNED: &str = "If you think cryptography is the answer to your problem,\n\
                          then you don't know what your problem is.\n\
                          \n\
                          \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn the_reference_key_pair_parses_and_its_hash_matches() {
        let v = VerifierKey::parse(VKEY).expect("verifier");
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_hash(), "c74f20a3");
        assert_eq!(v.to_string(), VKEY);
        let s = SignerKey::parse(SKEY).expect("signer");
        assert_eq!(s.private_text(), SKEY);
        assert_eq!(s.verifier(), v);
    }

    #[test]
    fn signing_reproduces_the_reference_note_byte_for_byte() {
        let s = SignerKey::parse(SKEY).expect("signer");
        assert_eq!(s.sign(TEXT).expect("sign"), SIGNED);
        let v = VerifierKey::parse(VKEY).expect("verifier");
        assert_eq!(v.open(SIGNED).expect("verifies"), TEXT);
    }

    #[test]
    fn generated_keys_round_trip_through_their_text() {
        let s = SignerKey::generate("host.example/egress-enforcer").expect("generate");
        let back = SignerKey::parse(&s.private_text()).expect("parse");
        assert_eq!(back.private_text(), s.private_text());
        let v = VerifierKey::parse(&s.verifier().to_string()).expect("verifier");
        assert_eq!(v, s.verifier());
        let note = s.sign("a\n1\n").expect("sign");
        assert_eq!(v.open(&note).expect("verifies"), "a\n1\n");
    }

    #[test]
    fn a_tampered_note_does_not_verify() {
        let v = VerifierKey::parse(VKEY).expect("verifier");
        let tampered = SIGNED.replace("problem,", "problem;");
        assert!(matches!(
            v.open(&tampered),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn another_key_or_name_is_not_a_signature() {
        let other = SignerKey::generate("PeterNeumann").expect("generate");
        let note = other.sign(TEXT).expect("sign");
        let v = VerifierKey::parse(VKEY).expect("verifier");
        let e = v.open(&note).expect_err("another key");
        assert!(matches!(e, NoteError::NotSigned { .. }), "{e}");
        let renamed = SIGNED.replace("PeterNeumann x08", "Peter x08");
        assert!(matches!(v.open(&renamed), Err(NoteError::NotSigned { .. })));
    }

    #[test]
    fn mangled_keys_are_refused() {
        for bad in [
            "",
            "PeterNeumann",
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
            "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SignerKey::parse(VKEY).is_err());
        assert!(SignerKey::parse(&SKEY.replace("c74f20a3", "c74f20a4")).is_err());
    }

    #[test]
    fn checkpoint_bodies_round_trip() {
        let body = CheckpointBody {
            origin: "h/egress-enforcer".into(),
            size: 42,
            hash: "ab".repeat(32),
            extensions: vec!["mode enforce".into(), "time 2026-01-01T00:00:00Z".into()],
        };
        let text = body.text().expect("text");
        assert!(text.starts_with("h/egress-enforcer\n42\nq6ur"), "{text}");
        assert_eq!(CheckpointBody::parse(&text).expect("parse"), body);
        assert_eq!(body.extension("mode"), Some("enforce"));
        for bad in ["", "o\n", "o\n01\nAA==\n", "o\n1\nAA==\n", "o\n-1\n"] {
            assert!(CheckpointBody::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_files_are_created_0600_once_and_group_readable_ones_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.key");
        let s = SignerKey::generate("h").expect("generate");
        s.write_new(&path).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(s.write_new(&path).is_err(), "never overwritten");
        assert_eq!(
            SignerKey::load(&path).expect("load").private_text(),
            s.private_text()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = SignerKey::load(&path).expect_err("group readable");
        assert!(e.to_string().contains("audit.key"), "{e}");
        assert!(e.to_string().contains("0640"), "{e}");
    }
}
