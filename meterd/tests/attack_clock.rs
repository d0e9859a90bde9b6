//! Attacks on the meter's clock (issue 11, holes 4 and 5), made the way a
//! root attacker makes them: meterd's wall clock is moved while it runs.
//!
//! meterd runs under libfaketime (Debian package `faketime`), preloaded into
//! meterd alone (`SANDBOX_METERD_PRELOAD`), reading its offset from a file on
//! every call (`FAKETIME_TIMESTAMP_FILE`, `FAKETIME_NO_CACHE=1`), so the test
//! steps and walks the wall clock between two calls; the monotonic clocks are
//! left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as an operator with
//! `date -s` leaves them. swtpm, the bus and the authority keep real time.
//!
//! The watchdog interval is made short (`METERD_CHECK_INTERVAL_MS`) so that
//! no test waits 10 s for a check; a meter that ignores the variable checks
//! every 10 s, which only gives the attacks more room.
//!
//! Validate is attacked with tokens from a time-stamping certificate issued
//! under the sandbox authority's root with stock OpenSSL, and signed by
//! `openssl ts -reply` under libfaketime: one dated two days ahead, one dated
//! before its certificate's notBefore.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};
use serde_json::Value;

/// Watchdog interval the tests ask for, ms.
const INTERVAL_MS: u64 = 200;

/// libfaketime from the Debian package `faketime` (any architecture).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("libfaketime not found: install the Debian package faketime (tests/packages)")
    })
}

/// The offset file libfaketime reads on every clock call.
struct FakeClock {
    dir: tempfile::TempDir,
}

