//! Who is calling: the caller's uid, asked of the bus, mapped to a role.
//!
//! The bus policy already filters by group; the daemon checks again so that
//! a lax or missing policy file cannot open admin members to everyone. Unique
//! bus names are never reused, so a name's uid is cached for its lifetime.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Mutex;

use zbus::message::Header;
use zbus::names::BusName;
use zbus::Connection;

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

/// Resolves callers to roles.
pub struct Authorizer {
    user_group: String,
    admin_group: String,
    cache: Mutex<HashMap<String, (Role, Option<u32>)>>,
}

impl Authorizer {
    /// Roles from the configured group names.
    pub fn new(user_group: &str, admin_group: &str) -> Authorizer {
        Authorizer {
            user_group: user_group.to_owned(),
            admin_group: admin_group.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller's role (Nobody when it cannot be told).
    pub async fn role(&self, conn: &Connection, header: &Header<'_>) -> Role {
        self.identify(conn, header).await.0
    }

    /// The caller's role and uid (uid 0 and Admin on a peer-to-peer
    /// connection; `None` when the bus cannot tell, then Nobody).
    pub async fn identify(&self, conn: &Connection, header: &Header<'_>) -> (Role, Option<u32>) {
        let Some(sender) = header.sender() else {
            // Peer-to-peer connection: no bus to ask, the peer is whoever
            // was let onto the socket.
            return (Role::Admin, Some(0));
        };
        let key = sender.as_str().to_owned();
        if let Some(known) = self.cache.lock().ok().and_then(|c| c.get(&key).copied()) {
            return known;
        }
        let uid = match zbus::fdo::DBusProxy::new(conn).await {
            Ok(proxy) => proxy
                .get_connection_unix_user(BusName::from(sender.to_owned()))
                .await
                .ok(),
            Err(_) => None,
        };
        let role = uid.map(|uid| self.role_of_uid(uid)).unwrap_or(Role::Nobody);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(key, (role, uid));
        }
        (role, uid)
    }

    fn role_of_uid(&self, uid: u32) -> Role {
        if uid == 0 {
            return Role::Admin;
        }
        let groups = groups_of_uid(uid);
        let member = |name: &str| gid_of_group(name).is_some_and(|g| groups.contains(&g));
        if member(&self.admin_group) {
            Role::Admin
        } else if member(&self.user_group) {
            Role::User
        } else {
            Role::Nobody
        }
    }
}

/// All gids of a user (primary and supplementary), via NSS.
fn groups_of_uid(uid: u32) -> Vec<u32> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the given sizes; result is checked.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Vec::new();
    }
    // SAFETY: getpwuid_r succeeded, pw_name points into buf.
    let name: CString = unsafe { CStr::from_ptr(pwd.pw_name) }.to_owned();
    let primary = pwd.pw_gid;
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; usize::try_from(n).unwrap_or(64)];
        let mut count = n;
        // SAFETY: groups has room for `count` entries.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            return groups;
        }
        if count <= n || count > 65_536 {
            return vec![primary];
        }
        n = count;
    }
}

/// gid of a group name, via NSS.
fn gid_of_group(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: pointers valid for the given sizes; result is checked.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_admin_and_unknown_uid_is_nobody() {
        let a = Authorizer::new("meter-no-such-group", "meteradmin-no-such-group");
        assert_eq!(a.role_of_uid(0), Role::Admin);
        assert_eq!(a.role_of_uid(4_000_000_000), Role::Nobody);
    }

    #[test]
    fn group_membership_is_read() {
        // Root's primary group is root (gid 0) on every Linux system.
        assert!(groups_of_uid(0).contains(&0));
        assert_eq!(gid_of_group("root"), Some(0));
    }
}
