#!/usr/bin/python3
"""Postmark an e-mail with meterd and attach the postmark to it (issue 13, item 6).

What a mail client does to send a postmarked message:

  1. opens the message and passes the open file descriptor to meterd's
     ``Postmark(h message, s request_id) -> ay token`` over the system bus
     (Unix fd passing: the daemon reads the bytes itself, no copy through
     the bus; it hashes them with SHA-384 and returns an RFC 3161 token);
  2. wraps the token and the message in an RFC 5544 TimeStampedData
     (``ContentInfo`` of type id-ct-timestampedData 1.2.840.113549.1.9.16.1.31,
     the token in ``temporalEvidence``), DER-encoded here with the standard
     library only;
  3. writes a multipart/mixed message: the original as ``message/rfc822`` and
     the postmark as ``application/timestamped-data`` (``postmark.tsd``).

A receiver checks the postmark with openssl alone::

    openssl asn1parse -inform DER -in postmark.tsd      # find the token
    openssl ts -verify -data message.eml -in token.der -token_in -CAfile root.pem

meterd's refusals come back as named D-Bus errors
(``org.meterd.Meter1.Error.<Name>``); each is mapped to a sentence and to the
exit code meterctl uses for it, and nothing is written on a refusal.

Needs python3-dbus (Debian package ``python3-dbus``). The bus is the system
bus, or ``DBUS_SYSTEM_BUS_ADDRESS`` when set (the test sandbox sets it).

Usage: mail_client.py MESSAGE.eml -o OUT.eml [--request-id ID]
"""

import argparse
import email
import os
import email.policy
import sys
import uuid
from email.message import EmailMessage

try:
    import dbus
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("mail_client: python3-dbus is missing (apt install python3-dbus)")

BUS_NAME = "org.meterd.Meter1"
OBJECT_PATH = "/org/meterd/Meter1"
INTERFACE = "org.meterd.Meter1"
ERROR_PREFIX = "org.meterd.Meter1.Error."

# meterctl's exit codes (meter-proto/src/exit.rs), so scripts treat both alike.
EXIT_INTERNAL, EXIT_USAGE, EXIT_ACCESS, EXIT_FUNDS, EXIT_LOCKED = 1, 2, 3, 4, 5
EXIT_INVALID, EXIT_NOT_PROVISIONED, EXIT_HOUSING, EXIT_STORAGE = 6, 8, 9, 10
EXIT_BUS, EXIT_BUSY, EXIT_DAEMON_INTERNAL, EXIT_FILE = 11, 13, 14, 15

# meterd's named errors: (exit code, what the user should do).
ERRORS = {
    "InsufficientFunds": (EXIT_FUNDS, "the meter has not enough funds for a postmark; "
                          "ask an administrator to recharge it (meterctl recharge)"),
    "Locked": (EXIT_LOCKED, "the meter is locked; 'meterctl status' says why, "
               "an administrator clears it with an order from the authority"),
    "NotProvisioned": (EXIT_NOT_PROVISIONED, "the meter is not provisioned or does not "
                       "price postmarks; an administrator runs 'meterctl provision'"),
    "AccessDenied": (EXIT_ACCESS, "you may not use the meter; ask to join group 'meter'"),
    "InvalidInput": (EXIT_INVALID, "the meter refused the message (too large, not "
                     "readable in time, or a request id reused with another message)"),
    "Busy": (EXIT_BUSY, "the meter is busy; try again in a moment"),
    "Housing": (EXIT_HOUSING, "the meter's TPM failed; see meterd's journal"),
    "Storage": (EXIT_STORAGE, "the meter could not write its ledger; see meterd's journal"),
    "Internal": (EXIT_DAEMON_INTERNAL, "the meter failed; see meterd's journal"),
}

# The bus's own errors (no meterd reply at all).
BUS_ERRORS = {
    "org.freedesktop.DBus.Error.AccessDenied":
        (EXIT_ACCESS, "the bus refused the call; ask to join group 'meter'"),
    "org.freedesktop.DBus.Error.ServiceUnknown":
        (EXIT_BUS, "meterd is not running (systemctl status meterd)"),
    "org.freedesktop.DBus.Error.NameHasNoOwner":
        (EXIT_BUS, "meterd is not running (systemctl status meterd)"),
}

ID_CT_TIMESTAMPED_DATA = "1.2.840.113549.1.9.16.1.31"


