//! The commands whose state a store keeps (`voucher`, `inspect`, `settle`,
//! `lookup`, `certify-meter`, `certify`) run through the store `serve` uses:
//! PostgreSQL with `--database`, the authority directory's `FileStore` for a
//! `voucher --purchase-id` without it. They call the same store operations
//! and the same helpers (`serve::shared`) as the HTTP routes, so a voucher
//! bought here takes the next sequence of the database, not of `state.json`,
//! and a request made here and again over HTTP is one request with one
//! answer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use meter_authority::money::Money;
use meter_authority::serve::shared::{self, CertifyRequest, CheckedPayment};
use meter_authority::state::Register;
use meter_authority::store::{
    files::FileStore, marker, pg::PgStore, Answer, Purchase, Store, StoreError,
};
use meter_authority::{read_bounded, write_file, Authority, AuthorityError, MeterCerts};
use meter_pki::{cert, csr, pem};

use crate::cmd_reconcile;

/// Result of a command on a store: its errors keep their kind.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A store and the runtime its operations run on.
pub struct Stored {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
}

impl Stored {
    /// The store of `command`: the database at `url` (and `dir` marked as
    /// living there), or the directory itself (refused when it is marked:
    /// see `store::marker`).
    pub fn open(dir: &Path, url: Option<&str>, command: &str) -> Result<Stored> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AuthorityError::io(dir, e))?;
        let store: Arc<dyn Store> = match url {
            Some(url) => runtime.block_on(PgStore::connect_beside(url, 1, Some(dir)))?,
            None => {
                marker::refuse_files(dir, command)?;
                Arc::new(FileStore::new(dir))
            }
        };
        Ok(Stored { runtime, store })
    }

    fn run<T>(&self, op: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.runtime.block_on(op)
    }
}

fn new_or_repeated(fresh: bool) -> &'static str {
    match fresh {
        true => "new",
        false => "repeated",
    }
}

/// The arguments of `voucher`.
pub struct VoucherArgs {
    pub meter: String,
    pub amount: String,
    pub register: Option<String>,
    pub purchase_id: Option<String>,
    pub out: PathBuf,
}

/// `voucher` as a purchase (`Store::purchase`, as `POST .../topups`).
pub fn voucher(dir: &Path, url: Option<&str>, v: VoucherArgs, t: i64) -> Result<ExitCode> {
    let purchase_id = v.purchase_id.ok_or_else(|| {
        AuthorityError::Invalid(
            "voucher with --database needs --purchase-id ID: the voucher is issued once per \
             purchase id, and a retry with the same id gets the same voucher"
                .into(),
        )
    })?;
    let s = Stored::open(dir, url, "voucher")?;
    let money = Money::load(dir)?;
    let p = Purchase {
        meter_id: v.meter,
        purchase_id,
        amount: money.parse(&v.amount)?,
        register: v.register,
    };
    let a = Authority::open_keys(dir)?;
    let sign = shared::voucher_signer(&a, &p, t);
    let bought = s.run(s.store.purchase(&p, &sign))?;
    write_file(&v.out, pem::encode("CMS", &bought.voucher).as_bytes())?;
    let line = voucher_line(
        &p.meter_id,
        &money.show(p.amount),
        bought.sequence,
        p.register.as_deref(),
        &v.out,
    );
    println!("{line} ({})", new_or_repeated(bought.fresh));
    Ok(ExitCode::SUCCESS)
}

/// What `voucher` prints, on either store.
pub(crate) fn voucher_line(
    meter: &str,
    amount: &str,
    sequence: u64,
    register: Option<&str>,
    out: &Path,
) -> String {
    format!(
        "voucher for {meter} amount {amount} sequence {sequence}{} written to {}",
        register
            .map(|r| format!(" register {r}"))
            .unwrap_or_default(),
        out.display()
    )
}

