//! Report segments: the ledger rows a status report brings to the authority.
//!
//! A signed status report states registers and a head; the authority must
//! not take them on trust (issue 12, item 5). So every report comes with a
//! segment: the meter's ledger rows since the last acknowledged report, in
//! the ledger's own canonical bytes ([`crate::ledger_format::RowFields`]),
//! each with the hash the meter stored and, for the rows that bring value or
//! authority from outside, the signed object itself. The authority re-derives
//! every hash and register from it; the report carries the segment's SHA-384
//! ([`crate::report::SegmentRef`]), so the two cannot be swapped.
//!
//! Format (version 1), integers big-endian, no padding:
//!
//! ```text
//! header  magic "MTRSEG\0\x01" [8] | meter_id: len u8 (1..=128), bytes
//!         | first_seq u64 (>= 1) | last_seq u64 (>= first_seq - 1)
//!         | prev [48]  (hash of row first_seq - 1; the genesis link for row 1)
//! rows    last_seq - first_seq + 1 times, seq first_seq, first_seq + 1, ...:
//!         canonical_len u16 | canonical row bytes (layout v1)
//!         | hash [48] (as stored by the meter)
//!         | product flag u8: 0 absent, 1 present
//!         | if present: product_len u32 (<= MAX_PRODUCT) | product bytes
//! end     nothing: trailing bytes are refused
//! ```
//!
//! Which rows carry their product is fixed by [`product_required`], not
//! chosen by the meter: every row that is not a Debit (vouchers, orders,
//! acknowledgements, rate tables, provisioning, locks, events), and the
//! Debit rows that apply an object from outside (a credit grant, a
//! certificate, a revoke order, a settlement), and postage rows: their
//! 221-byte indicium is what says the piece's class and weight, without
//! which the authority cannot re-price them (`meter-authority`'s
//! `pricing`). Other sales carry only the product digest that is already in
//! their canonical bytes, so a segment of 100,000 postmarks is about 20 MB,
//! not the 400 MB of their tokens.
//!
//! Postage rows carry their indicium since the authority re-prices them: a
//! segment from a meter older than that has postage rows without it and is
//! refused as malformed; such a meter is upgraded before its next report.
//!
//! Encoding ([`Encoder`]) and parsing ([`Segment::parse`], [`Rows`]) do no
//! I/O: the meter streams chunks to a descriptor, the authority parses a
//! buffer. Parsing is strict and bounded: every length is checked before it
//! is used, every row's seq must follow, a product must match the digest in
//! its canonical bytes, and presence must match the rule above.

use sha2::{Digest as _, Sha384};

use crate::ledger_format::{Digest, RowFields, MAX_NOTE, MAX_REQUEST_ID};

/// First 8 bytes of a segment (format version 1).
pub const MAGIC: [u8; 8] = *b"MTRSEG\x00\x01";
/// Longest meter id in a segment header.
pub const MAX_METER_ID: usize = 128;
/// Largest product carried (the ledger's own limit).
pub const MAX_PRODUCT: usize = 16 * 1024 * 1024;
/// Most rows one segment may hold.
pub const MAX_ROWS: u64 = 100_000_000;
/// Longest canonical row: 8+8+1+1 + 1+1+200 + 7*8 + 48 + 1+64 + 1 (register).
pub const MAX_CANONICAL: usize = 18 + 2 + MAX_REQUEST_ID + 56 + 48 + 1 + MAX_NOTE + 1;
/// Shortest canonical row (no request id, empty note).
pub const MIN_CANONICAL: usize = 18 + 1 + 56 + 48 + 1;

/// Row kinds of the ledger (its `EntryKind` codes).
pub mod kind {
    /// First row, binds the ledger to the meter id.
    pub const GENESIS: u8 = 1;
    /// Certificates and anchors installed (product: the bundle).
    pub const PROVISION: u8 = 2;
    /// A rate table installed (product: the signed table).
    pub const RATES: u8 = 3;
    /// Funds credited (product: the voucher).
    pub const CREDIT: u8 = 4;
    /// A service sold (product: what was delivered).
    pub const DEBIT: u8 = 5;
    /// The meter locked (note: reason; product: the lock's nonce).
    pub const LOCK: u8 = 6;
    /// A lock cleared (product: the order or acknowledgement).
    pub const UNLOCK: u8 = 7;
    /// Any other recorded event (note says what).
    pub const EVENT: u8 = 8;
}

