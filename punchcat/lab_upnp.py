"""A home router that answers PCP, NAT-PMP and UPnP-IGD, for the portmap tests.

::

    host (pcpm-…-h) ── router (pcpm-…-r, miniupnpd) ── far (pcpm-…-f)
    192.168.7.2          192.168.7.1 | 5.5.5.1             5.5.5.2

:class:`PortmapLab` builds that topology out of network namespaces and veth
pairs; nothing in it has a link to the host's network.  The router
masquerades the LAN behind ``5.5.5.1``: miniupnpd refuses a WAN address in
any reserved range (RFC 1918, 100.64/10, the TEST-NETs, 198.18/15), and an
address that nothing outside the namespaces can see is harmless.

:func:`start_miniupnpd` runs Debian's ``miniupnpd`` (nftables backend) in the
router namespace with a config of its own in a temporary directory.  Facts
about this build (2.3.1), measured:

* PCP has no switch of its own: miniupnpd answers NAT-PMP (version 0) and
  PCP (version 2) on one UDP socket, port 5351, opened by ``enable_natpmp``.
  To offer only one of the two, :func:`start_miniupnpd` drops the other
  version's requests with an nftables rule in the router (the first byte of
  the UDP payload is the version), so the client sees silence, as from a
  router that does not speak it.
* The packaged ``nft_init.sh`` sources a file that is not shipped, so the
  table miniupnpd writes into is created here: ``table inet filter`` with
  chains ``miniupnpd`` (jumped to from a forward hook chain),
  ``prerouting_miniupnpd`` (from a nat prerouting hook) and
  ``postrouting_miniupnpd`` (from a nat postrouting hook).

:class:`ScriptedNatPmp` is a NAT-PMP responder in Python for what miniupnpd
will not do: answer with a shared-space (100.64/10) WAN address, or with
garbage and errors.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

PREFIX = "pcpm-"
HOST_IP, ROUTER_LAN_IP, LAN_SUBNET = "192.168.7.2", "192.168.7.1", "192.168.7.0/24"
ROUTER_WAN_IP, FAR_IP = "5.5.5.1", "5.5.5.2"

_counter = itertools.count(1)


class LabUnavailable(Exception):
    """The portmap lab cannot be built here; the message says what is missing."""


def missing_prerequisites(miniupnpd: bool = True) -> list[str]:
    """What this machine lacks for the portmap lab (empty when it can)."""
    missing = []
    if not sys.platform.startswith("linux"):
        missing.append("Linux network namespaces")
    if os.geteuid() != 0:
        missing.append("root (network namespaces and nftables need it)")
    tools = [("ip", "iproute2"), ("nft", "nftables")]
    if miniupnpd:
        tools += [("miniupnpd", "miniupnpd-nftables"), ("upnpc", "miniupnpc")]
    for tool, package in tools:
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            missing.append(f"the '{tool}' command (apt-get install {package})")
    return missing


def _run(argv: list[str], stdin: str | None = None, check: bool = True,
         timeout: float = 20) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise LabUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def netns_exec(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def delete_namespace(name: str) -> None:
    """Kill whatever still runs in namespace *name*, then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def sweep_stale() -> None:
    """Delete portmap lab namespaces left behind by processes that are gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        match = re.match(rf"({PREFIX}(\d+)-\d+-\w+)", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            delete_namespace(match.group(1))


class PortmapLab:
    """host ── router ── far, as namespaces; a context manager that always
    tears down what it built.  The router masquerades the LAN and forwards
    nothing inbound unless miniupnpd (or a test) adds a rule."""

    def __init__(self, router_wan: str = ROUTER_WAN_IP):
        tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.ns = {role: f"{tag}-{role}" for role in ("h", "r", "f")}
        self.router_wan = router_wan
        self.far_ip = router_wan.rsplit(".", 1)[0] + ".2"
        self.procs: list[subprocess.Popen] = []
        self.daemons: list["Miniupnpd"] = []
        self._built: list[str] = []

    def __enter__(self) -> "PortmapLab":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        missing = missing_prerequisites(miniupnpd=False)
        if missing:
            raise LabUnavailable("the portmap lab needs " + ", ".join(missing))
        sweep_stale()
        for name in self.ns.values():
            _run(["ip", "netns", "add", name])
            self._built.append(name)
        h, r, f = self.ns["h"], self.ns["r"], self.ns["f"]
        _run(["ip", "link", "add", "eth0", "netns", h, "type", "veth",
              "peer", "name", "lan", "netns", r])
        _run(["ip", "link", "add", "wan", "netns", r, "type", "veth",
              "peer", "name", "eth0", "netns", f])
        config = {
            "h": ["link set eth0 up", f"addr add {HOST_IP}/24 dev eth0",
                  f"route add default via {ROUTER_LAN_IP}"],
            "r": ["link set lan up", "link set wan up", f"addr add {ROUTER_LAN_IP}/24 dev lan",
                  f"addr add {self.router_wan}/24 dev wan"],
            "f": ["link set eth0 up", f"addr add {self.far_ip}/24 dev eth0"],
        }
        for role, name in self.ns.items():
            _run(["ip", "-n", name, "-batch", "-"],
                 stdin="\n".join(["link set lo up", *config[role]]) + "\n")
        self.sh("r", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        _run(self.command("r", ["nft", "-f", "-"]), stdin=ROUTER_RULESET)

    def command(self, role: str, argv: list[str]) -> list[str]:
        """*argv* as run in the namespace of *role* (h, r or f)."""
        return netns_exec(self.ns[role], argv)

    def sh(self, role: str, script: str, check: bool = True) -> str:
        return _run(self.command(role, ["sh", "-c", script]), check=check)

    def popen(self, role: str, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(role, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def start_miniupnpd(self, **options) -> "Miniupnpd":
        """miniupnpd on the router with this lab's interfaces (see
        :func:`start_miniupnpd` for *options*)."""
        daemon = start_miniupnpd(self.ns["r"], "wan", "lan", LAN_SUBNET, **options)
        self.daemons.append(daemon)
        return daemon

    def forwarded_ports(self) -> list[tuple[int, str, int]]:
        """(external port, internal address, internal port) of every DNAT rule
        miniupnpd has in the router now."""
        listing = self.sh("r", "nft list chain inet filter prerouting_miniupnpd", check=False)
        return [(int(m.group(1)), m.group(2), int(m.group(3)))
                for m in re.finditer(r"dport (\d+) dnat ip to ([\d.]+):(\d+)", listing)]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.daemons.clear()
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


#: The router's own rules around the chains miniupnpd fills: masquerade out of
#: the WAN, forward what the LAN starts and what miniupnpd allows, drop the rest.
ROUTER_RULESET = """
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan" accept
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan" masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"""


