#!/usr/bin/env python3
"""Root's rewrite of one sale in a stopped meter's ledger (e2e_sale_rewrite.rs).

python3's sqlite3 and hashlib only, no project code: drops the append-only triggers, then

  reprice ID AMOUNT  the sale whose request id ends in /ID debited AMOUNT instead;
  delete ID          the sale whose request id ends in /ID is gone, the rows after it
                     renumbered (journal, products, batches);

and shifts every register after it (AR, DR, pieces, the service's count) so they add up,
then recomputes every row hash (layout v1 canonical bytes, SHA-384) and batch head.

usage: rewrite_sale.py DB METER_ID reprice|delete ID [AMOUNT]
"""
import hashlib
import sqlite3
import struct
import sys

db, meter, op, rid = sys.argv[1:5]
c = sqlite3.connect(db)
for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
    c.execute('DROP TRIGGER "%s"' % t)
seq0, debit, service = c.execute(
    "SELECT seq, debit, service FROM journal WHERE request_id LIKE ?", ("%/" + rid,)).fetchone()
if op == "reprice":
    new = int(sys.argv[5])
    delta = debit - new
    c.execute("UPDATE journal SET debit=? WHERE seq=?", (new, seq0))
    c.execute("UPDATE journal SET ascending=ascending-?, descending=descending+? WHERE seq>=?",
              (delta, delta, seq0))
elif op == "delete":
    c.execute("DELETE FROM journal WHERE seq=?", (seq0,))
    c.execute("DELETE FROM products WHERE seq=?", (seq0,))
    c.execute("UPDATE journal SET ascending=ascending-?, descending=descending+?, pieces=pieces-1 "
              "WHERE seq>?", (debit, debit, seq0))
    c.execute("UPDATE journal SET service_count=service_count-1 WHERE seq>? AND service=?",
              (seq0, service))
    # Renumber: seq is the primary key; move the rows after it down one by one.
    for (s,) in c.execute("SELECT seq FROM journal WHERE seq>? ORDER BY seq", (seq0,)).fetchall():
        c.execute("UPDATE journal SET seq=? WHERE seq=?", (s - 1, s))
        c.execute("UPDATE products SET seq=? WHERE seq=?", (s - 1, s))
    c.execute("UPDATE batches SET last_seq=last_seq-1 WHERE last_seq>=?", (seq0,))
    c.execute("UPDATE batches SET first_seq=first_seq-1 WHERE first_seq>?", (seq0,))
    c.execute("DELETE FROM batches WHERE first_seq>last_seq")
else:
    sys.exit("unknown op " + op)


def u64(v):
    return struct.pack(">Q", v & (2**64 - 1))


prev = hashlib.sha384(b"meterd-ledger-v1" + meter.encode()).digest()
rows = c.execute(
    "SELECT seq,time,kind,service,request_id,credit,debit,ascending,descending,control_total,"
    "pieces,service_count,product_digest,note FROM journal ORDER BY seq").fetchall()
for r in rows:
    seq, time, kind, service, rid_, *regs = r[:12]
    digest, note = r[12], r[13].encode()
    b = u64(seq) + u64(time) + bytes([kind, service])
    b += b"\x00" if rid_ is None else b"\x01" + bytes([len(rid_.encode())]) + rid_.encode()
    b += b"".join(u64(v) for v in regs) + digest + bytes([len(note)]) + note
    h = hashlib.sha384(prev + b).digest()
    c.execute("UPDATE journal SET prev_hash=?, hash=? WHERE seq=?", (prev, h, seq))
    c.execute("UPDATE batches SET head=? WHERE last_seq=?", (h, seq))
    prev = h
c.execute("DELETE FROM checkpoints")
c.commit()
print("rewrote row %d (%s)" % (seq0, op))
