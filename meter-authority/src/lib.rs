//! Reference authority for meterd: a file-based CA that certifies meters and signs
//! vouchers, rate tables and clear-lock orders.
//!
//! It exists for demos and tests (the real authority is a separate party), so it keeps
//! everything in one directory: `root.key` (PKCS#8 PEM, mode 0600), `root.pem`, and
//! `state.json` (counters, see [`state`]). After a `rollover` the retired roots stay as
//! `root.<n>.key` / `root.<n>.pem` (n = 1, 2, ...). Every artifact it writes opens with stock
//! `openssl` given `root.pem`. The binary (`main.rs`) is a thin clap layer over
//! [`Authority`].

mod account;
mod agent;
pub mod attest;
pub mod attested;
mod awaited;
pub mod book;
pub mod credit;
pub mod enrol;
mod epochs;
mod findings;
pub mod inspect;
pub mod lookup;
pub mod money;
pub mod postal;
mod pricing;
pub mod rates;
pub mod reconcile;
pub mod revoke;
pub mod serve;
pub mod state;
pub mod store;

use meter_pki::cms::SignOptions;
use meter_pki::issue::{self, Profile};
use meter_pki::payload::{self, AnchorUpdate, ClearLockOrder, Payload, Voucher};
use meter_pki::{cert, csr, pem, tsp, PkiError};
use p384::ecdsa::SigningKey;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha384};
use state::{Issued, Register, State};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Validity of the root certificate (20 years).
pub const ROOT_DAYS: u32 = 7300;
/// Validity of meter identity and postmark certificates (5 years).
pub const METER_DAYS: u32 = 1825;

/// Failures of the authority; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `init` on a directory that already holds an authority.
    #[error("{0} already holds an authority; use another --dir or remove it")]
    AlreadyInitialized(PathBuf),
    /// No authority in the directory.
    #[error("{0} holds no authority; run `meter-authority init` first")]
    NotInitialized(PathBuf),
    /// Bad input from the operator.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A stored file of the authority is damaged.
    #[error("authority state damaged: {0}; restore the directory from a backup")]
    Corrupt(String),
    /// A PKI object was refused.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A single-use object (a payment certificate) was presented again.
    #[error("replay: {0}; each payment certificate is settled once")]
    Replay(String),
    /// A report does not reconcile with its rows: refused, and a forced
    /// lock order signed for the meter.
    #[error("report {report_sequence} of meter {meter_id} refused: {}", findings.join("; "))]
    Discrepancy {
        /// The meter.
        meter_id: String,
        /// The report refused.
        report_sequence: u64,
        /// What is wrong, one sentence each.
        findings: Vec<String>,
        /// The lock order and its PEM, to send to the meter.
        lock_order: Box<(meter_pki::report::LockOrder, String)>,
    },
    /// A typed amount was not accepted (a usage error: exit code 2).
    #[error("{0}")]
    Amount(#[from] meter_proto::money::AmountError),
    /// A postmark token failed verification.
    #[error("token refused at step {step}: {detail}")]
    Token {
        /// `parse`, `chain`, `signature` or `digest`.
        step: &'static str,
        /// Why.
        detail: String,
    },
}

impl AuthorityError {
    /// An I/O failure on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        AuthorityError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Result type of the authority.
pub type Result<T> = std::result::Result<T, AuthorityError>;

/// Current unix time.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads a file, refusing anything over [`meter_pki::MAX_OBJECT`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| AuthorityError::io(path, e))?
        .len();
    if len > meter_pki::MAX_OBJECT as u64 {
        return Err(PkiError::TooLarge(usize::try_from(len).unwrap_or(usize::MAX)).into());
    }
    std::fs::read(path).map_err(|e| AuthorityError::io(path, e))
}

/// Writes a file (created or replaced).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| AuthorityError::io(path, e))
}

/// A fresh random 128-bit id in hex: the single-use nonce of every order the
/// authority signs (lock, account, revoke), so a meter can refuse a replay.
pub(crate) fn fresh_nonce_hex() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A voucher's register names one of the meter's register pairs (issue 17).
fn check_register(register: Option<&str>) -> Result<()> {
    match register {
        Some(r) if !meter_pki::payload::VOUCHER_REGISTERS.contains(&r) => Err(
            AuthorityError::Invalid("the register is postage or services".into()),
        ),
        _ => Ok(()),
    }
}

/// Checks a meter id: 1..64 characters of `[A-Za-z0-9-]`.
pub fn check_meter_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AuthorityError::Invalid(format!(
            "meter id {id:?} must be 1..64 characters of A-Z a-z 0-9 -"
        )))
    }
}

