//! The fleet driver: N simulated meters, each certified over the API (its
//! software keys, `certify` unattested as the operator), granted a line of
//! credit (in process, as `meter-authority credit-grant`), then for each
//! round: buys a top-up, credits it, sells postmarks, uploads its report
//! (acknowledged), and settles one payment as the creditor. Clients retry
//! a failed request (no answer, or 5xx) with the same id and bytes until a
//! deadline, so a server or database killed meanwhile changes nothing.
//! Every answer received is tallied for the end check against the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meter_authority::serve::{frame_upload, UPLOAD};

use crate::ledger::Ledger;
use crate::serve_support::*;

pub const CREDITOR: &str = "fleet-bank-token-0123456789";
pub const TOPUP: u64 = 10_000;
pub const PRICE: u64 = 55;
pub const PAYMENT: u64 = 10;

/// What the run is made of.
#[derive(Clone, Debug)]
pub struct Plan {
    pub meters: usize,
    pub rounds: u64,
    pub rows: u64,
    pub clients: usize,
    pub connections: usize,
    /// Postmarks the one real meter (meterd on swtpm, `real.rs`) sells
    /// beside the load; 0: no real meter.
    pub real_postmarks: u64,
}

/// `meter-authority serve` on a fixed port, killed and restarted at will.
pub struct Provider {
    pub addr: String,
    dir: PathBuf,
    url: String,
    connections: usize,
    child: Option<Child>,
}

impl Provider {
    pub fn start(dir: &Path, url: &str, connections: usize) -> Provider {
        let mut p = Provider {
            addr: String::new(),
            dir: dir.to_owned(),
            url: url.to_owned(),
            connections,
            child: None,
        };
        p.spawn("127.0.0.1:0");
        p
    }

