//! The fleet load test (issue 16, items 3-4): N simulated meters against
//! `meter-authority serve` on a real PostgreSQL the test starts itself,
//! each certified over the API, buying top-ups, uploading reports with
//! their ledger segments and settling payments, concurrently; at the end
//! every meter's registers and every voucher, acknowledgement and
//! settlement are re-derived from the database and compared with what the
//! clients were answered: nothing lost, nothing doubled. Also with the
//! server SIGKILLed and with PostgreSQL crashed (immediate stop) mid-load.
//! Beside the simulated load runs one real meterd on swtpm (`real.rs`),
//! certified by the same server, buying, syncing and selling, and held to
//! the same end check (not in the kill tests).
//!
//! CI runs the reduced form (`fleet_reduced`: 60 meters); the full run is
//! `tests/fleet --meters 10000` (environment `FLEET_METERS`, `FLEET_ROUNDS`,
//! `FLEET_ROWS`, `FLEET_CLIENTS`, `FLEET_CONNECTIONS`, `FLEET_REAL_POSTMARKS`:
//! the real meter's sales, 0 for no real meter), which prints the
//! table of figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../serve_support/mod.rs"]
mod serve_support;

mod ledger;
mod real;
mod sim;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serve_support::*;
use sim::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn new_fleet_authority() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir) = new_authority();
    add_creditor(&dir, "Bank", CREDITOR);
    (tmp, dir)
}

fn lines(s: String) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// Re-derives everything from the database and compares it with what the
/// clients were answered (the real meter's vouchers and acknowledgements
/// are in the tally too).
fn check(pg: &Postgres, plan: &Plan, t: &Tally, real: Option<&real::Outcome>) {
    let n = plan.meters as u64;
    let r = plan.rounds;
    // What the real meter adds: vouchers, acknowledgements, postmarks
    // (index rows), certifications.
    let (rv, ra, rp, rc) = real.map_or((0, 0, 0, 0), |o| {
        (o.vouchers.len() as u64, o.acks.len() as u64, o.postmarks, 1)
    });
    // Vouchers: every voucher answered is in the database once, with its
    // sequence and amount, and nothing else is.
    let want: Vec<String> = t
        .vouchers
        .iter()
        .map(|((m, p), (s, a))| format!("{m}|{p}|{s}|{a}"))
        .collect();
    assert_eq!(want.len() as u64, n * r + rv);
    let have = lines(pg.psql(
        "SELECT meter_id || '|' || purchase_id || '|' || sequence || '|' || amount FROM purchases",
    ));
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert!(
        have == want_sorted,
        "purchases differ from the vouchers answered"
    );
    // Each meter's book holds exactly its purchases.
    assert_eq!(
        pg.psql(
            "SELECT (SELECT count(*) FROM meters m CROSS JOIN LATERAL jsonb_each_text(m.book->'vouchers') v \
              JOIN purchases p ON p.meter_id = m.meter_id AND p.sequence = v.key::bigint \
              AND p.amount = v.value::bigint), \
             (SELECT count(*) FROM meters m, jsonb_each_text(m.book->'vouchers'))"
        ),
        format!("{0}|{0}", n * r + rv)
    );
    // Acknowledgements: every ack answered is an acknowledged point, once.
    assert_eq!(t.acks.len() as u64, n * r + ra);
    assert!(t.acks.values().all(|c| *c == 1));
    let want: Vec<String> = t.acks.keys().map(|(m, s)| format!("{m}|{s}")).collect();
    let have = lines(pg.psql(
        "SELECT m.meter_id || '|' || (p->>'report_sequence') FROM meters m, \
         jsonb_array_elements(m.book->'acknowledged') p",
    ));
    let mut want_sorted = want;
    want_sorted.sort();
    assert!(
        have == want_sorted,
        "acknowledged points differ from the acks answered"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FILTER (WHERE accepted), count(*) FILTER (WHERE NOT accepted) FROM uploads"),
        format!("{}|0", n * r + ra)
    );
    // Registers re-derived: control total = the vouchers bought, ascending =
    // the postmarks sold, AR + DR = CT, for every simulated meter's last
    // point (the real meter's: `real::check`).
    let real_id = real.map_or("", |o| o.id.as_str());
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM meters m, LATERAL (SELECT m.book->'acknowledged'->-1->'registers' g) x \
             WHERE m.meter_id <> '{real_id}' AND (x.g->>'control_total')::bigint = (SELECT sum(amount) FROM purchases p WHERE p.meter_id = m.meter_id) \
             AND (x.g->>'ascending')::bigint = {} \
             AND (x.g->>'ascending')::bigint + (x.g->>'descending')::bigint = (x.g->>'control_total')::bigint",
            r * plan.rows * PRICE
        )),
        n.to_string()
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM index_rows"),
        (n * r * plan.rows + rp).to_string()
    );
    // Settlements: every one answered is in the database once.
    assert_eq!(t.settled.len() as u64, n * r);
    let want: Vec<String> = t.settled.iter().map(|(s, a)| format!("{s}|{a}")).collect();
    let have = lines(pg.psql("SELECT payment_serial || '|' || amount FROM settlements"));
    let mut want_sorted = want;
    want_sorted.sort();
    assert!(have == want_sorted, "settlements differ from the answers");
    assert_eq!(
        pg.psql("SELECT count(*) FROM certifications"),
        (n + rc).to_string()
    );
    // The register: an identity and a postmark certificate per meter (the
    // real one too), each with its own serial (the primary key) from the database's range.
    assert_eq!(
        pg.psql(
            "SELECT count(*), count(DISTINCT subject_cn) FILTER (WHERE profile = 'MeterIdentity'), \
             count(DISTINCT subject_cn) FILTER (WHERE profile = 'Postmark'), \
             count(*) FILTER (WHERE serial < 4294967296) FROM certificates"
        ),
        format!("{}|{}|{}|0", 2 * (n + rc), n + rc, n + rc)
    );
    if let Some(o) = real {
        real::check(pg, o);
    }
}

