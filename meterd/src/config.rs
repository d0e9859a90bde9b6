//! Daemon configuration: a small TOML file plus environment overrides.
//!
//! Defaults are production values (`/dev/tpmrm0`, `/var/lib/meterd`); the
//! sandbox and the tests override them through the environment so that the
//! same binary runs in both.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::housing::auth::{
    AuthOptions, DEFAULT_AUTH_CREDENTIAL, DEFAULT_ENDORSEMENT_CREDENTIAL, DEFAULT_OWNER_CREDENTIAL,
};
use crate::housing::tpm::TpmOptions;

/// Default interval of the watchdog's checks, ms.
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 10_000;

/// Default inspection period (days to the `inspection-overdue` lock), as a
/// postage meter's: locked 120 days without contact (Pitney Bowes).
pub const DEFAULT_INSPECTION_PERIOD_DAYS: u32 = 120;

/// Default warning period (days to "inspection due"): 90, as Pitney Bowes.
pub const DEFAULT_INSPECTION_WARN_DAYS: u32 = 90;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/meterd/meterd.toml";

/// Everything meterd reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCTI: `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=P`.
    pub tcti: String,
    /// State directory: key blobs and the ledger.
    pub state_dir: PathBuf,
    /// NV index of the ledger's monotonic counter.
    pub nv_index: u32,
    /// Name of the systemd credential (in `$CREDENTIALS_DIRECTORY`) holding
    /// the TPM owner-hierarchy password, used to create the storage primary
    /// and define the NV counter; absent credential: empty password. The
    /// password itself is never a configuration value.
    pub owner_auth_credential: String,
    /// Name of the credential holding the endorsement-hierarchy password
    /// (the TPM clock's calibration key and GetTime).
    pub endorsement_auth_credential: String,
    /// Name of the credential holding the secret the TPM objects' auth values
    /// derive from; absent: `<state_dir>/keys/auth` (created at provisioning).
    pub auth_credential: String,
    /// Ledger rows per epoch: the NV counter advances every `epoch_rows`
    /// rows, at every start and at an orderly stop (see the rollback window
    /// in docs/ARCHITECTURE.md).
    pub epoch_rows: u64,
    /// Group whose members may use the meter.
    pub user_group: String,
    /// Group whose members may administer it.
    pub admin_group: String,
    /// `LowFunds` is emitted when the descending register falls below this.
    pub low_funds_threshold: u64,
    /// Largest message accepted through a file descriptor, bytes.
    pub max_message_bytes: u64,
    /// Longest a message may take to read from its descriptor, seconds;
    /// past it the call is refused (a pipe that never closes).
    pub message_read_timeout_seconds: u64,
    /// Sales (Postmark, PostmarkDigest, Postage, Validate, Sign, Pay)
    /// handled at once; more wait their turn. Status, Report, reads and
    /// administration have their own lane and never wait behind sales.
    pub max_in_flight: usize,
    /// Calls one user (uid) may have in flight in each lane; more are
    /// refused at once with `Busy`, so that one caller cannot take every
    /// slot.
    pub max_in_flight_per_caller: usize,
    /// `system` or a D-Bus address.
    pub bus: String,
    /// Days within which an acknowledged status report must arrive before the
    /// meter locks (`inspection-overdue`); an acknowledgement may change it.
    pub inspection_period_days: u32,
    /// Days after which the inspection falls due: the meter warns (journal,
    /// `InspectionDue` signal, Status) until the lock at
    /// `inspection_period_days`; must be less than it. An acknowledgement may
    /// change it.
    pub inspection_warn_days: u32,
    /// How far (seconds) the time in a token or signature may lie ahead of
    /// this meter's clock before Validate reports step `time` (another
    /// machine's clock may run a little ahead). The meter's own clock check
    /// has a fixed tolerance (1 s + 500 ppm, see `timecheck`).
    pub clock_tolerance_seconds: u64,
    /// Interval of the watchdog's checks (clock against the TPM, inspection
    /// deadline, billing period), ms. `METERD_CHECK_INTERVAL_MS` overrides it
    /// (the tests make it short rather than wait).
    pub check_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tcti: "device:/dev/tpmrm0".into(),
            state_dir: PathBuf::from("/var/lib/meterd"),
            nv_index: 0x0150_4d54,
            owner_auth_credential: DEFAULT_OWNER_CREDENTIAL.into(),
            endorsement_auth_credential: DEFAULT_ENDORSEMENT_CREDENTIAL.into(),
            auth_credential: DEFAULT_AUTH_CREDENTIAL.into(),
            epoch_rows: crate::ledger::DEFAULT_EPOCH_ROWS,
            user_group: "meter".into(),
            admin_group: "meteradmin".into(),
            low_funds_threshold: 10_000,
            max_message_bytes: 64 << 20,
            message_read_timeout_seconds: 30,
            max_in_flight: 128,
            max_in_flight_per_caller: 32,
            bus: "system".into(),
            inspection_period_days: DEFAULT_INSPECTION_PERIOD_DAYS,
            inspection_warn_days: DEFAULT_INSPECTION_WARN_DAYS,
            clock_tolerance_seconds: 300,
            check_interval_ms: DEFAULT_CHECK_INTERVAL_MS,
        }
    }
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid configuration {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
    /// The values do not go together.
    #[error("invalid configuration {path}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong, naming the keys.
        reason: String,
    },
}

