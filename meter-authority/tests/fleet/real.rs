//! The fleet's one real meter (issue 16 item 3): meterd on swtpm, brought
//! up by the same `tests/sandbox` script as meterd's end-to-end tests, but
//! unprovisioned (`SANDBOX_PROVISION=0`) so that everything it holds comes
//! from the fleet's server while the simulated load runs against it: its
//! certification (`POST /v1/meters/{id}/certify` with the TPM's attestation,
//! the certificates sealed in a credential only that TPM activates), its
//! rate table (signed by the server as the operator's order), a top-up
//! bought over the API, then `meterctl sync` (report uploaded and
//! acknowledged, the voucher applied), postmarks sold, and a second sync.
//! The vouchers and acknowledgements it was answered join the fleet's
//! tally, so the one end check covers it; [`check`] adds that its registers
//! as re-derived from the database are what its own `meterctl status`
//! shows.
//!
//! The meter-authority crate cannot use meterd's test support, so this
//! drives the script and the binaries (`meterd`, `meterctl` beside
//! `meter-authority`: `cargo build --release --bins`) as a shell would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve_support::{http, Postgres, BIN};
use crate::sim::Shared;

/// The top-up the real meter buys (minor units).
pub const REAL_TOPUP: u64 = 50_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn bin_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().into()
}

/// A meterd on swtpm with its private bus, unprovisioned; taken down on drop.
pub struct RealMeter {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    pub id: String,
    /// The fleet authority's root certificate, the meter's trust anchor.
    root: PathBuf,
    started: Duration,
    /// Set when [`RealMeter::run`] returns or panics.
    done: AtomicBool,
}

/// Sets its flag when dropped: on return and on a panic's unwinding.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the real meter did, for the end check and the printed figures.
pub struct Outcome {
    pub id: String,
    /// (purchase id, voucher sequence, amount) of each top-up it bought.
    pub vouchers: Vec<(String, u64, u64)>,
    /// Report sequences acknowledged to its syncs.
    pub acks: Vec<u64>,
    pub postmarks: u64,
    /// (AR, DR, CT) from `meterctl status` at the end.
    pub registers: (u64, u64, u64),
    /// Simulated acknowledgements answered before its first request and
    /// after its last sync: the load it ran beside.
    pub load_acks: (usize, usize),
    /// From `tests/sandbox up` to the meter ready; its flow.
    pub times: (Duration, Duration),
}

fn script(verb: &str, dir: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("tests/sandbox"))
        .arg(verb)
        .arg(dir)
        .env("METERD_BIN_DIR", bin_dir());
    c
}

