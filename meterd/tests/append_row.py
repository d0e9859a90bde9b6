#!/usr/bin/env python3
"""Root appends a row to a stopped meter's ledger and seals it (e2e_rollback.rs,
e2e_lock_order_row.rs).

`epoch COUNTER REASON`: the re-seal of a restored ledger copy at the TPM's current counter.

A copy of the ledger taken earlier no longer matches the TPM's NV counter (meterd starts
`locked (rollback)`). Root appends what meterd would have written: an epoch row (an Event
row noted `epoch` under the key `m/epoch/<counter>`, its product the epoch record JSON)
that opens the counter's current value, chained onto the copy's last row, in a batch of
its own, and seals that batch with the meter's identity key: SHA-384("meterd-seal-v2" ||
meter || counter || head) signed by tpm2_sign with the auth value root derives from
keys/auth (HMAC-SHA256(secret, "meterd-tpm-auth-v1:key:identity")), given in the
environment as IDENTITY_AUTH=hex:<64 hex digits> (the caller derives it with openssl:
root_tools::derived_auth, the one copy of the recipe). No project code: python3's
sqlite3 and hashlib, tpm2-tools, openssl.

`row EPOCH KIND NOTE KEY PRODUCT_HEX`: any row (no money moved), in epoch EPOCH (the
counter the ledger's last epoch row opened).

usage: IDENTITY_AUTH=hex:... append_row.py DB METER_ID STATE_DIR WORKDIR epoch COUNTER REASON
       IDENTITY_AUTH=hex:... append_row.py DB METER_ID STATE_DIR WORKDIR row EPOCH KIND NOTE KEY PRODUCT_HEX
"""
import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import sys
import time

db, meter, state, work, mode = sys.argv[1:6]


def u64(v):
    return struct.pack(">Q", v & (2**64 - 1))


def canonical(seq, t, kind, service, rid, regs, digest, note):
    b = u64(seq) + u64(t) + bytes([kind, service])
    b += b"\x00" if rid is None else b"\x01" + bytes([len(rid.encode())]) + rid.encode()
    b += b"".join(u64(v) for v in regs) + digest + bytes([len(note)]) + note
    return b


c = sqlite3.connect(db)
last = c.execute(
    "SELECT seq, time, ascending, descending, control_total, pieces, hash FROM journal "
    "ORDER BY seq DESC LIMIT 1").fetchone()
seq, t0, asc, desc, ctl, pieces, prev = last
seq += 1
if mode == "epoch":
    counter, reason = int(sys.argv[6]), sys.argv[7]
    # The epoch record: what the TPM says now (tpm2_readclock needs no authorization).
    clock = subprocess.run(["tpm2_readclock"], capture_output=True, text=True,
                           check=True).stdout
    vals = {}
    for line in clock.splitlines():
        k, _, v = line.strip().partition(":")
        vals[k.strip()] = v.strip()
    record = {
        "counter": counter,
        "reason": reason,
        "tpm_clock_ms": int(vals.get("clock", "0")),
        "reset_count": int(vals.get("reset_count", "0")),
        "restart_count": int(vals.get("restart_count", "0")),
    }
    product = json.dumps(record, separators=(",", ":")).encode()
    kind, note, rid = 8, "epoch", "m/epoch/%d" % counter
else:
    counter, kind, note, rid = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8], sys.argv[9]
    product = bytes.fromhex(sys.argv[10])
digest = hashlib.sha384(product).digest()
now = max(int(time.time() * 1000), t0 + 1)
regs = (0, 0, asc, desc, ctl, pieces, 0)  # credit, debit, registers, service count
row_hash = hashlib.sha384(
    prev + canonical(seq, now, kind, 0, rid, regs, digest, note.encode())).digest()

# The seal, with the identity key's blobs and the derived auth value.
seal_digest = hashlib.sha384(b"meterd-seal-v2" + meter.encode() + u64(counter) + row_hash).digest()
with open(os.path.join(work, "seal.digest"), "wb") as f:
    f.write(seal_digest)
# The identity key's auth value, as tpm2-tools' `-p` takes it: root's one recipe
# (root_tools::derived_auth: HMAC-SHA256 of keys/auth over
# "meterd-tpm-auth-v1:key:identity", with openssl) hands it over in IDENTITY_AUTH.
auth = os.environ["IDENTITY_AUTH"]
sign = f"""set -e
cd {work}
tpm2_flushcontext -t
tpm2_createprimary -Q -C o -G ecc384:aes256cfb -g sha256 \
  -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c primary.ctx
tpm2_load -Q -C primary.ctx -u {state}/keys/identity.pub -r {state}/keys/identity.priv -c identity.ctx
tpm2_flushcontext -t
tpm2_sign -c identity.ctx -p {auth} -g sha384 -s ecdsa -d -f plain -o seal.der seal.digest
"""
subprocess.run(["bash", "-c", sign], check=True)
der = open(os.path.join(work, "seal.der"), "rb").read()
# ECDSA-Sig-Value: SEQUENCE { INTEGER r, INTEGER s } -> r || s, 48 bytes each.
i = 2 if der[1] < 0x80 else 3
raw = b""
for _ in range(2):
    n = der[i + 1]
    raw += der[i + 2:i + 2 + n].lstrip(b"\x00").rjust(48, b"\x00")
    i += 2 + n

batch = c.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM batches").fetchone()[0]
c.execute(
    "INSERT INTO journal(seq, time, kind, service, request_id, credit, debit, ascending, "
    "descending, control_total, pieces, service_count, product_digest, note, prev_hash, hash) "
    "VALUES (?, ?, ?, 0, ?, 0, 0, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
    (seq, now, kind, rid, asc, desc, ctl, pieces, digest, note, prev, row_hash))
c.execute("INSERT INTO products(seq, input_digest, product) VALUES (?, ?, ?)",
          (seq, digest, product))
c.execute(
    "INSERT INTO batches(batch, first_seq, last_seq, nv, head, seal, time) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)", (batch, seq, seq, counter, row_hash, raw, now))
c.commit()
print("appended row %d (%s) in epoch %d" % (seq, note, counter))