/// `inspect` as a report upload (`Store::upload`, as `POST .../reports`).
pub fn inspect(
    dir: &Path,
    url: &str,
    args: cmd_reconcile::InspectArgs,
    t: i64,
) -> Result<ExitCode> {
    let cmd_reconcile::InspectArgs {
        report,
        segment,
        without_segment,
        out,
        lock_out,
        periods,
    } = args;
    cmd_reconcile::check_periods(&periods)?;
    if without_segment {
        return Err(AuthorityError::Invalid(
            "--without-segment: with --database a report is inspected with its segment, \
             as an upload is"
                .into(),
        )
        .into());
    }
    let s = Stored::open(dir, Some(url), "inspect")?;
    let a = Authority::open_keys(dir)?;
    let report_der = pem::decode_any(&read_bounded(&report)?, "CMS")?;
    let seg =
        cmd_reconcile::read_segment(&segment.unwrap_or_else(|| report.with_extension("seg")))?;
    let att_path = report.with_extension("att");
    let att = match att_path.exists() {
        true => read_bounded(&att_path)?,
        false => Vec::new(),
    };
    let upload = a.verify_upload_signed(&report_der, (!att.is_empty()).then_some(&att[..]), t)?;
    s.run(shared::issued_signer(&*s.store, dir, &upload))?;
    let key = shared::upload_key(&report_der, &att, &seg);
    let (meter_id, sequence) = (upload.meter_id().to_owned(), upload.report().sequence);
    let seen = Mutex::new(None);
    let reconcile = shared::reconcile_upload(&a, upload, &seg, periods, t, &seen);
    let answer = s.run(s.store.upload(&meter_id, key, reconcile))?;
    let found = seen
        .into_inner()
        .map_err(|_| AuthorityError::Corrupt("reconciliation panicked".into()))?;
    match answer {
        Answer::Ack(der) => {
            write_file(&out, pem::encode("CMS", &der).as_bytes())?;
            match found {
                Some(Ok(i)) => cmd_reconcile::print_ack(&i, &out),
                _ => println!(
                    "report {sequence} of meter {meter_id} was uploaded before: its recorded \
                     acknowledgement written to {} (repeated)",
                    out.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Refused {
            lock_order,
            findings,
        } => {
            let lock_path = lock_out.unwrap_or_else(|| out.with_extension("lock-order.pem"));
            write_file(&lock_path, pem::encode("CMS", &lock_order).as_bytes())?;
            let nonce = match &found {
                Some(Err(n)) => Some(n.as_str()),
                _ => None,
            };
            cmd_reconcile::print_refused(&meter_id, sequence, &findings, nonce, &lock_path);
            Ok(ExitCode::from(cmd_reconcile::REFUSED))
        }
    }
}

/// `settle` in the database (`Store::settle`, as `POST /v1/settle` by the
/// creditor the payment's line names: the creditor the meter asked).
pub fn settle(dir: &Path, url: &str, payment: &Path, t: i64) -> Result<ExitCode> {
    let s = Stored::open(dir, Some(url), "settle")?;
    let a = Authority::open_keys(dir)?;
    let bytes = read_bounded(payment)?;
    let checked = CheckedPayment::check(&a, &bytes, t)?;
    let creditor = checked.line.line.issuer.clone();
    let request = checked.request(&creditor, &bytes, t);
    let done = s.run(s.store.settle(&request))?;
    let (st, money) = (&done.settlement, Money::load(dir)?);
    println!(
        "settled payment {} of {} to {}; line {}: {} of {} settled ({})",
        st.serial,
        money.show(st.amount),
        st.payee,
        st.credit_serial,
        money.show(st.settled_total),
        money.show(st.line_amount),
        new_or_repeated(done.fresh)
    );
    Ok(ExitCode::SUCCESS)
}

/// `lookup` in the database (`Store::lookup`, as `POST /v1/lookup`).
pub fn lookup(dir: &Path, url: &str, object: &Path, t: i64) -> Result<ExitCode> {
    let s = Stored::open(dir, Some(url), "lookup")?;
    let a = Authority::open_keys(dir)?;
    let shown = a.shown(&read_bounded(object)?, t)?;
    let meter_id = shown.meter_id().to_owned();
    let looked = s.run(s.store.lookup(&meter_id, shared::look(shown, t)))?;
    Ok(cmd_reconcile::print_looked(looked))
}

/// The arguments of `certify-meter`.
pub struct CertifyMeterArgs {
    pub identity_csr: PathBuf,
    pub postmark_csr: PathBuf,
    pub out_dir: PathBuf,
    pub attestation: Option<PathBuf>,
    pub ek_ca: Vec<PathBuf>,
    pub unattested: bool,
    pub certs_out: Option<PathBuf>,
}

/// A CSR file as the PEM text the API carries (a DER one encoded).
fn csr_pem(path: &Path) -> Result<String> {
    let bytes = read_bounded(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(t) if t.trim_start().starts_with("-----BEGIN") => t,
        Ok(t) => pem::encode("CERTIFICATE REQUEST", t.as_bytes()),
        Err(e) => pem::encode("CERTIFICATE REQUEST", e.as_bytes()),
    })
}

fn create(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).map_err(|e| AuthorityError::io(d, e).into())
}

fn write_pem_cert(path: &Path, text: &serde_json::Value) -> Result<()> {
    let text = text
        .as_str()
        .ok_or_else(|| StoreError::Corrupt("certification answer without a certificate".into()))?;
    Ok(write_file(path, text.as_bytes())?)
}

fn write_cert(path: &Path, c: &cert::Certificate) -> Result<()> {
    Ok(write_file(
        path,
        pem::encode("CERTIFICATE", &cert::to_der(c)?).as_bytes(),
    )?)
}

/// `certify-meter` in the database's register (`Store::certify`, as
/// `POST /v1/meters/{id}/certify`).
pub fn certify_meter(dir: &Path, url: &str, c: CertifyMeterArgs, t: i64) -> Result<ExitCode> {
    if c.attestation.is_none() && !c.unattested {
        return Err(AuthorityError::Invalid(
            "refusing unattested keys: give --attestation and --ek-ca, or --unattested".into(),
        )
        .into());
    }
    let (identity_csr, postmark_csr) = (csr_pem(&c.identity_csr)?, csr_pem(&c.postmark_csr)?);
    let (identity, postmark) = (
        csr::verify(identity_csr.as_bytes()).map_err(AuthorityError::from)?,
        csr::verify(postmark_csr.as_bytes()).map_err(AuthorityError::from)?,
    );
    // As the API keys it: the attestation's JSON as parsed and written again.
    let attestation = match &c.attestation {
        Some(p) => {
            let v: serde_json::Value = serde_json::from_slice(&read_bounded(p)?)
                .map_err(|e| AuthorityError::Invalid(format!("{}: {e}", p.display())))?;
            Some(serde_json::to_vec(&v).map_err(|e| AuthorityError::Corrupt(e.to_string()))?)
        }
        None => None,
    };
    let cas = meter_authority::attest::read_ek_cas(&c.ek_ca)?;
    let meter_id = identity.subject_cn.clone();
    let key = shared::certify_key(&identity_csr, &postmark_csr, attestation.as_deref());
    let request = CertifyRequest {
        identity_csr: &identity_csr,
        postmark_csr: &postmark_csr,
        identity,
        postmark,
        attestation,
    };
    let s = Stored::open(dir, Some(url), "certify-meter")?;
    let a = Authority::open_keys(dir)?;
    let issued: Mutex<Option<MeterCerts>> = Mutex::new(None);
    let issue = Box::new(|register: &mut dyn Register| {
        let (certs, answer) = shared::issue_certification(&a, register, &request, &cas, t)?;
        if let Ok(mut slot) = issued.lock() {
            *slot = Some(certs);
        }
        Ok(answer)
    });
    let done = s.run(s.store.certify(&meter_id, key, issue))?;
    let v: serde_json::Value = serde_json::from_slice(&done.answer)
        .map_err(|e| StoreError::Corrupt(format!("certification answer: {e}")))?;
    create(&c.out_dir)?;
    if v["attested"].as_bool() == Some(true) {
        let credential = serde_json::to_vec(&v["credential"])
            .map_err(|e| StoreError::Corrupt(format!("credential: {e}")))?;
        write_file(&c.out_dir.join("credential.json"), &credential)?;
        if let Some(d) = &c.certs_out {
            match issued.lock().ok().and_then(|mut s| s.take()) {
                Some(certs) => {
                    create(d)?;
                    write_cert(&d.join("meter.pem"), &certs.identity)?;
                    write_cert(&d.join("postmark.pem"), &certs.postmark)?;
                }
                None => eprintln!(
                    "certified before: the certificates are only in the credential; \
                     --certs-out not written"
                ),
            }
        }
        eprintln!(
            "attested: keys in the TPM of a trusted EK; certificates sealed in {} ({})",
            c.out_dir.join("credential.json").display(),
            new_or_repeated(done.fresh)
        );
    } else {
        write_pem_cert(&c.out_dir.join("meter.pem"), &v["identity"])?;
        write_pem_cert(&c.out_dir.join("postmark.pem"), &v["postmark"])?;
        eprintln!(
            "UNATTESTED: nothing proves these keys are in a TPM ({})",
            new_or_repeated(done.fresh)
        );
    }
    println!("{meter_id}");
    Ok(ExitCode::SUCCESS)
}

/// `certify` (a user certificate) for a meter the database may have
/// certified: its identity certificate is looked up there
/// (`Store::certificates`) as well as in `state.json`.
pub fn certify_user(
    dir: &Path,
    url: &str,
    request: &Path,
    validity: meter_authority::enrol::UserValidity,
    out: &Path,
    t: i64,
) -> Result<ExitCode> {
    let mut a = Authority::open(dir)?;
    let req = read_bounded(request)?;
    let meter_id = a.user_request_meter(&req, t)?;
    let known = meter_certificates(dir, url, &meter_id, "certify")?;
    let c = a.certify_user_known(&req, validity, &known, t)?;
    write_cert(out, &c)?;
    println!("{}", crate::serial_of(&c));
    Ok(ExitCode::SUCCESS)
}

/// The certificates the database's register issued to `meter_id`.
pub fn meter_certificates(
    dir: &Path,
    url: &str,
    meter_id: &str,
    command: &str,
) -> Result<Vec<meter_authority::state::Issued>> {
    let s = Stored::open(dir, Some(url), command)?;
    s.run(s.store.certificates(meter_id))
}
