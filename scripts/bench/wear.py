#!/usr/bin/env python3
"""SD card wear (issue 14): bytes the daemon sends to storage, per reading and per second.

Run through `bash scripts/bench.sh --wear` (it builds first). Standard library only.

Every case runs its own release daemon against the real Django + SimpleJWT test server
(tests/server under gunicorn, as run_bench.py starts it) or against a closed port
(offline), with its queue on the bench directory (a real disk). The figure is the growth
of /proc/PID/io `write_bytes` over a window after a warm-up: what the process dirtied in
the page cache or wrote directly, i.e. what the kernel will send to the card (the ext4
journal's own blocks, written by jbd2, are not in it). Readings in the window are the
growth of pending + uploaded_total + dead + dropped_total of `queue stats`.

All cases of all binaries run at the same time, side by side, so that `before` (another
binary, e.g. main's) and `after` see the same machine. Each daemon gets a
RUNTIME_DIRECTORY on tmpfs (/dev/shm), as systemd gives the unit one under /run.
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_bench as rb  # noqa: E402

# (name, sampling.interval, server up, extra config); the window is --window seconds
CASES = [
    ("5s_healthy", "5s", True),
    ("1s_healthy", "1s", True),
    ("5s_offline", "5s", False),
    ("1s_offline", "1s", False),
    ("1khz_offline", "1ms", False),
    ("idle", "1h", True),
]


class WearGateway(rb.Gateway):
    def __init__(self, *a, runtime_dir, **kw):
        super().__init__(*a, **kw)
        self.runtime_dir = runtime_dir

    def env(self):
        env = super().env()
        env["RUNTIME_DIRECTORY"] = self.runtime_dir
        return env


def counted(s):
    return s["pending"] + s["uploaded_total"] + s["dead"] + s["dropped_total"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--binary", action="append", default=[],
                    help="LABEL=PATH, repeatable (default after=target/release/profilo-gateway)")
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=15)
    ap.add_argument("--window-1khz", type=float, default=20)
    ap.add_argument("--md", default=None, help="write the table into this markdown file")
    ap.add_argument("--command", default="bash scripts/bench.sh --wear")
    args = ap.parse_args()
    binaries = [b.split("=", 1) for b in args.binary] or [
        ("after", os.path.join(args.root, "target/release/profilo-gateway"))]
    work = os.path.join(args.work, "wear")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    shm = f"/dev/shm/profilo-wear-{os.getpid()}"
    os.makedirs(shm, exist_ok=True)
    pw = os.path.join(work, "password")
    password = "bench-password-0123"
    with open(pw, "w") as f:
        f.write(password + "\n")
    os.chmod(pw, 0o600)
    fs = os.popen(f"stat -f -c %T {work}").read().strip()
    rb.log(f"wear: queues on {fs} ({work}); runtime dirs under {shm}")

    server = rb.Server(args.root, work, 2, 2)
    server.create_user("bench", password)
    dead = f"http://127.0.0.1:{rb.free_port()}"
    gws = []
    results = {}
    try:
        for label, binary in binaries:
            for name, interval, up in CASES:
                rt = os.path.join(shm, f"{label}-{name}")
                os.makedirs(rt, exist_ok=True)
                gw = WearGateway(binary, work, f"{label}-{name}", server.base if up else dead,
                                 interval=interval, username="bench", runtime_dir=rt)
                gw.label, gw.case = label, name
                gw.start()
                gws.append(gw)
        rb.log(f"wear: {len(gws)} daemons started; warm-up {args.warmup:g} s")
        time.sleep(args.warmup)
        start = {}
        for gw in gws:
            start[gw] = (time.monotonic(), rb.proc_io(gw.proc.pid)["write_bytes"],
                         counted(gw.stats()))
        end = {}
        t_end_1k = time.monotonic() + args.window_1khz
        t_end = time.monotonic() + args.window
        while len(end) < len(gws):
            now = time.monotonic()
            for gw in gws:
                if gw in end:
                    continue
                due = t_end_1k if gw.case == "1khz_offline" else t_end
                if now >= due:
                    end[gw] = (time.monotonic(), rb.proc_io(gw.proc.pid)["write_bytes"],
                               counted(gw.stats()))
            for gw in gws:
                gw.drain_notify()
            time.sleep(0.2)
        for gw in gws:
            gw.stop()
            (t0, w0, n0), (t1, w1, n1) = start[gw], end[gw]
            r = {"seconds": round(t1 - t0, 1), "write_bytes": w1 - w0, "readings": n1 - n0,
                 "bytes_per_s": round((w1 - w0) / (t1 - t0), 1)}
            r["bytes_per_reading"] = round(r["write_bytes"] / r["readings"]) if r["readings"] else None
            results.setdefault(gw.label, {})[gw.case] = r
            rb.log(f"    {gw.label} {gw.case}: {r}")
    finally:
        for proc, group in rb.STARTED:
            rb.stop_proc(proc, group=group)
        shutil.rmtree(shm, ignore_errors=True)
    with open(os.path.join(work, "wear.json"), "w") as f:
        json.dump(results, f, indent=1)
    body = table(results, args, fs)
    print()
    print(body)
    if args.md:
        write_md(args.md, body)
        rb.log(f"wrote {args.md}")


TARGETS = {"5s_healthy": 8192, "1s_healthy": 8192, "5s_offline": 6144, "1s_offline": 6144,
           "1khz_offline": 300}


def table(results, args, fs):
    labels = list(results)
    head = "| case | " + " | ".join(labels) + " | target |"
    sep = "|---" * (len(labels) + 2) + "|"
    rows = []
    names = {"5s_healthy": "5 s sampling (default), server healthy",
             "1s_healthy": "1 s sampling, server healthy",
             "5s_offline": "5 s sampling, server unreachable",
             "1s_offline": "1 s sampling, server unreachable",
             "1khz_offline": "1 kHz (1 ms), server unreachable"}
    for case, _, _ in CASES:
        if case == "idle":
            continue
        cells = []
        for l in labels:
            r = results[l].get(case, {})
            b = r.get("bytes_per_reading")
            cells.append(f"**{b:,} B**/reading ({r['readings']} readings, {r['write_bytes']:,} B in {r['seconds']} s)"
                         if b is not None else "n/a")
        tgt = TARGETS[case]
        last = results[labels[-1]].get(case, {}).get("bytes_per_reading")
        ok = "MET" if last is not None and last <= tgt else "**MISSED**"
        rows.append(f"| {names[case]} | " + " | ".join(cells) + f" | <= {tgt:,} B ({ok}) |")
    cells = []
    for l in labels:
        r = results[l]["idle"]
        cells.append(f"**{r['bytes_per_s']:,} B/s** ({r['write_bytes']:,} B in {r['seconds']} s)")
    last = results[labels[-1]]["idle"]["bytes_per_s"]
    rows.append("| idle (interval 1 h, server healthy) | " + " | ".join(cells)
                + f" | <= 64 B/s ({'MET' if last <= 64 else '**MISSED**'}) |")
    cells = []
    for l in labels:
        r = results[l]["5s_healthy"]
        cells.append(f"**{r['bytes_per_s'] * 86400 / 1e6:,.1f} MB/day**")
    rows.append("| a day at 5 s, server healthy (B/s x 86,400) | " + " | ".join(cells) + " | |")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"### SD card wear, {date}\n\n"
            f"Command: `{args.command}`; all daemons side by side, windows of {args.window:g} s "
            f"({args.window_1khz:g} s at 1 kHz) after {args.warmup:g} s of warm-up; queues on "
            f"`{fs}`; /proc/PID/io `write_bytes` of each release daemon; real test server.\n\n"
            + head + "\n" + sep + "\n" + "\n".join(rows) + "\n")


MARK_BEGIN = "<!-- wear:begin (generated by scripts/bench.sh --wear; edit outside the markers) -->"
MARK_END = "<!-- wear:end -->"


def write_md(path, body):
    rb.write_marked_block(path, MARK_BEGIN, MARK_END, body, "## SD card wear\n\n")


if __name__ == "__main__":
    main()