/// Certificates issued to one meter.
#[derive(Debug, Clone)]
pub struct MeterCerts {
    /// The meter id (common name of both certificates).
    pub meter_id: String,
    /// Identity (communications key) certificate.
    pub identity: cert::Certificate,
    /// Postmark (TSA) certificate.
    pub postmark: cert::Certificate,
}

/// An opened authority directory.
pub struct Authority {
    dir: PathBuf,
    key: SigningKey,
    root: cert::Certificate,
    /// `state.json`; `None` when opened for signing only ([`Authority::open_keys`]).
    state: Option<State>,
}

impl Authority {
    fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join("root.key"),
            dir.join("root.pem"),
            dir.join("state.json"),
        )
    }

    /// Creates a new authority in `dir` (created if missing) with root `CN=<name>`.
    pub fn init(dir: &Path, name: &str, now: i64) -> Result<Authority> {
        let (key_path, root_path, state_path) = Self::paths(dir);
        if key_path.exists() || state_path.exists() || root_path.exists() {
            return Err(AuthorityError::AlreadyInitialized(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|e| AuthorityError::io(dir, e))?;
        let key = SigningKey::random(&mut rand_core::OsRng);
        let root = issue::self_signed_root(&key, name, 1, now, ROOT_DAYS)?;
        write_new_key(&key_path, &key)?;
        write_file(&root_path, cert::to_pem(&root)?.as_bytes())?;
        let state = State::default();
        state.save(&state_path)?;
        Ok(Authority {
            dir: dir.to_owned(),
            key,
            root,
            state: Some(state),
        })
    }

    /// Opens the authority in `dir`.
    pub fn open(dir: &Path) -> Result<Authority> {
        let mut a = Self::open_keys(dir)?;
        a.state = Some(State::load(&Self::paths(dir).2)?);
        Ok(a)
    }

    /// Opens the authority in `dir` for signing only: the key and the root,
    /// without reading `state.json` (whole, and growing with every
    /// certificate). `serve` opens it so per request; whatever takes a
    /// serial or checks the register is given a [`Register`] (or fails).
    pub fn open_keys(dir: &Path) -> Result<Authority> {
        let (key_path, root_path, _) = Self::paths(dir);
        if !key_path.exists() {
            return Err(AuthorityError::NotInitialized(dir.to_owned()));
        }
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| AuthorityError::io(&key_path, e))?;
        let key = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| AuthorityError::Corrupt(format!("root.key: {e}")))?;
        let root = cert::parse(&read_bounded(&root_path)?)?;
        let key_sec1 = key.verifying_key().to_encoded_point(false);
        if cert::public_key_sec1(&root)? != key_sec1.as_bytes() {
            return Err(AuthorityError::Corrupt(
                "root.key does not match root.pem".into(),
            ));
        }
        Ok(Authority {
            dir: dir.to_owned(),
            key,
            root,
            state: None,
        })
    }

    /// The root certificate.
    pub fn root(&self) -> &cert::Certificate {
        &self.root
    }

    /// The current counters (`None` when opened with [`Authority::open_keys`]).
    pub fn state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// `state.json` as read, or the error of an authority opened for signing only.
    fn register(&self) -> Result<&State> {
        self.state.as_ref().ok_or_else(Self::unloaded)
    }

    fn register_mut(&mut self) -> Result<&mut State> {
        self.state.as_mut().ok_or_else(Self::unloaded)
    }

    fn unloaded() -> AuthorityError {
        AuthorityError::Corrupt("the authority was opened without its register (state.json)".into())
    }

    /// Runs `f` with `state.json` as the register, then saves it.
    fn with_state<T>(&mut self, f: impl FnOnce(&Self, &mut State) -> Result<T>) -> Result<T> {
        let mut state = self.state.take().ok_or_else(Self::unloaded)?;
        let out = f(self, &mut state);
        self.state = Some(state);
        let out = out?;
        self.save()?;
        Ok(out)
    }

    /// The roots objects may chain to: the current one, then the retired
    /// ones (`root.<n>.pem`), which signed what the meter applied before a
    /// rollover.
    pub fn roots(&self) -> Result<Vec<cert::Certificate>> {
        let mut all = vec![self.root.clone()];
        for n in 1u32.. {
            let p = self.dir.join(format!("root.{n}.pem"));
            if !p.exists() {
                break;
            }
            all.push(cert::parse(&read_bounded(&p)?)?);
        }
        Ok(all)
    }

    /// The directory of the authority.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn save(&self) -> Result<()> {
        self.register()?.save(&self.dir.join("state.json"))
    }

    fn issue_one(
        &self,
        register: &mut dyn Register,
        cn: &str,
        sec1: &[u8],
        profile: Profile,
        now: i64,
    ) -> Result<cert::Certificate> {
        let serial = register.take_serial()?;
        let c = issue::issue(
            cn, sec1, profile, &self.key, &self.root, serial, now, METER_DAYS,
        )?;
        register.record(
            Issued {
                serial,
                subject_cn: cn.to_owned(),
                profile: format!("{profile:?}"),
                not_after: cert::not_after(&c),
                meter: None,
            },
            &cert::to_der(&c)?,
        )?;
        Ok(c)
    }

    /// Verifies the meter's two CSRs (self-signed, same CN = meter id, distinct keys) and
    /// issues its identity and postmark certificates (recorded in `state.json`).
    pub fn certify_meter(
        &mut self,
        identity_csr: &[u8],
        postmark_csr: &[u8],
        now: i64,
    ) -> Result<MeterCerts> {
        let id = csr::verify(identity_csr)?;
        let pm = csr::verify(postmark_csr)?;
        self.with_state(|a, state| a.certify_meter_in(state, &id, &pm, now))
    }

    /// [`Authority::certify_meter`] for requests already verified (a
    /// P-384 verification is most of a certification's cost), with the
    /// serials taken from and the certificates recorded in `register` (the
    /// caller makes it durable).
    pub fn certify_meter_in(
        &self,
        register: &mut dyn Register,
        id: &csr::VerifiedCsr,
        pm: &csr::VerifiedCsr,
        now: i64,
    ) -> Result<MeterCerts> {
        if id.subject_cn != pm.subject_cn {
            return Err(AuthorityError::Invalid(format!(
                "the two requests name different meters: {:?} and {:?}",
                id.subject_cn, pm.subject_cn
            )));
        }
        check_meter_id(&id.subject_cn)?;
        if id.public_sec1 == pm.public_sec1 {
            return Err(AuthorityError::Invalid(
                "identity and postmark requests use the same key; use two keys".into(),
            ));
        }
        let identity = self.issue_one(
            register,
            &id.subject_cn,
            &id.public_sec1,
            Profile::MeterIdentity,
            now,
        )?;
        let postmark = self.issue_one(
            register,
            &pm.subject_cn,
            &pm.public_sec1,
            Profile::Postmark,
            now,
        )?;
        Ok(MeterCerts {
            meter_id: id.subject_cn.clone(),
            identity,
            postmark,
        })
    }

    fn sign_payload<T: Payload>(&self, v: &T, now: i64) -> Result<String> {
        v.validate()?;
        let content = payload::encode(v)?;
        let der = meter_pki::cms::sign_with_key(
            &SignOptions {
                content_type: T::CONTENT_TYPE,
                content: &content,
                signer: &self.root,
                extra_certs: &[],
                signing_time: Some(now),
                ess_cert_id_v2: true,
            },
            &self.key,
        )?;
        Ok(pem::encode("CMS", &der))
    }

    /// Signs the rate table described by `toml_text`; returns PEM ("CMS").
    pub fn rates(
        &self,
        toml_text: &str,
        now: i64,
    ) -> Result<(meter_pki::payload::RateTable, String)> {
        let table = rates::parse(toml_text)?;
        let pem = self.sign_payload(&table, now)?;
        Ok((table, pem))
    }

    /// Issues a voucher for `meter_id` with the next sequence number (persisted first).
    pub fn voucher(&mut self, meter_id: &str, amount: u64, now: i64) -> Result<(Voucher, String)> {
        self.voucher_for(meter_id, amount, None, now)
    }

    /// [`Authority::voucher`] for one register (`postage` or `services`,
    /// issue 17); `None` writes no register field (services, or the
    /// combined pool of a meter not split), as every voucher before.
    pub fn voucher_for(
        &mut self,
        meter_id: &str,
        amount: u64,
        register: Option<&str>,
        now: i64,
    ) -> Result<(Voucher, String)> {
        check_register(register)?;
        let sequence = self.reserve_voucher(meter_id, amount)?;
        self.sign_voucher(meter_id, sequence, amount, register, now)
    }

    /// Takes the next voucher sequence of `meter_id` in `state.json` and
    /// records the voucher in the meter's book, both before it is signed:
    /// a crash can skip a sequence, never reuse one.
    pub fn reserve_voucher(&mut self, meter_id: &str, amount: u64) -> Result<u64> {
        check_meter_id(meter_id)?;
        if amount == 0 {
            return Err(AuthorityError::Invalid("amount must be positive".into()));
        }
        let sequence = self.register_mut()?.take_sequence(meter_id)?;
        self.save()?;
        // In the meter's book before it exists: inspections reconcile the
        // meter's credits with this record (see `reconcile`).
        book::Shelf::of(&self.dir, meter_id)?.update(|b, _| {
            b.vouchers.insert(sequence, amount);
            Ok(())
        })?;
        Ok(sequence)
    }

    /// Signs the voucher `sequence` of `meter_id` (PEM, label CMS); the
    /// caller took the sequence and recorded the voucher (its store's job).
    pub fn sign_voucher(
        &self,
        meter_id: &str,
        sequence: u64,
        amount: u64,
        register: Option<&str>,
        now: i64,
    ) -> Result<(Voucher, String)> {
        check_meter_id(meter_id)?;
        check_register(register)?;
        if amount == 0 {
            return Err(AuthorityError::Invalid("amount must be positive".into()));
        }
        let v = Voucher {
            meter_id: meter_id.to_owned(),
            amount,
            sequence,
            issued_at: now,
            register: register.map(str::to_owned),
        };
        let pem = self.sign_payload(&v, now)?;
        Ok((v, pem))
    }

    /// Rolls the root over: makes a new root key and self-signed certificate `CN=<name>`,
    /// signs an [`AnchorUpdate`] carrying it with the CURRENT root (so meters that trust the
    /// current root accept it), retires the current root to `root.<n>.key`/`root.<n>.pem`
    /// and makes the new one current. Returns the message (PEM, label CMS) and the number
    /// `n` the old root was kept under.
    pub fn rollover(
        &mut self,
        name: &str,
        mode: &str,
        meter_id: Option<&str>,
        now: i64,
    ) -> Result<(String, u32)> {
        if let Some(id) = meter_id {
            check_meter_id(id)?;
        }
        let serial = self.register_mut()?.take_serial()?;
        let new_key = SigningKey::random(&mut rand_core::OsRng);
        let new_root = issue::self_signed_root(&new_key, name, serial, now, ROOT_DAYS)?;
        let update = AnchorUpdate {
            meter_id: meter_id.map(str::to_owned),
            new_anchor_der_hex: hex::encode(cert::to_der(&new_root)?),
            mode: mode.to_owned(),
            issued_at: now,
        };
        let message = self.sign_payload(&update, now)?;
        self.save()?;
        // Retire the current root under the first free number.
        let n = (1u32..)
            .find(|n| {
                !self.dir.join(format!("root.{n}.key")).exists()
                    && !self.dir.join(format!("root.{n}.pem")).exists()
            })
            .ok_or_else(|| AuthorityError::Corrupt("no free root.<n> name".into()))?;
        write_new_key(&self.dir.join(format!("root.{n}.key")), &self.key)?;
        write_file(
            &self.dir.join(format!("root.{n}.pem")),
            cert::to_pem(&self.root)?.as_bytes(),
        )?;
        // Install the new root: both files through a temporary name and a rename.
        let (key_path, root_path, _) = Self::paths(&self.dir);
        let key_tmp = self.dir.join("root.key.new");
        let _ = std::fs::remove_file(&key_tmp);
        write_new_key(&key_tmp, &new_key)?;
        let root_tmp = self.dir.join("root.pem.new");
        write_file(&root_tmp, cert::to_pem(&new_root)?.as_bytes())?;
        std::fs::rename(&key_tmp, &key_path).map_err(|e| AuthorityError::io(&key_path, e))?;
        std::fs::rename(&root_tmp, &root_path).map_err(|e| AuthorityError::io(&root_path, e))?;
        self.key = new_key;
        self.root = new_root;
        Ok((message, n))
    }

    /// Issues an order clearing the lock with `nonce` on `meter_id`.
    pub fn clear_lock(&self, meter_id: &str, nonce: &str, now: i64) -> Result<String> {
        check_meter_id(meter_id)?;
        self.sign_payload(
            &ClearLockOrder {
                meter_id: meter_id.to_owned(),
                nonce: nonce.to_owned(),
                issued_at: now,
            },
            now,
        )
    }
}

/// Writes a private key as PKCS#8 PEM to a new file (never overwrites), mode 0600.
fn write_new_key(path: &Path, key: &SigningKey) -> Result<()> {
    let pem_key = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| AuthorityError::Corrupt(format!("key encoding: {e}")))?;
    // create_new + 0600: never overwrite a key, never let others read it.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuthorityError::io(path, e))?;
    f.write_all(pem_key.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| AuthorityError::io(path, e))
}

/// Verifies a postmark token over `data` against `root` (parse → chain → signature → digest).
pub fn verify_token(
    token: &[u8],
    data: &[u8],
    root: &cert::Certificate,
    now: i64,
) -> Result<tsp::TokenInfo> {
    let der = pem::decode_any(token, "TIMESTAMP TOKEN")?;
    let info =
        tsp::verify(&der, std::slice::from_ref(root), now).map_err(|e| AuthorityError::Token {
            step: e.step(),
            detail: e.to_string(),
        })?;
    if info.hash_oid != meter_pki::oid::SHA384 || info.imprint != Sha384::digest(data).to_vec() {
        return Err(AuthorityError::Token {
            step: "digest",
            detail: "the token is for another message".into(),
        });
    }
    Ok(info)
}
