"""The router lab: a home router that maps ports (PCP, NAT-PMP, UPnP-IGD).

::

    host (…-h) ── router (…-r, miniupnpd) ── far (…-f)
    192.168.7.2     192.168.7.1 | 5.5.5.1       5.5.5.2

:class:`PortmapLab` builds that topology out of :mod:`.netns`'s namespaces,
for the tests of the portmap client; :class:`.net.Lab` puts the same router
into a home (``Side(portmap=…)``) to punch through it.  Nothing has a link
to the host's network.  The router masquerades the LAN behind ``5.5.5.1``:
miniupnpd refuses a WAN address in any reserved range (RFC 1918,
100.64/10, the TEST-NETs, 198.18/15), and an address that nothing outside
the namespaces can see is harmless.

:func:`start_miniupnpd` runs Debian's ``miniupnpd`` (nftables backend) in a
router namespace with a config of its own in a temporary directory.  Facts
about this build (2.3.1), measured:

* PCP has no switch of its own: miniupnpd answers NAT-PMP (version 0) and
  PCP (version 2) on one UDP socket, port 5351, opened by ``enable_natpmp``.
  To offer only one of the two, :func:`start_miniupnpd` drops the other
  version's requests with an nftables rule in the router (the first byte of
  the UDP payload is the version), so the client sees silence, as from a
  router that does not speak it.
* The packaged ``nft_init.sh`` sources a file that is not shipped, so the
  table miniupnpd writes into (:data:`MINIUPNPD_TABLE`) is created by
  :func:`start_miniupnpd` and removed when the daemon stops.
* It maps no port that the router itself listens on, its own HTTP port
  included ("port N protocol TCP already in use", UPnP fault 729), and its
  AddAnyPortMapping then tries N+1, N-1, N+2, …, where a port the same host
  maps counts as free: it overwrites that mapping to forward to N.  Left to
  the default, a random ephemeral port, the HTTP port was one of the 32
  ports of the new set in the roll test about one run in 900 (that port
  was missing from the router's forwards): so it is fixed
  (:data:`MINIUPNPD_HTTP_PORT`).

:func:`serve_scripted` is a NAT-PMP responder in Python (started in a router
by :func:`start_scripted`) for what miniupnpd will not do: answer with a
shared-space (100.64/10) WAN address, slowly, or with garbage and errors.

:class:`LabClient` and :func:`lab_whoami` run the portmap client in the
host's namespace (``python -m punchcat.lab.router``) and read its status.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .netns import PACKAGES, LabUnavailable, Namespaces, netns_exec, run, which

#: This module, as the lab's child processes import or run it.
_MODULE = "punchcat.lab.router"
HOST_IP, ROUTER_LAN_IP, LAN_SUBNET = "192.168.7.2", "192.168.7.1", "192.168.7.0/24"
ROUTER_WAN_IP, FAR_IP = "5.5.5.1", "5.5.5.2"
#: What a router offers, by name: miniupnpd's switches for all three
#: protocols, or for one alone.
OFFERS = {"all": {}, "pcp": {"natpmp": False, "upnp": False},
          "natpmp": {"pcp": False, "upnp": False}, "upnp": {"natpmp": False, "pcp": False}}


class PortmapLab(Namespaces):
    """host ── router ── far, as namespaces; a context manager that always
    tears down what it built.  The router masquerades the LAN and forwards
    nothing inbound unless miniupnpd (or a test) adds a rule."""

    roles = ("h", "r", "f")

    def __init__(self, router_wan: str = ROUTER_WAN_IP):
        self.router_wan = router_wan
        self.far_ip = router_wan.rsplit(".", 1)[0] + ".2"
        self.daemons: list[Miniupnpd] = []
        super().__init__()

    def build_network(self) -> None:
        self.link("h", "eth0", "r", "lan")
        self.link("r", "wan", "f", "eth0")
        self.configure("h", ["eth0"], [f"addr add {HOST_IP}/24 dev eth0",
                                       f"route add default via {ROUTER_LAN_IP}"])
        self.configure("r", ["lan", "wan"], [f"addr add {ROUTER_LAN_IP}/24 dev lan",
                                             f"addr add {self.router_wan}/24 dev wan"],
                       forward=True)
        self.configure("f", ["eth0"], [f"addr add {self.far_ip}/24 dev eth0"])
        self.nft("r", _HOME_RULESET)

    def start_miniupnpd(self, **options) -> "Miniupnpd":
        """miniupnpd on the router with this lab's interfaces (see
        :func:`start_miniupnpd` for *options*)."""
        daemon = start_miniupnpd(self.ns["r"], "wan", "lan", LAN_SUBNET, **options)
        self.daemons.append(daemon)
        return daemon

    def forwarded_ports(self) -> list[tuple[int, str, int]]:
        """(external port, internal address, internal port) of every DNAT rule
        miniupnpd has in the router now."""
        return [(int(m.group(1)), m.group(2), int(m.group(3)))
                for m in re.finditer(r"dport (\d+) dnat ip to ([\d.]+):(\d+)",
                                     forward_listing(self, "r"))]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.daemons.clear()
        super().close()


#: PortmapLab's router besides miniupnpd's table: masquerade out of the WAN,
#: forward what the LAN starts and what miniupnpd let in (it comes in
#: translated), drop the rest.
_HOME_RULESET = """
table inet home {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" accept
        ct status dnat accept
    }
}
table ip homenat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""

