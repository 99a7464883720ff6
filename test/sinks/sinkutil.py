# test/sinks/sinkutil.py: what the receivers in test/sinks share: options, ready file, JSON log, TLS, shutdown.
import argparse
import asyncio
import base64
import ipaddress
import json
import os
import signal
import ssl
import sys
import warnings

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def loopback_address(text):
    """argparse type: an IPv4 address in 127.0.0.0/8 (the receivers never listen anywhere else)."""
    try:
        if ipaddress.ip_address(text) in LOOPBACK:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address in 127.0.0.0/8")


def add_common_options(parser, listener=True):
    """Adds the options every receiver takes; with listener, also --host and --port."""
    if listener:
        parser.add_argument("--host", type=loopback_address, default="127.0.0.1", help="address to listen on")
        parser.add_argument("--port", type=int, default=0, help="port to listen on (0: pick a free one)")
    parser.add_argument("--ready", metavar="FILE", help="written (atomically) once listening")
    parser.add_argument("--log", metavar="FILE", help="appended one JSON object per line")
    parser.add_argument("--stdin-watch", action="store_true",
                        help="exit when standard input reaches end of file (so the parent's death stops us)")


def write_ready(path, text):
    """Writes text to path through a temporary file and a rename, so that a poller never sees it half written."""
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)


class JsonLog:
    """Appends one JSON object per line to a file (or nowhere), each line with one write so it is never torn."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def write(self, record):
        if self.fd is not None:
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            while data:
                data = data[os.write(self.fd, data):]


def text_or_base64(data):
    """Returns (text, False) if data is UTF-8, else (its base64, True)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def peer_name(transport):
    """Returns "address:port" of a connection's peer."""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else None


def tls_version(transport):
    """Returns the TLS version of a connection ("TLSv1.3"...), or None if it is not under TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object.version() if ssl_object else None


def server_context(cert, key, min_version=None, max_version=None):
    """Returns a server SSLContext presenting cert (a PEM chain, leaf first) with key, limited to the versions
    given by ssl.TLSVersion name ("TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3").  Versions below TLS 1.2 need
    security level 0 with OpenSSL 3, which is then set."""
    warnings.simplefilter("ignore", DeprecationWarning)   # ssl warns about TLSv1 and TLSv1_1
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    old = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    if min_version:
        ctx.minimum_version = ssl.TLSVersion[min_version]
    if max_version:
        ctx.maximum_version = ssl.TLSVersion[max_version]
    if ctx.minimum_version in old or ctx.maximum_version in old:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def quiet_exception_handler(loop, context):
    """asyncio exception handler: ignores the errors of peers that go away or speak garbage, prints the rest."""
    if isinstance(context.get("exception"), (ConnectionError, ssl.SSLError, TimeoutError)):
        return
    loop.default_exception_handler(context)


async def wait_for_stop(stdin_watch):
    """Returns on SIGTERM or SIGINT, or with stdin_watch when standard input reaches end of file."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_exception_handler)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stdin_watch:
        loop.add_reader(sys.stdin.fileno(), lambda: os.read(sys.stdin.fileno(), 4096) or stop.set())
    await stop.wait()