class Refused(Exception):
    """A call that failed, with the exit code to leave with."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


# --- DER, the few types RFC 5544 needs -------------------------------------

def der(tag, body):
    """One DER TLV: tag byte, definite length, body."""
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def der_oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    arcs = [40 * parts[0] + parts[1]] + parts[2:]
    body = b""
    for arc in arcs:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, body)


def timestamped_data(message, token):
    """RFC 5544 ContentInfo { id-ct-timestampedData, [0] TimeStampedData }.

    TimeStampedData ::= SEQUENCE { version INTEGER (1), content OCTET STRING,
    temporalEvidence Evidence }; Evidence is the CHOICE tstEvidence [0]
    (IMPLICIT, the module's default) TimeStampTokenEvidence, a SEQUENCE OF
    TimeStampAndCRL ::= SEQUENCE { timeStamp TimeStampToken }. The message is
    carried as content, so the .tsd checks on its own.
    """
    evidence = der(0xA0, der(0x30, token))  # [0] { TimeStampAndCRL { token } }
    tsd = der(0x30, der(0x02, b"\x01") + der(0x04, message) + evidence)
    return der(0x30, der_oid(ID_CT_TIMESTAMPED_DATA) + der(0xA0, tsd))


# --- meterd ------------------------------------------------------------------

def postmark(f, request_id):
    """Passes the open file `f` to meterd's Postmark; returns the token (DER)."""
    try:
        bus = dbus.SystemBus()
        meter = dbus.Interface(bus.get_object(BUS_NAME, OBJECT_PATH), INTERFACE)
        f.seek(0)
        token = meter.Postmark(dbus.types.UnixFd(f), request_id, byte_arrays=True,
                               timeout=120)
        return bytes(token)
    except dbus.exceptions.DBusException as e:
        name = e.get_dbus_name() or ""
        detail = e.get_dbus_message() or ""
        if name.startswith(ERROR_PREFIX):
            short = name[len(ERROR_PREFIX):]
            code, text = ERRORS.get(short, (EXIT_DAEMON_INTERNAL, "the meter refused"))
            raise Refused(code, f"{text} ({short}: {detail})") from None
        if name in BUS_ERRORS:
            code, text = BUS_ERRORS[name]
            raise Refused(code, f"{text} ({name})") from None
        raise Refused(EXIT_BUS, f"cannot reach meterd: {name}: {detail}") from None


def mime(message, tsd):
    """multipart/mixed: the original (message/rfc822) and the postmark."""
    original = email.message_from_bytes(message, policy=email.policy.default)
    out = EmailMessage()
    for header in ("From", "To", "Cc", "Subject", "Date", "Message-ID"):
        if original[header] is not None:
            out[header] = original[header]
    out.set_content("This message carries a postmark (RFC 3161 time-stamp of the\n"
                    "attached message, in RFC 5544 TimeStampedData: postmark.tsd).\n")
    out.add_attachment(original)
    out.add_attachment(tsd, maintype="application", subtype="timestamped-data",
                       filename="postmark.tsd")
    return out.as_bytes(policy=email.policy.SMTP)


def main(argv):
    ap = argparse.ArgumentParser(description="Postmark an e-mail with meterd (RFC 5544).")
    ap.add_argument("message", help="the message to postmark (RFC 5322 file)")
    ap.add_argument("-o", "--output", required=True, help="where to write the MIME message")
    ap.add_argument("--request-id", help="retry-safe request id (default: a new UUID)")
    args = ap.parse_args(argv)
    try:
        src = open(args.message, "rb")
        message = src.read()
        # Refuse before buying: an output that cannot be written costs nothing.
        out = open(args.output, "wb")
    except OSError as e:
        print(f"mail_client: {e}; nothing was charged", file=sys.stderr)
        return EXIT_FILE
    request_id = args.request_id or str(uuid.uuid4())
    try:
        # meterd reads the same open file (rewound) that `message` was read
        # from, for the TimeStampedData content and the MIME part.
        with src:
            token = postmark(src, request_id)
    except Refused as e:
        out.close()
        try:
            os.unlink(args.output)
        except OSError:
            pass
        print(f"mail_client: {e}", file=sys.stderr)
        return e.code
    with out:
        out.write(mime(message, timestamped_data(message, token)))
    print(f"postmarked {args.message} -> {args.output} (request id {request_id})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
