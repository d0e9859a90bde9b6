//! Access (issue 7, item 6): real uids — one outside the meter's groups,
//! one in `meter`, one in `meteradmin` — call EVERY method of
//! `org.meterd.Meter1`, the list parsed from the shipped introspection XML so
//! a new method is covered the day it is added. Exactly the allowed calls may
//! get through (succeed, or fail for a non-access reason); the others must
//! get `AccessDenied` from the bus policy or the daemon, and must not move
//! the registers.
//!
//! Who may do what is [`USER_METHODS`] (SPEC "Who may do what"): every
//! other method is for administrators, so a new member is admin-only until
//! someone says otherwise here.
//!
//! After the matrix, the same plain users attack request ids
//! ([`crate::ids`], issue 11): the meter's own ids and one id for two users.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256, Sha384};
use zbus::zvariant::{Fd, StructureBuilder, Value};

use crate::error::{io, Result, TortureError};
use crate::sandbox::{status, Sandbox};
use crate::summary::Tally;

/// Methods the meter's users group may call (SPEC "Who may do what").
pub const USER_METHODS: &[&str] = &[
    "Status",
    "Postmark",
    "PostmarkDigest",
    "Validate",
    "Sign",
    "Postage",
    "Pay",
    "Audit",
    "Report",
    // Read-only lists a user needs to sign (which serial) and to pay (which
    // line); the shipped bus policy and the daemon both allow them.
    "ListCertificates",
    "ListCreditLines",
];

/// The three callers: (user name, supplementary group or none).
const CALLERS: &[(&str, Option<&str>)] = &[
    ("mtorture-out", None),
    ("mtorture-user", Some("meter")),
    ("mtorture-admin", Some("meteradmin")),
];

/// The plain user of the matrix (group `meter` only).
pub const PLAIN_USER: &str = "mtorture-user";
/// A second plain user, for two callers choosing the same request id.
pub const SECOND_USER: &str = "mtorture-user2";

/// A method of the interface with its input signature (one type per arg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Member name.
    pub name: String,
    /// D-Bus type of each input argument, in order.
    pub inputs: Vec<String>,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

/// Methods of `org.meterd.Meter1` in an introspection document.
pub fn parse_methods(xml: &str) -> Result<Vec<Method>> {
    let open = "<interface name=\"org.meterd.Meter1\">";
    let start = xml
        .find(open)
        .ok_or_else(|| TortureError::Setup("no org.meterd.Meter1 interface in the XML".into()))?;
    let body = &xml[start..];
    let body = &body[..body.find("</interface>").unwrap_or(body.len())];
    let mut methods = Vec::new();
    for chunk in body.split("<method ").skip(1) {
        let head_end = chunk.find('>').unwrap_or(chunk.len());
        let name = attr(&chunk[..head_end], "name")
            .ok_or_else(|| TortureError::Setup("a <method> without a name".into()))?;
        let self_closing = chunk[..head_end].ends_with('/');
        let inner = if self_closing {
            ""
        } else {
            &chunk[..chunk.find("</method>").unwrap_or(chunk.len())]
        };
        let mut inputs = Vec::new();
        for arg in inner.split("<arg ").skip(1) {
            let tag = &arg[..arg.find('>').unwrap_or(arg.len())];
            let dir = attr(tag, "direction").unwrap_or_else(|| "in".into());
            if dir == "in" {
                inputs.push(
                    attr(tag, "type")
                        .ok_or_else(|| TortureError::Setup(format!("{name}: arg without type")))?,
                );
            }
        }
        methods.push(Method { name, inputs });
    }
    if methods.is_empty() {
        return Err(TortureError::Setup("no methods in the XML".into()));
    }
    Ok(methods)
}

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

/// The probe (runs as the caller's uid): calls `method` with placeholder
/// arguments of the right types (or those of `args`) on `bus`; prints
/// `reply HEX` (SHA-256 of the reply's body, to compare products) or
/// `error NAME MSG`.
pub async fn probe(bus: &str, method: &str, sig: &[String], args: &ProbeArgs) -> Result<()> {
    let conn = zbus::connection::Builder::address(bus)?.build().await?;
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
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(io(program))
}

