#!/usr/bin/python3
# test/sinks/http_sink.py: HTTP/1.1 (keep-alive) POST receiver for the tests: records requests, answers by path.
#
# Answers (any method; ?retry_after=N adds "Retry-After: N" to any of them):
#   /r/<code>                     that status (200-599) with a short text body
#   /r/slow/<ms>/<code>           the same after ms milliseconds
#   /r/hang                       never: holds the connection until the client goes away or the sink stops
#   /r/seq/<name>/<c1>,<c2>,...   the i-th request to that name gets c_i, the last one repeating
#   /r/body/<code>/<len>          a body of len bytes "0123456789012..."
#   anything else                 404
# Control (not recorded; 405 to another method): GET /_requests (the records, a JSON array), POST /_reset
# (clears the records and the seq counters; the log file keeps growing), GET /_count (the recorded POSTs).
# Each other request is recorded, in memory and as a line of --log, before it is answered: time (Unix
# seconds), client, method, path, query, headers (lower-cased names), body (body_base64 true if it was not
# UTF-8) and status (null for /r/hang).  --ready FILE receives the port followed by a newline.
import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import sinkutil

HEAD_LIMIT = 1 << 20        # bytes of request line and headers accepted
CONTROL = {"/_requests": "GET", "/_count": "GET", "/_reset": "POST"}   # control path: its method


class BadRequest(Exception):
    """A request this sink cannot parse; answered 400, then the connection is closed."""


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict
    body: bytes = b""


@dataclass
class Reply:
    status: int = None           # None: never answer
    body: bytes = None           # None: a short text body naming the status
    delay: float = 0
    headers: dict = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"


def filler(length):
    """Returns length bytes of "0123456789" repeated."""
    return (b"0123456789" * (length // 10 + 1))[:length]


class HttpSink:
    """The records and seq counters of one sink, and the per-connection protocol."""

    # (path pattern, function of (sink, match) returning the Reply)
    ROUTES = (
        (re.compile(r"/r/([2-5]\d\d)"), lambda s, m: Reply(int(m[1]))),
        (re.compile(r"/r/slow/(\d+)/([2-5]\d\d)"), lambda s, m: Reply(int(m[2]), delay=int(m[1]) / 1000)),
        (re.compile(r"/r/hang"), lambda s, m: Reply(None)),
        (re.compile(r"/r/seq/([^/]+)/([2-5]\d\d(?:,[2-5]\d\d)*)"), lambda s, m: Reply(s.next_in_seq(m[1], m[2]))),
        (re.compile(r"/r/body/([2-5]\d\d)/(\d+)"), lambda s, m: Reply(int(m[1]), body=filler(int(m[2])))),
    )

    def __init__(self, log):
        self.log = log
        self.records = []
        self.seq = {}

    def next_in_seq(self, name, codes):
        """Returns the status for the next request to seq name: the i-th code, the last one repeating."""
        codes = codes.split(",")
        i = self.seq.get(name, 0)
        self.seq[name] = i + 1
        return int(codes[min(i, len(codes) - 1)])

    def control(self, req):
        """Returns the Reply of a control endpoint (405 for another method), or None if req is not for one."""
        if req.path not in CONTROL:
            return None
        if req.method != CONTROL[req.path]:
            return Reply(405)
        if req.path == "/_requests":
            return Reply(200, json.dumps(self.records, ensure_ascii=False).encode("utf-8"),
                         content_type="application/json")
        if req.path == "/_count":
            return Reply(200, str(sum(r["method"] == "POST" for r in self.records)).encode())
        self.records.clear()
        self.seq.clear()
        return Reply(200, b"reset\n")

    def route(self, req):
        """Returns the Reply for a request to a behaviour path (404 for an unknown one)."""
        reply = next((make(self, m) for pattern, make in self.ROUTES if (m := pattern.fullmatch(req.path))),
                     Reply(404))
        retry_after = parse_qs(req.query).get("retry_after")
        if retry_after:
            reply.headers["Retry-After"] = retry_after[0]
        return reply

    def record(self, req, client, status):
        """Adds a request to the records and the log."""
        body, is_base64 = sinkutil.text_or_base64(req.body)
        rec = {"time": time.time(), "client": client, "method": req.method, "path": req.path,
               "query": req.query, "headers": req.headers, "body": body, "body_base64": is_base64,
               "status": status}
        self.records.append(rec)
        self.log.write(rec)

    async def serve(self, reader, writer):
        """Serves one connection: its requests in turn while it is kept alive."""
        client = sinkutil.peer_name(writer.transport)
        try:
            while (req := await read_request(reader, writer)) is not None:
                reply = self.control(req)
                if reply is None:
                    reply = self.route(req)
                    self.record(req, client, reply.status)
                if reply.status is None:
                    await drain_until_eof(reader)
                    break
                await asyncio.sleep(reply.delay)
                keep = keep_alive(req)
                await send(writer, reply, keep)
                if not keep:
                    break
        except BadRequest:
            await send(writer, Reply(400), False)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


async def read_request(reader, writer):
    """Reads one request (answering "Expect: 100-continue"); returns None if the connection ends before one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise
        return None
    lines = head.decode("utf-8", "backslashreplace").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest() from None
    headers = {}
    for line in filter(None, lines[1:]):
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    url = urlsplit(target)
    req = Request(method, url.path, url.query, version, headers)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    req.body = await read_body(reader, headers)
    return req


async def read_body(reader, headers):
    """Reads a request body: chunked, or Content-Length bytes (none without it)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await read_chunked(reader)
    try:
        return await reader.readexactly(int(headers.get("content-length", "0")))
    except ValueError:
        raise BadRequest() from None


async def read_chunked(reader):
    """Reads a chunked body and its trailer."""
    body = bytearray()
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        except ValueError:
            raise BadRequest() from None
        if size == 0:
            break
        body += await reader.readexactly(size + 2)
        del body[-2:]
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass
    return bytes(body)


async def drain_until_eof(reader):
    """Reads and drops what the client sends until it closes the connection."""
    while await reader.read(65536):
        pass


def keep_alive(req):
    """Tells whether the connection stays open after this request (HTTP/1.1 unless "close", HTTP/1.0 if asked)."""
    connection = req.headers.get("connection", "").lower()
    if req.version == "HTTP/1.1":
        return "close" not in connection
    return "keep-alive" in connection


def reason_phrase(status):
    """Returns the reason phrase of a status code ("Unknown" for a code HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def send(writer, reply, keep):
    """Writes a response; 204 and 304 have no body."""
    phrase = reason_phrase(reply.status)
    body = reply.body if reply.body is not None else f"{reply.status} {phrase}\n".encode()
    headers = dict(reply.headers)
    if reply.status in (204, 304):
        body = b""
    else:
        headers["Content-Type"] = reply.content_type
        headers["Content-Length"] = str(len(body))
    if not keep:
        headers["Connection"] = "close"
    head = f"HTTP/1.1 {reply.status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1") + body)
    await writer.drain()


async def main():
    parser = argparse.ArgumentParser(description="HTTP/1.1 POST receiver for tests")
    sinkutil.add_common_options(parser)
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert")
    args = parser.parse_args()
    ctx = sinkutil.server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    sink = HttpSink(sinkutil.JsonLog(args.log))
    server = await asyncio.start_server(sink.serve, args.host, args.port, ssl=ctx, limit=HEAD_LIMIT, backlog=1024)
    sinkutil.write_ready(args.ready, f"{server.sockets[0].getsockname()[1]}\n")
    await sinkutil.wait_for_stop(args.stdin_watch)


if __name__ == "__main__":
    asyncio.run(main())
