//! Access (issue 7, item 6; issue 11, hole 6): real uids — one outside the
//! meter's groups, one in `meter`, one in `meteradmin` — call EVERY method
//! of `org.meterd.Meter1` and read EVERY property (`Get` each, `GetAll`,
//! `Set`), the lists parsed from the shipped introspection XML so a new
//! member is covered the day it is added. Exactly the allowed calls may get
//! through (succeed, or fail for a non-access reason); the others must get
//! `AccessDenied` from the bus policy or the daemon, and must not move the
//! registers.
//!
//! Who may do what is [`USER_METHODS`] (SPEC "Who may do what"): every
//! other method is for administrators, so a new member is admin-only until
//! someone says otherwise here; properties are read by users, `Set` is an
//! administrator's call (no property is writable).
//!
//! The two fences must agree: the run on the shipped policy writes its
//! verdicts (`--verdicts-out`), the run on a permissive bus (the daemon
//! alone) compares its own with them (`--verdicts-in`), call by call.

//!
//! After the matrix, the same plain users attack request ids
//! ([`crate::ids`], issue 11): the meter's own ids and one id for two users.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{io, Result, TortureError};
use crate::probe::{call_as, run, ProbeArgs, PROPERTIES, SECOND_USER};
use crate::sandbox::{status, Sandbox};
use crate::summary::Tally;

/// Methods the meter's users group may call (SPEC "Who may do what").
pub const USER_METHODS: &[&str] = &[
    "Status",
    "Postmark",
    "PostmarkDigest",
    "TimeStamp",
    "Validate",
    "Sign",
    "Decrypt",
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

/// Properties of `org.meterd.Meter1` in an introspection document.
pub fn parse_properties(xml: &str) -> Vec<String> {
    let open = "<interface name=\"org.meterd.Meter1\">";
    let Some(start) = xml.find(open) else {
        return Vec::new();
    };
    let body = &xml[start..];
    let body = &body[..body.find("</interface>").unwrap_or(body.len())];
    body.split("<property ")
        .skip(1)
        .filter_map(|tag| attr(&tag[..tag.find('>').unwrap_or(tag.len())], "name"))
        .collect()
}

/// One call of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// How it is reported (`Status`, `Get Descending`, `GetAll`, `Set`).
    pub label: String,
    /// Interface of the call.
    pub iface: String,
    /// Member called.
    pub member: String,
    /// Input types (methods of org.meterd.Meter1) or the property (Properties).
    pub sig: Vec<String>,
    /// Property named by Get / Set.
    pub property: Option<String>,
    /// Whether a member of `meter` may make it.
    pub user: bool,
}

/// Every call the matrix makes: each method, each property read, GetAll, Set.
pub fn calls(methods: &[Method], properties: &[String]) -> Vec<Call> {
    let mut v: Vec<Call> = methods
        .iter()
        .map(|m| Call {
            label: m.name.clone(),
            iface: meter_proto::INTERFACE.into(),
            member: m.name.clone(),
            sig: m.inputs.clone(),
            property: None,
            user: USER_METHODS.contains(&m.name.as_str()),
        })
        .collect();
    let prop = |label: String, member: &str, property: Option<&String>, user: bool| Call {
        label,
        iface: PROPERTIES.into(),
        member: member.into(),
        sig: Vec::new(),
        property: property.cloned(),
        user,
    };
    for p in properties {
        v.push(prop(format!("Get {p}"), "Get", Some(p), true));
    }
    v.push(prop("GetAll".into(), "GetAll", None, true));
    if let Some(p) = properties.first() {
        v.push(prop(format!("Set {p}"), "Set", Some(p), false));
    }
    v
}

/// A refusal, told apart by fence: with `daemon_only` it must be the
/// daemon's (its own error name for methods; for properties, which can only
/// answer `org.freedesktop.DBus.Error.*`, the standard name with the
/// daemon's message naming the group).
fn is_denied(line: &str, property: bool, daemon_only: bool) -> bool {
    let mut words = line.splitn(3, ' ');
    let (Some("error"), Some(name)) = (words.next(), words.next()) else {
        return false;
    };
    let msg = words.next().unwrap_or_default();
    if !daemon_only {
        return name.ends_with(".AccessDenied");
    }
    if property {
        name == "org.freedesktop.DBus.Error.AccessDenied"
            && msg.contains("needs membership of group")
    } else {
        name == "org.meterd.Meter1.Error.AccessDenied"
    }
}

/// Verdicts of one run: (user, call label) -> allowed.
type Verdicts = HashMap<(String, String), bool>;

fn read_verdicts(path: &Path) -> Result<Verdicts> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut v = Verdicts::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        if let (Some(u), Some(l), Some(a)) = (f.next(), f.next(), f.next()) {
            v.insert((u.to_string(), l.to_string()), a == "allowed");
        }
    }
    Ok(v)
}

