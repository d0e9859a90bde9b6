//! The Debian package (issue 13: "There is no way to install it"): `packaging/build-deb`
//! builds it from the release binaries, and Debian's own tools read it — `dpkg-deb`
//! for its fields and contents, `systemd-sysusers --root` and `systemd-tmpfiles --root`
//! for what its maintainer script creates, in a scratch root, so the test changes
//! nothing on the machine it runs on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::path::Path;
use std::process::Command;

use sandbox::{bin_dir, ok, repo};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    ok(&out, &format!("{program} {args:?}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_package_installs_what_a_sysadmin_needs() {
    let out_dir = tempfile::tempdir().unwrap();
    let built = Command::new("bash")
        .arg(repo().join("packaging/build-deb"))
        .arg(out_dir.path())
        .env("BIN_DIR", bin_dir())
        .output()
        .unwrap();
    let deb = ok(&built, "packaging/build-deb").trim().to_owned();
    assert!(deb.ends_with(".deb"), "{deb}");

    // The fields: runtime libraries stated, not guessed.
    let info = run("dpkg-deb", &["-f", &deb, "Package", "Version", "Depends"]);
    eprintln!("{info}");
    assert!(info.contains("Package: meterd"), "{info}");
    for dep in [
        "libtss2-esys",
        "libtss2-tctildr0",
        "libtss2-mu0",
        "libtss2-tcti-device0",
        "libssl3",
        "dbus",
    ] {
        assert!(info.contains(dep), "Depends lacks {dep}: {info}");
    }

    // The contents: binaries, unit, sysusers, tmpfiles, bus policy, conffile, docs.
    let list = run("dpkg-deb", &["-c", &deb]);
    for path in [
        "./usr/bin/meterd",
        "./usr/bin/meterctl",
        "./usr/bin/meter-authority",
        "./usr/bin/meter-tsa",
        "./usr/lib/systemd/system/meter-tsa.socket",
        "./usr/lib/systemd/system/meterd.service",
        "./usr/lib/sysusers.d/meterd.conf",
        "./usr/lib/tmpfiles.d/meterd.conf",
        "./usr/share/dbus-1/system.d/org.meterd.Meter1.conf",
        "./etc/meterd/meterd.toml",
        "./usr/share/doc/meterd/SECURITY.md",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{list}"
        );
    }
    // The configuration is a conffile: an upgrade never overwrites the admin's edits.
    let conffiles = run("dpkg-deb", &["-I", &deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/meterd/meterd.toml");

    // What the maintainer script does, in a scratch root: the user and both groups,
    // and the configuration directory readable by the daemon's group only.
    let root = tempfile::tempdir().unwrap();
    run("dpkg-deb", &["-x", &deb, s(root.path())]);
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    run(
        "systemd-sysusers",
        &["--root", s(root.path()), "meterd.conf"],
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("meterd:")), "{passwd}");
    assert!(
        passwd.lines().any(|l| l.starts_with("meter-tsa:")),
        "{passwd}"
    );
    for g in ["meterd:", "meter:", "meteradmin:"] {
        assert!(group.lines().any(|l| l.starts_with(g)), "{g} {group}");
    }
    run(
        "systemd-tmpfiles",
        &["--root", s(root.path()), "--create", "meterd.conf"],
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.path().join("etc/meterd"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o750, "/etc/meterd mode {mode:o}");

    // The packaged binaries run (they are the release build, stripped).
    let v = run(s(&root.path().join("usr/bin/meterctl")), &["--version"]);
    assert!(v.contains("meterctl"), "{v}");

    man_pages_and_completions(root.path());
}

/// The man pages (from clap, plus the hand-written meterd.toml(5)) and the
/// completions are in the package, every page renders without a groff
/// warning, and every `meterctl-SUB(1)` that `meterctl man` names is installed.
fn man_pages_and_completions(root: &Path) {
    let man = root.join("usr/share/man");
    for page in [
        "man1/meterctl.1.gz",
        "man1/meterctl-postmark.1.gz",
        "man1/meterctl-rates-install.1.gz",
        "man1/meter-authority.1.gz",
        "man1/meter-authority-inspect.1.gz",
        "man5/meterd.toml.5.gz",
        "man8/meterd.8.gz",
        "man8/meter-tsa.8.gz",
    ] {
        assert!(man.join(page).is_file(), "{page} not in the package");
    }
    for c in [
        "usr/share/bash-completion/completions/meterctl",
        "usr/share/bash-completion/completions/meter-authority",
        "usr/share/zsh/vendor-completions/_meterctl",
        "usr/share/zsh/vendor-completions/_meter-authority",
        "usr/share/fish/vendor_completions.d/meterctl.fish",
        "usr/share/fish/vendor_completions.d/meter-authority.fish",
    ] {
        let text = std::fs::read_to_string(root.join(c)).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert!(text.contains("postmark") || text.contains("inspect"), "{c}");
    }
    // `bash -n`: the bash completion parses.
    run(
        "bash",
        &[
            "-n",
            s(&root.join("usr/share/bash-completion/completions/meterctl")),
        ],
    );

    // Every page renders: `man -l` when man-db is here, groff's warnings as errors.
    let mut count = 0;
    for sec in ["man1", "man5", "man8"] {
        for e in std::fs::read_dir(man.join(sec)).unwrap() {
            let page = e.unwrap().path();
            let p = s(&page);
            let script = format!(
                "set -o pipefail; zcat {p} | groff -k -man -Tutf8 -ww -z 2>&1 | \
                 {{ ! grep .; }} && if command -v man >/dev/null; then MANWIDTH=80 man -l {p} | grep -q NAME; fi"
            );
            run("bash", &["-c", &script]);
            count += 1;
        }
    }
    assert!(count >= 40, "only {count} pages");
    let named = run(s(&root.join("usr/bin/meterctl")), &["man"]);
    for sub in named.split("meterctl\\-").skip(1) {
        let Some((name, _)) = sub.split_once("(1)") else {
            continue;
        };
        let name = name.replace("\\-", "-");
        let page = man.join(format!("man1/meterctl-{name}.1.gz"));
        assert!(
            page.is_file(),
            "meterctl man names meterctl-{name}(1), not installed"
        );
    }
}
