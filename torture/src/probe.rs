//! The probe: one D-Bus call, run as another uid by `runuser` (a copy of
//! this binary), with placeholder arguments of the right types or the ones
//! given. Prints one line, `reply HEX` (SHA-256 of the reply's body, to
//! compare products) or `error NAME MSG`, for the access and id tests.

use crate::error::{io, Result};
use sha2::{Digest, Sha256, Sha384};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use zbus::zvariant::{Fd, StructureBuilder, Value};

/// What the probe sends beyond placeholders: a request id for every `s`
/// argument, and a message for every `h` (its bytes, on a socket) and `ay`
/// (its SHA-384, as `PostmarkDigest` takes it).
#[derive(Debug, Default, Clone)]
pub struct ProbeArgs {
    /// Request id (default: a placeholder naming the method).
    pub request_id: Option<String>,
    /// Message (default: /dev/null for fds, a placeholder for bytes).
    pub message: Option<String>,
}

/// The probe (runs as the caller's uid): calls `method` of `iface` with
/// placeholder arguments of the right types (or those of `args`) on `bus`;
/// prints `reply HEX` (SHA-256 of the reply's body, to compare products)
/// or `error NAME MSG`.
pub async fn probe(
    bus: &str,
    iface: &str,
    method: &str,
    sig: &[String],
    property: Option<&str>,
    args: &ProbeArgs,
) -> Result<()> {
    let conn = zbus::connection::Builder::address(bus)?.build().await?;
    if iface == PROPERTIES {
        let i = meter_proto::INTERFACE;
        let p = property.unwrap_or_default();
        let reply = match method {
            "Get" => {
                conn.call_method(
                    Some(meter_proto::BUS_NAME),
                    meter_proto::OBJECT_PATH,
                    Some(iface),
                    method,
                    &(i, p),
                )
                .await
            }
            "Set" => {
                conn.call_method(
                    Some(meter_proto::BUS_NAME),
                    meter_proto::OBJECT_PATH,
                    Some(iface),
                    method,
                    &(i, p, Value::from(1u64)),
                )
                .await
            }
            _ => {
                conn.call_method(
                    Some(meter_proto::BUS_NAME),
                    meter_proto::OBJECT_PATH,
                    Some(iface),
                    method,
                    &(i,),
                )
                .await
            }
        };
        print_reply(reply);
        return Ok(());
    }
    let devnull = std::fs::File::open("/dev/null").map_err(io("/dev/null"))?;
    // The message on a socket whose writing end is shut: the meter reads it to EOF.
    let (reader, mut writer) = UnixStream::pair().map_err(io("socketpair"))?;
    if let Some(m) = &args.message {
        writer.write_all(m.as_bytes()).map_err(io("socketpair"))?;
    }
    writer
        .shutdown(std::net::Shutdown::Write)
        .map_err(io("socketpair"))?;
    let mut body = StructureBuilder::new();
    for ty in sig {
        let v: Value<'_> = match ty.as_str() {
            "ay" => match &args.message {
                Some(m) => Value::from(Sha384::digest(m.as_bytes()).to_vec()),
                None => Value::from(b"torture-access".to_vec()),
            },
            "s" => match &args.request_id {
                Some(id) => Value::from(id.clone()),
                None => Value::from(format!("torture-access-{method}")),
            },
            "h" if args.message.is_some() => Value::Fd(Fd::from(reader.as_fd())),
            "h" => Value::Fd(Fd::from(devnull.as_fd())),
            "u" => Value::from(0u32),
            "t" => Value::from(0u64),
            "x" => Value::from(0i64),
            "i" => Value::from(0i32),
            "y" => Value::from(0u8),
            "b" => Value::from(false),
            // An empty dictionary: the method's own check must refuse it.
            "a{sv}" => Value::from(std::collections::HashMap::<String, Value<'static>>::new()),
            other => {
                println!("unsupported {other}");
                return Ok(());
            }
        };
        body = body.append_field(v);
    }
    let reply = if sig.is_empty() {
        conn.call_method(
            Some(meter_proto::BUS_NAME),
            meter_proto::OBJECT_PATH,
            Some(meter_proto::INTERFACE),
            method,
            &(),
        )
        .await
    } else {
        let s = body.build().map_err(zbus::Error::from)?;
        conn.call_method(
            Some(meter_proto::BUS_NAME),
            meter_proto::OBJECT_PATH,
            Some(meter_proto::INTERFACE),
            method,
            &s,
        )
        .await
    };
    print_reply(reply);
    Ok(())
}

fn print_reply(reply: zbus::Result<zbus::Message>) {
    match reply {
        Ok(r) => println!(
            "reply {}",
            hex::encode(Sha256::digest(r.body().data().bytes()))
        ),
        Err(zbus::Error::MethodError(name, msg, _)) => {
            println!("error {} {}", name.as_str(), msg.unwrap_or_default())
        }
        Err(e) => println!("error transport {e}"),
    }
}

/// The plain user of the matrix (group `meter` only).
pub const PLAIN_USER: &str = "mtorture-user";
/// A second plain user, for two callers choosing the same request id.
pub const SECOND_USER: &str = "mtorture-user2";
/// The Properties interface.
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// Runs the probe (a copy of this binary at `probe`) as `user` with
/// `runuser`: one call of `method` of `iface` (input types `sig`,
/// comma-separated; `property` for Get and Set); returns its output line
/// (`reply HEX` or `error NAME MSG`) and stderr.
pub fn call_as(
    user: &str,
    probe: &str,
    bus: &str,
    (iface, method, property): (&str, &str, Option<&str>),
    sig: &str,
    args: &ProbeArgs,
) -> Result<(String, String)> {
    let mut argv = vec![
        "-u", user, "--", probe, "probe", "--bus", bus, "--iface", iface, "--method", method,
        "--sig", sig,
    ];
    if let Some(p) = property {
        argv.extend(["--property", p]);
    }
    if let Some(id) = &args.request_id {
        argv.extend(["--request-id", id.as_str()]);
    }
    if let Some(m) = &args.message {
        argv.extend(["--message", m.as_str()]);
    }
    let out = run("runuser", &argv)?;
    Ok((
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs `program` with `args` and returns its output.
pub fn run(program: &str, args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(io(program))
}