impl FakeClock {
    fn new() -> FakeClock {
        let dir = tempfile::Builder::new()
            .prefix("meterd-faketime-")
            .tempdir()
            .expect("tempdir");
        let c = FakeClock { dir };
        c.set("+0");
        c
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    /// Sets meterd's wall clock to real time plus `offset` (libfaketime
    /// syntax: `-300d`, `-280`, `-0.6`), atomically.
    fn set(&self, offset: &str) {
        let tmp = self.dir.path().join("offset.tmp");
        std::fs::write(&tmp, format!("{offset}\n")).expect("write offset");
        std::fs::rename(&tmp, self.file()).expect("rename offset");
    }

    /// A sandbox whose meterd runs under this clock, its watchdog checking
    /// every [`INTERVAL_MS`] (`short`) or every 10 s (the default).
    fn sandbox(&self, short: bool) -> Sandbox {
        let lib = libfaketime();
        let file = self.file();
        let interval = if short { INTERVAL_MS } else { 10_000 }.to_string();
        Sandbox::up_with(&[
            ("SANDBOX_FUNDS", "100000"),
            ("SANDBOX_METERD_PRELOAD", &lib.to_string_lossy()),
            ("FAKETIME_TIMESTAMP_FILE", &file.to_string_lossy()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("METERD_CHECK_INTERVAL_MS", &interval),
        ])
    }
}

fn state(sb: &Sandbox) -> (String, String) {
    let s = sb.status();
    (
        s["state"].as_str().unwrap_or_default().to_owned(),
        s["lock_reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn root(sb: &Sandbox) -> meter_pki::cert::Certificate {
    meter_pki::cert::parse(&std::fs::read(sb.root_pem()).unwrap()).unwrap()
}

/// genTime of a token (verified against the sandbox root at real time).
fn gen_time(sb: &Sandbox, token: &str) -> i64 {
    let der = std::fs::read(token).expect("token file");
    meter_pki::tsp::verify(&der, &[root(sb)], unix())
        .expect("token verifies")
        .gen_time
}

/// notBefore of the meter's postmark certificate.
fn postmark_not_before(sb: &Sandbox) -> i64 {
    let pem = std::fs::read(sb.path("certs/postmark.pem")).expect("postmark.pem");
    meter_pki::cert::not_before(&meter_pki::cert::parse(&pem).unwrap())
}

/// `meterctl --json validate MSG TOKEN` (exit 0 valid, 12 not valid).
fn validate(sb: &Sandbox, msg: &str, token: &str) -> Value {
    let out = sb.meterctl(&["--json", "validate", msg, token]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(exit::NOT_VALID)),
        "meterctl validate failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("validate prints JSON")
}

/// Row times of the ledger, in row order, read with sqlite3 as root would.
fn row_times(sb: &Sandbox) -> Vec<i64> {
    let db = sb.path("state/ledger.sqlite");
    let out = sb.run(
        "sqlite3",
        &[
            "-readonly",
            &db.to_string_lossy(),
            "SELECT time FROM journal ORDER BY seq",
        ],
    );
    ok(&out, "sqlite3 journal times")
        .lines()
        .map(|l| l.trim().parse().expect("row time"))
        .collect()
}

/// Asserts no ledger row is dated before an earlier one.
fn assert_rows_in_time_order(sb: &Sandbox) {
    let times = row_times(sb);
    for w in times.windows(2) {
        assert!(
            w[1] >= w[0],
            "a ledger row is dated {} ms before the row before it: {times:?}",
            w[0] - w[1]
        );
    }
}

/// Polls Status until `want` or the deadline; returns the last (state, reason).
fn wait_for(sb: &Sandbox, want: (&str, &str), within: Duration) -> (String, String) {
    let start = Instant::now();
    loop {
        let s = state(sb);
        if (s.0.as_str(), s.1.as_str()) == want || start.elapsed() > within {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ticks(n: u64) {
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * n));
}

/// Hole 4: root sets the clock back 300 days between two checks,
/// postmarks, and sets it right again. The watchdog checks every 10 s here:
/// the sale itself must catch it.
#[test]
fn clock_stepped_back_300_days_between_checks_is_caught_at_the_next_sale() {
    let clock = FakeClock::new();
    let sb = clock.sandbox(false);
    let (_, first, out) = sb.postmark_id("before");
    ok(&out, "postmark before the step");
    let first_time = gen_time(&sb, &first);

    clock.set("-300d");
    let (msg, token, out) = sb.postmark_id("backdated");
    clock.set("+0");

    if out.status.success() {
        let t = gen_time(&sb, &token);
        let nb = postmark_not_before(&sb);
        let openssl = sb.ts_verify(&msg, &token, &sb.root_pem().to_string_lossy());
        ticks(5);
        let report = validate(&sb, &msg, &token);
        panic!(
            "a postmark made with the clock set back 300 days was sold: genTime {t} is {} days \
             before the previous token ({first_time}) and {} days before the postmark \
             certificate's notBefore ({nb}); openssl ts -verify: {}; Validate: {report}; \
             meter after the clock was set right: {:?}",
            (first_time - t) / 86_400,
            (nb - t) / 86_400,
            if openssl.status.success() {
                "Verification: OK"
            } else {
                "refused"
            },
            state(&sb)
        );
    }
    assert_eq!(
        out.status.code(),
        Some(exit::LOCKED),
        "the sale must be refused as locked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(&sb), ("locked".into(), "clock".into()));
    // Setting the clock right again does not unlock it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(state(&sb), ("locked".into(), "clock".into()));
    assert_eq!(sb.postmark_id("after").2.status.code(), Some(exit::LOCKED));
    assert_rows_in_time_order(&sb);
}

/// Hole 4: root walks the clock back 280 s before each check (each step
/// under the old 300-s tolerance against the previous check).
#[test]
fn clock_walked_back_280_s_per_check_is_caught_at_the_next_sale() {
    let clock = FakeClock::new();
    let sb = clock.sandbox(true);
    let (_, first, out) = sb.postmark_id("walk0");
    ok(&out, "postmark before the walk");
    let mut sold = vec![gen_time(&sb, &first)];
    for step in 1..=5 {
        clock.set(&format!("-{}", 280 * step));
        // Let the watchdog check once or more at the new time.
        ticks(3);
        let (_, token, out) = sb.postmark_id(&format!("walk{step}"));
        if out.status.success() {
            sold.push(gen_time(&sb, &token));
            continue;
        }
        assert_eq!(
            (step, out.status.code()),
            (1, Some(exit::LOCKED)),
            "the walk must be caught at the first sale after the first step; tokens sold: {sold:?}; {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(state(&sb), ("locked".into(), "clock".into()));
        assert_rows_in_time_order(&sb);
        return;
    }
    panic!(
        "walked the clock back 5 × 280 s = {} min: every sale was sold, tokens dated {sold:?} \
         (the last {} s before the first); meter state {:?}",
        280 * 5 / 60,
        sold[0] - sold[sold.len() - 1],
        state(&sb)
    );
}

/// Hole 4: a walk in steps too small for one check to see (0.6 s per
/// second) adds up against the anchor, and the watchdog locks alone.
#[test]
fn clock_walked_back_in_small_steps_adds_up_and_locks() {
    let clock = FakeClock::new();
    let sb = clock.sandbox(true);
    ok(&sb.postmark_id("small0").2, "postmark before the walk");
    let mut offset_ms = 0;
    for _ in 0..8 {
        offset_ms -= 600;
        clock.set(&format!("{:.1}", offset_ms as f64 / 1000.0));
        std::thread::sleep(Duration::from_millis(1000));
    }
    let s = wait_for(&sb, ("locked", "clock"), Duration::from_secs(2));
    assert_eq!(
        s,
        ("locked".into(), "clock".into()),
        "the clock was walked back {} ms in steps of 600 ms a second and the meter did not lock",
        -offset_ms
    );
    assert_eq!(sb.postmark_id("small1").2.status.code(), Some(exit::LOCKED));
    assert_rows_in_time_order(&sb);
}

/// A time-stamping authority certified under the sandbox root with stock
/// OpenSSL, answering `openssl ts` queries at a shifted time.
struct RogueTsa {
    dir: PathBuf,
}

impl RogueTsa {
    fn new(sb: &Sandbox) -> RogueTsa {
        let dir = sb.path("rogue-tsa");
        std::fs::create_dir_all(&dir).unwrap();
        let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let a = sb.authority_dir();
        let (root_pem, root_key) = (
            a.join("root.pem").to_string_lossy().into_owned(),
            a.join("root.key").to_string_lossy().into_owned(),
        );
        std::fs::write(
            p("ext.cnf"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=critical,timeStamping\nsubjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n",
        )
        .unwrap();
        let openssl = |args: &[&str]| ok(&sb.run("openssl", args), &format!("openssl {args:?}"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            &p("tsa.key"),
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            &p("tsa.key"),
            "-subj",
            "/CN=Rogue TSA",
            "-out",
            &p("tsa.csr"),
        ]);
        // Valid from now for 30 days.
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("tsa.csr"),
            "-CA",
            &root_pem,
            "-CAkey",
            &root_key,
            "-set_serial",
            "4242",
            "-days",
            "30",
            "-sha384",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("tsa.pem"),
        ]);
        std::fs::write(p("serial"), "01\n").unwrap();
        std::fs::write(
            p("tsa.cnf"),
            format!(
                "[ tsa ]\ndefault_tsa = tsa1\n[ tsa1 ]\nserial = {}\ncrypto_device = builtin\n\
                 signer_cert = {}\nsigner_key = {}\nsigner_digest = sha384\n\
                 default_policy = 1.3.6.1.4.1.99999.1\ndigests = sha384\naccuracy = secs:1\n\
                 ordering = no\ntsa_name = yes\ness_cert_id_chain = no\ness_cert_id_alg = sha384\n",
                p("serial"),
                p("tsa.pem"),
                p("tsa.key")
            ),
        )
        .unwrap();
        RogueTsa { dir }
    }

    /// A token over `msg` signed with the TSA's clock at `offset` (libfaketime syntax).
    fn token(&self, sb: &Sandbox, msg: &str, offset: &str, name: &str) -> String {
        let p = |n: &str| self.dir.join(n).to_string_lossy().into_owned();
        let q = p(&format!("{name}.tsq"));
        let t = p(&format!("{name}.tsr"));
        ok(
            &sb.run(
                "openssl",
                &[
                    "ts",
                    "-query",
                    "-data",
                    msg,
                    "-sha384",
                    "-no_nonce",
                    "-cert",
                    "-out",
                    &q,
                ],
            ),
            "openssl ts -query",
        );
        let out = std::process::Command::new("openssl")
            .args([
                "ts",
                "-reply",
                "-config",
                &p("tsa.cnf"),
                "-queryfile",
                &q,
                "-token_out",
                "-out",
                &t,
            ])
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", offset)
            .output()
            .expect("openssl ts -reply");
        ok(&out, "openssl ts -reply under libfaketime");
        t
    }
}

/// Hole 5: Validate never looked at genTime. A token dated two days ahead,
/// and one dated before its signer certificate's notBefore, must fail at
/// step `time`.
#[test]
fn validate_reports_time_for_future_tokens_and_tokens_older_than_their_signer() {
    let sb = Sandbox::up(100_000);
    let tsa = RogueTsa::new(&sb);
    let msg = write(&sb, "letter.txt", b"a letter");

    let now = unix();
    let future = tsa.token(&sb, &msg, "+2d", "future");
    assert!(
        gen_time(&sb, &future) > now + 86_400,
        "the token is future-dated"
    );
    let early = tsa.token(&sb, &msg, "-2d", "early");
    let nb = meter_pki::cert::not_before(
        &meter_pki::cert::parse(&std::fs::read(tsa.dir.join("tsa.pem")).unwrap()).unwrap(),
    );
    assert!(
        gen_time(&sb, &early) < nb,
        "the token predates its certificate"
    );
    // A token at the right time from the same TSA is valid: only time differs.
    let fine = tsa.token(&sb, &msg, "+0", "fine");
    let r = validate(&sb, &msg, &fine);
    assert_eq!(r["valid"], true, "a token dated now is valid: {r}");

    let mut wrong = Vec::new();
    for (what, token) in [
        ("dated two days in the future", &future),
        (
            "dated two days before its signer certificate's notBefore",
            &early,
        ),
    ] {
        let r = validate(&sb, &msg, token);
        if r["valid"] != false || r["step"] != "time" {
            wrong.push(format!("a token {what}: Validate says {r}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
