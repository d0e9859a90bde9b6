//! The mark an authority directory carries once its meters live in a
//! database: `<dir>/database`, the database's address with any password
//! removed, written by `serve --database` (and by the command line with
//! `--database`).
//!
//! Why: the directory keeps its own voucher counters and meter books
//! (`state.json`, `meters/`), which a database store never reads. A
//! command run on the directory alone, for a meter whose book is in the
//! database, would take a voucher sequence the database already handed
//! out (the meter applies one voucher and refuses the other as a replay: a
//! paid voucher lost), or reconcile a report against a book that is not
//! the meter's. The mark also names WHICH database: its second line is the
//! database's identity (`store_identity`, migration 0006), and a marked
//! directory refuses any other database ([`bind`]): one that has never
//! seen its meters would start them at voucher 1 again, a sequence the
//! first database already sold. So the commands that change that state (`serve`,
//! `voucher`, `inspect`, `settle`, `lookup`, `certify-meter`) refuse a
//! marked directory without `--database` ([`refuse_files`]); `certify` and
//! `revoke`, whose records are the directory's in either mode, do not. An
//! operator who really leaves the database removes the file.

use std::path::Path;

use crate::{AuthorityError, Result};

/// The file name of the mark in the authority directory.
pub const MARKER: &str = "database";

/// `url` without its password, in either syntax tokio-postgres reads: a
/// URL (`postgres://user:secret@host/db?password=secret`) or `key=value`
/// pairs (`host=/run/postgresql password='se cret'`). The mark is a plain
/// file other accounts may read; it names the database, never a secret.
pub fn redact(url: &str) -> String {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        redact_url(url)
    } else {
        redact_pairs(url)
    }
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}{hosts}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| {
                    let key = kv.split('=').next().unwrap_or_default();
                    !key.eq_ignore_ascii_case("password")
                })
                .collect();
            match kept.is_empty() {
                true => path.to_owned(),
                false => format!("{path}?{}", kept.join("&")),
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Splits `key = value` pairs as libpq does (a value may be quoted with
/// `'`, with `\` escaping) and drops the `password` one.
fn redact_pairs(text: &str) -> String {
    let mut kept = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        // The key, up to `=`, then the value.
        let mut key_end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key_end = i + c.len_utf8();
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_some_and(|&(_, c)| c == '=') {
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut end = key_end;
        if chars.peek().is_some_and(|&(_, c)| c == '\'') {
            chars.next();
            let mut escaped = false;
            for (i, c) in chars.by_ref() {
                end = i + c.len_utf8();
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '\'') => break,
                    _ => {}
                }
            }
        } else {
            while let Some(&(i, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                end = i + c.len_utf8();
                chars.next();
            }
        }
        let key = &text[start..key_end];
        if !key.eq_ignore_ascii_case("password") {
            kept.push(&text[start..end.max(key_end)]);
        }
    }
    kept.join(" ")
}

/// The prefix of the mark's identity line.
const ID_LINE: &str = "database-id: ";

/// A directory's mark: the database's address (no password) and, since
/// migration 0006, its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub database: String,
    pub id: Option<String>,
}

/// Binds `dir` to the database at `url` whose identity is `id`: marks an
/// unmarked directory; refuses a directory marked with another database
/// (another id, or, in a mark written before identities, another address),
/// changing nothing; otherwise brings the mark up to date (the address the
/// operator uses now, the id).
pub fn bind(dir: &Path, url: &str, id: &str) -> Result<()> {
    let database = redact(url);
    if let Some(old) = read(dir)? {
        let same = match &old.id {
            Some(old_id) => old_id == id,
            None => old.database == database,
        };
        if !same {
            return Err(AuthorityError::Invalid(format!(
                "another database: the meters of this authority live in the database {} \
                 (id {}, recorded in {}); {database} is another database (id {id}), which \
                 would start them at voucher 1 again and sell sequences the first one \
                 already sold. Give the first database's address; a copy of it \
                 (pg_dump and restore) keeps its id. Only if that database is gone for \
                 good and its meters were moved some other way, remove that file",
                old.database,
                old.id.as_deref().unwrap_or("not recorded"),
                dir.join(MARKER).display()
            )));
        }
    }
    let text = format!("{database}\n{ID_LINE}{id}\n");
    let path = dir.join(MARKER);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{MARKER}.tmp"));
    std::fs::write(&tmp, text.as_bytes()).map_err(|e| AuthorityError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| AuthorityError::io(&path, e))
}

