//! Root's tools on a stopped meter's state directory, for the attack tests
//! done the attacker's way: `sqlite3` on the ledger and
//! `tests/append_row.py` (python3's sqlite3 and hashlib, tpm2-tools with
//! the identity key's auth value derived from `keys/auth`, openssl: no
//! project code), which appends a row and seals it with the meter's key.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sandbox::{self, ok, Sandbox};

pub fn state(sb: &Sandbox) -> PathBuf {
    PathBuf::from(&sb.env["METERD_STATE_DIR"])
}

pub fn db(sb: &Sandbox) -> String {
    state(sb)
        .join("ledger.sqlite")
        .to_string_lossy()
        .into_owned()
}

/// `sqlite3 DB QUERY`, trimmed output.
pub fn sql(sb: &Sandbox, db: &str, q: &str) -> String {
    ok(&sb.run("sqlite3", &[db, q]), q).trim().to_owned()
}

/// The counter the ledger's last epoch row opened.
pub fn last_epoch(sb: &Sandbox) -> u64 {
    let key = sql(
        sb,
        &db(sb),
        "SELECT request_id FROM journal WHERE note='epoch' AND kind=8 ORDER BY seq DESC LIMIT 1",
    );
    key.strip_prefix("m/epoch/").unwrap().parse().unwrap()
}

/// `append_row.py DB METER STATE WORK ARGS...` against the sandbox's TPM
/// (meterd stopped: `meter` is its id, asked before), the identity key's auth value
/// handed over by [`derived_auth`] (the one copy of root's recipe).
pub fn append_row(sb: &Sandbox, meter: &str, args: &[&str]) {
    let work = sb.path("loot");
    std::fs::create_dir_all(&work).unwrap();
    let script = sandbox::repo().join("meterd/tests/append_row.py");
    let port = std::fs::read_to_string(sb.path("swtpm.port")).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([
            db(sb),
            meter.to_owned(),
            state(sb).to_string_lossy().into_owned(),
            work.to_string_lossy().into_owned(),
        ])
        .args(args)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={}", port.trim()),
        )
        .env(
            "IDENTITY_AUTH",
            derived_auth(&state(sb).join("keys/auth"), "identity"),
        )
        .output()
        .unwrap();
    ok(&out, "append_row.py");
}

/// Root's derivation of a TPM object's auth value from the secret file, the documented
/// recipe done with shell and openssl: `HMAC-SHA256(secret, "meterd-tpm-auth-v1:key:<name>")`,
/// as `hex:<64 hex digits>` for tpm2-tools' `-p`.
pub fn derived_auth(secret: &Path, name: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -o pipefail; key=$(od -An -v -tx1 \"$1\" | tr -d ' \\n'); \
             printf %s \"meterd-tpm-auth-v1:key:$2\" | \
             openssl dgst -sha256 -mac HMAC -macopt hexkey:$key -r | cut -d' ' -f1",
        )
        .arg("-")
        .arg(secret)
        .arg(name)
        .output()
        .unwrap();
    format!("hex:{}", ok(&out, "openssl HMAC").trim())
}

/// Root signs a 48-byte digest as the meter (meterd stopped): the identity key loaded from
/// its blobs in `state/keys` under the code's primary template with `tpm2_createprimary`
/// and `tpm2_load`, `tpm2_sign` with the auth value [`derived_auth`] gives. Returns the raw
/// r ‖ s (the form of a batch seal and of an indicium's signature).
pub fn sign_as_meter(sb: &Sandbox, digest: &[u8; 48]) -> [u8; 96] {
    std::fs::write(sb.path("seal.digest"), digest).unwrap();
    let auth = derived_auth(&state(sb).join("keys/auth"), "identity");
    let port = std::fs::read_to_string(sb.path("swtpm.port")).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -e
             tpm2_flushcontext -t
             tpm2_createprimary -Q -C o -G ecc384:aes256cfb -g sha256 \
               -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' \
               -c primary.ctx
             tpm2_load -Q -C primary.ctx -u \"$1/keys/identity.pub\" -r \"$1/keys/identity.priv\" \
               -c identity.ctx
             tpm2_flushcontext -t
             tpm2_sign -c identity.ctx -p \"$2\" -g sha384 -s ecdsa -d -f plain -o seal.der seal.digest",
        )
        .arg("-")
        .arg(state(sb))
        .arg(&auth)
        .current_dir(sb.dir.path())
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={}", port.trim()),
        )
        .output()
        .unwrap();
    ok(
        &out,
        "root's signature with the derived identity auth value (tpm2-tools)",
    );
    let der = std::fs::read(sb.path("seal.der")).unwrap();
    let rs = p384::ecdsa::Signature::from_der(&der)
        .expect("tpm2_sign -f plain gives DER")
        .to_bytes();
    let mut raw = [0u8; 96];
    raw.copy_from_slice(&rs);
    raw
}

/// Root signs a batch seal again (meterd stopped) with [`sign_as_meter`], and writes the
/// raw r ‖ s into `batches.seal` with `sqlite3`.
pub fn reseal(sb: &Sandbox, batch: i64, digest: &[u8; 48]) {
    let raw = sign_as_meter(sb, digest);
    sql(
        sb,
        &db(sb),
        &format!(
            "UPDATE batches SET seal = X'{}' WHERE batch = {batch};",
            hex::encode(raw)
        ),
    );
}