#: The table and chains miniupnpd fills (the names its config below gives).
#: It lets everything through itself: the router's own table decides what
#: else is forwarded, and must accept what miniupnpd translated.
MINIUPNPD_TABLE = """
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
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
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"""
#: The table that silences NAT-PMP or PCP when a router offers only the other.
_ONLY_TABLE = "miniupnpd_only"
#: miniupnpd's HTTP port (description and SOAP control), where the router
#: listens: below the ports the tests and the punch map (the candidate ports
#: are 30000-49999, :mod:`punchcat.schedule`) and below the kernel's ephemeral
#: range (32768-60999), which the default (0) drew from.  2869 is the port of
#: Windows' UPnP device host.
MINIUPNPD_HTTP_PORT = 2869


def forward_listing(lab: Namespaces, router: str) -> str:
    """The port forwards miniupnpd has in *router* now, as nft lists them
    (nothing when it has never run there)."""
    return lab.sh(router, "nft list chain inet filter prerouting_miniupnpd", check=False)


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
        for table in (_ONLY_TABLE, "filter"):
            run(netns_exec(self.router_ns, ["nft", "delete", "table", "inet", table]), check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Miniupnpd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_miniupnpd(router_ns: str, wan_if: str, lan_if: str, lan_subnet: str, *,
                    natpmp: bool = True, pcp: bool = True, upnp: bool = True,
                    igd_v1: bool = False, min_lifetime: int = 120,
                    ready_timeout: float = 5.0, console_log: bool = False) -> Miniupnpd:
    """Run miniupnpd in namespace *router_ns* and wait until it listens.

    *wan_if* must carry a non-reserved IPv4 address.  The router's own
    ruleset must accept forwarded traffic that miniupnpd translated (``ct
    status dnat``); its table (:data:`MINIUPNPD_TABLE`) is made here.
    *natpmp*/*pcp* choose what answers on UDP 5351 (one switch in
    miniupnpd, see the module docstring), *upnp* the SSDP/HTTP side,
    *igd_v1* makes it describe itself as IGD v1 (no AddAnyPortMapping).
    ``secure_mode`` is on and only *lan_subnet* may map ports 1024-65535.
    *console_log* lets its syslog lines reach ``/dev/console`` as they
    would by default (slow on a serial console: a slow router on purpose).
    """
    if not (natpmp or pcp or upnp):
        raise ValueError("enable at least one of natpmp, pcp, upnp")
    binary = which("miniupnpd")
    if binary is None:
        raise LabUnavailable(f"the router lab needs miniupnpd "
                             f"(apt-get install {PACKAGES['miniupnpd']})")
    nft = netns_exec(router_ns, ["nft", "-f", "-"])
    run(nft, stdin=MINIUPNPD_TABLE)
    # NAT-PMP and PCP share a socket: silence the one not wanted.
    drop = []
    if natpmp and not pcp:
        drop.append("@th,64,8 2")
    if pcp and not natpmp:
        drop.append("@th,64,8 0")
    if drop:
        rules = "\n".join(f"        iifname \"{lan_if}\" udp dport 5351 {m} drop" for m in drop)
        run(nft, stdin=f"""
table inet {_ONLY_TABLE} {{
    chain input {{
        type filter hook input priority -10; policy accept;
{rules}
    }}
}}
""")
    workdir = tempfile.mkdtemp(prefix="punchcat-miniupnpd-")
    config = "\n".join([
        f"ext_ifname={wan_if}",
        f"listening_ip={lan_if}",
        "ipv6_disable=yes",
        f"http_port={MINIUPNPD_HTTP_PORT}",
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
    log_path = os.path.join(workdir, "log")
    with open(log_path, "wb") as log:
        argv = [binary, "-f", conf_path, "-d", "-P", os.path.join(workdir, "pid")]
        if not console_log:
            # -d logs at debug level to stderr *and* to syslog; with no
            # /dev/log, glibc's syslog (LOG_CONS) writes every line to
            # /dev/console.  On a VM with a serial console that throttles
            # miniupnpd to the serial line (measured: 32 NAT-PMP requests
            # took 2.7-4.4 s instead of 0.1 s, each request logging a line
            # per existing rule) and spams the machine's console.  So the
            # daemon gets a private mount namespace whose /dev/console is
            # /dev/null; its stderr (the log file) keeps every line.
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind /dev/null /dev/console 2>/dev/null; exec "$0" "$@"', *argv]
        proc = subprocess.Popen(netns_exec(router_ns, argv),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    daemon = Miniupnpd(router_ns, proc, workdir, config, log_path)
    deadline = time.monotonic() + ready_timeout
    want = []
    if natpmp or pcp:
        want.append("Listening for NAT-PMP/PCP traffic")
    if upnp:
        want.append(f"HTTP listening on port {MINIUPNPD_HTTP_PORT}")
    while not all(w in daemon.log() for w in want):
        if proc.poll() is not None or time.monotonic() > deadline:
            log_text = daemon.log()
            daemon.stop()
            raise LabUnavailable(f"miniupnpd did not start: {log_text.strip()[-800:]}")
        time.sleep(0.02)
    return daemon


# -- scripted responders -----------------------------------------------------

_BOMB = (b'<?xml version="1.0"?>\n<!DOCTYPE root [<!ENTITY a "aaaaaaaaaa">'
         + b"".join(b'<!ENTITY %c "%s">' % (98 + i, (b"&%c;" % (97 + i)) * 10) for i in range(8))
         + b"]>\n<root><device><serviceList><service><serviceType>"
         b"urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>"
         b"<controlURL>&i;</controlURL></service></serviceList></device></root>")


def serve_scripted(mode: str, listen: str, wan_address: str = "100.64.12.34",
                   epoch_start: float | None = None, service_time: float = 0.06) -> None:
    """Answer NAT-PMP on *listen*:5351 until killed (run in the router
    namespace).  *mode*:

    * ``shared``: a well-behaved NAT-PMP-only router whose WAN address is
      *wan_address* (by default in 100.64/10, which miniupnpd refuses);
      PCP requests get NAT-PMP's "unsupported version".
    * ``errors``: every request refused (result 2, not authorized; 3,
      network failure, for the address request).
    * ``garbage``: junk for every NAT-PMP/PCP request; also an SSDP answer
      on port 1900 pointing at an HTTP server on 5000 that serves an XML
      entity bomb, then a response with a forged LOCATION.
    * ``slow``: like ``shared``, but a slow router: requests are answered
      one at a time, in order, each after *service_time* seconds, and each
      TCP mapping request is printed (``map PORT LIFETIME``) as carried out,
      so a test can count them and replay the router's table.
    """
    start = time.monotonic() if epoch_start is None else epoch_start
    sel = selectors.DefaultSelector()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((listen, 5351))
    sel.register(udp, selectors.EVENT_READ, "pmp")
    if mode == "garbage":
        ssdp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ssdp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ssdp.bind(("0.0.0.0", 1900))
        sel.register(ssdp, selectors.EVENT_READ, "ssdp")
        http = socket.socket()
        http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        http.bind((listen, 5000))
        http.listen()
        sel.register(http, selectors.EVENT_READ, "http")
    rng = random.Random(1)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data == "http":
                conn, _ = sock.accept()
                conn.settimeout(1)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(_BOMB) + _BOMB)
                except OSError:
                    pass
                conn.close()
                continue
            data, addr = sock.recvfrom(2048)
            if key.data == "ssdp":
                for location in (f"http://{listen}:5000/desc.xml", "http://192.0.2.99/evil.xml"):
                    sock.sendto(("HTTP/1.1 200 OK\r\nST: " + IGD_ST + "\r\nLOCATION: " + location
                                 + "\r\nSERVER: evil\x1b[31m\r\n\r\n").encode("latin-1"), addr)
                continue
            epoch = int(time.monotonic() - start)
            if mode == "garbage":
                for size in (0, 1, 7, 12, 16, 60, 1200):
                    sock.sendto(bytes(rng.getrandbits(8) for _ in range(size)), addr)
                sock.sendto(b"\x00\x82\x00\x00" + b"\xff" * 12, addr)     # map to port 0
                sock.sendto(b"\x02\x81\x00\x00" + b"\x00" * 56, addr)     # PCP, nonce zero
                continue
            if len(data) < 2:
                continue
            if mode == "slow":
                time.sleep(service_time)
                epoch = int(time.monotonic() - start)
            version, opcode = data[0], data[1]
            if version != 0:
                sock.sendto(struct.pack("!BBHI", 0, 128, 1, epoch), addr)
                continue
            if opcode == 0:
                if mode == "errors":
                    sock.sendto(struct.pack("!BBHI", 0, 128, 3, epoch), addr)
                else:
                    sock.sendto(struct.pack("!BBHI", 0, 128, 0, epoch)
                                + socket.inet_aton(wan_address), addr)
            elif opcode in (1, 2) and len(data) >= 12:
                _, _, _, internal, external, lifetime = struct.unpack("!BBHHHI", data[:12])
                result = 2 if mode == "errors" else 0
                if mode == "slow" and opcode == 2:
                    print(f"map {internal} {lifetime}", flush=True)
                sock.sendto(struct.pack("!BBHIHHI", 0, 128 + opcode, result, epoch, internal,
                                        external if lifetime else 0, lifetime), addr)
            else:
                sock.sendto(struct.pack("!BBHI", 0, 128 + opcode, 5, epoch), addr)


IGD_ST = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"


def start_scripted(lab: Namespaces, mode: str, role: str = "r", listen: str = ROUTER_LAN_IP,
                   **options) -> subprocess.Popen:
    """Run :func:`serve_scripted` (*mode*, *options*) in the router *role* of
    *lab*, answering on its LAN address *listen*; returns when it listens."""
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    code = f"from {_MODULE} import serve_scripted; serve_scripted({mode!r}, {listen!r}{args})"
    proc = lab.popen(role, [sys.executable, "-c", code], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise LabUnavailable(f"the scripted {mode} responder did not start: "
                             f"{proc.stderr.read()[-500:]}")
    return proc


# -- driving the client inside the host namespace ---------------------------

def _status_json(status) -> dict:
    data = dataclasses.asdict(status)
    data["lines"] = status.lines
    return data


def _client_main(argv: list[str]) -> None:
    """``python -m punchcat.lab.router map JSON`` / ``whoami JSON``: run the
    client here and print JSON lines (for the lab tests, which run it in the
    host namespace).  ``map`` prints the status once the first mapping round
    is over, then closes when a line arrives on stdin (or at EOF) and prints
    the final status with the time close() took."""
    from punchcat.portmap.client import PortMapper, whoami
    mode, options = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    if mode == "whoami":
        began = time.monotonic()
        report = whoami(**options)
        print(json.dumps({"elapsed": time.monotonic() - began, **dataclasses.asdict(report)}),
              flush=True)
        return
    ports = options.pop("ports")
    began = time.monotonic()
    mapper = PortMapper(ports, **options).start()
    started = time.monotonic() - began
    status = mapper.wait(10)
    print(json.dumps({"elapsed": time.monotonic() - began, "start_returned": started,
                      **_status_json(status)}), flush=True)

    def finish(*_signal) -> None:
        began = time.monotonic()
        mapper.close()
        print(json.dumps({"close_took": time.monotonic() - began,
                          **_status_json(mapper.status())}), flush=True)
        if _signal:
            sys.exit(143)
    # close() from a signal handler, as punchcat's own SIGTERM path would
    signal.signal(signal.SIGTERM, finish)
    sys.stdin.readline()
    finish()


def _client(mode: str, options: dict) -> tuple[list[str], dict]:
    """The command that runs :func:`_client_main`, and its environment: this
    checkout's punchcat comes first on the path."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return [sys.executable, "-m", _MODULE, mode, json.dumps(options)], env


class LabClient:
    """The portmap client run in the lab's host namespace (see
    :func:`_client_main`): ``status`` once mapped, :meth:`close` for the rest."""

    def __init__(self, lab: PortmapLab, ports: list[int], **options):
        argv, env = _client("map", {"ports": ports, **options})
        self.proc = lab.popen("h", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"client failed: {self.proc.stderr.read()[-2000:]}")
        self.status = json.loads(line)

    def close(self, by_signal: bool = False) -> dict:
        """Make the client close (a line on stdin, or SIGTERM); its final status."""
        if by_signal:
            self.proc.send_signal(signal.SIGTERM)
        else:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        out, err = self.proc.communicate(timeout=10)
        if self.proc.returncode != (143 if by_signal else 0):
            raise AssertionError(f"client failed ({self.proc.returncode}): {err[-2000:]}")
        return json.loads(out)


def lab_whoami(lab: PortmapLab, **options) -> dict:
    """:func:`punchcat.portmap.client.whoami` run in the lab's host namespace."""
    argv, env = _client("whoami", options)
    done = subprocess.run(lab.command("h", argv), capture_output=True, text=True, timeout=30,
                          env=env)
    if done.returncode != 0:
        raise AssertionError(f"whoami failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


if __name__ == "__main__":
    _client_main(sys.argv[1:])
