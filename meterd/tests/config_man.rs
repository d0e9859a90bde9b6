//! meterd.toml(5) (packaging/man/meterd.toml.5, written by hand) against the
//! code: every field of `struct Config` in src/config.rs is a `.B key` entry
//! of the KEYS section, and every entry there is a field. Adding a key
//! without documenting it fails here (issue 13).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `pub NAME:` fields of `pub struct Config { ... }`.
fn config_keys() -> BTreeSet<String> {
    let src = read("src/config.rs");
    let start = src.find("pub struct Config {").expect("struct Config");
    let body = &src[start..];
    let end = body.find("\n}").expect("end of struct Config");
    body[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.contains(' '))
        .collect()
}

/// The `.B key` lines right after `.TP` in the KEYS section.
fn page_keys() -> BTreeSet<String> {
    let page = read("../packaging/man/meterd.toml.5");
    let keys = page.split(".SH KEYS").nth(1).expect("KEYS section");
    let keys = keys.split("\n.SH ").next().unwrap_or("");
    let lines: Vec<&str> = keys.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| w[1].strip_prefix(".B "))
        .map(|k| k.trim().to_string())
        .collect()
}

#[test]
fn every_config_key_is_in_the_man_page_and_back() {
    let code = config_keys();
    let page = page_keys();
    assert!(
        code.len() >= 18,
        "parsed too few keys from config.rs: {code:?}"
    );
    let missing: Vec<_> = code.difference(&page).collect();
    let stale: Vec<_> = page.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "keys of config.rs missing from meterd.toml(5): {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "keys in meterd.toml(5) that config.rs no longer has: {stale:?}"
    );
}

/// The packaged sample file sets only keys the code knows (and the page documents).
#[test]
fn sample_config_uses_documented_keys() {
    let page = page_keys();
    let sample = read("../systemd/meterd.toml");
    for line in sample.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let key = l.split('=').next().unwrap().trim();
        assert!(
            page.contains(key),
            "systemd/meterd.toml sets {key}, not in meterd.toml(5)"
        );
    }
}