impl Config {
    /// Loads `path` (a missing default file means defaults), then applies
    /// `STATE_DIRECTORY` (systemd), `METERD_STATE_DIR` and `METERD_TCTI`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let explicit = path.is_some();
        let path = path.unwrap_or(Path::new(DEFAULT_CONFIG));
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Config::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated; ours is the first.
            let dir = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            if !dir.is_empty() {
                config.state_dir = PathBuf::from(dir);
            }
        }
        if let Some(dir) = std::env::var_os("METERD_STATE_DIR") {
            config.state_dir = PathBuf::from(dir);
        }
        if let Ok(tcti) = std::env::var("METERD_TCTI") {
            config.tcti = tcti;
        }
        if let Some(ms) = std::env::var("METERD_CHECK_INTERVAL_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            config.check_interval_ms = ms;
        }
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// Checks values that must go together: the inspection warning comes
    /// before the lock.
    pub fn validate(&self) -> Result<(), String> {
        if self.inspection_warn_days == 0
            || self.inspection_warn_days >= self.inspection_period_days
        {
            return Err(format!(
                "inspection_warn_days ({}) must be at least 1 and less than inspection_period_days ({}): the meter warns that the inspection is due before it locks",
                self.inspection_warn_days, self.inspection_period_days
            ));
        }
        Ok(())
    }

    /// The watchdog's interval, bounded to 10 ms .. 10 min (a longer one
    /// would leave the TPM clock check too far apart).
    pub fn check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.check_interval_ms.clamp(10, 600_000))
    }

    /// Path of the ledger database.
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.sqlite")
    }

    /// Directory of the TPM key blobs.
    pub fn key_dir(&self) -> PathBuf {
        self.state_dir.join("keys")
    }

    /// How to open the TPM housing: the TCTI, the key directory and the
    /// credentials systemd passed (`$CREDENTIALS_DIRECTORY`, from
    /// `LoadCredential=` in the unit).
    pub fn tpm_options(&self) -> TpmOptions {
        TpmOptions {
            tcti: self.tcti.clone(),
            key_dir: self.key_dir(),
            auth: AuthOptions {
                credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY")
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
                auth_credential: self.auth_credential.clone(),
                owner_credential: self.owner_auth_credential.clone(),
                endorsement_credential: self.endorsement_auth_credential.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example_and_refuses_unknown_keys() {
        let c: Config =
            toml::from_str("tcti = \"swtpm:port=1\"\nnv_index = 0x01500001\n").expect("parse");
        assert_eq!(c.tcti, "swtpm:port=1");
        assert_eq!(c.nv_index, 0x0150_0001);
        assert_eq!(c.user_group, "meter");
        assert_eq!(c.owner_auth_credential, "owner-auth");
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        // A password is never a configuration value.
        assert!(toml::from_str::<Config>("owner_auth = \"pw\"").is_err());
    }

    #[test]
    fn shipped_file_parses_with_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/meterd.toml");
        let text = std::fs::read_to_string(path).expect("systemd/meterd.toml");
        let c: Config = toml::from_str(&text).expect("shipped configuration parses");
        assert_eq!(c.inspection_period_days, 120);
        assert_eq!(c.inspection_warn_days, 90);
        assert_eq!(c.clock_tolerance_seconds, 300);
        // The shipped file states the defaults: they must be the defaults.
        let d = Config::default();
        assert_eq!(c.max_message_bytes, d.max_message_bytes);
        assert_eq!(
            c.message_read_timeout_seconds,
            d.message_read_timeout_seconds
        );
        assert_eq!(c.max_in_flight, d.max_in_flight);
        assert_eq!(c.max_in_flight_per_caller, d.max_in_flight_per_caller);
        assert_eq!(c.check_interval_ms, 10_000);
        assert_eq!(c.owner_auth_credential, d.owner_auth_credential);
        assert_eq!(c.endorsement_auth_credential, d.endorsement_auth_credential);
        assert_eq!(c.auth_credential, d.auth_credential);
        assert_eq!(c.check_interval(), std::time::Duration::from_secs(10));
        assert_eq!(
            c.inspection_period_days,
            Config::default().inspection_period_days
        );
        assert_eq!(c.inspection_warn_days, d.inspection_warn_days);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn inspection_defaults_warn_at_90_and_lock_at_120() {
        let d = Config::default();
        assert_eq!(
            (d.inspection_warn_days, d.inspection_period_days),
            (90, 120)
        );
        assert_eq!(d.validate(), Ok(()));
        let c: Config = toml::from_str("inspection_period_days = 28\ninspection_warn_days = 21\n")
            .expect("parse");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_warning_at_or_after_the_lock_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (warn, period) in [(90, 90), (100, 90), (0, 90), (90, 60)] {
            let path = dir.path().join(format!("{warn}-{period}.toml"));
            std::fs::write(
                &path,
                format!("inspection_warn_days = {warn}\ninspection_period_days = {period}\n"),
            )
            .expect("write");
            let e = Config::load(Some(&path)).expect_err("refused").to_string();
            assert!(e.contains("inspection_warn_days"), "{e}");
            assert!(e.contains("inspection_period_days"), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        // Only the warning set, past the default lock: refused too.
        let path = dir.path().join("warn-only.toml");
        std::fs::write(&path, "inspection_warn_days = 120\n").expect("write");
        assert!(Config::load(Some(&path)).is_err());
    }
}
