//! End to end (issue 16): a real meterd on swtpm syncs with `meter-authority
//! serve` on the sandbox's authority directory (the file store). Top-ups are
//! bought over HTTP as a shop would; `meterctl sync` uploads a report,
//! applies the acknowledgement and the pending vouchers and orders. A rerun
//! doubles nothing, a sync stopped after its upload loses nothing, a
//! clear-lock order queued by the operator unlocks the meter, and the
//! provider's book ends where the meter's registers are. The second test
//! runs the same flow with the provider's state on a real PostgreSQL (the
//! starter is meter-authority's `tests/serve_support/postgres.rs`), plus
//! the operator's queued lock order and rate table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use sandbox::{bin_dir, Sandbox};
use serde_json::Value;

use crate::serve_server::{try_http, Reply, Server};

/// The operator's bearer token the provider is started with: so a request
/// from loopback is no operator by itself, and `meterctl sync` must read
/// its pending list with the token its upload earned.
const OPERATOR: &str = "e2e-sync-operator-token";

/// `meter-authority serve` on a free loopback port, requiring [`OPERATOR`]
/// of the operator; stopped when dropped.
pub(crate) struct Provider {
    server: Server,
}

impl Provider {
    /// On the sandbox's authority directory, its state there too or in
    /// the PostgreSQL database `database` (a `--database` argument).
    pub(crate) fn start(sb: &Sandbox, database: Option<&str>) -> Provider {
        let token = sb.arg("operator.token");
        std::fs::write(&token, OPERATOR).unwrap();
        let bin = bin_dir().join("meter-authority");
        let extra = ["--operator-token-file", token.as_str()];
        Provider {
            server: Server::spawn(&bin, &sb.authority_dir(), database, &extra),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// One request with `bearer` (none: no `Authorization`).
    pub(crate) fn as_bearer(
        &self,
        method: &str,
        path: &str,
        json: &str,
        bearer: Option<&str>,
    ) -> Reply {
        let (addr, body) = (&self.server.addr, json.as_bytes());
        try_http(addr, method, path, "application/json", body, bearer).unwrap()
    }

    /// One request as the operator (a shop's or the operator's client): status, body.
    pub(crate) fn http(&self, method: &str, path: &str, json: &str) -> (u16, Vec<u8>) {
        let r = self.as_bearer(method, path, json, Some(OPERATOR));
        (r.status, r.body)
    }

    /// `POST /v1/meters/{meter}/orders/{what}` as the operator, asserting 200.
    pub(crate) fn order(&self, meter: &str, what: &str, json: &str) -> Reply {
        let path = format!("/v1/meters/{meter}/orders/{what}");
        let r = self.as_bearer("POST", &path, json, Some(OPERATOR));
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r
    }

    pub(crate) fn buy(&self, meter: &str, purchase_id: &str, amount: u64) {
        let (status, body) = self.http(
            "POST",
            &format!("/v1/meters/{meter}/topups"),
            &format!(r#"{{"purchase_id":"{purchase_id}","amount":{amount}}}"#),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// The meter's pending list, read as the operator.
    pub(crate) fn pending(&self, meter: &str) -> Value {
        let (status, body) = self.http("GET", &format!("/v1/meters/{meter}/pending"), "");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

/// `meterctl --json sync --provider URL [extra]`, asserting success.
pub(crate) fn sync(sb: &Sandbox, p: &Provider, extra: &[&str]) -> Value {
    let url = p.url();
    let mut args = vec!["sync", "--provider", url.as_str()];
    args.extend_from_slice(extra);
    let v = sb.meterctl_json(&args);
    assert_eq!(v["upload"], "acknowledged", "{v}");
    v
}

/// The (id, result) of every pending object a sync handled.
pub(crate) fn results(v: &Value) -> Vec<(String, String)> {
    v["pending"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        o["id"].as_str().unwrap().to_owned(),
                        o["result"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A top-up bought, a sync stopped after its upload (nothing applied, the
/// voucher pending), then rerun: the voucher `id` is applied once.
fn stopped_then_rerun(sb: &Sandbox, p: &Provider, purchase: &str, amount: u64, id: &str) {
    let meter = sb.meter_id();
    p.buy(&meter, purchase, amount);
    let (_, _, ct) = sb.registers();
    let v = sync(sb, p, &["--stop-after", "upload"]);
    assert_eq!(v["stopped_after"], "upload");
    assert_eq!(sb.registers().2, ct, "nothing applied yet");
    let pending = p.pending(&meter);
    assert_eq!(pending["objects"][0]["id"], id, "{pending}");
    applied_by_sync(sb, p, &[id]);
    assert_eq!(sb.registers().2, ct + amount, "the top-up is credited once");
}

/// The operator locks the meter (command line), then queues a clear-lock
/// order for its lock over HTTP: the next sync (a locked meter still
/// reports) applies it. Returns the lock's nonce.
fn locked_then_cleared(sb: &Sandbox, p: &Provider) -> String {
    let meter = sb.meter_id();
    let order = sb.arg("lock.pem");
    sb.authority(&[
        "lock", "--meter", &meter, "--reason", "audit", "--out", &order,
    ]);
    sb.meterctl_json(&["lock", "apply", &order]);
    let nonce = sb.status()["lock_nonce"].as_str().unwrap().to_owned();
    p.order(&meter, "clear-lock", &format!(r#"{{"nonce":"{nonce}"}}"#));
    let v = applied_by_sync(sb, p, &[&format!("clear-lock/{nonce}")]);
    assert_eq!(v["state"], meter_proto::state::READY, "{v}");
    nonce
}

/// A sync that applies exactly the objects `ids`, in this order.
pub(crate) fn applied_by_sync(sb: &Sandbox, p: &Provider, ids: &[&str]) -> Value {
    let v = sync(sb, p, &[]);
    let want: Vec<(String, String)> = ids
        .iter()
        .map(|id| ((*id).to_owned(), "applied".to_owned()))
        .collect();
    assert_eq!(results(&v), want, "{v}");
    v
}

#[test]
fn meterctl_sync_with_meter_authority_serve() {
    let sb = Sandbox::up(100_000);
    let p = Provider::start(&sb, None);
    let meter = sb.meter_id();

    // Nothing reachable at the URL: a named provider failure, nothing applied.
    let out = sb.meterctl(&["--json", "sync", "--provider", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(meter_proto::exit::PROVIDER));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["kind"], "Provider", "{e}");

    // A top-up bought over HTTP arrives with the sync.
    p.buy(&meter, "shop-1", 5_000);
    let (_, _, ct0) = sb.registers();
    let v = sync(&sb, &p, &[]);
    let vouchers: Vec<_> = results(&v)
        .into_iter()
        .filter(|(id, _)| id.starts_with("voucher/"))
        .collect();
    assert_eq!(vouchers.len(), 1, "{v}");
    assert_eq!(vouchers[0].1, "applied", "{v}");
    let (ar1, dr1, ct1) = sb.registers();
    assert_eq!(ct1, ct0 + 5_000, "the top-up is credited once");

    // Again: nothing pending, nothing doubled (reports may cost their fee).
    let v = sync(&sb, &p, &[]);
    assert!(results(&v).is_empty(), "{v}");
    let (ar2, dr2, ct2) = sb.registers();
    assert_eq!(ct2, ct1, "a rerun credits nothing");
    assert_eq!(ar2 - ar1, dr1 - dr2, "only the report fee moved");

    stopped_then_rerun(&sb, &p, "shop-2", 3_000, "voucher/3");
    let nonce = locked_then_cleared(&sb, &p);

    // A last sync: the provider's book shows everything applied and holds the
    // meter's registers, and nothing is pending.
    let v = sync(&sb, &p, &[]);
    assert!(results(&v).is_empty(), "{v}");
    assert!(p.pending(&meter)["objects"].as_array().unwrap().is_empty());
    let book = meter_authority::book::Shelf::of(&sb.authority_dir(), &meter)
        .unwrap()
        .read()
        .unwrap();
    assert_eq!(book.issued_total(), 100_000 + 5_000 + 3_000);
    assert_eq!(
        book.credited().len(),
        book.vouchers.len(),
        "every voucher credited once"
    );
    assert!(book.applied.contains_key(&format!("clear-lock/{nonce}")));
    let last = book.last().unwrap();
    let (ar, _, ct) = sb.registers();
    assert_eq!(last.registers.control_total, ct);
    assert!(
        last.registers.ascending <= ar,
        "{:?} vs {ar}",
        last.registers
    );
    assert_eq!(book.refused, 0);
}

/// The same flow with the provider's state in PostgreSQL: a cluster the test
/// starts (Debian's `postgresql`; under CI its absence fails the test). The
/// meter starts with no funds (SANDBOX_FUNDS=0): the database's book of a
/// meter starts empty, so everything the meter holds comes through `serve`.
/// It also applies the operator's queued lock order and rate table.
#[test]
fn meterctl_sync_with_serve_on_postgresql() {
    let Some(bin) = crate::postgres::pg_bin() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: PostgreSQL is required (Debian package postgresql, see tests/packages)"
        );
        eprintln!("SKIPPED: no PostgreSQL binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)");
        return;
    };
    let pg = crate::postgres::Postgres::start(&bin);
    let sb = Sandbox::up(0);
    let p = Provider::start(&sb, Some(&pg.url()));
    let meter = sb.meter_id();

    // Two top-ups (one retried) arrive with one sync, each credited once.
    p.buy(&meter, "shop-1", 5_000);
    p.buy(&meter, "shop-1", 5_000);
    p.buy(&meter, "shop-2", 2_000);
    let (_, _, ct0) = sb.registers();
    let v = sync(&sb, &p, &[]);
    assert_eq!(
        results(&v),
        vec![
            ("voucher/1".to_owned(), "applied".to_owned()),
            ("voucher/2".to_owned(), "applied".to_owned())
        ],
        "{v}"
    );
    let (_, _, ct1) = sb.registers();
    assert_eq!(ct1, ct0 + 7_000);

    stopped_then_rerun(&sb, &p, "shop-3", 3_000, "voucher/3");
    let nonce = locked_then_cleared(&sb, &p);

    // Orders the operator queues over HTTP (issue 16): a rate table, then a
    // lock order and its clear-lock; each retry gets the same bytes, each is
    // applied by one sync and listed no more once a report shows it applied.
    let example =
        std::fs::read_to_string(sandbox::repo().join("meter-authority/rates.example.toml"))
            .unwrap();
    let v2 = example.replacen("version = 1", "version = 2", 1);
    let rates = |toml: &str| {
        p.http(
            "POST",
            &format!("/v1/meters/{meter}/orders/rates"),
            &serde_json::json!({ "toml": toml }).to_string(),
        )
    };
    let (status, table) = rates(&v2);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&table));
    assert_eq!(rates(&v2), (200, table.clone()), "a retry: the same table");
    let other = v2.replacen("postmark = 500", "postmark = 600", 1);
    assert_eq!(rates(&other).0, 409, "version 2 was another table");
    let v = sync(&sb, &p, &[]);
    assert_eq!(
        results(&v),
        vec![("rates/v2".to_owned(), "applied".to_owned())],
        "{v}"
    );
    let lock =
        |path: &str, json: &str| p.http("POST", &format!("/v1/meters/{meter}/orders/{path}"), json);
    let order = r#"{"nonce":"op-lock-1","reason":"audit"}"#;
    let (status, der) = lock("lock", order);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&der));
    assert_eq!(lock("lock", order), (200, der), "a retry: the same order");
    let v = sync(&sb, &p, &[]);
    assert_eq!(
        results(&v),
        vec![("lock-order/op-lock-1".to_owned(), "applied".to_owned())],
        "{v}"
    );
    assert_eq!(v["state"], meter_proto::state::LOCKED, "{v}");
    // The meter's lock carries a nonce of its own: the clear-lock names it.
    let forced = sb.status()["lock_nonce"].as_str().unwrap().to_owned();
    let clear = format!(r#"{{"nonce":"{forced}"}}"#);
    assert_eq!(lock("clear-lock", &clear).0, 200);
    let v = sync(&sb, &p, &[]);
    assert_eq!(
        results(&v),
        vec![(format!("clear-lock/{forced}"), "applied".to_owned())],
        "{v}"
    );
    assert_eq!(v["state"], meter_proto::state::READY, "{v}");

    // A last sync: nothing pending, and the database holds what the meter
    // holds: three purchases, each credited once, the order applied, every
    // upload acknowledged, the last acknowledged control total the meter's.
    let v = sync(&sb, &p, &[]);
    assert!(results(&v).is_empty(), "{v}");
    assert!(p.pending(&meter)["objects"].as_array().unwrap().is_empty());
    assert_eq!(
        pg.psql("SELECT count(*), sum(amount) FROM purchases"),
        "3|10000"
    );
    assert_eq!(
        pg.psql("SELECT count(*) = count(*) FILTER (WHERE accepted) FROM uploads"),
        "t"
    );
    let book = pg.psql(&format!(
        "SELECT book::text FROM meters WHERE meter_id = '{meter}'"
    ));
    let book: meter_authority::book::Book = serde_json::from_str(&book).unwrap();
    assert_eq!(book.issued_total(), 10_000);
    assert_eq!(book.credited().len(), 3, "every voucher credited once");
    for k in [
        format!("clear-lock/{nonce}"),
        "rates/v2".to_owned(),
        "lock-order/op-lock-1".to_owned(),
        format!("clear-lock/{forced}"),
    ] {
        assert!(book.applied.contains_key(&k), "{k} not applied");
    }
    assert_eq!(book.refused, 0);
    let (ar, _, ct) = sb.registers();
    let last = book.last().unwrap();
    assert_eq!(last.registers.control_total, ct);
    assert!(
        last.registers.ascending <= ar,
        "{:?} vs {ar}",
        last.registers
    );
}
