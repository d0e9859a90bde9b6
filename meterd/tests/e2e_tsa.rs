//! End to end through the RFC 3161 HTTP endpoint (meter-tsa) on swtpm,
//! every step made or checked by code we did not write: `openssl ts` builds
//! the queries and verifies the replies, `curl` posts them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use sandbox::{ok, write, Sandbox};

const POLICY: &str = "2.25.252996336.2.1";

/// `curl` POSTs `file` to `url`; returns (HTTP code, content type).
fn post(sb: &Sandbox, url: &str, file: &str, out: &str, content_type: &str) -> (String, String) {
    let o = sb.run(
        "curl",
        &[
            "-sS",
            "-o",
            out,
            "-w",
            "%{http_code} %{content_type}",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            &format!("@{file}"),
            url,
        ],
    );
    // Not `ok`: a server that answers 413 before reading the body may make
    // curl report a broken pipe after it printed the code.
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    let (code, ct) = s.split_once(' ').unwrap_or((&s, ""));
    (code.to_owned(), ct.trim().to_owned())
}

fn query(sb: &Sandbox, msg: &str, alg: &str, name: &str) -> String {
    let q = sb.path(name).to_string_lossy().into_owned();
    ok(
        &sb.run(
            "openssl",
            &["ts", "-query", "-data", msg, alg, "-cert", "-out", &q],
        ),
        "openssl ts -query",
    );
    q
}

fn reply_text(sb: &Sandbox, resp: &str) -> String {
    ok(
        &sb.run("openssl", &["ts", "-reply", "-in", resp, "-text"]),
        "openssl ts -reply -text",
    )
}

/// `openssl ts -verify` of the reply `resp` to the query `q` against the
/// CA file `root`, asserting it verifies.
fn verify_reply(sb: &Sandbox, q: &str, resp: &str, root: &str, what: &str) {
    let args = [
        "ts",
        "-verify",
        "-queryfile",
        q,
        "-in",
        resp,
        "-CAfile",
        root,
    ];
    let v = ok(&sb.run("openssl", &args), what);
    assert!(v.contains("Verification: OK"), "{what}: {v}");
}

fn nonce_of(text: &str) -> String {
    text.lines()
        .find(|l| l.trim_start().starts_with("Nonce:"))
        .unwrap_or_else(|| panic!("no nonce in {text}"))
        .trim()
        .to_owned()
}

