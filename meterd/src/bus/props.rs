//! `org.freedesktop.DBus.Properties` on the meter's object, with the caller
//! checked before any value is read.
//!
//! Each property getter checks its caller, but zbus answers `GetAll` by
//! calling every getter and leaving out the ones that fail (the D-Bus
//! specification allows it), so a stranger's `GetAll` would get an empty
//! dictionary instead of a refusal, and a bus policy that allows `GetAll`
//! would disagree with the daemon about what happened. This interface
//! replaces zbus's stock one on the meter's path: `Get` and `GetAll` need
//! the role `User`, `Set` (no property is writable) the role `Admin`, as in
//! the shipped bus policy; the refusal is the standard
//! `org.freedesktop.DBus.Error.AccessDenied` naming the group to join.
//! Past the gate, the interface's own getters answer (and check again).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use zbus::fdo;
use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::{Interface, InterfaceRef, SignalEmitter};
use zbus::zvariant::{OwnedValue, Value};
use zbus::{interface, Connection, ObjectServer};

use super::auth::{Authorizer, Role};
use super::MeterIface;

/// The gate; see the module documentation.
pub struct GatedProperties {
    auth: Arc<Authorizer>,
}

/// Puts the gate in place of zbus's stock Properties interface at the
/// meter's object path (served already).
pub async fn install(conn: &Connection, auth: Arc<Authorizer>) -> zbus::Result<()> {
    let server = conn.object_server();
    server
        .remove::<fdo::Properties, _>(meter_proto::OBJECT_PATH)
        .await?;
    if !server
        .at(meter_proto::OBJECT_PATH, GatedProperties { auth })
        .await?
    {
        return Err(zbus::Error::Failure(
            "a Properties interface is already served on the meter's path".into(),
        ));
    }
    Ok(())
}

async fn meter_iface(
    server: &ObjectServer,
    interface_name: &InterfaceName<'_>,
) -> fdo::Result<InterfaceRef<MeterIface>> {
    if interface_name.as_str() != meter_proto::INTERFACE {
        return Err(fdo::Error::UnknownInterface(format!(
            "no properties on interface {interface_name}"
        )));
    }
    server
        .interface::<_, MeterIface>(meter_proto::OBJECT_PATH)
        .await
        .map_err(|e| fdo::Error::UnknownInterface(e.to_string()))
}

#[interface(name = "org.freedesktop.DBus.Properties")]
impl GatedProperties {
    /// One property's value.
    async fn get(
        &self,
        interface_name: InterfaceName<'_>,
        property_name: &str,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<OwnedValue> {
        self.auth
            .check_properties(conn, Some(&header), property_name, Role::User)
            .await?;
        let iface = meter_iface(server, &interface_name).await?;
        let inner = iface.get().await;
        match Interface::get(
            &*inner,
            property_name,
            server,
            conn,
            Some(&header),
            &emitter,
        )
        .await
        {
            Some(r) => r,
            None => Err(fdo::Error::UnknownProperty(format!(
                "no property {property_name} on {interface_name}"
            ))),
        }
    }

    /// Every property's value.
    async fn get_all(
        &self,
        interface_name: InterfaceName<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.auth
            .check_properties(conn, Some(&header), "GetAll", Role::User)
            .await?;
        let iface = meter_iface(server, &interface_name).await?;
        let inner = iface.get().await;
        Interface::get_all(&*inner, server, conn, Some(&header), &emitter).await
    }

    /// No property is writable; the call is an administrator's, as in the
    /// bus policy.
    async fn set(
        &self,
        interface_name: InterfaceName<'_>,
        property_name: &str,
        _value: Value<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> fdo::Result<()> {
        self.auth
            .check_properties(conn, Some(&header), "Set", Role::Admin)
            .await?;
        if interface_name.as_str() != meter_proto::INTERFACE {
            return Err(fdo::Error::UnknownInterface(format!(
                "no properties on interface {interface_name}"
            )));
        }
        Err(fdo::Error::PropertyReadOnly(format!(
            "{property_name} is read-only"
        )))
    }

    /// Emitted by the meter's interface when a register or its state changes.
    #[zbus(signal)]
    async fn properties_changed(
        emitter: &SignalEmitter<'_>,
        interface_name: InterfaceName<'_>,
        changed_properties: HashMap<&str, Value<'_>>,
        invalidated_properties: Cow<'_, [&str]>,
    ) -> zbus::Result<()>;
}
