#!/usr/bin/env python3
"""A stand-in `docker` CLI for tests: records every call and acts out `info`, `run` (attached),
`inspect`, `stop`, `rm` and `logs` for Grafana's container, without an engine.

State lives in $FAKE_DOCKER_STATE: `calls.jsonl` (one argv per line) and `containers/<name>.json`.
`run` starts the "container" as its own session (as a real one is not in the client's process
group), answers HTTP on $GF_SERVER_HTTP_PORT, and forwards SIGTERM to it like `docker run` does.
With $FAKE_DOCKER_DOWN set, `info` fails as it does when no engine answers.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_DOCKER_STATE"])
CONTAINERS = STATE / "containers"


def _record(argv: list[str]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(argv) + "\n")


def _container(name: str) -> Path:
    return CONTAINERS / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _serve(port: int, container_file: Path) -> int:
    """The container itself: Grafana's log lines and its HTTP port, until SIGTERM."""
    import http.server

    server = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)

    def on_term(*_: object) -> None:
        container_file.unlink(missing_ok=True)  # --rm
        print("logger=server msg=\"Shutdown started\"", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(f"logger=http.server msg=\"HTTP Server Listen\" address=127.0.0.1:{port}", flush=True)
    server.serve_forever()
    return 0


def _run(args: list[str]) -> int:
    name = args[args.index("--name") + 1]
    env = dict(item.split("=", 1) for flag, item in itertools.pairwise(args) if flag == "--env")
    container_file = _container(name)
    if container_file.exists():
        message = f'Conflict. The container name "/{name}" is already in use'
        print(f"docker: Error response from daemon: {message}", file=sys.stderr)
        return 125
    CONTAINERS.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", env["GF_SERVER_HTTP_PORT"], str(container_file)],
        start_new_session=True,
    )
    container_file.write_text(json.dumps({"pid": child.pid, "argv": args}))
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))  # --sig-proxy
    return child.wait()


def _inspect(name: str) -> int:
    if _container(name).exists():
        print("0123456789ab")
        return 0
    print(f"Error: No such container: {name}", file=sys.stderr)
    return 1


def _stop(name: str) -> int:
    path = _container(name)
    if not path.exists():
        return _inspect(name)
    pid = json.loads(path.read_text())["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(name)
    return 0


def _rm(name: str) -> int:
    path = _container(name)
    if not path.exists():
        return _inspect(name)
    pid = json.loads(path.read_text())["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    path.unlink()
    print(name)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        return _serve(int(argv[1]), Path(argv[2]))
    _record(argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command in ("info", "version"):
        if os.environ.get("FAKE_DOCKER_DOWN"):
            print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
            return 1
        print("27.0.3")
        return 0
    if command == "run":
        return _run(rest)
    if command == "inspect":
        return _inspect(rest[-1])
    if command == "stop":
        return _stop(rest[-1])
    if command == "rm":
        return _rm(rest[-1])
    if command == "logs":
        return 0 if _container(rest[-1]).exists() else _inspect(rest[-1])
    print(f"fake docker: unsupported command {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
