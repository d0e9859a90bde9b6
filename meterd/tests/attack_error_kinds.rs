//! Issue 11, hole 7: "Errors lose their kind."
//!
//! A refusal must say what happened. Today the ledger's `Conflict` becomes
//! `InvalidInput`, `ApplyLockOrder` reads any failure of its row as a
//! replay, and a call whose `h` argument names no attached fd is answered
//! by zbus itself (`org.freedesktop.zbus.Error`), outside the meter's named
//! errors that clients map to exit codes.
//!
//! * (a) An order the meter never applied must not be refused as `Replay`.
//!   The literal case of the issue (a nonce long enough to push
//!   `lock-order:<nonce>` past the ledger's 128-byte id limit) cannot be
//!   reached: `LockOrder` payloads carry at most 64 characters of nonce. The
//!   reachable way to the same wrong answer is a plain user taking the
//!   order's id first; the meter then answers "lock order … was already
//!   applied" and stays unlocked.
//! * (b) `ApplyRevokeOrder` revoking for free on a pricing failure other
//!   than "unpriced": no such failure is reachable through the public
//!   surface today (pricing fails only with NotProvisioned, which is passed
//!   on, or with the unpriced InvalidInput), so there is no test for it.
//! * (c) A message whose `h` argument has no fd attached, crafted by hand
//!   with zbus's raw message builder, must get the named
//!   `org.meterd.Meter1.Error.InvalidInput`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use crate::attacker;

use std::time::Duration;

use attacker::{error_kind, outcome, payload, root_or_skip, user, USER_A};
use futures_util::StreamExt;
use sandbox::Sandbox;
use zbus::message::{Message, Type};
use zbus::zvariant::Endian;

#[test]
fn lock_order_never_applied_is_not_refused_as_replay() {
    if !root_or_skip("lock_order_never_applied_is_not_refused_as_replay") {
        return;
    }
    let sb = Sandbox::up(10_000);
    let mallory = user(USER_A);
    let order = sb.lock_order("lock.pem");
    let nonce = payload(&sb, &order)["nonce"].as_str().unwrap().to_owned();
    mallory.report_ok(&sb, &format!("lock-order:{nonce}"));

    let out = sb.meterctl(&["--json", "lock", "apply", &order]);
    let kind = error_kind(&out);
    let state = sb.status()["state"].clone();
    assert!(
        kind != "Replay" && out.status.success() && state == "locked",
        "the authority's lock order {nonce} was never applied, so it must lock the meter and \
         never be refused as a replay; got {} and the meter is {state}",
        outcome(&out)
    );
}

/// D-Bus body bytes (little endian) of a `u32` fd index and what follows.
fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A D-Bus string: length, bytes, NUL (starts 4-aligned).
fn dbus_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// A D-Bus byte array: length, bytes (starts 4-aligned).
fn dbus_bytes(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// Sends `org.meterd.Meter1.METHOD` with signature SIG and a hand-made
/// BODY but no fds attached, and returns the reply: `Ok(())` for a method
/// return, `Err((error name, message))` for an error.
fn call_without_fds(
    address: &str,
    method: &str,
    sig: &str,
    body: &[u8],
) -> Result<(), (String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(address)
            .expect("address")
            .build()
            .await
            .expect("connect to the sandbox bus");
        let builder = Message::method_call(meter_proto::OBJECT_PATH, method)
            .expect("method")
            .destination(meter_proto::BUS_NAME)
            .expect("destination")
            .interface(meter_proto::INTERFACE)
            .expect("interface")
            .endian(Endian::Little);
        // SAFETY: the body is well-formed for SIG except on purpose: its fd
        // index points past the (empty) list of attached fds.
        let msg = unsafe { builder.build_raw_body(body, sig, Vec::new()) }.expect("build");
        let serial = msg.primary_header().serial_num();
        let mut replies = zbus::MessageStream::from(&conn);
        conn.send(&msg).await.expect("send");
        let wait = async {
            while let Some(m) = replies.next().await {
                let m = m.expect("message");
                let h = m.header();
                if h.reply_serial() != Some(serial) {
                    continue;
                }
                return match m.message_type() {
                    Type::Error => {
                        let name = h.error_name().map(|n| n.to_string()).unwrap_or_default();
                        let text: String = m.body().deserialize().unwrap_or_default();
                        Err((name, text))
                    }
                    _ => Ok(()),
                };
            }
            panic!("the bus connection closed without a reply");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("a reply within 30 s")
    })
}

#[test]
fn fd_index_without_attached_fd_gets_a_named_meter_error() {
    let sb = Sandbox::up(10_000);
    let address = sb.env["DBUS_SYSTEM_BUS_ADDRESS"].clone();
    let (ar0, dr0, ct0) = sb.registers();
    let index0 = 0u32.to_le_bytes();
    // Sign: a 2-character serial string is 7 bytes, padded to 8 for the index.
    let mut serial = dbus_string("01");
    serial.push(0);
    let cases: [(&str, &str, Vec<u8>); 3] = [
        ("Postmark", "hs", body(&[&index0, &dbus_string("bad-fd-1")])),
        (
            "Sign",
            "shs",
            body(&[&serial, &index0, &dbus_string("bad-fd-2")]),
        ),
        (
            "Validate",
            "hay",
            body(&[&index0, &dbus_bytes(b"not a token")]),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, sig, b) in &cases {
        match call_without_fds(&address, method, sig, b) {
            Err((name, _)) if name == "org.meterd.Meter1.Error.InvalidInput" => {}
            Err((name, text)) => wrong.push(format!("{method}: {name}: {text}")),
            Ok(()) => wrong.push(format!("{method}: succeeded without a message")),
        }
    }
    assert_eq!(sb.registers(), (ar0, dr0, ct0), "nothing charged");
    assert!(
        wrong.is_empty(),
        "an `h` argument with no fd attached must get the named \
         org.meterd.Meter1.Error.InvalidInput, got:\n  {}",
        wrong.join("\n  ")
    );
    // The meter still serves.
    let (_, _, out) = sb.postmark_id("after-bad-fd");
    assert!(out.status.success(), "postmark after: {}", outcome(&out));
}
