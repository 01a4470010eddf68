"""The federated demo in one command: a headless server and both clients on a free port.

    python -m common.demo

Each process prints its own tagged log lines; the demo exits 0 when all three did.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from common.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("fedga.demo")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="fedga demo: %(message)s")
    port = str(free_port())
    log.info("server and two clients on 127.0.0.1:%s", port)
    clients = ("client1.py", "client2.py")
    processes = {
        script: subprocess.Popen(
            [
                sys.executable,
                str(ROOT / script),
                "--headless",
                "--host",
                "127.0.0.1",
                "--port",
                port,
                *extra,
            ],
            cwd=ROOT,
        )
        for script, extra in [
            ("server.py", ["--expected-clients", str(len(clients))]),
            *((client, []) for client in clients),
        ]
    }
    try:
        codes = {script: process.wait() for script, process in processes.items()}
    except KeyboardInterrupt:
        for process in processes.values():
            process.terminate()
        return 130
    failed = {script: code for script, code in codes.items() if code != 0}
    if failed:
        log.error("failed (exit codes): %s", failed)
        return 1
    log.info("done, all three processes exited 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