fn ensure_users() -> Result<()> {
    for g in ["meter", "meteradmin"] {
        run("groupadd", &["-f", g])?;
    }
    for (user, group) in CALLERS.iter().chain(&[(SECOND_USER, Some("meter"))]) {
        if run("id", &[user])?.status.success() {
            continue;
        }
        let mut args = vec!["--system", "--no-create-home"];
        if let Some(g) = group {
            args.extend(["-G", g]);
        }
        args.push(user);
        let out = run("useradd", &args)?;
        if !out.status.success() {
            return Err(TortureError::Setup(format!(
                "useradd {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

/// Runs the access matrix against the sandbox. Needs root (creates users,
/// switches uid with `runuser`).
/// With `daemon_only`, the bus policy lets everything through: a refusal
/// must be the daemon's own `org.meterd.Meter1.Error.AccessDenied`.
pub async fn run_matrix(sb: &Sandbox, xml_path: &Path, daemon_only: bool) -> Result<Tally> {
    let xml = std::fs::read_to_string(xml_path).map_err(io(xml_path))?;
    let methods = parse_methods(&xml)?;
    ensure_users()?;
    // A copy of this binary the other uids can execute.
    let exe = std::env::current_exe().map_err(io("current_exe"))?;
    let probe_exe = sb.dir.join("meter-torture-probe");
    std::fs::copy(&exe, &probe_exe).map_err(io(&probe_exe))?;
    std::fs::set_permissions(&probe_exe, std::fs::Permissions::from_mode(0o755))
        .map_err(io(&probe_exe))?;
    let probe_s = probe_exe.to_string_lossy().into_owned();

    let root = sb.connect().await?;
    let mut t = Tally::default();
    for (user, group) in CALLERS {
        t.iterations += 1;
        for m in &methods {
            let allowed = match group {
                None => false,
                Some("meter") => USER_METHODS.contains(&m.name.as_str()),
                Some(_) => true,
            };
            let before = status(&root).await?;
            let sig = m.inputs.join(",");
            let (line, stderr) = call_as(
                user,
                &probe_s,
                &sb.bus,
                &m.name,
                &sig,
                &ProbeArgs::default(),
            )?;
            t.operations += 1;
            let after = status(&root).await?;
            let moved = (before.ar, before.dr, before.ct) != (after.ar, after.dr, after.ct);
            let denied = line.split_whitespace().nth(1).is_some_and(|n| {
                if daemon_only {
                    n == "org.meterd.Meter1.Error.AccessDenied"
                } else {
                    n.ends_with(".AccessDenied")
                }
            });
            let verdict = if line.starts_with("unsupported") || line.is_empty() {
                t.fault(format!(
                    "{user} {}: probe could not call it ({line}; {})",
                    m.name,
                    stderr.trim()
                ));
                "?"
            } else if allowed && denied {
                t.fault(format!("{user} {}: denied but allowed: {line}", m.name));
                "WRONGLY DENIED"
            } else if !allowed && !denied {
                t.unauthorized += 1;
                t.note(format!("{user} {}: got through: {line}", m.name));
                "UNAUTHORIZED"
            } else if !allowed && moved {
                t.unauthorized += 1;
                t.note(format!("{user} {}: denied yet the registers moved", m.name));
                "MOVED"
            } else {
                "ok"
            };
            eprintln!(
                "torture: access {user:<15} {:<22} expected {:<7} got {line:.90} -> {verdict}",
                m.name,
                if allowed { "allowed" } else { "denied" }
            );
        }
    }
    crate::ids::run(sb, &probe_s, &mut t).await?;
    Ok(t)
}

/// Runs the probe (a copy of this binary at `probe`) as `user` with
/// `runuser`: one call of `method` (input types `sig`, comma-separated);
/// returns its output line (`reply HEX` or `error NAME MSG`) and stderr.
pub fn call_as(
    user: &str,
    probe: &str,
    bus: &str,
    method: &str,
    sig: &str,
    args: &ProbeArgs,
) -> Result<(String, String)> {
    let mut argv = vec![
        "-u", user, "--", probe, "probe", "--bus", bus, "--method", method, "--sig", sig,
    ];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_xml() {
        let xml = include_str!("../../dbus/org.meterd.Meter1.xml");
        let m = parse_methods(xml).unwrap();
        let pd = m.iter().find(|m| m.name == "PostmarkDigest").unwrap();
        assert_eq!(pd.inputs, vec!["ay", "s"]);
        let st = m.iter().find(|m| m.name == "Status").unwrap();
        assert!(st.inputs.is_empty());
        let v = m.iter().find(|m| m.name == "Validate").unwrap();
        assert_eq!(v.inputs, vec!["h", "ay"]);
        // Out-args and signals are not inputs / methods.
        assert!(!m.iter().any(|m| m.name == "LowFunds"));
        assert!(m.len() >= 11);
    }

    #[test]
    fn self_closing_and_default_direction() {
        let xml = r#"<node><interface name="org.meterd.Meter1">
            <method name="A"/>
            <method name="B"><arg name="x" type="s"/><arg type="t" direction="out"/></method>
            </interface><interface name="other"><method name="C"/></interface></node>"#;
        let m = parse_methods(xml).unwrap();
        assert_eq!(
            m,
            vec![
                Method {
                    name: "A".into(),
                    inputs: vec![]
                },
                Method {
                    name: "B".into(),
                    inputs: vec!["s".into()]
                },
            ]
        );
    }
}
