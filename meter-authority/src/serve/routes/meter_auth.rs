//! How a meter proves itself to read its pending objects (issue 16).
//!
//! The report upload already proves the meter: its CMS signature is by the
//! identity key this authority certified for the meter the path names. So
//! the answer to a NEW upload (acknowledged or refused) carries a
//! short-lived token in the header `meter-pending-token`, and `GET
//! /v1/meters/{id}/pending` takes it as `Authorization: Bearer <token>`.
//! This costs the meter no TPM signature beyond the report it makes anyway,
//! and no new D-Bus method that could sign on an attacker's behalf.
//!
//! * Only a new upload mints one: the same body again (a replay, whoever
//!   sends it) gets the stored answer and no token, so a copy of an old
//!   upload (a report file carried by hand, a captured request) opens
//!   nothing. `meterctl sync` makes a new report on every run.
//! * A token names its meter and expiry inside an HMAC-SHA-256 under the
//!   store's shared secret `pending-token` ([`Service::pending_key`], drawn
//!   by the first server that needs it and kept in the store): another
//!   meter's token, an expired one, a forged one or another store's is
//!   refused (403). Every server on the store (several processes on one
//!   PostgreSQL database, behind one address) takes the tokens of the
//!   others, also after a restart; deleting the secret and restarting the
//!   servers rotates it, and every token made before dies.
//! * The operator's credential reads any meter's list as before.
//!
//! [`Service::pending_key`]: crate::serve::Service::pending_key

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a token opens the pending list, seconds.
pub const TOKEN_TTL: i64 = 600;
/// The header of the upload's answer carrying the token.
pub const TOKEN_HEADER: &str = "meter-pending-token";
/// Domain of the MAC: nothing else this server MACs can pass for a token.
const DOMAIN: &[u8] = b"meter-authority-pending-token-v1\0";

fn mac(key: &[u8; 32], meter_id: &str, expires: i64) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)] // HMAC takes a key of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC key");
    m.update(DOMAIN);
    m.update(meter_id.as_bytes());
    m.update(b"\0");
    m.update(&expires.to_be_bytes());
    m
}

/// A token for `meter_id`, good until `now + TOKEN_TTL`: `<expiry>.<hex MAC>`.
pub fn mint(key: &[u8; 32], meter_id: &str, now: i64) -> String {
    let expires = now.saturating_add(TOKEN_TTL);
    let tag = mac(key, meter_id, expires).finalize().into_bytes();
    format!("{expires}.{}", hex::encode(tag))
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not `<expiry>.<64 hex digits>`, or its MAC is not this meter's
    /// under this store's key (another meter's, forged, another store's,
    /// or made before the key was rotated).
    NotThisMeters,
    /// Past its expiry.
    Expired,
}

/// Checks `token` for `meter_id` at `now`.
pub fn check(key: &[u8; 32], meter_id: &str, token: &str, now: i64) -> Result<(), Refused> {
    let (expires, tag) = token.trim().split_once('.').ok_or(Refused::NotThisMeters)?;
    let expires: i64 = expires.parse().map_err(|_| Refused::NotThisMeters)?;
    let tag = hex::decode(tag).map_err(|_| Refused::NotThisMeters)?;
    // Constant time, and before the expiry: an expired token is reported
    // as such only when it was a real one.
    mac(key, meter_id, expires)
        .verify_slice(&tag)
        .map_err(|_| Refused::NotThisMeters)?;
    if now >= expires {
        return Err(Refused::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_meter_only_and_only_until_it_expires() {
        let (k, other_key) = ([7u8; 32], [8u8; 32]);
        let t = mint(&k, "MTR-1", 1_000);
        assert_eq!(check(&k, "MTR-1", &t, 1_000), Ok(()));
        assert_eq!(check(&k, "MTR-1", &t, 1_000 + TOKEN_TTL - 1), Ok(()));
        assert_eq!(
            check(&k, "MTR-1", &t, 1_000 + TOKEN_TTL),
            Err(Refused::Expired)
        );
        assert_eq!(check(&k, "MTR-2", &t, 1_000), Err(Refused::NotThisMeters));
        assert_eq!(
            check(&other_key, "MTR-1", &t, 1_000),
            Err(Refused::NotThisMeters)
        );
        // A later expiry with the old MAC: refused.
        let (_, tag) = t.split_once('.').unwrap_or_default();
        let longer = format!("{}.{tag}", 1_000 + 10 * TOKEN_TTL);
        assert_eq!(
            check(&k, "MTR-1", &longer, 1_000),
            Err(Refused::NotThisMeters)
        );
        for junk in ["", ".", "x.y", "1.zz", "1"] {
            assert_eq!(check(&k, "MTR-1", junk, 0), Err(Refused::NotThisMeters));
        }
    }
}