fn write_verdicts(path: &Path, v: &Verdicts) -> Result<()> {
    let mut lines: Vec<String> = v
        .iter()
        .map(|((u, l), a)| format!("{u}\t{l}\t{}", if *a { "allowed" } else { "denied" }))
        .collect();
    lines.sort();
    std::fs::write(path, lines.join("\n") + "\n").map_err(io(path))
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

/// Where a run's verdicts go, or which verdicts it must reproduce.
#[derive(Debug, Default, Clone)]
pub struct VerdictFiles {
    /// Write this run's verdicts here (the shipped-policy run).
    pub out: Option<std::path::PathBuf>,
    /// Compare this run's verdicts with these (the daemon-only run).
    pub compare: Option<std::path::PathBuf>,
}

/// Runs the access matrix against the sandbox. Needs root (creates users,
/// switches uid with `runuser`).
/// With `daemon_only`, the bus policy lets everything through: a refusal
/// must be the daemon's own (see [`is_denied`]).
pub async fn run_matrix(
    sb: &Sandbox,
    xml_path: &Path,
    daemon_only: bool,
    files: &VerdictFiles,
) -> Result<Tally> {
    let xml = std::fs::read_to_string(xml_path).map_err(io(xml_path))?;
    let calls = calls(&parse_methods(&xml)?, &parse_properties(&xml));
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
    let mut verdicts = Verdicts::new();
    for (user, group) in CALLERS {
        t.iterations += 1;
        for c in &calls {
            let allowed = match group {
                None => false,
                Some("meter") => c.user,
                Some(_) => true,
            };
            let before = status(&root).await?;
            let sig = c.sig.join(",");
            let (line, stderr) = call_as(
                user,
                &probe_s,
                &sb.bus,
                (&c.iface, &c.member, c.property.as_deref()),
                &sig,
                &ProbeArgs::default(),
            )?;
            t.operations += 1;
            let after = status(&root).await?;
            let moved = (before.ct, before.postage.2, before.pairs())
                != (after.ct, after.postage.2, after.pairs());
            let denied = is_denied(&line, c.iface == PROPERTIES, daemon_only);
            verdicts.insert((user.to_string(), c.label.clone()), !denied);
            let verdict = if line.starts_with("unsupported") || line.is_empty() {
                t.fault(format!(
                    "{user} {}: probe could not call it ({line}; {})",
                    c.label,
                    stderr.trim()
                ));
                "?"
            } else if allowed && denied {
                t.fault(format!("{user} {}: denied but allowed: {line}", c.label));
                "WRONGLY DENIED"
            } else if !allowed && !denied {
                t.unauthorized += 1;
                t.note(format!("{user} {}: got through: {line}", c.label));
                "UNAUTHORIZED"
            } else if !allowed && moved {
                t.unauthorized += 1;
                t.note(format!(
                    "{user} {}: denied yet the registers moved",
                    c.label
                ));
                "MOVED"
            } else {
                "ok"
            };
            eprintln!(
                "torture: access {user:<15} {:<22} expected {:<7} got {line:.90} -> {verdict}",
                c.label,
                if allowed { "allowed" } else { "denied" }
            );
        }
    }
    crate::ids::run(sb, &probe_s, &mut t).await?;
    if let Some(path) = &files.out {
        write_verdicts(path, &verdicts)?;
    }
    if let Some(path) = &files.compare {
        compare(&read_verdicts(path)?, &verdicts, &mut t);
    }
    Ok(t)
}

/// Faults every call on which the shipped policy (`policy`) and the
/// daemon alone (`daemon`) gave different verdicts, or that one run lacks.
fn compare(policy: &Verdicts, daemon: &Verdicts, t: &mut Tally) {
    let word = |a: bool| if a { "allowed" } else { "denied" };
    let mut keys: Vec<&(String, String)> = policy.keys().chain(daemon.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (policy.get(k), daemon.get(k)) {
            (Some(p), Some(d)) if p == d => {}
            (p, d) => t.fault(format!(
                "{} {}: the shipped policy says {}, the daemon {}",
                k.0,
                k.1,
                p.map_or("nothing", |a| word(*a)),
                d.map_or("nothing", |a| word(*a))
            )),
        }
    }
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
    fn every_property_is_read_and_set_is_for_admins() {
        let xml = include_str!("../../dbus/org.meterd.Meter1.xml");
        let props = parse_properties(xml);
        assert!(props.contains(&"Descending".to_string()) && props.len() >= 9);
        let c = calls(&parse_methods(xml).unwrap(), &props);
        let get = c.iter().find(|c| c.label == "Get Descending").unwrap();
        assert!(get.user && get.iface == PROPERTIES);
        assert!(c.iter().any(|c| c.label == "GetAll" && c.user));
        assert!(c.iter().any(|c| c.member == "Set" && !c.user));
        assert!(c.iter().any(|c| c.label == "Status" && c.user));
        assert!(c.iter().any(|c| c.label == "Recharge" && !c.user));
    }

    #[test]
    fn refusals_are_told_apart_by_fence() {
        let bus = "error org.freedesktop.DBus.Error.AccessDenied Rejected send message";
        let daemon_prop =
            "error org.freedesktop.DBus.Error.AccessDenied Descending needs membership of group meter";
        let daemon_method = "error org.meterd.Meter1.Error.AccessDenied Status needs membership";
        assert!(is_denied(bus, true, false) && is_denied(bus, false, false));
        assert!(!is_denied(bus, true, true) && !is_denied(bus, false, true));
        assert!(is_denied(daemon_prop, true, true));
        assert!(is_denied(daemon_method, false, true));
        assert!(!is_denied("reply", false, false));
        assert!(!is_denied(
            "error org.meterd.Meter1.Error.InvalidInput x",
            false,
            false
        ));
    }

    #[test]
    fn verdicts_must_match_call_by_call() {
        let k = |u: &str, l: &str| (u.to_string(), l.to_string());
        let policy: Verdicts = [(k("a", "Status"), true), (k("a", "GetAll"), false)].into();
        let mut t = Tally::default();
        compare(&policy, &policy.clone(), &mut t);
        assert_eq!(t.faults, 0);
        let daemon: Verdicts = [(k("a", "Status"), true), (k("a", "GetAll"), true)].into();
        compare(&policy, &daemon, &mut t);
        assert_eq!(t.faults, 1);
        let missing: Verdicts = [(k("a", "Status"), true)].into();
        compare(&policy, &missing, &mut t);
        assert_eq!(t.faults, 2);
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