@dataclass
class Miniupnpd:
    """A running miniupnpd; :meth:`stop` ends it and removes its mappings."""

    router_ns: str
    proc: subprocess.Popen
    workdir: str
    config: str
    log_path: str
    _stopped: bool = field(default=False, repr=False)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        subprocess.run(netns_exec(self.router_ns, ["nft", "delete", "table", "inet", "pcpm_filter"]),
                       capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Miniupnpd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_miniupnpd(router_ns: str, wan_if: str, lan_if: str, lan_subnet: str, *,
                    natpmp: bool = True, pcp: bool = True, upnp: bool = True,
                    igd_v1: bool = False, min_lifetime: int = 120,
                    ready_timeout: float = 5.0) -> Miniupnpd:
    """Run miniupnpd in namespace *router_ns* and wait until it listens.

    *wan_if* must carry a non-reserved IPv4 address.  The ``table inet
    filter`` with miniupnpd's three chains must exist (``PortmapLab`` makes
    it).  *natpmp*/*pcp* choose what answers on UDP 5351 (one switch in
    miniupnpd, see the module docstring), *upnp* the SSDP/HTTP side,
    *igd_v1* makes it describe itself as IGD v1 (no AddAnyPortMapping).
    ``secure_mode`` is on and only *lan_subnet* may map ports 1024-65535.
    """
    if not (natpmp or pcp or upnp):
        raise ValueError("enable at least one of natpmp, pcp, upnp")
    workdir = tempfile.mkdtemp(prefix="pcpm-miniupnpd-")
    config = "\n".join([
        f"ext_ifname={wan_if}",
        f"listening_ip={lan_if}",
        "ipv6_disable=yes",
        "http_port=0",
        f"enable_natpmp={'yes' if natpmp or pcp else 'no'}",
        f"enable_upnp={'yes' if upnp else 'no'}",
        "secure_mode=yes",
        "system_uptime=no",
        "notify_interval=60",
        "clean_ruleset_interval=600",
        f"min_lifetime={min_lifetime}",
        "max_lifetime=86400",
        "upnp_table_name=filter",
        "upnp_nat_table_name=filter",
        "upnp_forward_chain=miniupnpd",
        "upnp_nat_chain=prerouting_miniupnpd",
        "upnp_nat_postrouting_chain=postrouting_miniupnpd",
        f"force_igd_desc_v1={'yes' if igd_v1 else 'no'}",
        "uuid=3a7e1f0c-5c1b-4d7e-9d5a-70756e636861",
        "friendly_name=punchcat lab router",
        f"allow 1024-65535 {lan_subnet} 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ]) + "\n"
    conf_path = os.path.join(workdir, "miniupnpd.conf")
    with open(conf_path, "w") as f:
        f.write(config)
    # NAT-PMP and PCP share a socket: silence the one not wanted.
    drop = []
    if natpmp and not pcp:
        drop.append("@th,64,8 2")
    if pcp and not natpmp:
        drop.append("@th,64,8 0")
    if drop:
        rules = "\n".join(f"        iifname \"{lan_if}\" udp dport 5351 {m} drop" for m in drop)
        _run(netns_exec(router_ns, ["nft", "-f", "-"]), stdin=f"""
table inet pcpm_filter {{
    chain input {{
        type filter hook input priority -10; policy accept;
{rules}
    }}
}}
""")
    log_path = os.path.join(workdir, "log")
    binary = shutil.which("miniupnpd") or "/usr/sbin/miniupnpd"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            netns_exec(router_ns, [binary, "-f", conf_path, "-d",
                                   "-P", os.path.join(workdir, "pid")]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    daemon = Miniupnpd(router_ns, proc, workdir, config, log_path)
    deadline = time.monotonic() + ready_timeout
    want = []
    if natpmp or pcp:
        want.append("Listening for NAT-PMP/PCP traffic")
    if upnp:
        want.append("HTTP listening on port")
    while not all(w in daemon.log() for w in want):
        if proc.poll() is not None or time.monotonic() > deadline:
            log_text = daemon.log()
            daemon.stop()
            raise LabUnavailable(f"miniupnpd did not start: {log_text.strip()[-800:]}")
        time.sleep(0.02)
    return daemon
