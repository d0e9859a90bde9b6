//! Unit tests of the software housing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::VerifyingKey;

const NV: u32 = 0x0150_0001;

fn verifies(point: &[u8], digest: &[u8; 48], sig: &RawSignature) -> bool {
    let vk = VerifyingKey::from_sec1_bytes(point).unwrap();
    let sig = Signature::from_slice(sig).unwrap();
    vk.verify_prehash(digest, &sig).is_ok()
}

#[test]
fn keys_behave_like_the_tpm_housing() {
    let (mut h, control) = SoftwareHousing::new(SoftwareOptions::default());
    assert!(!h.has_key("postmark").unwrap());
    let p = h.create_key("postmark").unwrap();
    assert_eq!((p.len(), p[0]), (97, 0x04));
    assert_eq!(h.public_key("postmark").unwrap(), p);
    assert!(matches!(h.create_key("postmark"), Err(HousingError::Io(_))));
    assert!(matches!(h.create_key("Bad_Name"), Err(HousingError::Io(_))));
    assert!(matches!(h.has_key("a/b"), Err(HousingError::Io(_))));
    assert!(matches!(
        h.public_key("absent"),
        Err(HousingError::NoSuchKey(_))
    ));
    let d = [7u8; 48];
    let sig = h.sign_digest("postmark", &d).unwrap();
    assert!(verifies(&p, &d, &sig));
    let mut other = d;
    other[0] ^= 1;
    assert!(!verifies(&p, &other, &sig));
    assert_eq!(control.signs(), 1);
    assert_eq!(control.key_names(), vec!["postmark".to_owned()]);
    h.destroy_key("postmark").unwrap();
    assert!(!h.has_key("postmark").unwrap());
    assert!(matches!(
        h.sign_digest("postmark", &d),
        Err(HousingError::NoSuchKey(_))
    ));
    assert!(matches!(
        h.destroy_key("postmark"),
        Err(HousingError::NoSuchKey(_))
    ));
    assert_eq!(h.transient_objects().unwrap(), 0);
    assert_eq!(h.loaded_sessions().unwrap(), 0);
}

#[test]
fn seeded_keys_are_reproducible_and_distinct() {
    let seed = [42u8; 32];
    let (mut a, _) = SoftwareHousing::seeded(seed);
    let (mut b, _) = SoftwareHousing::seeded(seed);
    let (mut c, _) = SoftwareHousing::seeded([43u8; 32]);
    let a1 = a.create_key("identity").unwrap();
    assert_eq!(b.create_key("identity").unwrap(), a1);
    assert_ne!(c.create_key("identity").unwrap(), a1);
    assert_ne!(a.create_key("postmark").unwrap(), a1);
    // A destroyed and re-created key is a new key, the same in every run.
    a.destroy_key("identity").unwrap();
    b.destroy_key("identity").unwrap();
    let a2 = a.create_key("identity").unwrap();
    assert_ne!(a2, a1);
    assert_eq!(b.create_key("identity").unwrap(), a2);
    // RFC 6979: a seeded run signs alike too.
    let d = [1u8; 48];
    assert_eq!(
        a.sign_digest("identity", &d).unwrap(),
        b.sign_digest("identity", &d).unwrap()
    );
}

#[test]
fn counters_follow_the_nv_rules() {
    let (mut h, control) = SoftwareHousing::new(SoftwareOptions::default());
    assert_eq!(h.counter_read(NV).unwrap(), None);
    assert!(h.counter_increment(NV).is_err());
    assert!(h.counter_read(0x8000_0000).is_err());
    assert!(h.counter_define(0x0000_0001).is_err());
    let first = h.counter_define(NV).unwrap();
    assert_eq!(h.counter_define(NV).unwrap(), first);
    assert_eq!(h.counter_read(NV).unwrap(), Some(first));
    assert_eq!(h.counter_increment(NV).unwrap(), first + 1);
    assert_eq!(control.counter(NV), Some(first + 1));
    control.set_counter(NV, 100);
    assert_eq!(h.counter_increment(NV).unwrap(), 101);
    control.fail_increment(true);
    assert!(matches!(
        h.counter_increment(NV),
        Err(HousingError::Unavailable(_))
    ));
    assert_eq!(h.counter_read(NV).unwrap(), Some(101));
    control.fail_increment(false);
    assert_eq!(h.counter_increment(NV).unwrap(), 102);
}

