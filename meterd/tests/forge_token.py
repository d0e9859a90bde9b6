#!/usr/bin/env python3
"""Root's forgery of a postmark token outside meterd (used by e2e_forged_token.rs).

Takes a token the meter sold (DER), points its messageImprint at another file, fixes the
messageDigest signed attribute, and re-signs the signed attributes with the meter's own
postmark key through tpm2-tools (tpm2_createprimary with meterd's public template,
tpm2_load of keys/postmark.*, tpm2_sign with the auth value root derives from
keys/auth). No project code: DER surgery by hand, same lengths (a signature of another
length is made again).

usage: forge_token.py GENUINE DATA_OLD DATA_NEW OUT AUTH WORKDIR
"""
import hashlib
import os
import subprocess
import sys


def tlv(b, i):
    tag = b[i]
    n = b[i + 1]
    j = i + 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[j:j + k], "big")
        j += k
    return tag, j, j + n  # tag, value start, end


def children(b, start, end):
    out, i = [], start
    while i < end:
        t, v, e = tlv(b, i)
        out.append((t, i, v, e))
        i = e
    return out


genuine, old_data, new_data, out_path, auth, work = sys.argv[1:7]
tok = bytearray(open(genuine, "rb").read())
_, v, e = tlv(tok, 0)  # ContentInfo
ci = children(tok, v, e)
_, v, e = tlv(tok, ci[1][2])  # [0] -> SignedData
sd = children(tok, v, e)
encap = [c for c in sd if c[0] == 0x30][0]  # version, digestAlgorithms SET, encap SEQ
enc = children(tok, encap[2], encap[3])
_, ov, oe = tlv(tok, enc[1][2])  # [0] -> OCTET STRING
tst_start, tst_end = ov, oe
signer_infos = [c for c in sd if c[0] == 0x31][-1]
si = children(tok, signer_infos[2], signer_infos[3])[0]
sic = children(tok, si[2], si[3])
attrs = [c for c in sic if c[0] == 0xA0][0]
sig = [c for c in sic if c[0] == 0x04][-1]

old_imp = hashlib.sha384(open(old_data, "rb").read()).digest()
new_imp = hashlib.sha384(open(new_data, "rb").read()).digest()
tst = bytes(tok[tst_start:tst_end])
assert tst.count(old_imp) == 1, "imprint not found"
new_tst = tst.replace(old_imp, new_imp)
old_md, new_md = hashlib.sha384(tst).digest(), hashlib.sha384(new_tst).digest()
tok[tst_start:tst_end] = new_tst
a = bytes(tok[attrs[1]:attrs[3]])
assert a.count(old_md) == 1, "messageDigest not found"
a = a.replace(old_md, new_md)
tok[attrs[1]:attrs[3]] = a
to_sign = b"\x31" + a[1:]
open(os.path.join(work, "digest.bin"), "wb").write(hashlib.sha384(to_sign).digest())
want = sig[3] - sig[2]
env = dict(os.environ)


def run(*c):
    r = subprocess.run(c, cwd=work, env=env, capture_output=True)
    # No resource manager: tpm2-tools leave objects loaded, swtpm has three slots.
    subprocess.run(["tpm2_flushcontext", "-t"], cwd=work, env=env, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"{c[0]} failed: {r.stderr.decode(errors='replace')}")

run("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc384:aes256cfb", "-a",
    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
    "-c", "primary.ctx")
run("tpm2_load", "-C", "primary.ctx", "-u", "postmark.pub", "-r", "postmark.priv",
    "-c", "postmark.ctx")
for _ in range(40):
    run("tpm2_sign", "-c", "postmark.ctx", "-p", auth, "-g", "sha384", "-s", "ecdsa",
        "-d", "-f", "plain", "-o", "sig.der", "digest.bin")
    s = open(os.path.join(work, "sig.der"), "rb").read()
    if len(s) == want:
        tok[sig[2]:sig[3]] = s
        open(out_path, "wb").write(bytes(tok))
        sys.exit(0)
sys.exit("no signature of the right length")
