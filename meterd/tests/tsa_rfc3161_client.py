"""Python's rfc3161-client (PyPI) against meter-tsa: it builds the request,
posts it, and verifies the response against the authority's root.

Usage: tsa_rfc3161_client.py URL ROOT_PEM  (URL with user:secret@ for Basic).
Prints "OK <serial>" on success; exits non-zero otherwise.
"""

import base64
import sys
import urllib.parse
import urllib.request

from cryptography import x509
from rfc3161_client import HashAlgorithm, TimestampRequestBuilder, VerifierBuilder, decode_timestamp_response

url, root_pem = sys.argv[1], sys.argv[2]
message = b"a message for rfc3161-client\n"
req = TimestampRequestBuilder().data(message).hash_algorithm(HashAlgorithm.SHA512).nonce(nonce=True).build()

parts = urllib.parse.urlsplit(url)
netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
plain_url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
headers = {"Content-Type": "application/timestamp-query"}
if parts.username:
    cred = f"{parts.username}:{parts.password}".encode()
    headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
http_req = urllib.request.Request(plain_url, data=req.as_bytes(), headers=headers, method="POST")
with urllib.request.urlopen(http_req, timeout=30) as r:
    if r.headers.get("Content-Type") != "application/timestamp-reply":
        sys.exit(f"content type {r.headers.get('Content-Type')!r}")
    body = r.read()

resp = decode_timestamp_response(body)
with open(root_pem, "rb") as f:
    root = x509.load_pem_x509_certificate(f.read())
verifier = VerifierBuilder.from_request(req).add_root_certificate(root).build()
verifier.verify_message(resp, message)
print("OK", resp.tst_info.serial_number)
