//! The PostgreSQL store (`serve --database postgres://...`).
//!
//! Migrations (`migrations/*.sql`, embedded) are applied at connection under
//! an advisory lock, each in its own transaction, recorded in
//! `schema_migrations`. Every operation is one transaction at READ COMMITTED
//! that first locks the meter's row (`INSERT ... ON CONFLICT DO NOTHING`,
//! then `SELECT ... FOR UPDATE`): operations on one meter are serialised,
//! and a statement run after the lock sees everything committed before it,
//! so a retried purchase or upload finds the first one's answer. Connections
//! come from a small fixed pool, each reopened when found closed (PostgreSQL
//! restarted); TLS is not used (loopback or a unix socket).

mod pending;

use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};
use tokio_postgres::{Client, NoTls, Transaction};

use super::{
    check_purchase_id, Answer, Fut, Look, MemRows, Purchase, Purchased, Reconcile, Result,
    SignVoucher, Store, StoreError, Totals,
};
use crate::book::{Book, IndexRow};
use crate::lookup::Looked;

/// The migrations, in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_provider.sql")),
    (2, include_str!("../../migrations/0002_orders.sql")),
    (3, include_str!("../../migrations/0003_settle_certify.sql")),
    (
        4,
        include_str!("../../migrations/0004_purchase_register.sql"),
    ),
    (
        5,
        include_str!("../../migrations/0005_certificate_register.sql"),
    ),
    (6, include_str!("../../migrations/0006_store_identity.sql")),
    (7, include_str!("../../migrations/0007_shared_secrets.sql")),
];
/// Key of the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x6d65_7465_7264;

/// A PostgreSQL store with a fixed pool of connections.
pub struct PgStore {
    url: String,
    /// The authority directory beside the database, whose file store may
    /// hold meters' histories (see [`lock_meter`]).
    history: Option<std::path::PathBuf>,
    pool: Vec<Mutex<Client>>,
    free: Semaphore,
    next: std::sync::atomic::AtomicUsize,
}

/// A connection taken from the pool; back in it when dropped.
pub(super) struct Conn<'a> {
    guard: tokio::sync::MutexGuard<'a, Client>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.guard
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.guard
    }
}

pub(super) fn i64_of(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} {n} out of range")))
}

pub(super) fn u64_of(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} {n} out of range")))
}

impl PgStore {
    /// Connects `connections` clients to `url` and applies the migrations.
    pub async fn connect(url: &str, connections: usize) -> Result<Arc<PgStore>> {
        Self::connect_beside(url, connections, None).await
    }

