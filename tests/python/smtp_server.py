"""The SMTP server of the notifier's e-mail test (aiosmtpd): STARTTLS required before AUTH,
AUTH required before mail. Each accepted message is written to <outdir>/<n>.json with its
envelope, its headers and its plain-text and HTML bodies as a mail client decodes them. A recipient whose local part is "full" gets a 452 (try again later)
the first time it is seen; one whose local part is "nobody" gets a 550 (no such mailbox).

Usage: smtp_server.py PORT CERT KEY USER PASSWORD OUTDIR   (prints "ready" when listening)
"""

import email
import email.policy
import json
import pathlib
import ssl
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, outdir: pathlib.Path):
        self.outdir = outdir
        self.count = 0
        self.deferred = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local == "nobody":
            return "550 5.1.1 No such mailbox"
        if local == "full" and address not in self.deferred:
            self.deferred.add(address)
            return "452 4.2.2 Mailbox full, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        plain, html = message.get_body(("plain",)), message.get_body(("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "headers": {k.lower(): str(v) for k, v in message.items()},
            "plain": plain.get_content() if plain else None,
            "html": html.get_content() if html else None,
        }
        tmp = self.outdir / f".{self.count}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(self.outdir / f"{self.count}.json")
        return "250 Message accepted"


def main() -> None:
    # aiosmtpd's own use of its deprecated Session.login_data, not ours.
    warnings.filterwarnings("ignore", message="Session.login_data")
    port, cert, key, user, password, outdir = sys.argv[1:7]
    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        Handler(out),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticate,
    )
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin or kills us
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
