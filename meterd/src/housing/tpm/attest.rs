//! Attestation on the TPM: the EK certificate, the attestation key (AK), credential
//! activation, TPM2_Certify of the meter's keys and the AK-signed TPM2_GetTime.
//!
//! * **EK.** Never stored: the RSA 2048 EK is a primary of the endorsement hierarchy made
//!   from the TCG default template ("L-1"), recreated for each activation and flushed
//!   right after; its certificate is read from NV index `0x01C00002`.
//! * **AK.** A restricted ECDSA P-384 signing key, stored as blob `ak` beside the other
//!   keys, but under a storage primary of the *endorsement* hierarchy (same template as
//!   the owner one): a signer outside the endorsement and platform hierarchies gets its
//!   reset and restart counts obfuscated by the TPM, and the reports need them in clear.
//! * **Activation.** TPM2_ActivateCredential with the AK (password) and the EK, whose
//!   template's policy is PolicySecret(TPM_RH_ENDORSEMENT): one policy session, flushed
//!   after.
//! * **Slots.** An activation holds the AK, the EK and (while the AK loads) the primary:
//!   every other key is flushed first. A certification holds the key and the AK.
//!
//! TPM2_NV_Certify is not in tss-esapi 7.7; it lives in `nvcertify.rs`.

use tss_esapi::abstraction::ek::create_ek_public_from_default_template;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, NvIndexTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{AsymmetricAlgorithm, HashingAlgorithm};
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, EncryptedSecret, IdObject, Nonce, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use super::conn::{tpm_error, Attempt, Conn, Fail, Tag};
use super::keystore::KeyStore;
use super::slots::ensure_loaded;
use super::templates;
use crate::housing::{Attestation, AK_KEY};

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile).
pub(super) const EK_CERT_INDEX: u32 = 0x01C0_0002;

const TWO_PASSWORDS: (
    Option<AuthSession>,
    Option<AuthSession>,
    Option<AuthSession>,
) = (
    Some(AuthSession::Password),
    Some(AuthSession::Password),
    None,
);

/// Reads the EK certificate (DER) from NV.
pub(super) fn read_ek_cert(ctx: &mut Context) -> Attempt<Vec<u8>> {
    let index = NvIndexTpmHandle::new(EK_CERT_INDEX).tag("nv_index")?;
    let object = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index)))
        .map_err(|e| match super::errors::tpm_kind(&e) {
            Some(tss_esapi::constants::Tss2ResponseCodeKind::Handle) => tpm_error(
                "ek_cert",
                "the TPM has no RSA 2048 EK certificate at NV 0x01c00002 \
                 (a swtpm needs `swtpm_setup --create-ek-cert`)",
            ),
            _ => Fail::Tss("nv_read_public", e),
        })?;
    let result = read_ek_cert_from(ctx, object.into());
    let mut object = object;
    let closed = ctx.tr_close(&mut object);
    let cert = result?;
    closed.tag("tr_close")?;
    Ok(cert)
}

fn read_ek_cert_from(
    ctx: &mut Context,
    handle: tss_esapi::handles::NvIndexHandle,
) -> Attempt<Vec<u8>> {
    let (public, _) = ctx
        .execute_without_session(|c| c.nv_read_public(handle))
        .tag("nv_read_public")?;
    let size = public.data_size();
    let chunk = tss_esapi::abstraction::nv::max_nv_buffer_size(ctx)
        .tag("get_capability")?
        .clamp(64, 1024);
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = (size - out.len()).min(chunk);
        let (Ok(n16), Ok(off16)) = (u16::try_from(n), u16::try_from(out.len())) else {
            return Err(tpm_error("ek_cert", "EK certificate larger than 64 KiB"));
        };
        let buf = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_read(NvAuth::NvIndex(handle), handle, n16, off16)
            })
            .tag("nv_read")?;
        out.extend_from_slice(buf.value());
    }
    // Some vendors pad the index: keep the DER SEQUENCE only.
    Ok(trim_der(out))
}

/// Cuts trailing padding after a DER SEQUENCE with a definite length.
fn trim_der(mut v: Vec<u8>) -> Vec<u8> {
    let len = match v.as_slice() {
        [0x30, l, ..] if *l < 0x80 => Some(2 + usize::from(*l)),
        [0x30, 0x81, l, ..] => Some(3 + usize::from(*l)),
        [0x30, 0x82, h, l, ..] => Some(4 + (usize::from(*h) << 8 | usize::from(*l))),
        _ => None,
    };
    if let Some(n) = len.filter(|n| *n <= v.len()) {
        v.truncate(n);
    }
    v
}

/// Creates the AK under the endorsement storage primary; returns its blobs' public area.
pub(super) fn create_ak(conn: &mut Conn, store: &KeyStore) -> Attempt<()> {
    let template = templates::ak_template().tag("ak_template")?;
    let auth = super::tpm_auth(store.auth().key(AK_KEY).as_ref())?;
    super::slots::make_room(conn)?;
    let primary = super::slots::create_primary_in(&mut conn.ctx, Hierarchy::Endorsement)?;
    let created = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create(primary, template, auth, None, None, None)
        });
    let flushed = conn.ctx.flush_context(primary.into());
    let created = created.tag("create")?;
    flushed.tag("flush_context")?;
    if templates::ak_point(&created.out_public).is_none() {
        return Err(tpm_error(
            "create",
            "TPM returned an unexpected AK public area",
        ));
    }
    store.store(AK_KEY, &created.out_public, &created.out_private)?;
    Ok(())
}