fn db_size(pg: &Postgres) -> u64 {
    pg.psql("SELECT pg_database_size(current_database())")
        .parse()
        .unwrap()
}

/// Runs the fleet; `chaos` (if any) runs beside the load on the provider.
/// What runs beside the load: kills the server or the database.
type Chaos<'a> = &'a (dyn Fn(&mut Provider, &mut Postgres, &Shared) + Sync);

fn run(plan: &Plan, chaos: Option<Chaos<'_>>) -> u64 {
    let Some(mut pg) = postgres() else { return 0 };
    let (_tmp, dir) = new_fleet_authority();
    let real = (plan.real_postmarks > 0).then(|| real::RealMeter::prepare(&dir));
    let before_last = || real.iter().for_each(real::RealMeter::wait);
    let mut provider = Provider::start(&dir, &pg.url(), plan.connections);
    let sh = Arc::new(Shared {
        addr: RwLock::new(provider.addr.clone()),
        tally: Mutex::new(Tally::default()),
    });
    let empty = db_size(&pg);
    let t = Instant::now();
    let meters = on_clients(plan.meters, plan.clients, |i| enrol(&sh, &dir, plan, i));
    let enrolled = t.elapsed();
    let after_enrol = db_size(&pg);
    let (took, outcome) = std::thread::scope(|s| {
        let loader = s.spawn(|| load(&sh, plan, meters, &before_last));
        let meter = real
            .as_ref()
            .map(|m| s.spawn(|| m.run(&sh, plan.real_postmarks)));
        if let Some(chaos) = chaos {
            chaos(&mut provider, &mut pg, &sh);
        }
        (loader.join().unwrap(), meter.map(|m| m.join().unwrap()))
    });
    let after = db_size(&pg);
    let mut tally = sh.tally.lock().unwrap();
    check(&pg, plan, &tally, outcome.as_ref());

    let n = plan.meters as f64;
    let reports = (plan.meters as u64 * plan.rounds) as f64;
    let secs = took.as_secs_f64();
    let per_round = (after.saturating_sub(after_enrol)) as f64 / reports;
    let base = (after_enrol.saturating_sub(empty)) as f64 / n;
    let mut out = String::new();
    out += &format!(
        "fleet: {} meters, {} rounds (1 top-up, {} postmarks, 1 report, 1 settlement each), {} clients, {} connections\n",
        plan.meters, plan.rounds, plan.rows, plan.clients, plan.connections
    );
    out += &format!(
        "  enrolment (certify + credit line): {:.1} s, {:.1} meters/s\n",
        enrolled.as_secs_f64(),
        n / enrolled.as_secs_f64()
    );
    out += &format!("  load: {secs:.1} s; reports reconciled/s {:.1}; top-ups/s {:.1}; settlements/s {:.1}; retries {}\n",
        reports / secs, reports / secs, reports / secs, tally.retries);
    out += "  endpoint     count     p50 ms    p99 ms    max ms\n";
    for (what, v) in tally.latency.iter_mut() {
        let c = v.len();
        let (p50, p99) = (percentile(v, 0.50), percentile(v, 0.99));
        let max = v.iter().max().copied().unwrap_or(Duration::ZERO);
        out += &format!(
            "  {what:<10} {c:>7} {:>10.1} {:>9.1} {:>9.1}\n",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    out += &format!(
        "  database: {:.1} MB total, {:.1} kB per meter after enrolment, {:.1} kB per meter-round ({} rows)\n",
        after as f64 / 1e6, base / 1e3, per_round / 1e3, plan.rows
    );
    let tables = pg.psql(
        "SELECT string_agg(relname || ' ' || round(pg_total_relation_size(oid) / 1e6, 1) || ' MB', ', ' \
         ORDER BY pg_total_relation_size(oid) DESC) FROM pg_class WHERE relname IN \
         ('meters', 'purchases', 'uploads', 'index_rows', 'settlements', 'certifications', 'certificates')",
    );
    out += &format!("  tables (with indexes and TOAST): {tables}\n");
    out += &format!(
        "  per meter-year at 1 round a day (365 reports, 365 top-ups and settlements, {} postmarks): ~{:.1} MB (linear extrapolation)\n",
        365 * plan.rows,
        (base + 365.0 * per_round) / 1e6
    );
    if let Some(o) = &outcome {
        out += &real::summary(o);
    }
    out += "  zero lost or doubled vouchers, acknowledgements, settlements (re-derived from the database)\n";
    eprint!("{out}");
    if let Ok(path) = std::env::var("FLEET_REPORT") {
        std::fs::write(path, &out).unwrap();
    }
    drop(provider);
    tally.retries
}

fn plan_from_env(meters: usize) -> Plan {
    Plan {
        meters: env_or("FLEET_METERS", meters),
        rounds: env_or("FLEET_ROUNDS", 3) as u64,
        rows: env_or("FLEET_ROWS", 40) as u64,
        clients: env_or("FLEET_CLIENTS", 8),
        connections: env_or("FLEET_CONNECTIONS", 8),
        real_postmarks: env_or("FLEET_REAL_POSTMARKS", 3) as u64,
    }
}

#[test]
fn fleet_reduced() {
    run(&plan_from_env(60), None);
}

/// Waits until the clients have `n` more acknowledgements than now.
fn after_acks(sh: &Shared, n: usize) {
    let start = sh.tally.lock().unwrap().acks.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while sh.tally.lock().unwrap().acks.len() < start + n {
        assert!(Instant::now() < deadline, "the load stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the kill tests' load (24 meters, 8 clients, 4 connections) with
/// `chaos` striking twice, 20 acknowledgements apart, and asserts that it
/// cut requests short (`what`: the failure's words), unless PostgreSQL is
/// missing.
fn survives(chaos: Chaos<'_>, what: &str) {
    let plan = Plan {
        meters: 24,
        rounds: 4,
        rows: 20,
        clients: 8,
        connections: 4,
        real_postmarks: 0,
    };
    let retries = run(&plan, Some(chaos));
    assert!(retries > 0 || pg_bin().is_none(), "{what}");
}

#[test]
fn fleet_survives_server_sigkill() {
    survives(
        &|p: &mut Provider, _pg: &mut Postgres, sh: &Shared| {
            for _ in 0..2 {
                after_acks(sh, 20);
                p.kill_and_restart();
                *sh.addr.write().unwrap() = p.addr.clone();
            }
        },
        "the kills cut no request short",
    );
}

#[test]
fn fleet_survives_postgresql_crash() {
    survives(
        &|_p: &mut Provider, pg: &mut Postgres, sh: &Shared| {
            for _ in 0..2 {
                after_acks(sh, 20);
                pg.crash_and_restart();
            }
        },
        "the crashes cut no request short",
    );
}