/// The mark of `dir`, if any.
pub fn read(dir: &Path) -> Result<Option<Mark>> {
    let path = dir.join(MARKER);
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuthorityError::io(&path, e)),
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let database = lines.next().unwrap_or_default().to_owned();
    let id = lines.find_map(|l| {
        l.strip_prefix(ID_LINE.trim_end())
            .map(|v| v.trim().to_owned())
    });
    Ok(Some(Mark { database, id }))
}

/// The database `dir` is marked with (its address), if any.
pub fn marked(dir: &Path) -> Result<Option<String>> {
    Ok(read(dir)?.map(|m| m.database))
}

/// Refuses `command` on the directory's own files when `dir` is marked:
/// its meters' state is in the database, and the files would hand out what
/// the database already did (see the module docs).
pub fn refuse_files(dir: &Path, command: &str) -> Result<()> {
    match marked(dir)? {
        None => Ok(()),
        Some(db) => Err(AuthorityError::Invalid(format!(
            "{command}: the meters of this authority live in the database {db} \
             (recorded in {}); without --database this command would use the \
             directory's own counters and books and could issue what the database \
             already issued. Give --database URL (or METER_AUTHORITY_DATABASE); \
             if the database is retired for good, remove that file",
            dir.join(MARKER).display()
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed() {
        assert_eq!(
            redact("postgres://meter:s3cret@db.example:5432/meter?password=x&sslmode=disable"),
            "postgres://meter@db.example:5432/meter?sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://u@h/db?password=x"),
            "postgresql://u@h/db"
        );
        assert_eq!(
            redact("postgres:///db?host=/run/postgresql"),
            "postgres:///db?host=/run/postgresql"
        );
        assert_eq!(
            redact("host=/tmp/sock user=postgres password='a b\\' c' dbname=postgres"),
            "host=/tmp/sock user=postgres dbname=postgres"
        );
        assert_eq!(
            redact("host=h password = secret dbname=d"),
            "host=h dbname=d"
        );
    }

    #[test]
    fn a_marked_directory_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        refuse_files(tmp.path(), "voucher").unwrap();
        bind(tmp.path(), "postgres://u:p@h/db", "id-a").unwrap();
        assert_eq!(
            marked(tmp.path()).unwrap().as_deref(),
            Some("postgres://u@h/db")
        );
        let e = refuse_files(tmp.path(), "voucher").unwrap_err().to_string();
        assert!(e.contains("--database") && !e.contains(":p@"), "{e}");
    }

    #[test]
    fn a_mark_binds_one_database() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        bind(dir, "postgres://u:p@h/db", "id-a").unwrap();
        let first = std::fs::read(dir.join(MARKER)).unwrap();
        // Another database, even at the same address: refused, mark kept.
        let e = bind(dir, "postgres://u:p@h/db", "id-b")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another database") && e.contains("id-a") && e.contains("id-b"),
            "{e}"
        );
        assert!(!e.contains(":p@"), "{e}");
        assert_eq!(std::fs::read(dir.join(MARKER)).unwrap(), first);
        // The same database at another address: accepted, the mark follows.
        bind(dir, "host=/run/postgresql dbname=db", "id-a").unwrap();
        assert_eq!(
            read(dir).unwrap(),
            Some(Mark {
                database: "host=/run/postgresql dbname=db".into(),
                id: Some("id-a".into())
            })
        );
    }

    #[test]
    fn a_mark_without_an_id_binds_its_address() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // As written before identities: the address alone.
        std::fs::write(dir.join(MARKER), "postgres://u@h/db\n").unwrap();
        assert_eq!(marked(dir).unwrap().as_deref(), Some("postgres://u@h/db"));
        let e = bind(dir, "postgres://u@h/other", "id-b")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another database") && e.contains("not recorded"),
            "{e}"
        );
        bind(dir, "postgres://u:p@h/db", "id-a").unwrap();
        assert_eq!(read(dir).unwrap().unwrap().id.as_deref(), Some("id-a"));
        // From now on the id decides.
        assert!(bind(dir, "postgres://u@h/db", "id-c").is_err());
    }
}