/// Marshalled `TPMT_PUBLIC` of stored key `name`.
pub(super) fn public_area(store: &KeyStore, name: &str) -> Attempt<Vec<u8>> {
    let (public, _) = store.load(name)?;
    public.marshall().tag("marshal_public")
}

/// Flushes every loaded key but `keep`.
fn evict_all_but(conn: &mut Conn, keep: KeyHandle) -> Attempt<()> {
    let mut i = 0;
    while i < conn.keys.len() {
        if conn.keys[i].handle == keep {
            i += 1;
            continue;
        }
        let victim = conn.keys.remove(i);
        conn.ctx
            .flush_context(victim.handle.into())
            .tag("flush_context")?;
    }
    Ok(())
}

/// TPM2_ActivateCredential of a credential made to the EK for the AK.
pub(super) fn activate(
    conn: &mut Conn,
    store: &KeyStore,
    blob: &[u8],
    secret: &[u8],
) -> Attempt<Vec<u8>> {
    let blob = IdObject::try_from(blob.to_vec()).tag("credential_blob")?;
    let secret = EncryptedSecret::try_from(secret.to_vec()).tag("encrypted_secret")?;
    let ak = ensure_loaded(conn, store, AK_KEY)?;
    evict_all_but(conn, ak)?;
    let ek_template = create_ek_public_from_default_template(AsymmetricAlgorithm::Rsa, None)
        .tag("ek_template")?;
    let ek = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Endorsement, ek_template, None, None, None, None)
        })
        .tag("create_primary")?
        .key_handle;
    let result = activate_with(&mut conn.ctx, ak, ek, blob, secret);
    let flushed = conn.ctx.flush_context(ek.into());
    let digest = result?;
    flushed.tag("flush_context")?;
    Ok(digest.value().to_vec())
}

fn activate_with(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Attempt<Digest> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .tag("start_auth_session")?
        .ok_or_else(|| tpm_error("start_auth_session", "no session returned"))?;
    let result = (|| {
        let policy = PolicySession::try_from(session).tag("policy_session")?;
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Nonce::default(),
                Digest::default(),
                Nonce::default(),
                None,
            )
        })
        .tag("policy_secret")?;
        ctx.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
            c.activate_credential(ak, ek, blob, secret)
        })
        .tag("activate_credential")
    })();
    let flushed = ctx.flush_context(SessionHandle::from(session).into());
    let digest = result?;
    flushed.tag("flush_context")?;
    Ok(digest)
}

/// Converts what the TPM returned into an [`Attestation`].
fn attestation(
    command: &'static str,
    attest: tss_esapi::structures::Attest,
    sig: &tss_esapi::structures::Signature,
) -> Attempt<Attestation> {
    let bytes = attest.marshall().tag("marshal_attest")?;
    let signature = templates::raw_signature(sig)
        .ok_or_else(|| tpm_error(command, "the AK returned a non-ECDSA signature"))?;
    Ok(Attestation {
        attest: bytes,
        signature,
    })
}

/// TPM2_Certify of key `name` by the AK over `qualifying`.
pub(super) fn certify(
    conn: &mut Conn,
    store: &KeyStore,
    name: &str,
    qualifying: &[u8],
) -> Attempt<Attestation> {
    let data = Data::try_from(qualifying.to_vec()).tag("qualifying_data")?;
    let key = ensure_loaded(conn, store, name)?;
    // The key is the most recently used: loading the AK evicts another one.
    let ak = ensure_loaded(conn, store, AK_KEY)?;
    let (attest, sig) = conn
        .ctx
        .execute_with_sessions(TWO_PASSWORDS, |c| {
            c.certify(key.into(), ak, data, SignatureScheme::Null)
        })
        .tag("certify")?;
    attestation("certify", attest, &sig)
}

/// TPM2_GetTime signed by the AK over `qualifying`.
pub(super) fn time(conn: &mut Conn, store: &KeyStore, qualifying: &[u8]) -> Attempt<Attestation> {
    let data = Data::try_from(qualifying.to_vec()).tag("qualifying_data")?;
    let ak = ensure_loaded(conn, store, AK_KEY)?;
    let (attest, sig) = conn
        .ctx
        .execute_with_sessions(TWO_PASSWORDS, |c| {
            c.get_time(ak, data, SignatureScheme::Null)
        })
        .tag("get_time")?;
    attestation("get_time", attest, &sig)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn der_padding_is_trimmed() {
        let mut v = vec![0x30, 0x82, 0x00, 0x03, 1, 2, 3];
        v.extend_from_slice(&[0xff; 5]);
        assert_eq!(trim_der(v), vec![0x30, 0x82, 0, 3, 1, 2, 3]);
        assert_eq!(trim_der(vec![0x30, 1, 9, 0, 0]), vec![0x30, 1, 9]);
        assert_eq!(trim_der(vec![1, 2]), vec![1, 2]);
    }
}
