//! Shared fixtures for the integration tests: a root, a TSA (postmark) certificate, helpers
//! to run the `openssl` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meter_pki::issue::{self, Profile};
use meter_pki::{cert::Certificate, pem};
use p384::ecdsa::SigningKey;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn key() -> SigningKey {
    SigningKey::random(&mut rand_core::OsRng)
}

pub fn sec1(k: &SigningKey) -> Vec<u8> {
    k.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

pub struct Pki {
    pub root_key: SigningKey,
    pub root: Certificate,
    pub tsa_key: SigningKey,
    pub tsa: Certificate,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let t0 = now() - 3600;
        let root_key = key();
        let root = issue::self_signed_root(&root_key, "Test Authority Root", 1, t0, 365).unwrap();
        let tsa_key = key();
        let tsa = issue::issue(
            "meter-0001",
            &sec1(&tsa_key),
            Profile::Postmark,
            &root_key,
            &root,
            2,
            t0,
            30,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = Pki {
            root_key,
            root,
            tsa_key,
            tsa,
            dir,
        };
        p.write_cert("root.pem", &p.root);
        p.write_cert("tsa.pem", &p.tsa);
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn write_cert(&self, name: &str, c: &Certificate) -> PathBuf {
        let der = meter_pki::cert::to_der(c).unwrap();
        self.write(name, pem::encode("CERTIFICATE", &der).as_bytes())
    }
}

/// Runs openssl with `args`; returns (success, stdout, stderr).
pub fn openssl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (bool, String, String) {
    let out = Command::new("openssl")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("openssl binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn p(path: &Path) -> &std::ffi::OsStr {
    path.as_os_str()
}

/// `openssl ts -verify -data DATA -in TOKEN -token_in -CAfile ROOT`.
pub fn ts_verify(data: &Path, token: &Path, root: &Path) -> (bool, String, String) {
    openssl(&[
        &"ts",
        &"-verify",
        &"-data",
        &p(data),
        &"-in",
        &p(token),
        &"-token_in",
        &"-CAfile",
        &p(root),
    ])
}

impl Pki {
    /// `openssl cms -verify -inform DER -in FILE -CAfile root.pem -purpose any`, then `more`.
    pub fn cms_verify(
        &self,
        file: &Path,
        more: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> (bool, String, String) {
        let root = self.path("root.pem");
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"cms",
            &"-verify",
            &"-inform",
            &"DER",
            &"-in",
            &file,
            &"-CAfile",
            &root,
            &"-purpose",
            &"any",
        ];
        args.extend_from_slice(more);
        openssl(&args)
    }
}
