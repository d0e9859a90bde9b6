//! Who is calling: the caller's credentials as the bus saw them, mapped to
//! a role.
//!
//! The bus policy filters by group first; the daemon checks again so that a
//! lax or missing policy file cannot open the meter to everyone. The two
//! fences must judge alike, so the daemon takes the groups the bus itself
//! uses: the connection's credentials (`GetConnectionCredentials`:
//! `UnixUserID`, `UnixGroupIDs`, `ProcessID`, which the bus got from the
//! kernel when the client connected), not the user database (only a bus
//! that reports no `UnixGroupIDs`, which then judges its own policy by the
//! user database, is followed there too). A user
//! added to `meter` in `/etc/group` is a member once a new login gives its
//! processes the group, for the bus and the daemon alike; a process given
//! the group by its parent is a member for both too. Only the configured
//! group *names* are resolved, to gids, through the system's NSS (`nix`).
//!
//! Unique bus names are never reused and a connection's credentials never
//! change, so a name's answer is cached for its lifetime, in a bounded
//! cache (oldest names go first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use nix::unistd::{Gid, Group, Uid, User};
use zbus::message::Header;
use zbus::names::BusName;
use zbus::Connection;

use meter_proto::MeterError;

/// Names whose answers are kept; a name past this bound is asked again.
const CACHE_BOUND: usize = 4096;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Neither user nor administrator.
    Nobody,
    /// Member of the users group: sales and reads.
    User,
    /// Member of the administrators group, or root.
    Admin,
}

/// One caller, as the bus saw it when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Unique bus name (`:1.42`); empty on a peer-to-peer connection.
    pub unique: String,
    /// Unix uid of the connecting process.
    pub uid: u32,
    /// Its pid, when the bus knows it (for the log only: pids are reused).
    pub pid: Option<u32>,
    /// What it may do.
    pub role: Role,
}

/// Resolves callers to roles and refuses the ones without the role needed.
pub struct Authorizer {
    user_group: String,
    admin_group: String,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    callers: HashMap<String, Caller>,
    order: VecDeque<String>,
}

impl Cache {
    fn get(&self, unique: &str) -> Option<Caller> {
        self.callers.get(unique).cloned()
    }