#[test]
fn clock_moves_resets_and_pauses() {
    let (mut h, control) = SoftwareHousing::new(SoftwareOptions {
        clock_start_ms: 5_000,
        clock_paused: true,
        ..SoftwareOptions::default()
    });
    let c0 = h.clock().unwrap();
    assert_eq!((c0.clock_ms, c0.reset_count, c0.safe), (5_000, 0, true));
    control.advance(Duration::from_secs(280));
    assert_eq!(h.clock().unwrap().clock_ms, 285_000);
    control.restart();
    control.reset(false);
    let c1 = h.clock().unwrap();
    assert_eq!(
        (c1.clock_ms, c1.reset_count, c1.restart_count, c1.safe),
        (285_000, 1, 0, false)
    );
    control.set_safe(true);
    control.pause_clock(false);
    std::thread::sleep(Duration::from_millis(20));
    let c2 = h.clock().unwrap();
    assert!(c2.clock_ms >= 285_020 && c2.safe, "{c2:?}");
    control.pause_clock(true);
    let c3 = control.clock();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(h.clock().unwrap().clock_ms, c3.clock_ms);
}

#[test]
fn faults_and_shared_state() {
    let (mut h, control) = SoftwareHousing::new(SoftwareOptions::default());
    let p = h.create_key("identity").unwrap();
    h.counter_define(NV).unwrap();
    control.fail_sign(true);
    assert!(matches!(
        h.sign_digest("identity", &[0; 48]),
        Err(HousingError::Unavailable(_))
    ));
    control.fail_sign(false);
    control.set_unavailable(true);
    for r in [
        h.public_key("identity").map(drop),
        h.sign_digest("identity", &[0; 48]).map(drop),
        h.counter_read(NV).map(drop),
        h.clock().map(drop),
        h.shutdown(),
    ] {
        assert!(matches!(r, Err(HousingError::Unavailable(_))), "{r:?}");
    }
    assert!(h.has_key("identity").unwrap());
    control.set_unavailable(false);
    h.shutdown().unwrap();
    assert_eq!(control.shutdowns(), 1);
    // Another housing over the same "TPM" (a restarted meterd).
    let mut again = control.housing();
    assert_eq!(again.public_key("identity").unwrap(), p);
    assert_eq!(again.counter_read(NV).unwrap(), control.counter(NV));
    assert_eq!(control.public_key("identity"), Some(p));
}

#[test]
fn runs_behind_the_housing_thread() {
    let (h, control) = SoftwareHousing::seeded([9; 32]);
    let handle = crate::housing::HousingHandle::spawn(h).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let point = rt
        .block_on(handle.call(|h| h.create_key("postmark")))
        .unwrap();
    let d = [3u8; 48];
    let sig = rt.block_on(handle.sign_digest("postmark", d)).unwrap();
    assert!(verifies(&point, &d, &sig));
    handle.close();
    // The thread sends shutdown once its queue is drained.
    let deadline = Instant::now() + Duration::from_secs(5);
    while control.shutdowns() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(control.shutdowns(), 1);
}

#[test]
fn key_agreement_keys_do_ecdh_and_never_sign() {
    let (mut h, _control) = SoftwareHousing::new(SoftwareOptions::default());
    let public = h.create_ecdh_key("user-enc").unwrap();
    assert_eq!((public.len(), public[0]), (97, 0x04));
    assert!(h.has_key("user-enc").unwrap());
    // The shared x-coordinate is what the peer computes with its own secret.
    let peer = p384::SecretKey::from_slice(&[9u8; 48]).unwrap();
    let z = h
        .ecdh_z_gen("user-enc", &peer.public_key().to_sec1_bytes())
        .unwrap();
    let ours = p384::PublicKey::from_sec1_bytes(&public).unwrap();
    let expect = p384::ecdh::diffie_hellman(peer.to_nonzero_scalar(), ours.as_affine());
    assert_eq!(z.as_slice(), &expect.raw_secret_bytes()[..]);
    // No signature with it, no key agreement with a signing key, no bad points.
    assert!(matches!(
        h.sign_digest("user-enc", &[1u8; 48]),
        Err(HousingError::Tpm { .. })
    ));
    h.create_key("signer").unwrap();
    assert!(h
        .ecdh_z_gen("signer", &peer.public_key().to_sec1_bytes())
        .is_err());
    assert!(h.ecdh_z_gen("user-enc", &[4u8; 97]).is_err());
    assert!(matches!(
        h.ecdh_z_gen("absent", &peer.public_key().to_sec1_bytes()),
        Err(HousingError::NoSuchKey(_))
    ));
    // Destroyed and made again under the same name as a signing key: it signs.
    h.destroy_key("user-enc").unwrap();
    h.create_key("user-enc").unwrap();
    assert!(h.sign_digest("user-enc", &[1u8; 48]).is_ok());
}
