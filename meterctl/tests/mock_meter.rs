//! meterctl against a stand-in meter: a mock `org.meterd.Meter1` served on a
//! private dbus-daemon, so that argument passing (file descriptors, bytes),
//! output files, JSON documents and exit codes are checked end to end before
//! the real daemon exists. The mock's answers depend on what it receives, so
//! a meterctl that sent the wrong bytes fails these tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use meter_proto::keys;
use meter_proto::MeterError;
use serde_json::Value as Json;
use zbus::zvariant::{OwnedFd, OwnedValue, Value};

/// What the mock saw, for the tests to check.
#[derive(Default)]
struct Seen {
    provisioning: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    request_ids: Vec<String>,
}

struct MockMeter {
    seen: Arc<Mutex<Seen>>,
    csr: Vec<u8>,
}

fn read_fd(fd: OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    buf
}

fn ov(v: Value<'_>) -> OwnedValue {
    OwnedValue::try_from(v).unwrap()
}

#[zbus::interface(name = "org.meterd.Meter1")]
impl MockMeter {
    fn provision(&self) -> Result<HashMap<String, OwnedValue>, MeterError> {
        Ok(HashMap::from([
            (
                keys::provision::METER_ID.into(),
                ov(Value::from("MTR-MOCK")),
            ),
            (
                keys::provision::IDENTITY_CSR.into(),
                ov(Value::from(self.csr.clone())),
            ),
            (
                keys::provision::POSTMARK_CSR.into(),
                ov(Value::from(self.csr.clone())),
            ),
        ]))
    }

    fn install_provisioning(&self, m: Vec<u8>, p: Vec<u8>, r: Vec<u8>) -> Result<(), MeterError> {
        self.seen.lock().unwrap().provisioning = Some((m, p, r));
        Ok(())
    }

    fn install_rates(&self, table: Vec<u8>) -> Result<(), MeterError> {
        if table == b"old" {
            return Err(MeterError::Stale("version 3 is older than 4".into()));
        }
        Ok(())
    }

    fn recharge(&self, voucher: Vec<u8>) -> Result<u64, MeterError> {
        match voucher.as_slice() {
            b"used" => Err(MeterError::Replay("voucher 7 already credited".into())),
            v => Ok(10_000 + v.len() as u64),
        }
    }

    fn postmark(&self, message: OwnedFd, request_id: String) -> Result<Vec<u8>, MeterError> {
        let body = read_fd(message);
        self.seen.lock().unwrap().request_ids.push(request_id);
        if body == b"broke" {
            return Err(MeterError::InsufficientFunds(
                "0.001 USD left, postmark costs 0.500 USD".into(),
            ));
        }
        Ok([b"tok:".as_slice(), &body].concat())
    }

    fn postmark_digest(&self, sha384: Vec<u8>, request_id: String) -> Result<Vec<u8>, MeterError> {
        self.seen.lock().unwrap().request_ids.push(request_id);
        Ok([b"dig:".as_slice(), &sha384].concat())
    }

    fn validate(
        &self,
        message: OwnedFd,
        token: Vec<u8>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let body = read_fd(message);
        let valid = token == [b"tok:".as_slice(), &body].concat();
        Ok(HashMap::from([
            (keys::report::VALID.into(), OwnedValue::from(valid)),
            (
                keys::report::STEP.into(),
                ov(Value::from(if valid { "ok" } else { "digest" })),
            ),
            (
                keys::report::TIME.into(),
                OwnedValue::from(1_700_000_000i64),
            ),
            (keys::report::METER_ID.into(), ov(Value::from("MTR-MOCK"))),
        ]))
    }

    fn status(&self) -> Result<HashMap<String, OwnedValue>, MeterError> {
        use keys::status as k;
        Ok(HashMap::from([
            (k::METER_ID.into(), ov(Value::from("MTR-MOCK"))),
            (k::STATE.into(), ov(Value::from("locked"))),
            (k::LOCK_REASON.into(), ov(Value::from("rollback"))),
            (k::LOCK_NONCE.into(), ov(Value::from("n-42"))),
            (k::DESCENDING.into(), OwnedValue::from(12_345u64)),
            (k::ASCENDING.into(), OwnedValue::from(655u64)),
            (k::CONTROL_TOTAL.into(), OwnedValue::from(13_000u64)),
            (k::CURRENCY.into(), ov(Value::from("USD"))),
            (k::CURRENCY_DIGITS.into(), OwnedValue::from(3u8)),
            (k::RATES_VERSION.into(), OwnedValue::from(4u32)),
            (
                k::SERVICE_COUNTS.into(),
                ov(Value::from(HashMap::from([("postmark".to_string(), 7u64)]))),
            ),
        ]))
    }