/// Service codes of the ledger and their names (meterd's `Service`; a
/// meterd test keeps the two equal).
pub const SERVICES: [(u8, &str); 11] = [
    (1, "postmark"),
    (2, "validate"),
    (3, "sign"),
    (4, "certificate-install"),
    (5, "agent-certificate"),
    (6, "revoke"),
    (7, "credit-line"),
    (8, "payment-certificate"),
    (9, "status-report"),
    (10, "postage"),
    (11, "decrypt"),
];

/// Service codes used by the product rule and the authority.
pub mod service {
    /// Postmark tokens (and the token inside a credit request).
    pub const POSTMARK: u8 = 1;
    /// A user certificate installed (product: the certificate).
    pub const CERTIFICATE_INSTALL: u8 = 4;
    /// A revoke order applied (product: the meter's confirmation).
    pub const REVOKE: u8 = 6;
    /// A credit line opened (product: first payment ‖ the creditor's grant).
    pub const CREDIT_LINE: u8 = 7;
    /// A status report (product: the signed report).
    pub const STATUS_REPORT: u8 = 9;
    /// A postage indicium (product: the 221-byte indicium).
    pub const POSTAGE: u8 = 10;
}

/// Name of a service code, if it is one.
pub fn service_name(code: u8) -> Option<&'static str> {
    SERVICES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// Whether a row's product travels in the segment (see the module doc).
pub fn product_required(kind: u8, service: u8, request_id: Option<&[u8]>) -> bool {
    if kind != self::kind::DEBIT {
        return true;
    }
    matches!(
        service,
        service::CREDIT_LINE | service::CERTIFICATE_INSTALL | service::REVOKE | service::POSTAGE
    ) || request_id.is_some_and(|r| r.starts_with(b"m/"))
}

/// A segment that cannot be built or parsed; says where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The bytes are not a well-formed segment.
    #[error("malformed segment: {0}")]
    Malformed(String),
    /// The encoder was fed rows that do not make the segment it announced.
    #[error("segment cannot be built: {0}")]
    Build(String),
}

fn malformed(m: impl Into<String>) -> SegmentError {
    SegmentError::Malformed(m.into())
}

/// Parses canonical row bytes (layout v1) back into their fields; the
/// exact inverse of [`RowFields::encode`] (trailing bytes are refused).
pub fn decode_row(b: &[u8]) -> Result<RowFields<'_>, SegmentError> {
    let mut r = Cursor { b, at: 0 };
    let seq = r.u64()?;
    let time = r.u64()? as i64;
    let kind = r.u8()?;
    let service = r.u8()?;
    let request_id = match r.u8()? {
        0 => None,
        1 => {
            let len = usize::from(r.u8()?);
            if len > MAX_REQUEST_ID {
                return Err(malformed(format!("row {seq}: request id of {len} bytes")));
            }
            Some(r.take(len)?)
        }
        f => return Err(malformed(format!("row {seq}: request id flag {f}"))),
    };
    let mut v = [0u64; 7];
    for x in &mut v {
        *x = r.u64()?;
    }
    let product_digest = r.digest()?;
    let note_len = usize::from(r.u8()?);
    if note_len > MAX_NOTE {
        return Err(malformed(format!("row {seq}: note of {note_len} bytes")));
    }
    let note = r.take(note_len)?;
    // One byte after the note names a register other than services (see
    // `RowFields::register`); a 0 there would be a second encoding.
    let register = match b.len() - r.at {
        0 => crate::ledger_format::register::SERVICES,
        1 if r.u8()? == crate::ledger_format::register::POSTAGE => {
            crate::ledger_format::register::POSTAGE
        }
        _ => return Err(malformed(format!("row {seq}: bytes after the note"))),
    };
    let [credit, debit, ascending, descending, control_total, pieces, service_count] = v;
    Ok(RowFields {
        seq,
        time,
        kind,
        service,
        request_id,
        credit,
        debit,
        ascending,
        descending,
        control_total,
        pieces,
        service_count,
        product_digest,
        note,
        register,
    })
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| malformed(format!("truncated at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SegmentError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SegmentError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, SegmentError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, SegmentError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn digest(&mut self) -> Result<&'a Digest, SegmentError> {
        self.take(48)?
            .try_into()
            .map_err(|_| malformed("digest of the wrong length"))
    }
}

/// A parsed segment header and its rows (not yet read).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Meter the rows belong to.
    pub meter_id: &'a str,
    /// First row.
    pub first_seq: u64,
    /// Last row (`first_seq - 1` for an empty segment).
    pub last_seq: u64,
    /// Hash of the row before `first_seq` (the head this segment extends).
    pub prev: &'a Digest,
    rows: &'a [u8],
}

