//! Fuzzing of the D-Bus argument decoding meterd relies on: the wire bodies
//! of PostmarkDigest `(ay s)` and Validate's token `ay` decoded by zvariant
//! from random and mutated bytes (an error, never a panic), and the request
//! id check against an independent oracle. `FUZZ_CASES` as in
//! `meter-pki/tests/fuzz.rs` (`tests/fuzz --full`: 10^6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meterd::ledger::{Key, MAX_CALLER_ID as MAX_REQUEST_ID};

fn check_request_id(id: &str) -> Result<Key, meterd::ledger::LedgerError> {
    Key::caller(1000, id)
}
use zbus::zvariant::serialized::{Context, Data};
use zbus::zvariant::{to_bytes, LE};

fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 2000 } else { 20000 })
}

/// splitmix64, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn report(name: &str, n: u64, t: std::time::Instant) {
    let secs = t.elapsed().as_secs_f64();
    println!(
        "fuzz: target={name} execs={n} secs={secs:.1} execs_per_sec={:.0}",
        n as f64 / secs.max(1e-9)
    );
}

#[test]
fn dbus_bodies_decode_or_fail() {
    let ctxt = Context::new_dbus(LE, 0);
    let valid = to_bytes(ctxt, &(vec![7u8; 48], "req-1")).unwrap().to_vec();
    let token = to_bytes(ctxt, &vec![0x30u8; 300]).unwrap().to_vec();
    let mut rng = Rng(0xdb05);
    let n = cases();
    let t = std::time::Instant::now();
    let mut decoded = 0u64;
    for i in 0..n {
        let mut v = if i % 2 == 0 {
            valid.clone()
        } else {
            token.clone()
        };
        if rng.below(8) == 0 {
            v = (0..rng.below(256)).map(|_| rng.next() as u8).collect();
        }
        for _ in 0..=rng.below(3) {
            let pos = rng.below(v.len() + 1);
            match rng.below(3) {
                0 if pos < v.len() => v[pos] = rng.next() as u8,
                1 => v.truncate(pos),
                _ => v.insert(pos, rng.next() as u8),
            }
        }
        let data = Data::new(v.as_slice(), ctxt);
        if let Ok(((digest, id), _)) = data.deserialize::<(Vec<u8>, String)>() {
            decoded += 1;
            // What meterd then checks: the digest length and the id.
            let _ = digest.len() == 48 && check_request_id(&id).is_ok();
        }
        let _ = data.deserialize::<Vec<u8>>();
    }
    report("dbus_bodies", n, t);
    // The unmutated share decodes: the loop did exercise the success path.
    assert!(decoded > 0);
}

#[test]
fn request_id_check_matches_oracle() {
    let alphabet: Vec<char> = (0u8..=127)
        .map(char::from)
        .chain(['é', '€', '\u{0}', '\u{202e}'])
        .collect();
    let mut rng = Rng(0x1d);
    let n = cases();
    let t = std::time::Instant::now();
    let (mut ok, mut bad) = (0u64, 0u64);
    for _ in 0..n {
        let len = match rng.below(4) {
            0 => MAX_REQUEST_ID - 1 + rng.below(3),
            _ => rng.below(40),
        };
        let graphic_only = rng.below(2) == 0;
        let id: String = (0..len)
            .map(|_| {
                if graphic_only {
                    char::from(b'!' + rng.below(94) as u8)
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        let oracle = (1..=MAX_REQUEST_ID).contains(&id.len())
            && id.chars().all(|c| ('!'..='~').contains(&c));
        assert_eq!(check_request_id(&id).is_ok(), oracle, "request id {id:?}");
        if oracle {
            ok += 1
        } else {
            bad += 1
        }
    }
    report("request_id", n, t);
    assert!(
        ok > 0 && bad > 0,
        "both outcomes exercised ({ok} ok, {bad} refused)"
    );
}