    fn insert(&mut self, caller: Caller) {
        if self.callers.contains_key(&caller.unique) {
            return;
        }
        while self.order.len() >= CACHE_BOUND {
            match self.order.pop_front() {
                Some(old) => {
                    self.callers.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(caller.unique.clone());
        self.callers.insert(caller.unique.clone(), caller);
    }

    fn forget(&mut self, unique: &str) {
        if self.callers.remove(unique).is_some() {
            self.order.retain(|n| n != unique);
        }
    }
}

impl Authorizer {
    /// Roles from the configured group names (`user_group`, `admin_group`).
    pub fn new(user_group: &str, admin_group: &str) -> Authorizer {
        Authorizer {
            user_group: user_group.to_owned(),
            admin_group: admin_group.to_owned(),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Who sent the call in `header`. On a peer-to-peer connection (no
    /// sender) the peer is whoever was let onto the socket: an
    /// administrator, with the uid and pid the socket reports. Fails with
    /// `AccessDenied` when the bus cannot say who it is (it left already).
    pub async fn caller(
        &self,
        conn: &Connection,
        header: &Header<'_>,
    ) -> Result<Caller, MeterError> {
        let Some(sender) = header.sender() else {
            return Ok(peer(conn).await);
        };
        let unique = sender.as_str();
        if let Some(c) = self.cache.lock().ok().and_then(|c| c.get(unique)) {
            return Ok(c);
        }
        let creds = zbus::fdo::DBusProxy::new(conn)
            .await
            .map_err(|e| unknown(unique, &e))?
            .get_connection_credentials(BusName::from(sender.to_owned()))
            .await
            .map_err(|e| unknown(unique, &e))?;
        let uid = creds.unix_user_id().ok_or_else(|| {
            MeterError::AccessDenied(format!(
                "the bus does not tell the uid of {unique}; the meter serves only local callers"
            ))
        })?;
        let gids = match creds.unix_group_ids() {
            Some(g) => g.clone(),
            None => groups_from_user_database(uid),
        };
        let caller = Caller {
            unique: unique.to_owned(),
            uid,
            pid: creds.process_id(),
            role: self.role_of(uid, &gids),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(caller.clone());
        }
        Ok(caller)
    }

    /// Refuses `caller` for `member` unless it has the role `needed`. The
    /// refusal names the group to join; the log line has uid and pid.
    pub fn require(&self, caller: &Caller, member: &str, needed: Role) -> Result<(), MeterError> {
        if caller.role >= needed {
            return Ok(());
        }
        let group = self.group_for(needed);
        tracing::warn!(
            member,
            uid = caller.uid,
            pid = caller.pid,
            sender = %caller.unique,
            role = ?caller.role,
            needed = group,
            "access denied"
        );
        Err(MeterError::AccessDenied(format!(
            "{member} needs membership of group {group} (uid {} is not a member in this \
             session); ask an administrator to add you to group {group}, then log in again",
            caller.uid
        )))
    }

    /// The check every member makes: who calls, and may it call `member`.
    pub async fn admit(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        member: &str,
        needed: Role,
    ) -> Result<Caller, MeterError> {
        let caller = self.caller(conn, header).await?;
        self.require(&caller, member, needed)?;
        Ok(caller)
    }

    /// The check every property getter makes (role `User`). No header is
    /// the object server reading the value for a change signal: allowed
    /// (who receives signals is the bus policy's business).
    pub async fn read_property(
        &self,
        conn: &Connection,
        header: Option<&Header<'_>>,
        property: &str,
    ) -> zbus::fdo::Result<()> {
        self.check_properties(conn, header, property, Role::User)
            .await
    }

    /// Like [`Authorizer::read_property`] with the role `needed`, for the
    /// Properties interface itself (`GetAll`: User, `Set`: Admin). Properties
    /// can answer only `org.freedesktop.DBus.Error.*` names, so the refusal
    /// is the standard AccessDenied, with the same message.
    pub async fn check_properties(
        &self,
        conn: &Connection,
        header: Option<&Header<'_>>,
        what: &str,
        needed: Role,
    ) -> zbus::fdo::Result<()> {
        let Some(header) = header else {
            return Ok(());
        };
        self.admit(conn, header, what, needed)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                MeterError::AccessDenied(m) => zbus::fdo::Error::AccessDenied(m),
                other => zbus::fdo::Error::Failed(other.to_string()),
            })
    }

    /// Drops a name's cached answer (call it when the bus says the name left).
    pub fn forget(&self, unique: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.forget(unique);
        }
    }

    /// The role of a process with this uid and these groups (primary and
    /// supplementary, as the bus reports them).
    pub fn role_of(&self, uid: u32, gids: &[u32]) -> Role {
        role_from(
            uid,
            gids,
            gid_of(&self.user_group),
            gid_of(&self.admin_group),
        )
    }

    fn group_for(&self, role: Role) -> &str {
        if role == Role::Admin {
            &self.admin_group
        } else {
            &self.user_group
        }
    }
}

/// The rule itself: root and the administrators' group are Admin, the
/// users' group User, everyone else Nobody. A group that does not exist
/// (None) has no members.
fn role_from(uid: u32, gids: &[u32], user: Option<u32>, admin: Option<u32>) -> Role {
    let member = |g: Option<u32>| g.is_some_and(|g| gids.contains(&g));
    if uid == 0 || member(admin) {
        Role::Admin
    } else if member(user) {
        Role::User
    } else {
        Role::Nobody
    }
}

/// gid of a group name (NSS); None when there is no such group.
fn gid_of(name: &str) -> Option<u32> {
    match Group::from_name(name) {
        Ok(g) => g.map(|g| g.gid.as_raw()),
        Err(e) => {
            tracing::warn!(group = name, error = %e, "cannot look the group up");
            None
        }
    }
}

/// A bus that reports no `UnixGroupIDs` (a kernel without SO_PEERGROUPS)
/// judges its own policy by the user database; so does the daemon then,
/// to keep agreeing with it.
fn groups_from_user_database(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name.as_bytes()) else {
        return vec![user.gid.as_raw()];
    };
    match nix::unistd::getgrouplist(&name, user.gid) {
        Ok(gids) => gids.into_iter().map(Gid::as_raw).collect(),
        Err(_) => vec![user.gid.as_raw()],
    }
}

/// The peer of a peer-to-peer connection: an administrator, with the uid
/// and pid the socket reports (the daemon's own uid when it cannot tell).
async fn peer(conn: &Connection) -> Caller {
    let creds = conn.peer_creds().await.ok();
    Caller {
        unique: String::new(),
        uid: creds
            .and_then(|c| c.unix_user_id())
            .unwrap_or_else(|| Uid::effective().as_raw()),
        pid: creds.and_then(|c| c.process_id()),
        role: Role::Admin,
    }
}

fn unknown(unique: &str, e: &dyn std::fmt::Display) -> MeterError {
    MeterError::AccessDenied(format!(
        "the bus cannot say who {unique} is ({e}); call again from a connected client"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_groups_given() {
        let (user, admin) = (Some(1001), Some(1002));
        assert_eq!(role_from(0, &[], user, admin), Role::Admin);
        assert_eq!(role_from(65534, &[65534], user, admin), Role::Nobody);
        assert_eq!(role_from(65534, &[65534, 1001], user, admin), Role::User);
        assert_eq!(role_from(65534, &[1002], user, admin), Role::Admin);
        assert_eq!(role_from(65534, &[1001, 1002], user, admin), Role::Admin);
        // A group that does not exist has no members.
        assert_eq!(role_from(65534, &[1001], None, None), Role::Nobody);
    }

    #[test]
    fn group_names_resolve_through_nss() {
        // Root's group is gid 0 on every Linux system.
        assert_eq!(gid_of("root"), Some(0));
        assert_eq!(gid_of("meterd-no-such-group"), None);
        let a = Authorizer::new("root", "meterd-no-such-group");
        assert_eq!(a.role_of(65534, &[0]), Role::User);
        assert_eq!(a.role_of(65534, &[65534]), Role::Nobody);
        assert!(groups_from_user_database(0).contains(&0));
    }

    fn caller(unique: &str, role: Role) -> Caller {
        Caller {
            unique: unique.into(),
            uid: 1000,
            pid: Some(42),
            role,
        }
    }

    #[test]
    fn refusals_name_the_group_to_join() {
        let a = Authorizer::new("meter", "meteradmin");
        assert!(a
            .require(&caller(":1.1", Role::User), "Status", Role::User)
            .is_ok());
        assert!(a
            .require(&caller(":1.1", Role::Admin), "Status", Role::User)
            .is_ok());
        match a.require(&caller(":1.1", Role::Nobody), "Status", Role::User) {
            Err(MeterError::AccessDenied(m)) => assert!(m.contains("group meter"), "{m}"),
            other => panic!("{other:?}"),
        }
        match a.require(&caller(":1.1", Role::User), "Recharge", Role::Admin) {
            Err(MeterError::AccessDenied(m)) => {
                assert!(
                    m.contains("Recharge") && m.contains("group meteradmin"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cache_is_bounded_oldest_first() {
        let mut c = Cache::default();
        for i in 0..CACHE_BOUND + 10 {
            c.insert(caller(&format!(":1.{i}"), Role::User));
        }
        assert_eq!(c.callers.len(), CACHE_BOUND);
        assert_eq!(c.order.len(), CACHE_BOUND);
        assert!(c.get(":1.0").is_none());
        assert!(c.get(&format!(":1.{}", CACHE_BOUND + 9)).is_some());
        c.forget(":1.20");
        assert!(c.get(":1.20").is_none());
        assert_eq!(c.order.len(), CACHE_BOUND - 1);
        // A name is cached once.
        c.insert(caller(":1.30", Role::Admin));
        assert_eq!(c.get(":1.30").map(|c| c.role), Some(Role::User));
    }
}