impl<'a> Segment<'a> {
    /// Parses the header and bounds of `bytes`; the rows are read by
    /// [`Segment::rows`].
    pub fn parse(bytes: &'a [u8]) -> Result<Segment<'a>, SegmentError> {
        let mut r = Cursor { b: bytes, at: 0 };
        if r.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
            return Err(malformed("not a meter report segment (bad magic)"));
        }
        let id_len = usize::from(r.u8()?);
        if id_len == 0 || id_len > MAX_METER_ID {
            return Err(malformed(format!("meter id of {id_len} bytes")));
        }
        let meter_id = std::str::from_utf8(r.take(id_len)?)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| malformed("meter id is not printable ASCII"))?;
        let first_seq = r.u64()?;
        let last_seq = r.u64()?;
        if first_seq == 0 {
            return Err(malformed("rows are numbered from 1"));
        }
        let count = (last_seq + 1)
            .checked_sub(first_seq)
            .filter(|c| *c <= MAX_ROWS)
            .ok_or_else(|| malformed(format!("row range {first_seq}..={last_seq}")))?;
        // Every row takes at least this much: a cheap bound before any row.
        let min = count.saturating_mul((2 + MIN_CANONICAL + 48 + 1) as u64);
        let prev = r.digest()?;
        let rows = &bytes[r.at..];
        if (rows.len() as u64) < min {
            return Err(malformed(format!(
                "{count} rows announced, {} bytes cannot hold them",
                rows.len()
            )));
        }
        Ok(Segment {
            meter_id,
            first_seq,
            last_seq,
            prev,
            rows,
        })
    }

    /// Number of rows.
    pub fn count(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }

    /// The rows, in order, each checked as it is read.
    pub fn rows(&self) -> Rows<'a> {
        Rows {
            r: Cursor {
                b: self.rows,
                at: 0,
            },
            next: self.first_seq,
            last: self.last_seq,
            done: false,
        }
    }
}

/// One row of a segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentRow<'a> {
    /// The canonical bytes, as hashed.
    pub canonical: &'a [u8],
    /// Their fields.
    pub fields: RowFields<'a>,
    /// The hash the meter stored for the row.
    pub hash: &'a Digest,
    /// The product, when [`product_required`] says it travels (its SHA-384
    /// is the row's product digest: checked when parsed).
    pub product: Option<&'a [u8]>,
}

/// Iterator over a segment's rows; stops at the first error (which it yields).
pub struct Rows<'a> {
    r: Cursor<'a>,
    next: u64,
    last: u64,
    done: bool,
}

impl<'a> Rows<'a> {
    fn read(&mut self) -> Result<SegmentRow<'a>, SegmentError> {
        let seq = self.next;
        let len = usize::from(self.r.u16()?);
        if !(MIN_CANONICAL..=MAX_CANONICAL).contains(&len) {
            return Err(malformed(format!("row {seq}: canonical length {len}")));
        }
        let canonical = self.r.take(len)?;
        let fields = decode_row(canonical)?;
        if fields.seq != seq {
            return Err(malformed(format!(
                "row {seq} expected, found row {}",
                fields.seq
            )));
        }
        let hash = self.r.digest()?;
        let product = match self.r.u8()? {
            0 => None,
            1 => {
                let n = self.r.u32()? as usize;
                if n > MAX_PRODUCT {
                    return Err(malformed(format!("row {seq}: product of {n} bytes")));
                }
                let p = self.r.take(n)?;
                if &Sha384::digest(p)[..] != fields.product_digest {
                    return Err(malformed(format!(
                        "row {seq}: product does not match the digest in the row"
                    )));
                }
                Some(p)
            }
            f => return Err(malformed(format!("row {seq}: product flag {f}"))),
        };
        if product.is_some() != product_required(fields.kind, fields.service, fields.request_id) {
            return Err(malformed(format!(
                "row {seq}: product {} though the format says otherwise",
                if product.is_some() {
                    "present"
                } else {
                    "absent"
                }
            )));
        }
        Ok(SegmentRow {
            canonical,
            fields,
            hash,
            product,
        })
    }
}

impl<'a> Iterator for Rows<'a> {
    type Item = Result<SegmentRow<'a>, SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.next > self.last {
            self.done = true;
            return (self.r.at != self.r.b.len())
                .then(|| Err(malformed(format!("bytes after row {}", self.last))));
        }
        let row = self.read();
        match &row {
            Ok(_) => self.next += 1,
            Err(_) => self.done = true,
        }
        Some(row)
    }
}

/// What an [`Encoder`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// SHA-384 of every byte of the segment.
    pub digest: Digest,
    /// Its length.
    pub bytes: u64,
    /// Rows in it.
    pub rows: u64,
}

