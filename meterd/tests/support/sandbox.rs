//! End-to-end test harness: a whole sandbox (swtpm, private dbus-daemon with
//! the shipped policy, meterd, reference authority) per test, started and
//! stopped by the same `tests/sandbox` script the demo uses.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Root of the repository.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Directory of the built binaries (the profile the tests were built with).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meterd"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

/// A running sandbox; taken down on drop.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
}

impl Sandbox {
    /// Brings a sandbox up (provisioned, rates installed, funded with `funds`).
    pub fn up(funds: u64) -> Sandbox {
        Sandbox::up_with(&[("SANDBOX_FUNDS", &funds.to_string())])
    }

    /// Brings a sandbox up with extra environment for the script.
    pub fn up_with(extra: &[(&str, &str)]) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("meterd-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("tests/sandbox"))
            .arg("up")
            .arg(dir.path())
            .env("METERD_BIN_DIR", bin_dir());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run tests/sandbox up");
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.path().join("meterd.log")).unwrap_or_default();
            let _ = Command::new("bash")
                .arg(repo().join("tests/sandbox"))
                .arg("down")
                .arg(dir.path())
                .status();
            panic!(
                "sandbox up failed:\n{}\n{}\nmeterd.log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut env = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("export ") {
                if let Some((k, v)) = rest.split_once('=').filter(|(k, _)| *k != "PATH") {
                    let v = v.trim_matches('\'').trim_matches('"');
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        assert!(
            env.contains_key("DBUS_SYSTEM_BUS_ADDRESS"),
            "sandbox printed no bus address"
        );
        Sandbox { dir, env }
    }

    /// Path under the sandbox directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The authority directory.
    pub fn authority_dir(&self) -> PathBuf {
        PathBuf::from(&self.env["METER_AUTHORITY_DIR"])
    }

    /// Root certificate path.
    pub fn root_pem(&self) -> PathBuf {
        self.authority_dir().join("root.pem")
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(&self.env);
        cmd
    }

    /// Runs meterctl with the sandbox environment.
    pub fn meterctl(&self, args: &[&str]) -> Output {
        self.command(bin_dir().join("meterctl"))
            .args(args)
            .output()
            .expect("run meterctl")
    }

    /// Runs `meterctl --json ARGS`, asserting success, and parses stdout.
    pub fn meterctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.meterctl(&all);
        assert!(
            out.status.success(),
            "meterctl {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("meterctl --json prints JSON")
    }

    /// Runs meter-authority with the sandbox environment, asserting success.
    pub fn authority(&self, args: &[&str]) -> Output {
        let out = self
            .command(bin_dir().join("meter-authority"))
            .args(args)
            .output()
            .expect("run meter-authority");
        assert!(
            out.status.success(),
            "meter-authority {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs any program with the sandbox environment.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().expect(program)
    }

    /// `meterctl --json status`.
    pub fn status(&self) -> serde_json::Value {
        self.meterctl_json(&["status"])
    }

    /// The registers (ascending, descending, control total), asserting AR + DR = CT.
    pub fn registers(&self) -> (u64, u64, u64) {
        let s = self.status();
        let ar = s["ascending"].as_u64().expect("ascending");
        let dr = s["descending"].as_u64().expect("descending");
        let ct = s["control_total"].as_u64().expect("control_total");
        assert_eq!(ar + dr, ct, "AR + DR must equal the control total: {s}");
        (ar, dr, ct)
    }

    /// (AR, DR, CT, ledger rows): what a refused call must leave as it was.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let (ar, dr, ct) = self.registers();
        let rows = self.status()["ledger_rows"].as_u64().expect("ledger_rows");
        (ar, dr, ct, rows)
    }

    /// A file in the sandbox's directory, as a command-line argument.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// `meterctl report -o NAME.pem --request-id NAME`: its JSON answer (segment and
    /// attestation paths, sizes).
    pub fn report_as(&self, name: &str) -> serde_json::Value {
        let p = self.arg(&format!("{name}.pem"));
        self.meterctl_json(&["report", "-o", &p, "--request-id", name])
    }

    /// `meter-authority inspect REPORT --segment SEGMENT --out ACK` (ACK a file in the
    /// sandbox), not asserting success: exit 3 is a refusal the tests read.
    pub fn inspect(&self, report: &str, segment: &str, ack: &str) -> Output {
        self.run(
            &bin_dir().join("meter-authority").to_string_lossy(),
            &[
                "inspect",
                report,
                "--segment",
                segment,
                "--out",
                &self.arg(ack),
            ],
        )
    }

    /// `meter-authority lookup OBJECT`: its exit code and what it said (stdout + stderr).
    pub fn lookup(&self, object: &str) -> (Option<i32>, String) {
        let out = self.run(
            &bin_dir().join("meter-authority").to_string_lossy(),
            &["lookup", object],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Meter id.
    pub fn meter_id(&self) -> String {
        self.status()["meter_id"]
            .as_str()
            .expect("meter_id")
            .to_owned()
    }

    /// How many background audits meterd has finished in this sandbox
    /// (its log line "background audit done", `Meter::audit_history`).
    pub fn audits_done(&self) -> usize {
        std::fs::read_to_string(self.path("meterd.log"))
            .unwrap_or_default()
            .matches("background audit done")
            .count()
    }

    /// `start-meterd`, then waits for the background audit of that start
    /// (the rows before the signed checkpoint are checked after READY;
    /// damage there locks the meter then).
    pub fn start_meterd_audited(&self) {
        let before = self.audits_done();
        self.script("start-meterd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while self.audits_done() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "meterd did not finish its background audit"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Runs a sandbox sub-command (`restart-meterd`, `restart-tpm`, `stop-meterd`, `start-meterd`).
    pub fn script(&self, verb: &str) {
        let out = Command::new("bash")
            .arg(repo().join("tests/sandbox"))
            .arg(verb)
            .arg(self.dir.path())
            .env("METERD_BIN_DIR", bin_dir())
            .output()
            .expect("run tests/sandbox");
        assert!(
            out.status.success(),
            "tests/sandbox {verb} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Sandbox {
    /// `meterctl postmark` of a fresh file `ID.txt` into `ID.tsr` with request id ID;
    /// returns (message path, token path, meterctl's output).
    pub fn postmark_id(&self, id: &str) -> (String, String, Output) {
        let msg = write(self, &format!("{id}.txt"), id.as_bytes());
        let t = self
            .path(&format!("{id}.tsr"))
            .to_string_lossy()
            .into_owned();
        let out = self.meterctl(&["postmark", &msg, "-o", &t, "--request-id", id]);
        (msg, t, out)
    }

    /// `meterctl postage` arguments for a letter of `grams` from 10115 to
    /// SW1A 1AA with request id `id`, its indicium written to `ID.ind` in
    /// the sandbox.
    pub fn letter_args(&self, id: &str, grams: &str) -> Vec<String> {
        let out = self.arg(&format!("{id}.ind"));
        [
            "postage",
            "--class",
            "letter",
            "--grams",
            grams,
            "--from",
            "10115",
            "--to",
            "SW1A 1AA",
            "--request-id",
            id,
            "-o",
            &out,
        ]
        .map(String::from)
        .to_vec()
    }

    /// An authority clear-lock order for the lock in force (its nonce from Status).
    pub fn clear_lock_order(&self) -> String {
        let nonce = self.status()["lock_nonce"]
            .as_str()
            .expect("lock_nonce")
            .to_owned();
        let order = self.path("order.pem").to_string_lossy().into_owned();
        let meter = self.meter_id();
        self.authority(&[
            "clear-lock",
            "--meter",
            &meter,
            "--nonce",
            &nonce,
            "--out",
            &order,
        ]);
        order
    }

    /// `openssl cms -verify` of a PEM CMS file (a report, an order, an acknowledgement)
    /// against the sandbox's root, any purpose: its content parsed as JSON. Stock
    /// OpenSSL is the relying party, so a failure names what OpenSSL said.
    pub fn cms_json(&self, pem: &str, what: &str) -> serde_json::Value {
        let root = self.root_pem().to_string_lossy().into_owned();
        let out = self.run(
            "openssl",
            &[
                "cms", "-verify", "-in", pem, "-inform", "PEM", "-CAfile", &root, "-purpose", "any",
            ],
        );
        let body = ok(&out, &format!("openssl cms -verify of {what}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"))
    }

    /// Asserts that the live interface `name` at `path` (busctl introspect) is the one
    /// shipped in `dbus/<name>.xml`, whitespace aside.
    pub fn assert_interface_is_shipped(&self, name: &str, path: &str) {
        let address = format!("--address={}", self.env["DBUS_SYSTEM_BUS_ADDRESS"]);
        let live = ok(
            &self.run(
                "busctl",
                &[&address, "--xml-interface", "introspect", name, path],
            ),
            "busctl introspect",
        );
        let file = format!("dbus/{name}.xml");
        let shipped = std::fs::read_to_string(repo().join(&file)).expect(&file);
        let open = format!("<interface name=\"{name}\">");
        let iface = |xml: &str| -> String {
            let start = xml.find(&open).expect("interface");
            let end =
                start + xml[start..].find("</interface>").expect("end") + "</interface>".len();
            xml[start..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(iface(&live), iface(&shipped), "regenerate {file}");
    }

    /// `openssl ts -verify` of a token over a file against a CA file.
    pub fn ts_verify(&self, data: &str, token: &str, ca: &str) -> Output {
        self.run(
            "openssl",
            &[
                "ts",
                "-verify",
                "-data",
                data,
                "-in",
                token,
                "-token_in",
                "-CAfile",
                ca,
            ],
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/sandbox"))
            .arg("down")
            .arg(self.dir.path())
            .output();
    }
}

/// Asserts a command succeeded, showing its output otherwise.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a file under the sandbox and returns its path as a string.
pub fn write(sb: &Sandbox, name: &str, data: &[u8]) -> String {
    let p = sb.path(name);
    std::fs::write(&p, data).expect("write file");
    p.to_string_lossy().into_owned()
}

impl Sandbox {
    /// Signs a lock order (reason `audit`) for this meter with the sandbox's
    /// authority, as `NAME`; returns its path.
    pub fn lock_order(&self, name: &str) -> String {
        let order = self.path(name).to_string_lossy().into_owned();
        self.authority(&[
            "lock",
            "--meter",
            &self.meter_id(),
            "--reason",
            "audit",
            "--out",
            &order,
        ]);
        order
    }

    /// Signs the rate table `toml` with the sandbox's authority (as `NAME.pem`) and
    /// installs it with meterctl, asserting both; returns the signed table's path.
    pub fn install_rates(&self, name: &str, toml: &str) -> String {
        let src = write(self, &format!("{name}.toml"), toml.as_bytes());
        let signed = self
            .path(&format!("{name}.pem"))
            .to_string_lossy()
            .into_owned();
        self.authority(&["rates", "--in", &src, "--out", &signed]);
        ok(
            &self.meterctl(&["rates", "install", &signed]),
            "rates install",
        );
        signed
    }

    /// Enrols `CN=cn` at the authority and requests a certificate for it
    /// (`meterctl cert request`, plus `extra`, e.g. `--purpose encrypt` or
    /// `--request-id ID`); returns the request file (`CN.req`).
    pub fn request_cert(&self, cn: &str, extra: &[&str]) -> String {
        let subject = format!("CN={cn}");
        let out = self.authority(&["enrol", "--subject", &subject]);
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let req = self.arg(&format!("{cn}.req"));
        let mut args = vec![
            "cert",
            "request",
            "--subject",
            &subject,
            "--code",
            &code,
            "-o",
            &req,
        ];
        args.extend_from_slice(extra);
        self.meterctl_json(&args);
        req
    }

    /// The authority certifies the request file `req` into `CN.pem`; returns
    /// (certificate file, serial).
    pub fn certify(&self, cn: &str, req: &str) -> (String, String) {
        let cert = self.arg(&format!("{cn}.pem"));
        let out = self.authority(&["certify", req, "--out", &cert]);
        let serial = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (cert, serial)
    }

    /// [`Self::request_cert`], [`Self::certify`], then `meterctl cert install`,
    /// whose serial must be the authority's; returns (certificate file, serial).
    pub fn enrol_and_install(&self, cn: &str, extra: &[&str]) -> (String, String) {
        let req = self.request_cert(cn, extra);
        let (cert, serial) = self.certify(cn, &req);
        let installed = self.meterctl_json(&["cert", "install", &cert]);
        assert_eq!(installed["serial"], serial.as_str(), "{installed}");
        (cert, serial)
    }

    /// Runs a sandbox sub-command with extra environment for it and the
    /// daemon it starts (e.g. `restart-meterd` with `METERD_TEST_CLOCK_OFFSET`).
    pub fn script_env(&self, verb: &str, env: &[(&str, &str)]) {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("tests/sandbox"))
            .arg(verb)
            .arg(self.dir.path())
            .env("METERD_BIN_DIR", bin_dir());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run tests/sandbox");
        assert!(
            out.status.success(),
            "tests/sandbox {verb} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Sandbox {
    /// The time-stamp endpoint's URL with the demo client's credentials
    /// (`METERD_TSA_URL`), and the same without them.
    pub fn tsa_urls(&self) -> (String, String) {
        let with = self
            .env
            .get("METERD_TSA_URL")
            .expect("the sandbox printed no METERD_TSA_URL (meter-tsa built?)")
            .clone();
        let without = with.replacen("user:secret@", "", 1);
        (with, without)
    }
}

/// A signed-table body (version 2, EUR, 3 digits) with postage bands, for
/// [`Sandbox::install_rates`]: a postmark 500, a validation 100; a letter
/// up to 20 g 950, up to 100 g 1550; a parcel up to 2 kg 4990, up to 10 kg
/// 9990.
pub const POSTAGE_RATES: &str = r#"
version = 2
effective = "2026-01-01T00:00:00Z"
currency = "EUR"
digits = 3
[rates]
postmark = 500
validate = 100
postage = 0
[[postage]]
class = "letter"
max_grams = 20
amount = 950
[[postage]]
class = "letter"
max_grams = 100
amount = 1550
[[postage]]
class = "parcel"
max_grams = 2000
amount = 4990
[[postage]]
class = "parcel"
max_grams = 10000
amount = 9990
"#;
