//! Audit-evidence helpers for the tests: keys, `audit verify`, and
//! tampering with an audit log as root on the host can: rewriting a
//! record and re-hashing the chain after it, re-signing every checkpoint
//! note with the host's key and rewriting the head file, so that the log
//! verifies on its own. The audit_signing and shipping tests show that a
//! checkpoint kept off the host still catches it.

use std::{fs, path::Path};

use enforcer::audit::{self, SignerKey};
use sha2::{Digest as _, Sha256};

/// Replaces record `seq`'s `from` with `to` and re-hashes the chain after
/// it, re-signing every checkpoint note with `key` and rewriting the head:
/// what root on the host (who can read the signing key) can do.
pub fn rewrite_and_rehash(log: &Path, seq: usize, from: &str, to: &str, key: &SignerKey) {
    let verifier = key.verifier();
    let text = fs::read_to_string(log).expect("log");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let index = seq - 1;
    assert!(lines[index].contains(from), "{}", lines[index]);
    lines[index] = lines[index].replacen(from, to, 1);
    let mut prev = if index == 0 {
        audit::ZERO_HASH.to_owned()
    } else {
        json(&lines[index - 1])["hash"]
            .as_str()
            .expect("hash")
            .to_owned()
    };
    for line in &mut lines[index..] {
        let v = json(line);
        let old_prev = v["prev"].as_str().expect("prev");
        let mut body = line.replacen(
            &format!("\"prev\":\"{old_prev}\""),
            &format!("\"prev\":\"{prev}\""),
            1,
        );
        if let Some(note) = v["note"].as_str() {
            let mut cp = audit::CheckpointBody::parse(verifier.open(note).expect("own note"))
                .expect("checkpoint");
            cp.size = v["seq"].as_u64().expect("seq") - 1;
            cp.hash.clone_from(&prev);
            let new = key.sign(&cp.text().expect("text")).expect("sign");
            body = body.replacen(
                &serde_json::to_string(note).expect("json"),
                &serde_json::to_string(&new).expect("json"),
                1,
            );
        }
        // The seal: the line without `,"hash":"…"}` plus `}`, SHA-256.
        let open = &body[..body.len() - 75];
        let hash: String = Sha256::digest(format!("{open}}}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        *line = format!("{open},\"hash\":\"{hash}\"}}");
        prev = hash;
    }
    fs::write(
        log,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("write");
    let last = json(lines.last().expect("a record"));
    fs::write(
        audit::head_path(log),
        format!(
            "{{\"seq\":{},\"hash\":\"{}\",\"time\":\"{}\"}}\n",
            last["seq"],
            prev,
            last["time"].as_str().expect("time")
        ),
    )
    .expect("head");
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("a JSON record")
}

/// `enforcer audit keygen --name NAME --out DIR`: (private, public). The
/// private key is never printed.
pub fn keygen(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = crate::agent::enforcer(&[
        "audit",
        "keygen",
        "--name",
        name,
        "--out",
        &dir.display().to_string(),
    ]);
    assert!(out.status.success(), "keygen: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("PRIVATE"),
        "the private key is never printed: {stdout}"
    );
    (dir.join("audit.key"), dir.join("audit.pub"))
}

/// `enforcer audit verify ARGS...`, whatever its exit status.
pub fn verify(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::agent::enforcer_binary())
        .args(["audit", "verify"])
        .args(args)
        .output()
        .expect("run enforcer audit verify")
}

/// A command's stdout and stderr, for messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Cuts `log` back to its first `keep` records into `cut` (log and head
/// together, as root would) and asserts what an auditor sees: alone, the
/// cut log verifies with `pubkey`; against the checkpoint `note` (kept off
/// the host, covering `covers` records) it fails as truncated, naming
/// both counts. Returns the failure's text.
pub fn assert_truncation_caught(
    log: &Path,
    cut: &Path,
    keep: u64,
    covers: u64,
    pubkey: &str,
    note: &str,
) -> String {
    let kept: String = fs::read_to_string(log)
        .expect("log")
        .lines()
        .take(keep as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(cut, kept).expect("cut");
    let cut_arg = cut.display().to_string();
    let out = verify(&["--key", pubkey, &cut_arg]);
    assert!(
        out.status.success(),
        "alone, the cut log looks fine: {}",
        text(&out)
    );
    let out = verify(&["--key", pubkey, "--checkpoint", note, &cut_arg]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "truncated: the checkpoint {note} covers {covers} records, the log has {keep}"
        )),
        "{}",
        text(&out)
    );
    text(&out)
}
