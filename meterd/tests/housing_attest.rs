//! The attestation operations of the TPM housing against a swtpm with an EK certificate
//! from swtpm's local CA, checked with the authority's verifier (`meter_pki::tpm`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::swtpm;

use std::time::Instant;

use meter_pki::tpm::{self, CertifiedKey, Evidence, SealedCredential};
use meterd::housing::tpm::TpmHousing;
use meterd::housing::Housing;
use swtpm::Swtpm;

const COUNTER: u32 = 0x0150_0001;
const METER: &str = "m-test";

fn ek_cas(tpm: &Swtpm) -> Vec<meter_pki::cert::Certificate> {
    let pem = std::fs::read(tpm.ek_ca_dir().join("issuercert.pem")).unwrap();
    vec![meter_pki::cert::parse(&pem).unwrap()]
}

fn certified(h: &mut TpmHousing, name: &str) -> CertifiedKey {
    let q = tpm::certify_qualifying(METER, name);
    let a = h.certify_key(name, &q).unwrap();
    CertifiedKey {
        role: name.into(),
        public: hex::encode(h.key_public_area(name).unwrap()),
        certify: hex::encode(&a.attest),
        signature: hex::encode(a.signature),
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[test]
fn evidence_verifies_and_the_credential_activates_only_here() {
    let tpm = Swtpm::start_with_ek();
    let state = tempfile::tempdir().unwrap();
    let mut h = TpmHousing::open(&tpm.tcti(), &state.path().join("keys")).unwrap();
    let identity = h.create_key("identity").unwrap();
    let postmark = h.create_key("postmark").unwrap();

    let t = Instant::now();
    let id = h.attest_identity().unwrap();
    let t_identity = ms(t);
    let t = Instant::now();
    let keys = vec![certified(&mut h, "identity"), certified(&mut h, "postmark")];
    let t_certify = ms(t);
    let ev = Evidence {
        version: tpm::VERSION,
        meter_id: METER.into(),
        ek_cert: hex::encode(&id.ek_cert),
        ak_public: hex::encode(&id.ak_public),
        keys,
    };
    let now = meter_authority::now();
    let expected: [(&str, &[u8]); 2] = [("identity", &identity), ("postmark", &postmark)];
    let verified = tpm::verify_evidence(&ev, &ek_cas(&tpm), &expected, now).unwrap();
    // An untrusted EK CA (here: no CA at all, or the wrong one) is refused.
    assert!(tpm::verify_evidence(&ev, &[], &expected, now).is_err());
    // Keys swapped between roles are refused.
    let swapped: [(&str, &[u8]); 2] = [("identity", &postmark), ("postmark", &identity)];
    assert!(tpm::verify_evidence(&ev, &ek_cas(&tpm), &swapped, now).is_err());

    let sealed = SealedCredential::make(&verified, METER, b"meter-cert", b"postmark-cert").unwrap();
    let (blob, secret) = sealed.activation_input().unwrap();
    let t = Instant::now();
    let credential = h.activate_credential(&blob, &secret).unwrap();
    let t_activate = ms(t);
    let (m, p) = sealed.open(&credential, METER, &verified.ak.name).unwrap();
    assert_eq!(
        (m.as_slice(), p.as_slice()),
        (&b"meter-cert"[..], &b"postmark-cert"[..])
    );

    // A credential made for another object's Name does not activate with this AK.
    let mut other = verified.clone();
    other.ak.name = verified.keys[0].name.clone();
    let wrong = SealedCredential::make(&other, METER, b"m", b"p").unwrap();
    let (blob, secret) = wrong.activation_input().unwrap();
    assert!(h.activate_credential(&blob, &secret).is_err());

    // The keys still sign after all that (slots were juggled).
    h.sign_digest("postmark", &[1u8; 48]).unwrap();
    eprintln!(
        "attestation cost on swtpm: identity (EK cert + AK) {t_identity:.1} ms, \
         two certifies {t_certify:.1} ms, activation {t_activate:.1} ms"
    );
}

#[test]
fn time_and_counter_attestations_verify_with_the_ak() {
    let tpm = Swtpm::start_with_ek();
    let state = tempfile::tempdir().unwrap();
    let mut h = TpmHousing::open(&tpm.tcti(), &state.path().join("keys")).unwrap();
    h.create_key("identity").unwrap();
    let ak_public = h.attest_identity().unwrap().ak_public;
    h.counter_define(COUNTER).unwrap();
    let value = h.counter_increment(COUNTER).unwrap();
    let q = [7u8; 48];

    let t = Instant::now();
    let time = h.attest_time(&q).unwrap();
    let t_time = ms(t);
    let v = tpm::verify_time(&ak_public, &time.attest, &time.signature, &q).unwrap();
    let clock = h.clock().unwrap();
    // The AK is in the endorsement hierarchy: the counts come in clear.
    assert_eq!(v.clock.reset_count, clock.reset_count);
    assert_eq!(v.clock.restart_count, clock.restart_count);
    assert!(v.clock.clock <= clock.clock_ms);
    assert!(tpm::verify_time(&ak_public, &time.attest, &time.signature, &[8u8; 48]).is_err());

    let t = Instant::now();
    let nv = h.certify_counter(COUNTER, &q).unwrap();
    let t_nv = ms(t);
    let c = tpm::verify_counter(&ak_public, &nv.attest, &nv.signature, &q).unwrap();
    assert_eq!(c.value, value);
    assert!(tpm::verify_time(&ak_public, &nv.attest, &nv.signature, &q).is_err());

    // The housing reconnects after NV_Certify: counter and keys work on.
    assert_eq!(h.counter_increment(COUNTER).unwrap(), value + 1);
    h.sign_digest("identity", &[2u8; 48]).unwrap();
    let again = h.certify_counter(COUNTER, &q).unwrap();
    let c2 = tpm::verify_counter(&ak_public, &again.attest, &again.signature, &q).unwrap();
    assert_eq!((c2.value, &c2.index_name), (value + 1, &c.index_name));
    assert_eq!(h.transient_objects().unwrap(), 0);
    eprintln!("attestation cost on swtpm: GetTime {t_time:.1} ms, NV_Certify {t_nv:.1} ms");
}

/// The meter's whole attested path over the real pipeline (`Meter` on a TPM housing):
/// `Provision` evidence → the authority's attested certification → `InstallCredential`
/// → the AK's report attestation, checked by the authority with the AK it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_provisions_attested_and_attests_reports() {
    use meterd::config::Config;
    use meterd::housing::HousingHandle;
    use meterd::meter::Meter;

    let tpm = Swtpm::start_with_ek();
    let state = tempfile::tempdir().unwrap();
    let housing = TpmHousing::open(&tpm.tcti(), &state.path().join("keys")).unwrap();
    let config = Config {
        tcti: tpm.tcti(),
        state_dir: state.path().to_owned(),
        nv_index: COUNTER,
        ..Config::default()
    };
    let meter = Meter::start(config, HousingHandle::spawn(housing).unwrap())
        .await
        .unwrap();
    let requests = meterd::provision::begin(&meter).await.unwrap();
    let evidence = requests
        .attestation
        .clone()
        .expect("a TPM with an EK attests");

    let adir = tempfile::tempdir().unwrap();
    let now = meter_authority::now();
    let mut authority =
        meter_authority::Authority::init(&adir.path().join("a"), "Test Authority", now).unwrap();
    // The EK CA is required, and must be the right one.
    assert!(authority
        .certify_meter_attested(
            &requests.identity_csr,
            &requests.postmark_csr,
            &evidence,
            &[],
            now
        )
        .is_err());
    let (certs, sealed) = authority
        .certify_meter_attested(
            &requests.identity_csr,
            &requests.postmark_csr,
            &evidence,
            &ek_cas(&tpm),
            now,
        )
        .unwrap();
    assert_eq!(certs.meter_id, requests.meter_id);
    let root = meter_pki::cert::to_der(authority.root()).unwrap();
    let (m, p) = meterd::attest::open_credential(&meter, &sealed.to_json().unwrap())
        .await
        .unwrap();
    meterd::provision::install(&meter, &m, &p, &root)
        .await
        .unwrap();
    assert!(meter.identity().is_some());

    let digest = [9u8; 48];
    let t = Instant::now();
    let report = meterd::attest::report_attestation(&meter, &digest)
        .await
        .unwrap();
    let t_report = ms(t);
    let report = meter_pki::tpm::ReportAttestation::from_json(&report.to_json().unwrap()).unwrap();
    let v = authority
        .verify_report_attestation(&certs.meter_id, &report, &digest)
        .unwrap();
    assert_eq!(v.counter.value, meter.ledger_state().unwrap().nv);
    assert!(authority
        .verify_report_attestation(&certs.meter_id, &report, &[8u8; 48])
        .is_err());
    // A report attested by another key (here: the time part swapped for a fresh one
    // over another digest) is refused.
    let other = meterd::attest::report_attestation(&meter, &[1u8; 48])
        .await
        .unwrap();
    let mut mixed = report.clone();
    mixed.time_attest = other.time_attest;
    mixed.time_signature = other.time_signature;
    assert!(authority
        .verify_report_attestation(&certs.meter_id, &mixed, &digest)
        .is_err());
    eprintln!("report attestation (GetTime + NV_Certify) on swtpm: {t_report:.1} ms");
    meter.close().await;
}
