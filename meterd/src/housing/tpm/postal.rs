//! The postal secret key in the TPM (claim 21): the storage parent's public area for the
//! authority, TPM2_Import of the HMAC key it wrapped to that parent, and TPM2_HMAC.
//!
//! The authority wraps the key with an empty auth value (it cannot know the meter's object
//! secret); right after the import, still in memory, TPM2_ObjectChangeAuth gives the object
//! the meter's own auth value for its name (`housing/auth.rs`), and only that private blob is
//! stored. The imported object has an empty authPolicy and no adminWithPolicy, so no policy
//! session can ever authorize duplicating it out again: the key stays in this TPM.

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    EncryptedSecret, MaxBuffer, Private, Public, PublicBuffer, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::conn::{object_failure, tpm_error, Attempt, Conn, Tag};
use super::keystore::KeyStore;
use super::slots::{create_primary, ensure_loaded, make_room};
use super::tpm_auth;

/// The marshalled `TPMT_PUBLIC` of the owner-hierarchy storage primary.
pub(super) fn storage_parent_public(conn: &mut Conn) -> Attempt<Vec<u8>> {
    make_room(conn)?;
    let primary = create_primary(&mut conn.ctx)?;
    let read = conn.ctx.read_public(primary).tag("read_public");
    let flushed = conn.ctx.flush_context(primary.into());
    let (public, _, _) = read?;
    flushed.tag("flush_context")?;
    let buf = PublicBuffer::try_from(public)
        .and_then(|b| b.marshall())
        .tag("marshal_public")?;
    Ok(buf.get(2..).map(<[u8]>::to_vec).unwrap_or_default())
}

/// The parsed import inputs, checked before any TPM work.
pub(super) struct Wrapped {
    pub(super) public: Public,
    pub(super) duplicate: Private,
    pub(super) seed: EncryptedSecret,
}

/// Parses the delivery's blobs; refuses anything but a postal HMAC key.
pub(super) fn parse(public: &[u8], duplicate: &[u8], seed: &[u8]) -> Attempt<Wrapped> {
    let public = PublicBuffer::unmarshall(public)
        .and_then(Public::try_from)
        .tag("unmarshal_public")?;
    if !super::templates::hmac_key_ok(&public) {
        return Err(tpm_error(
            "import",
            "the delivered object is not an HMAC-SHA-256 key of the postal template",
        ));
    }
    Ok(Wrapped {
        public,
        duplicate: Private::try_from(duplicate.to_vec()).tag("duplicate")?,
        seed: EncryptedSecret::try_from(seed.to_vec()).tag("encrypted_seed")?,
    })
}

/// TPM2_Import under the storage primary, then TPM2_ObjectChangeAuth to the key's own
/// auth value; stores the blobs as `name` (replacing an older key of that name).
pub(super) fn import(conn: &mut Conn, store: &KeyStore, name: &str, w: &Wrapped) -> Attempt<()> {
    if let Some(pos) = conn.keys.iter().position(|k| k.name == name) {
        let old = conn.keys.remove(pos);
        conn.ctx
            .flush_context(old.handle.into())
            .tag("flush_context")?;
    }
    // Two slots: the primary and the imported object.
    make_room(conn)?;
    let auth = tpm_auth(store.auth().key(name).as_ref())?;
    let primary = create_primary(&mut conn.ctx)?;
    let result = (|| -> Attempt<Private> {
        let private = conn
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.import(
                    primary.into(),
                    None,
                    w.public.clone(),
                    w.duplicate.clone(),
                    w.seed.clone(),
                    SymmetricDefinitionObject::Null,
                )
            })
            .tag("import")?;
        let Some(auth) = auth else {
            return Ok(private);
        };
        let handle = conn
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.load(primary, private, w.public.clone())
            })
            .tag("load")?;
        let changed = conn
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.object_change_auth(handle.into(), primary.into(), auth)
            });
        let flushed = conn.ctx.flush_context(handle.into());
        let changed = changed.tag("object_change_auth")?;
        flushed.tag("flush_context")?;
        Ok(changed)
    })();
    let flushed = conn.ctx.flush_context(primary.into());
    let private = result?;
    flushed.tag("flush_context")?;
    store.store(name, &w.public, &private)?;
    Ok(())
}

/// TPM2_HMAC (SHA-256) with key `name` over `data`.
pub(super) fn hmac(
    conn: &mut Conn,
    store: &KeyStore,
    name: &str,
    data: &[u8],
) -> Attempt<[u8; 32]> {
    let buffer = MaxBuffer::try_from(data.to_vec()).tag("hmac_buffer")?;
    let handle = ensure_loaded(conn, store, name)?;
    let digest = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.hmac(handle.into(), buffer.clone(), HashingAlgorithm::Sha256)
        })
        .map_err(|e| object_failure(store, &format!("key {name:?}"), "hmac", e))?;
    <[u8; 32]>::try_from(digest.value())
        .map_err(|_| tpm_error("hmac", "TPM returned a digest that is not 32 bytes"))
}
