#!/usr/bin/python3
# test/sinks/smtp_sink.py: SMTP receiver for the tests (aiosmtpd): records each message as a line of JSON.
#
# --mode plain (no TLS) | starttls (offered) | starttls-required (530 to mail commands before STARTTLS) |
# smtps (TLS from the first byte); the TLS modes need --tls-cert and --tls-key.  --auth USER:PASSWORD offers
# AUTH PLAIN and LOGIN on every connection, TLS or not, and requires it before MAIL (530); without --auth no
# AUTH is offered.  --reject-rcpt ADDRESS (repeatable) answers 550 to that recipient; --fail-data answers 451
# at the end of DATA (the message is still logged, with status 451).
# Log line per message: time, peer, helo, mail_from, rcpt_tos, message (raw; message_base64 true if it was
# not UTF-8), tls, tls_version, auth_user (null without AUTH), status.  --ready FILE receives the port.
import argparse
import asyncio
import logging
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

import sinkutil

MODES = ("plain", "starttls", "starttls-required", "smtps")


class Handler:
    """aiosmtpd handler: rejects the configured recipients, logs messages, checks the AUTH credentials."""

    def __init__(self, log, auth, reject_rcpt, fail_data):
        self.log = log
        self.credentials = tuple(s.encode() for s in auth.split(":", 1)) if auth else None
        self.reject_rcpt = {a.lower() for a in reject_rcpt}
        self.fail_data = fail_data

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        """Keeps the EHLO answer but for the AUTH line when no --auth was given."""
        session.host_name = hostname
        return [r for r in responses if self.credentials or not r.startswith("250-AUTH")]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        """Accepts a recipient unless it is one of --reject-rcpt."""
        if address.lower() in self.reject_rcpt:
            return "550 5.1.1 Recipient rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        """Logs the message; answers 250, or 451 with --fail-data."""
        status = "451 4.3.0 Temporary failure" if self.fail_data else "250 2.0.0 Message accepted"
        message, is_base64 = sinkutil.text_or_base64(envelope.original_content)
        version = sinkutil.tls_version(server.transport)
        self.log.write({
            "time": time.time(), "peer": sinkutil.peer_name(server.transport), "helo": session.host_name,
            "mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
            "message": message, "message_base64": is_base64, "tls": version is not None, "tls_version": version,
            "auth_user": session.auth_data.login.decode("utf-8", "replace") if session.authenticated else None,
            "status": int(status[:3])})
        return status

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        """aiosmtpd authenticator: accepts exactly the --auth credentials."""
        ok = isinstance(auth_data, LoginPassword) and tuple(auth_data) == self.credentials
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def smtp_factory(args, handler, loop):
    """Returns the protocol factory of one SMTP session per connection, as the options configure it."""
    tls = sinkutil.server_context(args.tls_cert, args.tls_key) if args.mode in ("starttls", "starttls-required") \
        else None
    kwargs = dict(hostname="localhost", enable_SMTPUTF8=True, tls_context=tls,
                  require_starttls=args.mode == "starttls-required", authenticator=handler.authenticate,
                  auth_required=bool(args.auth), auth_require_tls=False, loop=loop)
    if not args.auth:
        kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN"]
    return lambda: SMTP(handler, **kwargs)


async def main():
    parser = argparse.ArgumentParser(description="SMTP receiver for tests")
    sinkutil.add_common_options(parser)
    parser.add_argument("--mode", choices=MODES, default="plain")
    parser.add_argument("--tls-cert", help="PEM certificate chain (TLS modes)")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require AUTH PLAIN/LOGIN with these credentials")
    parser.add_argument("--reject-rcpt", metavar="ADDRESS", action="append", default=[],
                        help="answer 550 to this recipient (repeatable)")
    parser.add_argument("--fail-data", action="store_true", help="answer 451 at the end of DATA")
    args = parser.parse_args()
    if args.mode != "plain" and not (args.tls_cert and args.tls_key):
        parser.error(f"--mode {args.mode} needs --tls-cert and --tls-key")
    # aiosmtpd warns, once per session, that AUTH without TLS is insecure
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
    loop = asyncio.get_running_loop()
    handler = Handler(sinkutil.JsonLog(args.log), args.auth, args.reject_rcpt, args.fail_data)
    implicit_tls = sinkutil.server_context(args.tls_cert, args.tls_key) if args.mode == "smtps" else None
    server = await loop.create_server(smtp_factory(args, handler, loop), args.host, args.port, ssl=implicit_tls,
                                      backlog=128)
    sinkutil.write_ready(args.ready, f"{server.sockets[0].getsockname()[1]}\n")
    await sinkutil.wait_for_stop(args.stdin_watch)


if __name__ == "__main__":
    asyncio.run(main())