    /// [`connect`](Self::connect), beside the authority directory `dir`: a
    /// meter the file store there sold vouchers to or inspected is refused
    /// when the database would meet it for the first time (see [`lock_meter`]),
    /// and `dir` is bound to this database (`store::marker::bind`): from now
    /// on the command line must come here too, and to this database only; a
    /// directory bound to another database is refused.
    pub async fn connect_beside(
        url: &str,
        connections: usize,
        dir: Option<&std::path::Path>,
    ) -> Result<Arc<PgStore>> {
        let mut pool = Vec::new();
        for _ in 0..connections.max(1) {
            pool.push(Mutex::new(open(url).await?));
        }
        let store = PgStore {
            url: url.to_owned(),
            history: dir.map(std::path::Path::to_path_buf),
            free: Semaphore::new(pool.len()),
            pool,
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        store.migrate().await?;
        if let Some(dir) = dir {
            super::marker::bind(dir, url, &store.identity().await?)?;
        }
        Ok(Arc::new(store))
    }

    /// A free connection of the pool (waits for one).
    pub(super) async fn client(&self) -> Result<Conn<'_>> {
        let permit = self
            .free
            .acquire()
            .await
            .map_err(|_| StoreError::Corrupt("connection pool closed".into()))?;
        // The permit guarantees a free client; find it, starting round-robin
        // (another task may have just released its permit but not yet its lock).
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            for i in 0..self.pool.len() {
                if let Ok(mut guard) = self.pool[(start + i) % self.pool.len()].try_lock() {
                    if guard.is_closed() {
                        // The server restarted or dropped us: connect again
                        // (an error now is the request's, 503; the next
                        // request tries again).
                        *guard = open(&self.url).await?;
                    }
                    return Ok(Conn {
                        guard,
                        _permit: permit,
                    });
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// The database's identity (migration 0006): what an authority
    /// directory's mark binds it to (see `store::marker::bind`).
    async fn identity(&self) -> Result<String> {
        let c = self.client().await?;
        let row = c.query_one("SELECT id FROM store_identity", &[]).await?;
        Ok(row.get(0))
    }

    /// The secret `name` all servers on this database share (migration
    /// 0007): `fresh` is stored if none is yet; a concurrent first start
    /// keeps whichever was inserted first, and both read that one back.
    async fn shared_secret_in(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32]> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &&fresh[..]],
        )
        .await?;
        let row = c
            .query_one("SELECT value FROM shared_secrets WHERE name = $1", &[&name])
            .await?;
        let value: Vec<u8> = row.get(0);
        <[u8; 32]>::try_from(value.as_slice()).map_err(|_| {
            StoreError::Corrupt(format!(
                "shared secret {name:?} holds {} bytes, not 32",
                value.len()
            ))
        })
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.client().await?;
        for (version, sql) in MIGRATIONS {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?;
            if done.is_none() {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await?;
                tracing::info!(version, "database migration applied");
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// One connection, driven by a task of its own.
async fn open(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// Locks the meter's row (creating it with an empty book) and returns its
/// book and next voucher sequence.
///
/// A meter the database meets for the first time starts at voucher 1 with
/// an empty book. If the file store in `history` (the directory beside the
/// database) already sold it vouchers or inspected it, that would repeat
/// voucher sequences the meter applied (it refuses them as replays: paid
/// value lost) and show vouchers the book never issued, so the meter is
/// refused instead, and its row is not made (the transaction is dropped).
async fn lock_meter(
    tx: &Transaction<'_>,
    meter_id: &str,
    history: Option<&std::path::Path>,
) -> Result<(Book, u64)> {
    let empty = serde_json::to_string(&Book::default())
        .map_err(|e| StoreError::Corrupt(format!("book encoding: {e}")))?;
    let made = tx
        .execute(
            "INSERT INTO meters (meter_id, book) VALUES ($1, $2::text::jsonb) \
             ON CONFLICT (meter_id) DO NOTHING",
            &[&meter_id, &empty],
        )
        .await?;
    if let (1, Some(dir)) = (made, history) {
        let files = crate::book::Shelf::of(dir, meter_id)?.read()?;
        if !files.vouchers.is_empty() || files.last().is_some() {
            return Err(StoreError::Conflict(format!(
                "meter {meter_id} has a history in the file store of {} ({} vouchers, {} \
                 acknowledged reports): the database would start it again at voucher 1; \
                 serve it from the directory (importing it is not supported)",
                dir.display(),
                files.vouchers.len(),
                files.acknowledged.len()
            )));
        }
    }
    let row = tx
        .query_one(
            "SELECT book::text, next_voucher FROM meters WHERE meter_id = $1 FOR UPDATE",
            &[&meter_id],
        )
        .await?;
    let book: Book = serde_json::from_str(row.get::<_, &str>(0))
        .map_err(|e| StoreError::Corrupt(format!("book of {meter_id}: {e}")))?;
    Ok((book, u64_of(row.get(1), "next voucher")?))
}

async fn save_book(tx: &Transaction<'_>, meter_id: &str, book: &Book, next: u64) -> Result<()> {
    let json = serde_json::to_string(book)
        .map_err(|e| StoreError::Corrupt(format!("book encoding: {e}")))?;
    tx.execute(
        "UPDATE meters SET book = $2::text::jsonb, next_voucher = $3 WHERE meter_id = $1",
        &[&meter_id, &json, &i64_of(next, "next voucher")?],
    )
    .await?;
    Ok(())
}

async fn load_rows(tx: &Transaction<'_>, meter_id: &str) -> Result<Vec<IndexRow>> {
    let rows = tx
        .query(
            "SELECT seq, time_ms, service, digest FROM index_rows WHERE meter_id = $1 ORDER BY seq",
            &[&meter_id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(IndexRow {
                seq: u64_of(r.get(0), "row")?,
                time_ms: r.get(1),
                service: u8::try_from(r.get::<_, i16>(2))
                    .map_err(|_| StoreError::Corrupt("service code out of range".into()))?,
                digest: r
                    .get::<_, &[u8]>(3)
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("row digest not 48 bytes".into()))?,
            })
        })
        .collect()
}

impl PgStore {
    async fn purchase_in(&self, p: &Purchase, sign: SignVoucher<'_>) -> Result<Purchased> {
        check_purchase_id(&p.purchase_id)?;
        crate::check_meter_id(&p.meter_id)?;
        let amount = i64_of(p.amount, "amount")?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (mut book, next) = lock_meter(&tx, &p.meter_id, self.history.as_deref()).await?;
        if let Some(r) = tx
            .query_opt(
                "SELECT amount, sequence, voucher, register FROM purchases \
                 WHERE meter_id = $1 AND purchase_id = $2",
                &[&p.meter_id, &p.purchase_id],
            )
            .await?
        {
            tx.rollback().await?;
            let was = u64_of(r.get(0), "amount")?;
            if let Some(e) = p.differs(was, r.get::<_, Option<&str>>(3)) {
                return Err(e);
            }
            return Ok(Purchased {
                sequence: u64_of(r.get(1), "sequence")?,
                voucher: r.get(2),
                fresh: false,
            });
        }
        let voucher = sign(next)?;
        book.vouchers.insert(next, p.amount);
        let after = next
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("voucher sequence exhausted".into()))?;
        save_book(&tx, &p.meter_id, &book, after).await?;
        tx.execute(
            "INSERT INTO purchases (meter_id, purchase_id, amount, sequence, voucher, register) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &p.meter_id,
                &p.purchase_id,
                &amount,
                &i64_of(next, "sequence")?,
                &voucher,
                &p.register,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Purchased {
            sequence: next,
            voucher,
            fresh: true,
        })
    }

    async fn upload_in(
        &self,
        meter_id: &str,
        key: [u8; 32],
        reconcile: Reconcile<'_>,
    ) -> Result<Answer> {
        crate::check_meter_id(meter_id)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (mut book, next) = lock_meter(&tx, meter_id, self.history.as_deref()).await?;
        if let Some(r) = tx
            .query_opt(
                "SELECT accepted, answer, findings::text FROM uploads \
                 WHERE meter_id = $1 AND upload_key = $2",
                &[&meter_id, &key.as_slice()],
            )
            .await?
        {
            tx.rollback().await?;
            let answer: Vec<u8> = r.get(1);
            return Ok(match r.get::<_, bool>(0) {
                true => Answer::Ack(answer),
                false => Answer::Refused {
                    lock_order: answer,
                    findings: serde_json::from_str(r.get::<_, &str>(2))
                        .map_err(|e| StoreError::Corrupt(format!("findings: {e}")))?,
                },
            });
        }
        let mut rows = MemRows::default();
        if !book.awaited.is_empty() {
            rows.existing = Some(load_rows(&tx, meter_id).await?);
        }
        let answer = reconcile(&mut book, &mut rows)?;
        save_book(&tx, meter_id, &book, next).await?;
        for r in &rows.added {
            tx.execute(
                "INSERT INTO index_rows (meter_id, seq, time_ms, service, digest) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (meter_id, seq) DO NOTHING",
                &[
                    &meter_id,
                    &i64_of(r.seq, "row")?,
                    &r.time_ms,
                    &i16::from(r.service),
                    &r.digest.as_slice(),
                ],
            )
            .await?;
        }
        let (accepted, bytes, findings) = match &answer {
            Answer::Ack(b) => (true, b, Vec::new()),
            Answer::Refused {
                lock_order,
                findings,
            } => (false, lock_order, findings.clone()),
        };
        let findings = serde_json::to_string(&findings)
            .map_err(|e| StoreError::Corrupt(format!("findings: {e}")))?;
        tx.execute(
            "INSERT INTO uploads (meter_id, upload_key, accepted, answer, findings) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb)",
            &[&meter_id, &key.as_slice(), &accepted, bytes, &findings],
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }

    async fn lookup_in(&self, meter_id: &str, look: Look<'_>) -> Result<Looked> {
        crate::check_meter_id(meter_id)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (mut book, next) = lock_meter(&tx, meter_id, self.history.as_deref()).await?;
        let mut rows = MemRows {
            existing: Some(load_rows(&tx, meter_id).await?),
            added: Vec::new(),
        };
        let looked = look(&mut book, &mut rows)?;
        save_book(&tx, meter_id, &book, next).await?;
        tx.commit().await?;
        Ok(looked)
    }

    async fn totals_in(&self, meter_id: &str) -> Result<Totals> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM purchases WHERE meter_id = $1",
                &[&meter_id],
            )
            .await?;
        let purchases = u64_of(r.get(0), "count")?;
        let book = c
            .query_opt(
                "SELECT book::text FROM meters WHERE meter_id = $1",
                &[&meter_id],
            )
            .await?;
        let book: Book = match book {
            Some(b) => serde_json::from_str(b.get::<_, &str>(0))
                .map_err(|e| StoreError::Corrupt(format!("book of {meter_id}: {e}")))?,
            None => Book::default(),
        };
        let sum = u64_of(r.get(1), "sum")?;
        if sum != book.issued_total() {
            return Err(StoreError::Corrupt(format!(
                "{meter_id}: purchases sum to {sum}, the book to {}",
                book.issued_total()
            )));
        }
        Ok(Totals {
            vouchers: book.vouchers.len() as u64,
            amount: book.issued_total(),
            purchases,
        })
    }
}

impl Store for PgStore {
    fn purchase<'a>(&'a self, p: &'a Purchase, sign: SignVoucher<'a>) -> Fut<'a, Purchased> {
        Box::pin(self.purchase_in(p, sign))
    }

