"""The lab's transit relay: Debian's magic-wormhole transit relay on the lab's internet.

:func:`start_relay` runs ``twist3 transitrelay`` (Debian's
``magic-wormhole-transit-relay``) in a core router's namespace, listening on
every address there; both homes reach it through their NAT routers like any
server on the internet.  Its usage log (``--log-fd``: one JSON object per
finished pairing or lonely connection, with the bytes it carried) goes to a
file the tests read, to tell what the relay carried (``total_bytes``) and
how each connection ended (``mood``: happy, lonely, redundant, errory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .netns import LabUnavailable, Namespaces

#: The relay's port (its documented default).
PORT = 4001
#: How long the relay may take to listen (twist3 imports Twisted first).
START_TIMEOUT = 20.0


@dataclass
class TransitRelay:
    """A running transit relay; :meth:`stop` ends it."""

    lab: Namespaces
    role: str
    address: str
    port: int
    proc: subprocess.Popen
    log_path: str
    _stopped: bool = field(default=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def usage(self) -> list[dict]:
        """The usage records written so far (one per finished connection or pair)."""
        try:
            with open(self.log_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    def carried(self) -> int:
        """Bytes the relay passed between paired connections, so far."""
        return sum(record.get("total_bytes") or 0 for record in self.usage())

    def kill(self) -> None:
        """End the relay at once (every connection through it closes)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(os.path.dirname(self.log_path), ignore_errors=True)


def start_relay(lab: Namespaces, role: str, address: str, port: int = PORT) -> TransitRelay:
    """Run the transit relay in *role*'s namespace (reached at *address*)."""
    twist = shutil.which("twist3")
    if twist is None:
        raise LabUnavailable("the lab's relay needs twist3 (apt-get install "
                             "magic-wormhole-transit-relay)")
    workdir = tempfile.mkdtemp(prefix="pclab-relay-")
    log_path = os.path.join(workdir, "usage.jsonl")
    with open(log_path, "w") as log:
        proc = lab.popen(role, [twist, "transitrelay", f"--port=tcp:{port}",
                                f"--log-fd={log.fileno()}"],
                         pass_fds=(log.fileno(),), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relay = TransitRelay(lab, role, address, port, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while f":{port} " not in lab.sh(role, "ss -ltnH"):
        if proc.poll() is not None or time.monotonic() > deadline:
            relay.stop()
            raise LabUnavailable(f"the transit relay did not start in {role} "
                                 f"(status {proc.poll()})")
        time.sleep(0.05)
    return relay
