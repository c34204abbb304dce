#!/usr/bin/env python3
"""An emulated WAN link for scripts/bench.sh: a TCP proxy on 127.0.0.1 that adds delay.

The kernel of the bench machine has no netem qdisc, so the delay is added in user space.
Every chunk read from one side is forwarded to the other side RTT/2 after it arrived,
in order (one queue per direction, each chunk released at arrival + RTT/2). A new
connection also pays one extra RTT before its first byte reaches the server, which is what
the TCP handshake costs a client over a real link: the client's SYN / SYN-ACK round trip.
Here the client's connect() returns at once (loopback), so instead its bytes are held until
accept + RTT, then delayed by RTT/2 like every other chunk: a request sent right after
connect() reaches the server 1.5 RTT after the connect started, as over a real link.

The connection to the server is opened only when the first chunk is released (the server
then accepts and reads at once, as it would when the handshake's last ACK and the request
arrive together): a server that gives each accepted connection a thread (gunicorn gthread)
must not see a silent connection held open for the emulated handshake.

Not emulated: bandwidth limits, loss, jitter, the FIN/ACK round trips of close(). Bytes in
flight are held in memory (a benchmark's requests are small); no flow control.

Standard library only. Loopback only: it listens on 127.0.0.1 and forwards only to a
127.0.0.0/8 address. Prints "LISTENING 127.0.0.1 PORT" on stdout once it accepts; on
SIGTERM/SIGINT it stops, writes a JSON summary (connections, chunks, bytes, how late chunks
were released against their due time) to --stats (or stderr), and exits 0.

Usage: delay_proxy.py --upstream 127.0.0.1:PORT [--rtt-ms 40] [--port 0] [--stats FILE]
"""
import argparse
import asyncio
import ipaddress
import json
import signal
import sys
import time


class Stats:
    def __init__(self):
        self.connections = 0
        self.upstream_connects = 0
        self.open = 0
        self.max_open = 0
        self.chunks = {"c2s": 0, "s2c": 0}
        self.bytes = {"c2s": 0, "s2c": 0}
        self.late = []  # seconds a chunk was written after its due time (sampled)
        self.errors = 0

    def note_late(self, s):
        # Keep a bounded sample: every chunk up to 200,000, then none.
        if len(self.late) < 200_000:
            self.late.append(s)

    def summary(self, rtt_ms):
        late = sorted(self.late)

        def pct(p):
            if not late:
                return None
            return round(1000 * late[min(len(late) - 1, int(p * len(late)))], 2)

        return {
            "rtt_ms": rtt_ms,
            "connections": self.connections,
            "upstream_connects": self.upstream_connects,
            "max_open": self.max_open,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "late_ms_p50": pct(0.50),
            "late_ms_p99": pct(0.99),
            "late_ms_max": round(1000 * late[-1], 2) if late else None,
            "errors": self.errors,
        }


class Link:
    def __init__(self, upstream_host, upstream_port, rtt_s, stats):
        self.host, self.port = upstream_host, upstream_port
        self.rtt = rtt_s
        self.half = rtt_s / 2
        self.stats = stats

    async def handle(self, c_reader, c_writer):
        loop = asyncio.get_running_loop()
        st = self.stats
        st.connections += 1
        st.open += 1
        st.max_open = max(st.max_open, st.open)
        # client -> server: nothing is released before the emulated handshake is over.
        gate = loop.time() + self.rtt
        c2s, s2c = asyncio.Queue(), asyncio.Queue()
        tasks = [loop.create_task(self.read_side(c_reader, c2s, gate, "c2s"))]
        s_writer = None
        try:
            first = await self.release(c2s)
            if first:
                s_reader, s_writer = await asyncio.open_connection(self.host, self.port)
                st.upstream_connects += 1
                tasks.append(loop.create_task(self.read_side(s_reader, s2c, 0.0, "s2c")))
                tasks.append(loop.create_task(self.write_side(s2c, c_writer)))
                await self.write_side(c2s, s_writer, first=first)
            # Wait for both directions to reach EOF (or fail).
            for t in tasks:
                await t
        except (ConnectionError, OSError):
            st.errors += 1
        except asyncio.CancelledError:
            pass  # shutting down (Python 3.11's start_server callback chokes on it)
        finally:
            st.open -= 1
            for w in (c_writer, s_writer):
                if w is not None:
                    try:
                        w.close()
                    except Exception:
                        pass
            for t in tasks:
                t.cancel()

    async def read_side(self, reader, queue, gate, direction):
        """Reads chunks, queues (release time, data); data == b"" is the EOF (or a reset)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                queue.put_nowait((max(loop.time(), gate) + self.half, data))
                self.stats.chunks[direction] += 1
                self.stats.bytes[direction] += len(data)
        except (ConnectionError, OSError):
            self.stats.errors += 1
        queue.put_nowait((max(loop.time(), gate) + self.half, b""))

    async def release(self, queue):
        """The next chunk of a direction, at its release time (in order: FIFO queue)."""
        release, data = await queue.get()
        loop = asyncio.get_running_loop()
        delay = release - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.stats.note_late(max(0.0, loop.time() - release))
        return data

    async def write_side(self, queue, writer, first=None):
        """Writes a direction's chunks as they become due; half-closes on EOF."""
        data = first if first is not None else await self.release(queue)
        try:
            while data:
                writer.write(data)
                await writer.drain()
                data = await self.release(queue)
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            self.stats.errors += 1
            # The other side is gone: end this one too, so its reader sees EOF.
            writer.close()


def loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def main_async(args):
    host, _, port = args.upstream.rpartition(":")
    if not loopback(host):
        sys.exit(f"delay_proxy: upstream {host} is not a loopback address")
    stats = Stats()
    link = Link(host, int(port), args.rtt_ms / 1000.0, stats)
    server = await asyncio.start_server(link.handle, "127.0.0.1", args.port, backlog=1024)
    print(f"LISTENING 127.0.0.1 {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    await stop.wait()
    server.close()
    summary = stats.summary(args.rtt_ms)
    summary["seconds"] = round(time.monotonic() - t0, 2)
    text = json.dumps(summary)
    if args.stats:
        with open(args.stats, "w") as f:
            f.write(text + "\n")
    else:
        print(text, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="127.0.0.1:PORT of the server")
    ap.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time (default 40)")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    ap.add_argument("--stats", help="write the JSON summary there on exit (default stderr)")
    args = ap.parse_args()
    if args.rtt_ms < 0:
        sys.exit("delay_proxy: --rtt-ms must be >= 0")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
