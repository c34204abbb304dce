#!/usr/bin/python3
"""Talks to the test server inside the vm-test guest (127.0.0.1:8000).

  ctl.py wait SECS               until the server answers
  ctl.py user NAME PASSWORD      create (or reset) an active user
  ctl.py stat NAME               one request counter of /test-control/stats/
  ctl.py stats                   every counter, one line
  ctl.py count                   readings stored
  ctl.py faults JSON             set the data-post faults ('{}' clears)
  ctl.py json KEY                read KEY of the JSON object on stdin
"""
import json
import sys
import time
import urllib.request

BASE = "http://127.0.0.1:8000"


def call(method, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        BASE + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def main(argv):
    cmd = argv[1]
    if cmd == "wait":
        deadline = time.monotonic() + float(argv[2])
        while True:
            try:
                call("GET", "/test-control/stats/", timeout=2)
                return 0
            except OSError:
                if time.monotonic() > deadline:
                    return 1
                time.sleep(0.5)
    if cmd == "user":
        call("POST", "/test-control/users/", {"username": argv[2], "password": argv[3], "active": True})
    elif cmd == "stat":
        print(call("GET", "/test-control/stats/").get(argv[2], 0))
    elif cmd == "stats":
        stats = call("GET", "/test-control/stats/")
        print(" ".join(f"{k}={v}" for k, v in stats.items() if v))
    elif cmd == "count":
        print(len(call("GET", "/test-control/readings/")))
    elif cmd == "faults":
        call("POST", "/test-control/faults/", json.loads(argv[2]))
    elif cmd == "json":
        print(json.load(sys.stdin)[argv[2]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
