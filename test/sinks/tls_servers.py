#!/usr/bin/python3
# test/sinks/tls_servers.py: TLS (and misbehaving TCP) listeners for the network-scan tests, on one asyncio loop.
#
# --config FILE: a JSON list of listeners {"host": "127.x.y.z", "port": N, "kind": K, ...}:
#   kind "tls":     "cert" (PEM chain, leaf first), "key", optional "min_version"/"max_version" ("TLSv1",
#                   "TLSv1_1", "TLSv1_2", "TLSv1_3"): completes the handshake presenting the chain, then closes
#   kind "silent":  accepts and never sends; keeps the connection until the peer closes it
#   kind "trickle": sends one byte per second forever: a TLS record header announcing a 16 KiB handshake
#                   record, then zero bytes, so a client waits for more rather than failing at once
# Relative cert/key paths are taken from the config file's directory.  Port 0 picks a free port; listeners
# with port 0 and the same optional "group" name share one picked port (e.g. hundreds of addresses, one port).
# --ready FILE receives, once all listen, the JSON list of {"host", "port", "kind"} in config order.
# --log FILE gets a line per connection: time, listener (index in the config), host, port, kind, peer, and
# for "tls" the negotiated tls_version ("tls" connections are logged once their handshake succeeded).
import argparse
import asyncio
import errno
import json
import os
import resource
import time

import sinkutil

TRICKLE = b"\x16\x03\x03\x40\x00"   # handshake record, TLS 1.2, length 16384
HANDSHAKE_TIMEOUT = 30              # seconds a TLS client may take to complete its handshake
BIND_ATTEMPTS = 5                   # tries to find a port free on every address of a group


class GroupPortTaken(Exception):
    """The port picked for a group is in use on one of the group's addresses."""


class Listener(asyncio.Protocol):
    """One accepted connection of a listener: logs it, then behaves as its kind says."""

    def __init__(self, index, config, log):
        self.index, self.config, self.log = index, config, log
        self.trickle = None
        self.sent = 0

    def connection_made(self, transport):
        self.transport = transport
        kind = self.config["kind"]
        record = {"time": time.time(), "listener": self.index, "host": self.config["host"],
                  "port": transport.get_extra_info("sockname")[1], "kind": kind,
                  "peer": sinkutil.peer_name(transport)}
        if kind == "tls":
            record["tls_version"] = sinkutil.tls_version(transport)
            transport.close()
        elif kind == "trickle":
            self.send_byte()
        self.log.write(record)

    def send_byte(self):
        """Sends the next trickle byte and schedules the one after it a second later."""
        self.transport.write(TRICKLE[self.sent:self.sent + 1] or b"\0")
        self.sent += 1
        self.trickle = asyncio.get_running_loop().call_later(1, self.send_byte)

    def connection_lost(self, exc):
        """Stops the trickle of a closed connection."""
        if self.trickle:
            self.trickle.cancel()


class Servers:
    """Binds the listeners of a config, sharing TLS contexts between listeners with the same settings."""

    def __init__(self, config, base, log):
        self.config, self.base, self.log = config, base, log
        self.contexts = {}

    def context(self, listener):
        """Returns the SSLContext of a "tls" listener, None for the other kinds."""
        if listener["kind"] != "tls":
            return None
        settings = tuple(listener.get(k) for k in ("cert", "key", "min_version", "max_version"))
        if settings not in self.contexts:
            cert, key, low, high = settings
            self.contexts[settings] = sinkutil.server_context(
                os.path.join(self.base, cert), os.path.join(self.base, key), low, high)
        return self.contexts[settings]

    async def bind_all(self):
        """Binds every listener; starts again when a port picked for a group is taken on another address."""
        for attempt in range(BIND_ATTEMPTS):
            servers, group_ports = [], {}
            try:
                for i, listener in enumerate(self.config):
                    servers.append(await self.bind(i, listener, group_ports))
                return servers
            except GroupPortTaken:
                for server in servers:
                    server.close()
        raise OSError(errno.EADDRINUSE, f"no port free on every address of a group after {BIND_ATTEMPTS} tries")

    async def bind(self, index, listener, group_ports):
        """Binds one listener, on its group's port if one was picked already (else records the one picked)."""
        if listener["kind"] not in ("tls", "silent", "trickle"):
            raise ValueError(f"listener {index}: unknown kind {listener['kind']!r}")
        sinkutil.loopback_address(listener["host"])
        group = listener.get("group") if listener.get("port", 0) == 0 else None
        port = group_ports.get(group, listener.get("port", 0))
        ctx = self.context(listener)
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: Listener(index, listener, self.log), listener["host"], port, ssl=ctx, backlog=1024,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ctx else None)
        except OSError as e:
            if e.errno == errno.EADDRINUSE and group in group_ports:
                raise GroupPortTaken() from e
            raise
        if group is not None:
            group_ports.setdefault(group, server.sockets[0].getsockname()[1])
        return server


def raise_fd_limit():
    """Raises the open-files limit to its maximum (hundreds of listeners and connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main():
    parser = argparse.ArgumentParser(description="TLS listeners for network-scan tests")
    sinkutil.add_common_options(parser, listener=False)
    parser.add_argument("--config", required=True, metavar="FILE", help="JSON list of listeners")
    args = parser.parse_args()
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    raise_fd_limit()
    servers = await Servers(config, os.path.dirname(os.path.abspath(args.config)), sinkutil.JsonLog(args.log)) \
        .bind_all()
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    sinkutil.write_ready(args.ready, json.dumps(
        [{"host": c["host"], "port": p, "kind": c["kind"]} for c, p in zip(config, ports)]) + "\n")
    await sinkutil.wait_for_stop(args.stdin_watch)


if __name__ == "__main__":
    asyncio.run(main())
