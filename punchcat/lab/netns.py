"""Network namespaces joined by veth pairs: what every lab topology is made of.

:class:`Namespaces` creates one namespace per *role* (a host, a router),
links them, runs commands inside them and removes them all on
:meth:`~Namespaces.close`, also after a failure.  A topology subclass says
which roles exist (``roles``), builds the network (``build_network``) and
what each host names as PEER (``peer_of``).  Nothing has a link to the
host's own network: traffic never leaves the namespaces.

Needs root, ``ip`` (iproute2) and ``nft`` (nftables); the router lab
(:mod:`.router`) also runs ``miniupnpd`` and ``upnpc``, which
:func:`missing_prerequisites` checks when asked.  Every lab command runs
through :func:`run`, so a failure is a :class:`LabUnavailable` with the
command's stderr.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys

from ..errors import PunchcatError

PREFIX = "pclab"

_counter = itertools.count(1)


class LabUnavailable(PunchcatError):
    """The lab cannot be built here; the message says what is missing."""


#: The Debian package of every command a lab runs.  ``ip`` and ``nft`` every
#: lab needs; miniupnpd and upnpc only the router lab's tests (a router that
#: maps ports, and the UPnP client that reads its table).
PACKAGES = {"ip": "iproute2", "nft": "nftables", "miniupnpd": "miniupnpd-nftables",
            "upnpc": "miniupnpc", "twist3": "magic-wormhole-transit-relay"}
#: Daemons live in /usr/sbin, which is not on a user's PATH (and miniupnpd
#: has no other home).
_DAEMONS = ("miniupnpd",)


def which(tool: str) -> str | None:
    """The path of the command *tool*, or None when it is not installed."""
    found = shutil.which(tool)
    if found is None and tool in _DAEMONS and os.path.exists(f"/usr/sbin/{tool}"):
        found = f"/usr/sbin/{tool}"
    return found


def missing_prerequisites(*tools: str) -> list[str]:
    """What this machine lacks to build the lab and run *tools* in it (e.g.
    ``"miniupnpd"`` for the router lab); empty when it can."""
    missing = []
    if not sys.platform.startswith("linux"):
        missing.append("Linux network namespaces")
    if os.geteuid() != 0:
        missing.append("root (network namespaces and nftables need it)")
    for tool in ("ip", "nft", *tools):
        if which(tool) is None:
            missing.append(f"the '{tool}' command (apt-get install {PACKAGES.get(tool, tool)})")
    return missing


class Namespaces:
    """A set of namespaces, one per role; use as a context manager."""

    #: The namespaces to create, e.g. ("a", "r", "b").
    roles: tuple[str, ...] = ()

    def __init__(self):
        tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.ns = {role: f"{tag}-{role}" for role in self.roles}
        self.procs: list[subprocess.Popen] = []
        self._built: list[str] = []

    # -- what a topology provides -------------------------------------------
    def build_network(self) -> None:
        raise NotImplementedError

    def peer_of(self, side: str, v6: bool = False) -> str:
        """The address host *side* names as PEER."""
        raise NotImplementedError

    # -- building ----------------------------------------------------------
    def __enter__(self):
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        missing = missing_prerequisites()
        if missing:
            raise LabUnavailable("the NAT lab needs " + ", ".join(missing))
        sweep_stale()
        for name in self.ns.values():
            run(["ip", "netns", "add", name])
            self._built.append(name)
        for name in self.ns.values():
            # No duplicate address detection: addresses usable at once.
            run(["ip", "netns", "exec", name, "sh", "-c",
                 "for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done"])
        self.build_network()

    def link(self, left: str, lname: str, right: str, rname: str) -> None:
        """A veth pair: interface *lname* in *left*, *rname* in *right*."""
        run(["ip", "link", "add", lname, "netns", self.ns[left], "type", "veth",
             "peer", "name", rname, "netns", self.ns[right]])

    def configure(self, role: str, interfaces: list[str], commands: list[str],
                  forward: bool = False, ipv6: bool = False) -> None:
        """Bring *interfaces* up and run ``ip`` *commands* in *role*; a router forwards."""
        batch = ["link set lo up"] + [f"link set {i} up" for i in interfaces] + commands
        run(["ip", "-n", self.ns[role], "-batch", "-"], stdin="\n".join(batch) + "\n")
        if forward:
            self.sh(role, "echo 1 > /proc/sys/net/ipv4/ip_forward")
            if ipv6:
                self.sh(role, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")

    def nft(self, role: str, ruleset: str) -> None:
        """Load an nftables *ruleset* in *role*."""
        run(self.command(role, ["nft", "-f", "-"]), stdin=ruleset)

    # -- running things inside ---------------------------------------------
    def command(self, role: str, argv: list[str]) -> list[str]:
        """*argv* as run inside the namespace of *role*."""
        return netns_exec(self.ns[role], argv)

    def popen(self, role: str, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(role, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def sh(self, role: str, script: str, check: bool = True) -> str:
        """Run shell *script* in *role*; its stdout (*check*: fail if it fails)."""
        return run(self.command(role, ["sh", "-c", script]), check=check)

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        while self._built:
            delete_namespace(self._built.pop())


def delete_namespace(name: str) -> None:
    """Kill whatever still runs in namespace *name*, then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def sweep_stale(prefix: str = PREFIX) -> None:
    """Delete the namespaces named *prefix*PID-… whose process no longer exists."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        match = re.match(rf"({re.escape(prefix)}(\d+)-\d+-\w+)", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            delete_namespace(match.group(1))


def netns_exec(name: str, argv: list[str]) -> list[str]:
    """*argv* as run inside namespace *name*."""
    return ["ip", "netns", "exec", name, *argv]


def run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a lab command; its stdout.  With *check*, :class:`LabUnavailable`
    with its stderr if it fails."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout
