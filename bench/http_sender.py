#!/usr/bin/python3
# bench/http_sender.py: figure 7's baseline sender: HTTP POSTs, each a whole request/response round trip on a
# keep-alive connection, as certctl's server sends notifications (one after another, Go's http.Client).
#
# Usage: bench/http_sender.py [--connections N] [--url URL] REQUESTS
#   REQUESTS: one JSON object per line, {"url": ..., "headers": ["Name: value", ...], "body": ...}, as certctl_sched
#   renders them (bench/run dumps them from _notification_requests()); --url sends each to URL instead.
#   --connections N: N threads, each with its own keep-alive connection, taking the next request in turn (default 1:
#   one request after another on one connection).
# Prints "requests seconds non_2xx connections_opened": seconds from the first request sent to the last response read.
import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def load(path, url):
    """Returns the requests of the file as (host, port, path, headers dict, body bytes)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            u = urlsplit(url or r["url"])
            headers = dict(h.split(": ", 1) for h in r.get("headers") or [])
            target = u.path + ("?" + u.query if u.query else "")
            out.append((u.hostname, u.port or 80, target, headers, r["body"].encode("utf-8")))
    return out


class Sender:
    """Sends the requests over keep-alive connections, one request at a time per connection."""

    def __init__(self, requests):
        self.requests = requests
        self.next = 0
        self.lock = threading.Lock()
        self.non_2xx = 0
        self.opened = 0
        self.error = None

    def take(self):
        """Returns the index of the next request to send, or None when all are taken."""
        with self.lock:
            if self.next >= len(self.requests) or self.error:
                return None
            self.next += 1
            return self.next - 1

    def worker(self):
        """One connection: sends requests until none is left; reconnects only if the server closed it."""
        conns = {}
        try:
            while (i := self.take()) is not None:
                host, port, target, headers, body = self.requests[i]
                conn = conns.get((host, port))
                if conn is None:
                    conn = conns[(host, port)] = http.client.HTTPConnection(host, port, timeout=30)
                    with self.lock:
                        self.opened += 1
                conn.request("POST", target, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if not 200 <= resp.status < 300:
                    with self.lock:
                        self.non_2xx += 1
                if resp.will_close:
                    conn.close()
                    del conns[(host, port)]
        except Exception as e:  # noqa: BLE001 - reported, and the run fails
            self.error = e
        finally:
            for c in conns.values():
                c.close()


def main():
    parser = argparse.ArgumentParser(description="HTTP POSTs over keep-alive connections, timed (figure 7)")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--url", help="send every request to this URL instead of its own")
    parser.add_argument("requests")
    args = parser.parse_args()
    sender = Sender(load(args.requests, args.url))
    threads = [threading.Thread(target=sender.worker) for _ in range(args.connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    if sender.error:
        sys.exit(f"http_sender: {sender.error!r}")
    print(len(sender.requests), f"{seconds:.6f}", sender.non_2xx, sender.opened)


if __name__ == "__main__":
    main()
