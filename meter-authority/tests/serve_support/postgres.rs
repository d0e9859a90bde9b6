//! A PostgreSQL server for tests: a cluster in a temporary directory, on a
//! unix socket, run as `nobody` (postgres refuses root). Shared by the
//! `serve` tests here and meterd's end-to-end sync test (which includes
//! this file with `#[path]`), so it needs only std and `tempfile`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of PostgreSQL's binaries, if installed (Debian layout).
pub fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists() && b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

pub fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A PostgreSQL server on a unix socket in a temporary directory, run as
/// `nobody` (postgres refuses root); stopped when dropped.
pub struct Postgres {
    pub bin: PathBuf,
    pub sock: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl Postgres {
    pub fn start(bin: &Path) -> Postgres {
        let tmp = tempfile::tempdir().unwrap();
        let (data, sock) = (tmp.path().join("data"), tmp.path().join("sock"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&sock).unwrap();
        let as_nobody = |prog: &Path| {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(prog)
                .env("HOME", tmp.path());
            c
        };
        let chown = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let init = as_nobody(&bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let child = spawn_postgres(bin, &data, &sock, tmp.path());
        let pg = Postgres {
            bin: bin.to_owned(),
            sock,
            child,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pg.psql_ok("SELECT 1") {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// Crashes the server (SIGQUIT: `pg_ctl stop -m immediate`, no
    /// checkpoint; WAL recovery at the next start) and starts it again.
    pub fn crash_and_restart(&mut self) {
        kill(self.child.id(), "-QUIT");
        let _ = self.child.wait();
        let data = self._tmp.path().join("data");
        // The postmaster's children leave within moments; retry the start.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.child = spawn_postgres(&self.bin, &data, &self.sock, self._tmp.path());
            let up = Instant::now() + Duration::from_secs(20);
            while !self.psql_ok("SELECT 1") && Instant::now() < up {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.psql_ok("SELECT 1") {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(Instant::now() < deadline, "postgres did not restart");
        }
    }

    /// The `--database` argument.
    pub fn url(&self) -> String {
        format!("host={} user=postgres dbname=postgres", self.sock.display())
    }

    fn psql_ok(&self, sql: &str) -> bool {
        Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.sock)
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The `--database` argument for another database of this server.
    pub fn url_of(&self, dbname: &str) -> String {
        format!("host={} user=postgres dbname={dbname}", self.sock.display())
    }

    /// Runs `sql` with psql; its output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs `sql` with psql in database `dbname`; its output, trimmed.
    pub fn psql_in(&self, dbname: &str, sql: &str) -> String {
        let o = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.sock)
            .args([
                "-U",
                "postgres",
                "-d",
                dbname,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown: disconnects clients, stops cleanly.
        kill(self.child.id(), "-INT");
        let _ = self.child.wait();
    }
}

fn spawn_postgres(bin: &Path, data: &Path, sock: &Path, home: &Path) -> Child {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(bin.join("postgres"))
        .env("HOME", home)
        .arg("-D")
        .arg(data)
        .arg("-k")
        .arg(sock)
        .args(["-c", "listen_addresses=", "-c", "max_connections=50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