    fn upload<'a>(
        &'a self,
        meter_id: &'a str,
        upload_key: [u8; 32],
        reconcile: Reconcile<'a>,
    ) -> Fut<'a, Answer> {
        Box::pin(self.upload_in(meter_id, upload_key, reconcile))
    }

    fn lookup<'a>(&'a self, meter_id: &'a str, look: Look<'a>) -> Fut<'a, Looked> {
        Box::pin(self.lookup_in(meter_id, look))
    }

    fn totals<'a>(&'a self, meter_id: &'a str) -> Fut<'a, Totals> {
        Box::pin(self.totals_in(meter_id))
    }

    fn queued<'a>(&'a self, meter_id: &'a str) -> Fut<'a, super::pending::Queued> {
        Box::pin(self.queued_in(meter_id))
    }

    fn queue_order<'a>(&'a self, meter_id: &'a str, id: &'a str, der: Vec<u8>) -> Fut<'a, Vec<u8>> {
        Box::pin(self.queue_order_in(meter_id, id, der))
    }

    fn settle<'a>(&'a self, r: &'a super::SettleRequest<'a>) -> Fut<'a, super::Settled> {
        Box::pin(self.settle_in(r))
    }

    fn certificates<'a>(&'a self, subject_cn: &'a str) -> Fut<'a, Vec<crate::state::Issued>> {
        Box::pin(self.certificates_in(subject_cn))
    }

    fn certify<'a>(
        &'a self,
        meter_id: &'a str,
        key: [u8; 32],
        issue: super::Issue<'a>,
    ) -> Fut<'a, super::Certified> {
        Box::pin(self.certify_in(meter_id, key, issue))
    }

    fn shared_secret<'a>(&'a self, name: &'a str, fresh: [u8; 32]) -> Fut<'a, [u8; 32]> {
        Box::pin(self.shared_secret_in(name, fresh))
    }
}