    fn audit(&self) -> Result<HashMap<String, OwnedValue>, MeterError> {
        Ok(HashMap::from([
            (keys::audit::OK.into(), OwnedValue::from(false)),
            (keys::audit::PROBLEM.into(), ov(Value::from("row 3 edited"))),
            (keys::audit::ROWS.into(), OwnedValue::from(9u64)),
        ]))
    }

    fn clear_lock(&self, _order: Vec<u8>) -> Result<(), MeterError> {
        Err(MeterError::Stale("order nonce is not the lock's".into()))
    }

    #[zbus(property)]
    fn meter_id(&self) -> String {
        "MTR-MOCK".into()
    }
    #[zbus(property)]
    fn state(&self) -> String {
        "ready".into()
    }
    #[zbus(property)]
    fn currency_digits(&self) -> u8 {
        3
    }
    #[zbus(property)]
    fn rates_version(&self) -> u32 {
        4
    }
}

/// A private dbus-daemon, killed by pid on drop.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bus.conf");
        let socket = dir.path().join("bus");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>"#,
                socket.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon is installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Bus {
            child,
            address: line.trim().to_string(),
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DER certificate request made by openssl, for the mock's Provision reply.
fn openssl_csr(dir: &Path) -> Vec<u8> {
    let der = dir.join("req.der");
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=MTR-MOCK",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&der)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(der).unwrap()
}

async fn meterctl(bus: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meterctl"));
    cmd.arg("--bus").arg(bus).args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meterctl_against_a_mock_meter() {
    let bus = Bus::start();
    let work = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mock = MockMeter {
        seen: seen.clone(),
        csr: openssl_csr(work.path()),
    };
    let addr = bus.address.clone();

    // No meter on the bus yet: the bus answers ServiceUnknown → exit 11 with the hint.
    let out = meterctl(&addr, &["status"]).await;
    assert_eq!(out.status.code(), Some(11), "{}", s(&out.stderr));
    assert!(
        s(&out.stderr).contains("start meterd"),
        "{}",
        s(&out.stderr)
    );

    let conn = zbus::connection::Builder::address(addr.as_str())
        .unwrap()
        .name(meter_proto::BUS_NAME)
        .unwrap()
        .serve_at(meter_proto::OBJECT_PATH, mock)
        .unwrap()
        .build()
        .await
        .unwrap();

    // provision: PEM requests that openssl accepts and whose signature verifies.
    let out_dir = work.path().join("csr");
    let out = meterctl(
        &addr,
        &["provision", "--out-dir", out_dir.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert!(s(&out.stdout).contains("meter id: MTR-MOCK"));
    for name in ["identity.csr.pem", "postmark.csr.pem"] {
        let st = Command::new("openssl")
            .args(["req", "-noout", "-verify", "-in"])
            .arg(out_dir.join(name))
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl rejects {name}");
    }

    // provision --install passes the three files' bytes as they are.
    let files: Vec<PathBuf> = ["m.pem", "p.der", "r.pem"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = work.path().join(n);
            std::fs::write(&p, format!("content-{i}")).unwrap();
            p
        })
        .collect();
    let f = |i: usize| files[i].to_str().unwrap().to_string();
    let out = meterctl(
        &addr,
        &[
            "provision",
            "--install",
            "--meter-cert",
            &f(0),
            "--postmark-cert",
            &f(1),
            "--root",
            &f(2),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let got = seen.lock().unwrap().provisioning.clone().unwrap();
    assert_eq!(
        got,
        (
            b"content-0".to_vec(),
            b"content-1".to_vec(),
            b"content-2".to_vec()
        )
    );

    // status --json: the dictionary converted; human: the table with the unlock hint.
    let out = meterctl(&addr, &["--json", "status"]).await;
    assert_eq!(out.status.code(), Some(0));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["descending"], 12_345);
    assert_eq!(doc["currency_digits"], 3);
    assert_eq!(doc["service_counts"]["postmark"], 7);
    let out = meterctl(&addr, &["status"]).await;
    let table = s(&out.stdout);
    assert!(table.contains("12.345 USD  (12345 minor units)"), "{table}");
    assert!(
        table.contains("meter-authority clear-lock --meter MTR-MOCK --nonce n-42"),
        "{table}"
    );

    // postmark: the message goes by descriptor; token written to FILE.tsr.
    let mail = work.path().join("mail.eml");
    std::fs::write(&mail, b"Dear Sir").unwrap();
    let out = meterctl(
        &addr,
        &[
            "--json",
            "postmark",
            mail.to_str().unwrap(),
            "--request-id",
            "r-1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let tsr = work.path().join("mail.eml.tsr");
    assert_eq!(std::fs::read(&tsr).unwrap(), b"tok:Dear Sir");
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["request_id"], "r-1");
    assert_eq!(doc["bytes"], 12);
    assert_eq!(doc["token_file"], tsr.to_str().unwrap());
    assert_eq!(seen.lock().unwrap().request_ids, vec!["r-1".to_string()]);

    // postmark --digest sends the 48 bytes.
    let tok = work.path().join("d.tsr");
    let hex = "5a".repeat(48);
    let out = meterctl(
        &addr,
        &["postmark", "--digest", &hex, "-o", tok.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert_eq!(
        std::fs::read(&tok).unwrap(),
        [b"dig:".as_slice(), &[0x5a; 48]].concat()
    );
    let generated = seen.lock().unwrap().request_ids[1].clone();
    assert!(s(&out.stderr).contains(&format!("request id: {generated}")));

    // A meter error: insufficient funds → exit 4, `error: Kind: message`, no token.
    let broke = work.path().join("broke");
    std::fs::write(&broke, b"broke").unwrap();
    let out = meterctl(&addr, &["postmark", broke.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        s(&out.stderr).contains("error: InsufficientFunds: 0.001 USD left"),
        "{}",
        s(&out.stderr)
    );
    assert!(!work.path().join("broke.tsr").exists());

    // validate: good token → 0, tampered message → 12 with the failed step.
    let out = meterctl(
        &addr,
        &["validate", mail.to_str().unwrap(), tsr.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stdout));
    assert!(s(&out.stdout).contains("2023-11-14T22:13:20Z"));
    std::fs::write(&mail, b"Dear Madam").unwrap();
    let out = meterctl(
        &addr,
        &[
            "--json",
            "validate",
            mail.to_str().unwrap(),
            tsr.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(12));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["step"], "digest");

    // recharge: new register; replay → exit 7 and a JSON error on stdout.
    let voucher = work.path().join("v.cms");
    std::fs::write(&voucher, b"12345").unwrap();
    let out = meterctl(&addr, &["recharge", voucher.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        s(&out.stdout).contains("10.005 (10005 minor units)"),
        "{}",
        s(&out.stdout)
    );
    std::fs::write(&voucher, b"used").unwrap();
    let out = meterctl(&addr, &["--json", "recharge", voucher.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(7));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "Replay");
    assert_eq!(doc["error"]["message"], "voucher 7 already credited");

    // rates, audit, clear-lock.
    let table = work.path().join("rates.cms");
    std::fs::write(&table, b"new").unwrap();
    let out = meterctl(&addr, &["rates", "install", table.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(s(&out.stdout).contains("version 4"));
    std::fs::write(&table, b"old").unwrap();
    let out = meterctl(&addr, &["rates", "install", table.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(7));
    let out = meterctl(&addr, &["audit"]).await;
    assert_eq!(out.status.code(), Some(12));
    assert!(s(&out.stdout).contains("row 3 edited"));
    let out = meterctl(&addr, &["clear-lock", table.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(7));
    assert!(s(&out.stderr).starts_with("error: Stale: "));

    // watch: signals printed as JSON lines once it says it is watching; SIGINT stops it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterctl"))
        .args(["--bus", &addr, "--json", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(ready.starts_with("watching"), "{ready}");
    let path = meter_proto::OBJECT_PATH;
    let iface = meter_proto::INTERFACE;
    let changed: HashMap<&str, Value<'_>> = HashMap::from([("Descending", Value::from(41u64))]);
    let no_invalidated: Vec<&str> = Vec::new();
    for round in 0..3u64 {
        conn.emit_signal(None::<()>, path, iface, "LowFunds", &(round,))
            .await
            .unwrap();
        conn.emit_signal(None::<()>, path, iface, "Locked", &("tamper",))
            .await
            .unwrap();
        conn.emit_signal(
            None::<()>,
            path,
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            &(iface, &changed, &no_invalidated),
        )
        .await
        .unwrap();
        conn.emit_signal(None::<()>, path, iface, "Unlocked", &())
            .await
            .unwrap();
    }
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for _ in 0..12 {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            lines.push(serde_json::from_str::<Json>(&line).unwrap());
        }
        lines
    })
    .await
    .unwrap();
    // Printed in the order the bus delivered them, across the four subscriptions.
    for (round, chunk) in lines.chunks(4).enumerate() {
        let kinds: Vec<&str> = chunk.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["LowFunds", "Locked", "PropertiesChanged", "Unlocked"]
        );
        assert_eq!(chunk[0]["descending"], round as u64);
        assert_eq!(chunk[1]["reason"], "tamper");
        assert_eq!(chunk[2]["changed"]["Descending"], 41);
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
