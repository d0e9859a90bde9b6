//! Why a TPM device could not be opened, in words an operator can act on.
//!
//! When the TCTI is `device:<path>` and the ESAPI context cannot be made,
//! libtss2 says only "IO failure" (or tss-esapi "response code not
//! recognized"). The usual causes on a workstation are a device node that
//! is `root:tss 0660` and a meterd that is not in group `tss`, or no TPM at
//! all; we open the node ourselves to tell which, and name the fix.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{getegid, geteuid, getgroups, Gid, Group, Uid, User};

/// The device node of a `device` TCTI (`device` alone is libtss2's default
/// `/dev/tpm0`); `None` for other TCTIs.
pub(super) fn device_path(tcti: &str) -> Option<PathBuf> {
    let rest = tcti.strip_prefix("device")?;
    match rest.strip_prefix(':') {
        Some("") => Some(PathBuf::from("/dev/tpm0")),
        Some(path) => Some(PathBuf::from(path)),
        None if rest.is_empty() => Some(PathBuf::from("/dev/tpm0")),
        None => None,
    }
}

/// What is wrong with the device at `path`, if opening it fails now.
pub(super) fn diagnose(path: &Path) -> Option<String> {
    let error = OpenOptions::new().read(true).write(true).open(path).err()?;
    let shown = path.display();
    Some(match error.kind() {
        ErrorKind::NotFound => format!(
            "there is no TPM device {shown}: no TPM, TPM disabled in the firmware, or its \
             driver not loaded (ls /dev/tpm*); or set tcti in meterd.toml"
        ),
        ErrorKind::PermissionDenied => {
            let node = std::fs::metadata(path)
                .map(|m| {
                    format!(
                        " (owner {}, group {}, mode {:o})",
                        user_name(m.uid()),
                        group_name(m.gid()),
                        m.mode() & 0o7777
                    )
                })
                .unwrap_or_default();
            format!(
                "permission denied opening the TPM device {shown}{node} as {}: meterd must \
                 be in the group `tss`, which owns the TPM devices (SupplementaryGroups=tss \
                 in meterd.service; for a manual run `usermod -aG tss <user>`, then log in \
                 again)",
                whoami()
            )
        }
        _ => format!("cannot open the TPM device {shown}: {error}"),
    })
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// "uid N (name), groups a, b".
fn whoami() -> String {
    let uid = geteuid().as_raw();
    let mut groups = vec![getegid().as_raw()];
    if let Ok(more) = getgroups() {
        groups.extend(more.iter().map(|g| g.as_raw()));
    }
    groups.dedup();
    let names: Vec<String> = groups.into_iter().map(group_name).collect();
    format!(
        "uid {uid} ({}), groups {}",
        user_name(uid),
        names.join(", ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn device_tctis() {
        assert_eq!(
            device_path("device:/dev/tpmrm0"),
            Some(PathBuf::from("/dev/tpmrm0"))
        );
        assert_eq!(device_path("device"), Some(PathBuf::from("/dev/tpm0")));
        assert_eq!(device_path("device:"), Some(PathBuf::from("/dev/tpm0")));
        assert_eq!(device_path("swtpm:port=2321"), None);
        assert_eq!(device_path("tabrmd"), None);
        assert_eq!(device_path("devicex:/a"), None);
    }

    #[test]
    fn missing_device_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let msg = diagnose(&dir.path().join("tpmrm0")).unwrap();
        assert!(msg.contains("no TPM device"), "{msg}");
        // A node that opens is not diagnosed.
        let file = dir.path().join("dev");
        std::fs::write(&file, b"").unwrap();
        assert!(diagnose(&file).is_none());
    }
}
