//! A throwaway swtpm for integration tests.
//!
//! Each [`Swtpm`] runs its own `swtpm socket` process on a free port pair
//! with a fresh state directory, so tests run in parallel without sharing a
//! TPM. [`Swtpm::restart`] kills it with SIGKILL and starts it again on the
//! same state and port: a TPM reset as after a power cut. Reuse it from any
//! integration test with:
//!
//! ```ignore
//! #[path = "support/swtpm.rs"]
//! mod swtpm;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or deliberately stopped) swtpm.
pub struct Swtpm {
    /// TPM command port; the control port is `port + 1`.
    pub port: u16,
    /// State directory (deleted on drop).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Swtpm {
    /// Starts a fresh swtpm; panics if it does not come up within 10 s.
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().expect("swtpm state dir");
        for _ in 0..20 {
            let port = free_port_pair();
            if let Some(child) = spawn(dir.path(), port) {
                return Swtpm {
                    port,
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!("could not start swtpm on a free port");
    }

    /// Starts a fresh swtpm manufactured with an RSA EK certificate (and a platform
    /// certificate) signed by swtpm's local CA, whose files are in [`Swtpm::ek_ca_dir`].
    pub fn start_with_ek() -> Swtpm {
        let dir = tempfile::tempdir().expect("swtpm state dir");
        manufacture(dir.path());
        for _ in 0..20 {
            let port = free_port_pair();
            if let Some(child) = spawn(dir.path(), port) {
                return Swtpm {
                    port,
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!("could not start swtpm on a free port");
    }

    /// swtpm's local CA of a [`Swtpm::start_with_ek`] TPM: `issuercert.pem` signed the
    /// EK certificate, `swtpm-localca-rootca-cert.pem` signed it.
    pub fn ek_ca_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("ekca")
    }

    /// The TCTI string for [`meterd::housing::tpm::TpmHousing::open`].
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills swtpm (SIGKILL) and waits for it: the TPM is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts swtpm again on the same state directory and port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "swtpm already running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.dir.path(), self.port) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "swtpm did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 then start again on the same state and port: a TPM reset.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port P such that P and P+1 were both free a moment ago.
fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

/// Spawns swtpm and waits until its command port accepts connections;
/// `None` if it exited (port taken) or did not come up in 10 s.
fn spawn(dir: &Path, port: u16) -> Option<Child> {
    let state = format!("dir={}", dir.display());
    let server = format!("type=tcp,port={port},bindaddr=127.0.0.1");
    let ctrl = format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1);
    let mut child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--tpmstate", &state])
        .args(["--server", &server, "--ctrl", &ctrl])
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn swtpm (is it installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut backoff = Duration::from_millis(5);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        // swtpm accepts the probe, sees it close and waits for the next
        // client; both ports are bound before it accepts anything.
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Some(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// `swtpm_setup --tpm2 --create-ek-cert --create-platform-cert` into `dir`, with a
/// local CA of its own under `dir/ekca` (the sandbox does the same, `tests/sandbox`).
pub fn manufacture(dir: &Path) {
    let ca = dir.join("ekca");
    std::fs::create_dir_all(&ca).unwrap();
    let setup = dir.join("swtpm_setup.conf");
    std::fs::write(
        &setup,
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\n\
             create_certs_tool_config = {0}/swtpm-localca.conf\n\
             create_certs_tool_options = {0}/swtpm-localca.options\n\
             active_pcr_banks = sha256\n",
            ca.display()
        ),
    )
    .unwrap();
    std::fs::write(
        ca.join("swtpm-localca.conf"),
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\n\
             certserial = {0}/certserial\n",
            ca.display()
        ),
    )
    .unwrap();
    std::fs::write(
        ca.join("swtpm-localca.options"),
        "--platform-manufacturer meterd\n--platform-version 1.0\n--platform-model test\n",
    )
    .unwrap();
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--create-ek-cert", "--create-platform-cert"])
        .arg("--tpmstate")
        .arg(dir)
        .arg("--config")
        .arg(&setup)
        .output()
        .expect("run swtpm_setup (package swtpm-tools)");
    assert!(
        out.status.success(),
        "swtpm_setup failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