#[test]
fn openssl_and_curl_buy_verified_postmarks_charged_once_each() {
    let sb = Sandbox::up(100_000);
    let (url, anon) = sb.tsa_urls();
    let price = sb.status()["rates"]["postmark"].as_u64().expect("rate");
    let root = sb.root_pem().to_string_lossy().into_owned();
    let msg = write(&sb, "doc.txt", b"a document to time-stamp\n");
    let (mut ar, _, _) = sb.registers();

    for (i, alg) in ["-sha256", "-sha384", "-sha512"].iter().enumerate() {
        let q = query(&sb, &msg, alg, &format!("q{i}.tsq"));
        let r = sb.path(&format!("r{i}.tsr")).to_string_lossy().into_owned();
        let target = if i == 1 {
            format!("{url}api/v1/timestamp")
        } else {
            url.clone()
        };
        let (code, ct) = post(&sb, &target, &q, &r, "application/timestamp-query");
        assert_eq!(code, "200", "{alg}");
        assert_eq!(ct, "application/timestamp-reply", "{alg}");
        let text = reply_text(&sb, &r);
        assert!(text.contains("Status: Granted"), "{text}");
        assert!(text.contains(POLICY), "{text}");
        let qtext = ok(
            &sb.run("openssl", &["ts", "-query", "-in", &q, "-text"]),
            "query text",
        );
        assert_eq!(nonce_of(&text), nonce_of(&qtext), "nonce echoed");
        verify_reply(&sb, &q, &r, &root, "openssl ts -verify");
        let (ar1, _, _) = sb.registers();
        assert_eq!(ar1, ar + price, "{alg}: one postmark price");
        ar = ar1;

        // The same request again from the same client: the stored reply, no charge.
        let again = sb
            .path(&format!("again{i}.tsr"))
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            post(&sb, &url, &q, &again, "application/timestamp-query").0,
            "200"
        );
        assert_eq!(std::fs::read(&r).ok(), std::fs::read(&again).ok());
        assert_eq!(sb.registers().0, ar, "{alg}: a retry is not charged");
    }

    // SHA-1: rejected with badAlg, nothing charged.
    let q1 = query(&sb, &msg, "-sha1", "sha1.tsq");
    let r1 = sb.path("sha1.tsr").to_string_lossy().into_owned();
    assert_eq!(
        post(&sb, &url, &q1, &r1, "application/timestamp-query").0,
        "200"
    );
    let text = reply_text(&sb, &r1);
    assert!(text.contains("Status: Rejected"), "{text}");
    assert!(
        text.contains("unrecognized or unsupported algorithm"),
        "badAlg: {text}"
    );
    assert_eq!(sb.registers().0, ar);

    // No credentials, wrong credentials: 401, nothing charged.
    let q = query(&sb, &msg, "-sha256", "noauth.tsq");
    let out = sb.path("noauth.out").to_string_lossy().into_owned();
    assert_eq!(
        post(&sb, &anon, &q, &out, "application/timestamp-query").0,
        "401"
    );
    let wrong = url.replacen("user:secret@", "user:guess@", 1);
    assert_eq!(
        post(&sb, &wrong, &q, &out, "application/timestamp-query").0,
        "401"
    );
    assert_eq!(sb.registers().0, ar);

    // 1 MB: 413; another media type: 415; GET on the POST path: 405.
    let big = write(&sb, "big.bin", &vec![0x30u8; 1 << 20]);
    assert_eq!(
        post(&sb, &url, &big, &out, "application/timestamp-query").0,
        "413"
    );
    assert_eq!(
        post(&sb, &url, &q, &out, "application/octet-stream").0,
        "415"
    );
    let get = ok(
        &sb.run("curl", &["-sS", "-o", &out, "-w", "%{http_code}", &url]),
        "curl GET",
    );
    assert_eq!(get, "405");
    assert_eq!(sb.registers().0, ar);

    // The chain, at sigstore's and uts-server's paths.
    for path in ["api/v1/timestamp/certchain", "ca.pem"] {
        let chain = sb.path("chain.pem").to_string_lossy().into_owned();
        let ct = ok(
            &sb.run(
                "curl",
                &[
                    "-sS",
                    "-o",
                    &chain,
                    "-w",
                    "%{content_type}",
                    &format!("{anon}{path}"),
                ],
            ),
            "curl chain",
        );
        assert_eq!(ct, "application/pem-certificate-chain");
        let pem = std::fs::read_to_string(&chain).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");
    }

    // The same over D-Bus: meterctl postmark --tsq (TimeStamp).
    let q = query(&sb, &msg, "-sha512", "dbus.tsq");
    let r = sb.path("dbus.tsr").to_string_lossy().into_owned();
    ok(
        &sb.meterctl(&["postmark", "--tsq", &q, "-o", &r, "--request-id", "dbus-1"]),
        "meterctl postmark --tsq",
    );
    verify_reply(&sb, &q, &r, &root, "openssl ts -verify (D-Bus)");
    ar += price;
    assert_eq!(sb.registers().0, ar);
    // The same id with another request: Conflict, a D-Bus error.
    let other = query(&sb, &msg, "-sha256", "dbus2.tsq");
    let out2 = sb.meterctl(&[
        "postmark",
        "--tsq",
        &other,
        "-o",
        &r,
        "--request-id",
        "dbus-1",
    ]);
    assert!(!out2.status.success(), "{out2:?}");
    assert_eq!(sb.registers().0, ar);

    // A locked meter: a rejection that says why, nothing charged.
    let order = sb.lock_order("lock.pem");
    ok(&sb.meterctl(&["lock", "apply", &order]), "lock apply");
    let q = query(&sb, &msg, "-sha384", "locked.tsq");
    let r = sb.path("locked.tsr").to_string_lossy().into_owned();
    assert_eq!(
        post(&sb, &url, &q, &r, "application/timestamp-query").0,
        "200"
    );
    let text = reply_text(&sb, &r);
    assert!(text.contains("Status: Rejected"), "{text}");
    assert!(text.contains("locked"), "the reason: {text}");
    assert!(
        text.contains("system failure") || text.contains("systemFailure"),
        "{text}"
    );
    assert_eq!(sb.registers().0, ar);
}

/// The smallest PE32 image osslsigncode signs: headers, one `.text` section
/// holding `ret`.
fn tiny_pe() -> Vec<u8> {
    let mut f = vec![0u8; 0x400];
    let put16 =
        |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    f[0..2].copy_from_slice(b"MZ");
    put32(&mut f, 0x3c, 0x40);
    f[0x40..0x44].copy_from_slice(b"PE\0\0");
    // COFF header.
    put16(&mut f, 0x44, 0x14c);
    put16(&mut f, 0x46, 1);
    put16(&mut f, 0x54, 0xe0);
    put16(&mut f, 0x56, 0x0102);
    // Optional header (PE32).
    let o = 0x58;
    put16(&mut f, o, 0x10b);
    put32(&mut f, o + 4, 0x200); // SizeOfCode
    put32(&mut f, o + 16, 0x1000); // AddressOfEntryPoint
    put32(&mut f, o + 20, 0x1000); // BaseOfCode
    put32(&mut f, o + 28, 0x40_0000); // ImageBase
    put32(&mut f, o + 32, 0x1000); // SectionAlignment
    put32(&mut f, o + 36, 0x200); // FileAlignment
    put16(&mut f, o + 40, 4); // MajorOperatingSystemVersion
    put16(&mut f, o + 48, 4); // MajorSubsystemVersion
    put32(&mut f, o + 56, 0x2000); // SizeOfImage
    put32(&mut f, o + 60, 0x200); // SizeOfHeaders
    put16(&mut f, o + 68, 3); // Subsystem: console
    put32(&mut f, o + 72, 0x10_0000);
    put32(&mut f, o + 76, 0x1000);
    put32(&mut f, o + 80, 0x10_0000);
    put32(&mut f, o + 84, 0x1000);
    put32(&mut f, o + 92, 16); // NumberOfRvaAndSizes
                               // Section header.
    let s = o + 0xe0;
    f[s..s + 5].copy_from_slice(b".text");
    put32(&mut f, s + 8, 0x200);
    put32(&mut f, s + 12, 0x1000);
    put32(&mut f, s + 16, 0x200);
    put32(&mut f, s + 20, 0x200);
    put32(&mut f, s + 36, 0x6000_0020);
    f[0x200] = 0xc3;
    f
}