impl RealMeter {
    /// Brings meterd up on a swtpm with an EK certificate (unprovisioned),
    /// makes its certification requests and TPM attestation (`meterctl
    /// provision --out-dir`), and has the authority in `authority` trust
    /// the sandbox's EK CA (`<authority>/ek-ca/`, read by `/certify`).
    pub fn prepare(authority: &Path) -> RealMeter {
        let t = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("fleet-meter-")
            .tempdir()
            .unwrap();
        let up = script("up", dir.path())
            .env("SANDBOX_PROVISION", "0")
            .output()
            .unwrap();
        if !up.status.success() {
            let _ = script("down", dir.path()).status();
            panic!(
                "tests/sandbox up failed:\n{}",
                String::from_utf8_lossy(&up.stderr)
            );
        }
        // DIR/env: `export KEY='VALUE'` lines (PATH left as it is).
        let env = std::fs::read_to_string(dir.path().join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .filter(|(k, _)| *k != "PATH")
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        let mut m = RealMeter {
            dir,
            env,
            id: String::new(),
            root: authority.join("root.pem"),
            started: Duration::ZERO,
            done: AtomicBool::new(false),
        };
        let csr = m.file("csr");
        m.id = m.meterctl(&["provision", "--out-dir", &csr])["meter_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let ek_ca = authority.join("ek-ca");
        std::fs::create_dir_all(&ek_ca).unwrap();
        std::fs::copy(
            m.dir.path().join("ekca/issuercert.pem"),
            ek_ca.join("sandbox-ekca.pem"),
        )
        .unwrap();
        m.started = t.elapsed();
        m
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `meterctl --json ARGS`, asserting success: its JSON answer.
    fn meterctl(&self, args: &[&str]) -> Value {
        let out = Command::new(bin_dir().join("meterctl"))
            .arg("--json")
            .args(args)
            .envs(&self.env)
            .output()
            .unwrap();
        let said = [&out.stdout, &out.stderr].map(|b| String::from_utf8_lossy(b).into_owned());
        assert!(out.status.success(), "meterctl {args:?}: {said:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// (AR, DR, CT) from `meterctl status`, asserting AR + DR = CT.
    fn registers(&self) -> (u64, u64, u64) {
        let s = self.meterctl(&["status"]);
        let r = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
        let regs = (r("ascending"), r("descending"), r("control_total"));
        assert_eq!(regs.0 + regs.1, regs.2, "AR + DR = CT: {s}");
        regs
    }

    /// `meterctl sync` against the server: the report is acknowledged; the
    /// ids and results of the objects it applied. Its acknowledgement (the
    /// meter's report sequence, from its status-report count before the
    /// sync) joins the fleet's tally.
    fn sync(&self, sh: &Shared, acks: &mut Vec<u64>) -> Vec<(String, String)> {
        let before = self.meterctl(&["status"]);
        let sequence = before["service_counts"]["status-report"]
            .as_u64()
            .unwrap_or(0)
            + 1;
        let url = format!("http://{}", sh.addr.read().unwrap());
        let v = self.meterctl(&["sync", "--provider", &url]);
        assert_eq!(v["upload"], "acknowledged", "{v}");
        *sh.tally
            .lock()
            .unwrap()
            .acks
            .entry((self.id.clone(), sequence))
            .or_default() += 1;
        acks.push(sequence);
        v["pending"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let s = |k: &str| o[k].as_str().unwrap().to_owned();
                (s("id"), s("result"))
            })
            .collect()
    }

    /// The meter's flow against the fleet's server, once the simulated load
    /// has begun (its first acknowledgement); sells `postmarks`.
    pub fn run(&self, sh: &Shared, postmarks: u64) -> Outcome {
        let _done = SetOnDrop(&self.done);
        let acks_now = || sh.tally.lock().unwrap().acks.len();
        let deadline = Instant::now() + Duration::from_secs(300);
        while acks_now() == 0 {
            assert!(Instant::now() < deadline, "the load did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let first = acks_now();
        let t = Instant::now();
        let addr = sh.addr.read().unwrap().clone();
        let post = |path: &str, body: Value| {
            let r = http(
                &addr,
                "POST",
                &format!("/v1/meters/{}/{path}", self.id),
                "application/json",
                body.to_string().as_bytes(),
            );
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r
        };

        // Certified by the fleet's server on the TPM's attestation.
        let read = |name: &str| std::fs::read_to_string(self.file(name)).unwrap();
        let attestation: Value = serde_json::from_str(&read("csr/attestation.json")).unwrap();
        let c = post(
            "certify",
            serde_json::json!({
                "identity_csr": read("csr/identity.csr.pem"),
                "postmark_csr": read("csr/postmark.csr.pem"),
                "attestation": attestation,
            }),
        );
        let c: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(c["attested"], true, "{c}");
        let credential = self.file("credential.json");
        std::fs::write(&credential, c["credential"].to_string()).unwrap();
        let root_pem = self.root.to_string_lossy();
        self.meterctl(&[
            "provision",
            "--install",
            "--credential",
            &credential,
            "--root",
            &root_pem,
        ]);

        // The operator's rate table, signed by the server (a meter reports
        // only with a table in force, so it is installed by hand, as at
        // provisioning); a shop buys a top-up.
        let toml =
            std::fs::read_to_string(repo().join("meter-authority/rates.example.toml")).unwrap();
        let table = post("orders/rates", serde_json::json!({ "toml": toml }));
        let rates = self.file("rates.der");
        std::fs::write(&rates, &table.body).unwrap();
        self.meterctl(&["rates", "install", &rates]);
        let purchase = "real-1".to_owned();
        let v = post(
            "topups",
            serde_json::json!({"purchase_id": purchase, "amount": REAL_TOPUP}),
        );
        let seq: u64 = v.headers["meter-voucher-sequence"].parse().unwrap();
        sh.tally
            .lock()
            .unwrap()
            .vouchers
            .insert((self.id.clone(), purchase.clone()), (seq, REAL_TOPUP));

        // Sync: report acknowledged, the voucher applied (the table queued
        // is not pending: the report shows it in force).
        let mut acks = Vec::new();
        assert_eq!(
            self.sync(sh, &mut acks),
            vec![(format!("voucher/{seq}"), "applied".to_owned())]
        );
        assert_eq!(self.registers().2, REAL_TOPUP, "the top-up credited once");

        // Postmarks sold, then a sync that has nothing left to apply.
        for i in 0..postmarks {
            let msg = self.file(&format!("letter-{i}.txt"));
            std::fs::write(&msg, format!("letter {i}")).unwrap();
            let tsr = self.file(&format!("letter-{i}.tsr"));
            let id = format!("fleet-{i}");
            self.meterctl(&["postmark", &msg, "-o", &tsr, "--request-id", &id]);
        }
        assert!(self.sync(sh, &mut acks).is_empty());
        let registers = self.registers();
        let load_acks = (first, acks_now() - acks.len());
        Outcome {
            id: self.id.clone(),
            vouchers: vec![(purchase, seq, REAL_TOPUP)],
            acks,
            postmarks,
            registers,
            load_acks,
            times: (self.started, t.elapsed()),
        }
    }
}

impl RealMeter {
    /// Waits until [`RealMeter::run`] has returned (or panicked): the
    /// fleet's load holds its last round for it, so the meter's whole flow
    /// runs while the simulated load does.
    pub fn wait(&self) {
        while !self.done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RealMeter {
    fn drop(&mut self) {
        let _ = script("down", self.dir.path()).status();
    }
}

/// The real meter's registers re-derived from the database are what its
/// own status shows: the last acknowledged point (the second sync's
/// report; a status report costs nothing in the example rates), CT = its
/// purchases, one index row per postmark, every upload accepted.
pub fn check(pg: &Postgres, o: &Outcome) {
    let (ar, dr, ct) = o.registers;
    let q = |sql: &str| pg.psql(&sql.replace("$M", &format!("'{}'", o.id)));
    assert_eq!(
        q(
            "SELECT g->>'ascending', g->>'descending', g->>'control_total' FROM meters m, \
           LATERAL (SELECT m.book->'acknowledged'->-1->'registers' g) x WHERE meter_id = $M"
        ),
        format!("{ar}|{dr}|{ct}"),
        "the real meter's acknowledged registers are not its own"
    );
    assert_eq!(
        q("SELECT sum(amount) FROM purchases WHERE meter_id = $M"),
        ct.to_string()
    );
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM index_rows WHERE meter_id = $M AND service = {}",
            meter_pki::segment::service::POSTMARK
        )),
        o.postmarks.to_string()
    );
    assert_eq!(
        q("SELECT count(*) FILTER (WHERE accepted), count(*) FROM uploads WHERE meter_id = $M"),
        format!("{0}|{0}", o.acks.len())
    );
}

/// The real meter's lines of the printed figures.
pub fn summary(o: &Outcome) -> String {
    let (ar, dr, ct) = o.registers;
    format!(
        "  real meter {} (meterd on swtpm): up and its requests made in {:.1} s; then certified over the API \
         (attested), 1 top-up of {REAL_TOPUP}, {} syncs, {} postmarks in {:.1} s, while the fleet's \
         acknowledgements went from {} to {}; its registers AR {ar} DR {dr} CT {ct} = the database's\n",
        o.id,
        o.times.0.as_secs_f64(),
        o.acks.len(),
        o.postmarks,
        o.times.1.as_secs_f64(),
        o.load_acks.0,
        o.load_acks.1,
    )
}