    fn spawn(&mut self, listen: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(BIN)
                .arg("serve")
                .arg("--dir")
                .arg(&self.dir)
                .args(["--listen", listen, "--database", &self.url])
                .args(["--connections", &self.connections.to_string()])
                .env("RUST_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if let Some(a) = line
                .strip_prefix("listening on ")
                .and_then(|l| l.split_whitespace().next())
            {
                self.addr = a.to_owned();
                self.child = Some(child);
                return;
            }
            // The port may be in TIME_WAIT after a kill, or the database
            // not back yet: try again.
            let _ = child.wait();
            assert!(Instant::now() < deadline, "serve did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, then a new server on the same address.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let addr = self.addr.clone();
        self.spawn(&addr);
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// What the clients received (acknowledged answers only).
#[derive(Default)]
pub struct Tally {
    /// (meter, purchase id) → (sequence, amount).
    pub vouchers: BTreeMap<(String, String), (u64, u64)>,
    /// (meter, report sequence).
    pub acks: BTreeMap<(String, u64), usize>,
    /// payment serial → amount.
    pub settled: BTreeMap<String, u64>,
    /// endpoint → latencies of the answered requests.
    pub latency: BTreeMap<&'static str, Vec<Duration>>,
    /// Requests retried after no answer or a 5xx.
    pub retries: u64,
}

pub struct Shared {
    pub addr: RwLock<String>,
    pub tally: Mutex<Tally>,
}

/// One request, retried with the same bytes until a non-5xx answer.
fn call(
    sh: &Shared,
    what: &'static str,
    path: &str,
    media: &str,
    body: &[u8],
    bearer: Option<&str>,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let addr = sh.addr.read().unwrap().clone();
        let t = Instant::now();
        match try_http(&addr, "POST", path, media, body, bearer) {
            Ok(r) if r.status < 500 => {
                let took = t.elapsed();
                sh.tally
                    .lock()
                    .unwrap()
                    .latency
                    .entry(what)
                    .or_default()
                    .push(took);
                return r;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{what} {path}: no answer until the deadline: {:?}",
                    other.map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                );
                sh.tally.lock().unwrap().retries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

pub struct SimMeter {
    pub meter: Meter,
    pub ledger: Ledger,
    line: (meter_pki::credit::CreditLine, String),
}

/// Certifies meter `i` over the API and grants it a line of credit.
pub fn enrol(sh: &Shared, dir: &Path, plan: &Plan, i: usize) -> SimMeter {
    let id = format!("MTR-F{i:07}");
    let addr = sh.addr.read().unwrap().clone();
    let t = Instant::now();
    let meter = certify_over_api(&addr, &id);
    sh.tally
        .lock()
        .unwrap()
        .latency
        .entry("certify")
        .or_default()
        .push(t.elapsed());
    let line = credit_line(dir, &meter, PAYMENT * plan.rounds);
    SimMeter {
        meter,
        ledger: Ledger::new(&id),
        line,
    }
}

/// Round `r` of one meter: top-up, sales, report, settlement.
pub fn round(sh: &Shared, plan: &Plan, m: &mut SimMeter, r: u64) {
    let id = m.ledger.id.clone();
    let purchase = format!("p-{r}");
    let body = format!(r#"{{"purchase_id":"{purchase}","amount":{TOPUP}}}"#);
    let v = call(
        sh,
        "topup",
        &format!("/v1/meters/{id}/topups"),
        "application/json",
        body.as_bytes(),
        None,
    );
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
    let seq: u64 = v.headers["meter-voucher-sequence"].parse().unwrap();
    sh.tally
        .lock()
        .unwrap()
        .vouchers
        .insert((id.clone(), purchase), (seq, TOPUP));
    m.ledger.credit(seq, TOPUP, &v.body);
    m.ledger.sell(plan.rows, PRICE);
    let (signed, seg) = m.ledger.report(&m.meter);
    let upload = frame_upload(&signed, &[], &seg);
    let a = call(
        sh,
        "report",
        &format!("/v1/meters/{id}/reports"),
        UPLOAD,
        &upload,
        None,
    );
    assert_eq!(
        a.status,
        200,
        "{id} report {r}: {}",
        a.headers
            .get("meter-findings")
            .map(String::as_str)
            .unwrap_or("")
    );
    *sh.tally
        .lock()
        .unwrap()
        .acks
        .entry((id.clone(), r + 1))
        .or_default() += 1;
    m.ledger.acknowledged(&signed);
    let p = payment(&m.meter, &m.line.0, &m.line.1, r + 1, PAYMENT);
    let s = call(
        sh,
        "settle",
        "/v1/settle",
        "application/cms",
        &p,
        Some(CREDITOR),
    );
    assert_eq!(s.status, 200, "{}", String::from_utf8_lossy(&s.body));
    let j: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    sh.tally.lock().unwrap().settled.insert(
        j["serial"].as_str().unwrap().to_owned(),
        j["amount"].as_u64().unwrap(),
    );
}

/// Runs `f` for every meter index on `clients` threads.
pub fn on_clients<T: Send>(n: usize, clients: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let v = f(i);
                out.lock().unwrap().push((i, v));
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|x| x.1).collect()
}

/// The load phase: every meter does `plan.rounds` rounds; meters are
/// taken by the clients in turn, round by round. With more than one round,
/// `before_last` runs before the last one (it waits for the real meter, so
/// that its flow runs beside the load); the time it takes is not the load's.
pub fn load(
    sh: &Arc<Shared>,
    plan: &Plan,
    meters: Vec<SimMeter>,
    before_last: &(dyn Fn() + Sync),
) -> Duration {
    let meters: Vec<Mutex<SimMeter>> = meters.into_iter().map(Mutex::new).collect();
    let t = Instant::now();
    let mut waited = Duration::ZERO;
    for r in 0..plan.rounds {
        if r > 0 && r + 1 == plan.rounds {
            let w = Instant::now();
            before_last();
            waited += w.elapsed();
        }
        on_clients(meters.len(), plan.clients, |i| {
            let mut m = meters[i].lock().unwrap();
            round(sh, plan, &mut m, r);
        });
    }
    t.elapsed() - waited
}

pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}