/// Builds a segment row by row; the caller drains the bytes with
/// [`Encoder::take`] as they come (so a segment is never held whole) and
/// gets the digest from [`Encoder::finish`].
pub struct Encoder {
    buf: Vec<u8>,
    hasher: Sha384,
    bytes: u64,
    first: u64,
    next: u64,
    last: u64,
    canonical: Vec<u8>,
}

impl Encoder {
    /// Starts a segment of rows `first_seq..=last_seq` of `meter_id`,
    /// extending `prev` (the hash of row `first_seq - 1`).
    pub fn new(
        meter_id: &str,
        first_seq: u64,
        last_seq: u64,
        prev: &Digest,
    ) -> Result<Encoder, SegmentError> {
        let build = |m: &str| SegmentError::Build(m.to_owned());
        if meter_id.is_empty()
            || meter_id.len() > MAX_METER_ID
            || !meter_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(build("meter id empty, too long or not printable"));
        }
        if first_seq == 0 || last_seq.saturating_add(1) < first_seq {
            return Err(build("row range"));
        }
        if last_seq + 1 - first_seq > MAX_ROWS {
            return Err(build("too many rows for one segment"));
        }
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&MAGIC);
        // Bounded by MAX_METER_ID above.
        buf.push(meter_id.len() as u8);
        buf.extend_from_slice(meter_id.as_bytes());
        buf.extend_from_slice(&first_seq.to_be_bytes());
        buf.extend_from_slice(&last_seq.to_be_bytes());
        buf.extend_from_slice(prev);
        Ok(Encoder {
            buf,
            hasher: Sha384::new(),
            bytes: 0,
            first: first_seq,
            next: first_seq,
            last: last_seq,
            canonical: Vec::with_capacity(MAX_CANONICAL),
        })
    }

    /// Appends the next row: its fields, stored hash and product (give the
    /// product whenever it is at hand; it is kept only when
    /// [`product_required`] says so, and must then be given).
    pub fn row(
        &mut self,
        fields: &RowFields<'_>,
        hash: &Digest,
        product: Option<&[u8]>,
    ) -> Result<(), SegmentError> {
        let seq = fields.seq;
        let build = |m: String| SegmentError::Build(m);
        if seq != self.next || seq > self.last {
            return Err(build(format!(
                "row {seq} out of order (expected {})",
                self.next
            )));
        }
        fields
            .encode(&mut self.canonical)
            .map_err(|_| build(format!("row {seq}: a field is too long")))?;
        let needed = product_required(fields.kind, fields.service, fields.request_id);
        let product = match (needed, product) {
            (false, _) => None,
            (true, None) => return Err(build(format!("row {seq}: its product is required"))),
            (true, Some(p)) if p.len() > MAX_PRODUCT => {
                return Err(build(format!("row {seq}: product too large")))
            }
            (true, Some(p)) if &Sha384::digest(p)[..] != fields.product_digest => {
                return Err(build(format!(
                    "row {seq}: product does not match its digest"
                )))
            }
            (true, Some(p)) => Some(p),
        };
        // MIN..=MAX_CANONICAL, checked by `encode`'s bounds.
        self.buf
            .extend_from_slice(&(self.canonical.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(&self.canonical);
        self.buf.extend_from_slice(hash);
        match product {
            None => self.buf.push(0),
            Some(p) => {
                self.buf.push(1);
                // At most MAX_PRODUCT (16 MiB), checked above.
                self.buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
                self.buf.extend_from_slice(p);
            }
        }
        self.next += 1;
        Ok(())
    }

    /// Bytes buffered so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes made so far (hashed on the way out).
    pub fn take(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut self.buf);
        self.hasher.update(&out);
        self.bytes += out.len() as u64;
        out
    }

    /// Ends the segment: the last bytes (to send too) and its summary.
    /// Refused when rows are missing.
    pub fn finish(mut self) -> Result<(Vec<u8>, Summary), SegmentError> {
        if self.next != self.last + 1 {
            return Err(SegmentError::Build(format!(
                "rows {}..={} missing",
                self.next, self.last
            )));
        }
        let tail = self.take();
        Ok((
            tail,
            Summary {
                digest: self.hasher.finalize().into(),
                bytes: self.bytes,
                rows: self.last + 1 - self.first,
            },
        ))
    }
}

/// SHA-384 of a whole segment (what the report carries).
pub fn digest(bytes: &[u8]) -> Digest {
    Sha384::digest(bytes).into()
}

#[cfg(test)]
#[path = "segment_tests.rs"]
mod tests;