#[test]
fn osslsigncode_signs_with_the_meter_as_tsa() {
    if sandbox_tool_missing("osslsigncode") {
        panic!("osslsigncode is not installed (Debian package osslsigncode, in tests/packages)");
    }
    let sb = Sandbox::up(100_000);
    // osslsigncode posts with OpenSSL's HTTP client, which sends no
    // credentials from the URL: it needs an endpoint the administrator
    // opened to anonymous loopback clients (`--anonymous-loopback`).
    let port_file = sb.path("anon.port");
    let mut anon = std::process::Command::new(sandbox::bin_dir().join("meter-tsa"))
        .envs(&sb.env)
        .args(["--anonymous-loopback", "--listen", "127.0.0.1:0"])
        .arg("--clients")
        .arg(sb.path("no-clients"))
        .arg("--chain")
        .arg(sb.path("tsa-chain.pem"))
        .arg("--port-file")
        .arg(&port_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(sb.path("anon-tsa.log")).unwrap())
        .spawn()
        .expect("meter-tsa");
    let mut port = String::new();
    for _ in 0..100 {
        port = std::fs::read_to_string(&port_file).unwrap_or_default();
        if !port.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{}/", port.trim());
    let root = sb.root_pem().to_string_lossy().into_owned();
    let (ar0, _, _) = sb.registers();
    let price = sb.status()["rates"]["postmark"].as_u64().expect("rate");
    let p = |n: &str| sb.path(n).to_string_lossy().into_owned();
    ok(
        &sb.run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("code.key"),
                "-out",
                &p("code.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=meterd e2e code signer",
                "-addext",
                "extendedKeyUsage=codeSigning",
            ],
        ),
        "openssl req",
    );
    std::fs::write(p("tiny.exe"), tiny_pe()).unwrap();
    let signed = sb.run(
        "osslsigncode",
        &[
            "sign",
            "-certs",
            &p("code.pem"),
            "-key",
            &p("code.key"),
            "-ts",
            &url,
            "-in",
            &p("tiny.exe"),
            "-out",
            &p("tiny-signed.exe"),
        ],
    );
    ok(&signed, "osslsigncode sign -ts");
    let v = sb.run(
        "osslsigncode",
        &[
            "verify",
            "-in",
            &p("tiny-signed.exe"),
            "-CAfile",
            &p("code.pem"),
            "-TSA-CAfile",
            &root,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let _ = anon.kill();
    let _ = anon.wait();
    assert!(v.status.success(), "osslsigncode verify: {text}");
    assert!(
        text.contains(&sb.meter_id()),
        "the meter names the time-stamp: {text}"
    );
    assert!(
        text.contains("Timestamp Server Signature verification: ok"),
        "{text}"
    );
    assert_eq!(sb.registers().0, ar0 + price, "one postmark");
}

fn sandbox_tool_missing(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
}

/// Python's `rfc3161-client` (PyPI; CI: `pip install rfc3161-client`). Installed
/// here when missing; skipped, loudly, only outside CI when pip cannot reach PyPI.
#[test]
fn python_rfc3161_client_verifies_against_the_root() {
    let has = |sb: &Sandbox| {
        sb.run("python3", &["-c", "import rfc3161_client"])
            .status
            .success()
    };
    let sb = Sandbox::up(100_000);
    if !has(&sb) {
        let pip = sb.run(
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "--break-system-packages",
                "rfc3161-client",
            ],
        );
        if !pip.status.success() || !has(&sb) {
            // CI installs what the tests need: there, a skip would be a test that
            // cannot fail.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: pip could not install rfc3161-client:\n{}",
                String::from_utf8_lossy(&pip.stderr)
            );
            eprintln!(
                "SKIPPED python_rfc3161_client_verifies_against_the_root: pip could not install \
                 rfc3161-client (no network to PyPI?):\n{}",
                String::from_utf8_lossy(&pip.stderr)
            );
            return;
        }
    }
    let (url, _) = sb.tsa_urls();
    let (ar0, _, _) = sb.registers();
    let price = sb.status()["rates"]["postmark"].as_u64().expect("rate");
    let script = sandbox::repo().join("meterd/tests/tsa_rfc3161_client.py");
    let out = ok(
        &sb.run(
            "python3",
            &[
                &script.to_string_lossy(),
                &url,
                &sb.root_pem().to_string_lossy(),
            ],
        ),
        "rfc3161-client",
    );
    assert!(out.starts_with("OK "), "{out}");
    assert_eq!(sb.registers().0, ar0 + price);
}
