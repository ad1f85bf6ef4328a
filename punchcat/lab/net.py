"""A NAT lab on one Linux box: two homes behind real NAT routers.

::

    host a ── router a ── core 1 ── core 2 ── router b ── host b
    192.168.1.2   198.51.100.10      192.0.2.0/30     203.0.113.20   192.168.1.2

Every box is a network namespace joined by veth pairs; the routers run
nftables with real conntrack.  Both homes use the same private subnet, as
real homes do, and two core routers sit between the homes, so a SYN with a
small TTL dies in the "internet" before it reaches the far router.

Per side the router can

* ``nat``: ``preserve`` (masquerade, which keeps the source port when it
  can), ``random`` (masquerade ``fully-random``) or ``none`` (the host has a
  public address and the router is only a stateful firewall);
* ``answer`` an unsolicited inbound SYN: ``drop`` it, ``reject`` it with a
  TCP reset from the firewall, or leave it to the router's own TCP stack,
  which answers with a reset (``open``: no filter at all);
* map ports on request (``portmap``): miniupnpd, or a scripted NAT-PMP
  responder that misbehaves, from the router lab (:mod:`.router`);
* put the host behind a second, ``inner`` NAT (a container bridge or a VM's
  NAT: 172.17.0.0/24, port-preserving, nothing unsolicited let in)::

    host a ── inner a ── router a ── …
    172.17.0.2   192.168.1.2   198.51.100.10

Needs root, ``ip`` (iproute2) and ``nft`` (nftables).  Traffic never leaves
the namespaces the lab creates, and :meth:`Lab.close` removes them all, also
after a failure.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass

from .netns import LabUnavailable, Namespaces, missing_prerequisites
from .router import OFFERS, forward_listing, start_miniupnpd, start_scripted
from .transit import PORT as RELAY_PORT
from .transit import TransitRelay, start_relay

__all__ = ["ANSWERS", "NAT_MODES", "Lab", "LabUnavailable", "Side", "missing_prerequisites"]

NAT_MODES = ("preserve", "random", "none")
ANSWERS = ("drop", "reject", "open")
#: What a router's port-mapping service is: "" none; miniupnpd offering all
#: three protocols, or one; or a scripted NAT-PMP responder that refuses every
#: request ("errors"), answers garbage ("garbage"), or reports a WAN address
#: in carrier-grade NAT's shared space, 100.64.0.0/10 ("shared").
PORTMAP = ("", *OFFERS, "errors", "garbage", "shared")


@dataclass(frozen=True)
class Side:
    """How one home is connected."""

    nat: str = "preserve"
    answer: str = "drop"
    #: The host sits behind a second NAT inside the home, like a container
    #: on a Docker bridge (172.17.0.0/24, port-preserving masquerade, nothing
    #: unsolicited forwarded).
    inner: bool = False
    #: A port-mapping service on the router (PORTMAP).  miniupnpd refuses a
    #: WAN address in a reserved range, so its router gets a non-reserved one
    #: (harmless: nothing leaves the lab's namespaces).
    portmap: str = ""

    def __post_init__(self):
        if self.nat not in NAT_MODES:
            raise ValueError(f"nat must be one of {', '.join(NAT_MODES)}")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}")
        if self.portmap not in PORTMAP:
            raise ValueError(f"portmap must be one of {', '.join(p or repr(p) for p in PORTMAP)}")


# Per side: router WAN address, its core gateway, the public LAN used with nat=none
_WAN = {"a": ("198.51.100.10", "198.51.100.1", "198.18.1"),
        "b": ("203.0.113.20", "203.0.113.1", "198.18.2")}
#: ... for a router that runs miniupnpd (it refuses reserved WAN addresses).
_WAN_MAPPED = {"a": ("5.5.5.10", "5.5.5.1", "198.18.1"),
               "b": ("6.6.6.20", "6.6.6.1", "198.18.2")}
_CORE_LINK = ("192.0.2.1", "192.0.2.2")
#: Where the lab's transit relay listens: core router c1's address.
RELAY_ADDRESS = _CORE_LINK[0]
_PRIVATE_LAN = "192.168.1"
_INNER_LAN = "172.17.0"

#: The inner NAT of Side(inner=True): a container bridge.
_INNER_RULESET = """
table inet inner {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" accept
    }
}
table ip innernat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "uplink" masquerade
    }
}
"""


def _ruleset(side: Side) -> str:
    """The router's nftables ruleset."""
    # What happens to new inbound connections from the internet side (a port
    # that miniupnpd maps comes in translated, and is let through).
    forwarded = ["ct status dnat accept"] if side.portmap in OFFERS else []
    unsolicited = {"drop": ['iifname "wan" drop'],
                   "reject": ['iifname "wan" meta l4proto tcp reject with tcp reset',
                              'iifname "wan" reject'],
                   "open": []}[side.answer]
    unsolicited = "\n        ".join(unsolicited)
    rules = f"""
table inet lab {{
    chain input {{
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }} accept
        {unsolicited}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        {"".join(rule + chr(10) + "        " for rule in forwarded)}{unsolicited}
    }}
}}
"""
    return rules + _nat_table(side)


def _nat_table(side: Side) -> str:
    """The router's NAT (none for a public host)."""
    if side.nat == "none":
        return ""
    flags = " fully-random" if side.nat == "random" else ""
    return f"""
table ip labnat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade{flags}
    }}
}}
"""


# IPv6 (with ipv6=True): no NAT, every host has a public address; the routers
# are stateful firewalls with the same answer to unsolicited SYNs.
_V6 = {"a": ("2001:db8:a::", "2001:db8:1::10", "2001:db8:1::1"),
       "b": ("2001:db8:b::", "2001:db8:2::20", "2001:db8:2::1")}
_V6_CORE = ("2001:db8:12::1", "2001:db8:12::2")


class Lab(Namespaces):
    """Two NATed hosts and the routers between them; use as a context manager."""

    def __init__(self, a: Side = Side(), b: Side = Side(), ipv6: bool = False):
        self.sides = {"a": a, "b": b}
        self.ipv6 = ipv6
        if ipv6 and (a.inner or b.inner):
            raise ValueError("an inner NAT is IPv4 only")
        self.roles = ("a", "ra", "c1", "c2", "rb", "b") + tuple(
            f"i{s}" for s in "ab" if self.sides[s].inner)
        self.wan = {s: (_WAN_MAPPED if self.sides[s].portmap in OFFERS else _WAN)[s]
                    for s in "ab"}
        self.daemons: list = []       # miniupnpd and relays, stopped on close
        self.timers: list = []        # outages to end later, cancelled on close
        super().__init__()

    # -- addresses ---------------------------------------------------------
    def public_address(self, side: str, v6: bool = False) -> str:
        """The address the *other* side names as PEER to reach *side*."""
        if v6:
            return f"{_V6[side][0]}2"
        if self.sides[side].nat == "none":
            return f"{self.wan[side][2]}.2"
        return self.wan[side][0]

    def peer_of(self, side: str, v6: bool = False) -> str:
        return self.public_address("b" if side == "a" else "a", v6)

    # -- building ----------------------------------------------------------
    def build_network(self) -> None:
        ns = self.ns
        links = [("ra", "wan", "c1", "west"), ("c1", "east", "c2", "west"),
                 ("c2", "east", "rb", "wan")]
        for side in "ab":
            if self.sides[side].inner:
                links += [(side, "eth0", f"i{side}", "lan"), (f"i{side}", "uplink", f"r{side}", "lan")]
            else:
                links.append((side, "eth0", f"r{side}", "lan"))
        for link in links:
            self.link(*link)
        c1, c2 = _CORE_LINK
        config = {"c1": [f"addr add {c1}/30 dev east", f"addr add {self.wan['a'][1]}/24 dev west",
                         f"route add default via {c2}"],
                  "c2": [f"addr add {c2}/30 dev west", f"addr add {self.wan['b'][1]}/24 dev east",
                         f"route add default via {c1}"]}
        for side, router, core in (("a", "ra", "c1"), ("b", "rb", "c2")):
            wan, gateway, public = self.wan[side]
            if self.sides[side].nat == "none":
                lan, host = f"{public}.1/24", f"{public}.2/24"
                config[core].append(f"route add {public}.0/24 via {wan}")
            else:
                lan, host = f"{_PRIVATE_LAN}.1/24", f"{_PRIVATE_LAN}.2/24"
            config[router] = [f"addr add {wan}/24 dev wan", f"addr add {lan} dev lan",
                              f"route add default via {gateway}"]
            home = [f"addr add {host} dev eth0", f"route add default via {lan.split('/')[0]}"]
            if self.sides[side].inner:
                config[f"i{side}"] = [cmd.replace("eth0", "uplink") for cmd in home] + [
                    f"addr add {_INNER_LAN}.1/24 dev lan"]
                home = [f"addr add {_INNER_LAN}.2/24 dev eth0",
                        f"route add default via {_INNER_LAN}.1"]
            config[side] = home
        if self.ipv6:
            self._add_ipv6(config)
        for role in ns:
            ifaces = {"a": ["eth0"], "b": ["eth0"], "ra": ["lan", "wan"], "rb": ["lan", "wan"],
                      "c1": ["west", "east"], "c2": ["west", "east"],
                      "ia": ["lan", "uplink"], "ib": ["lan", "uplink"]}[role]
            self.configure(role, ifaces, config[role], forward=role not in ("a", "b"),
                           ipv6=self.ipv6)
        for side, router in (("a", "ra"), ("b", "rb")):
            self.nft(router, _ruleset(self.sides[side]))
            if self.sides[side].inner:
                self.nft(f"i{side}", _INNER_RULESET)
            if self.sides[side].portmap:
                self._start_portmap(side, router)

    def _start_portmap(self, side: str, role: str) -> None:
        """The port-mapping service of *side*'s router (:mod:`.router`)."""
        kind = self.sides[side].portmap
        if kind in OFFERS:
            self.daemons.append(start_miniupnpd(self.ns[role], "wan", "lan",
                                                f"{_PRIVATE_LAN}.0/24", **OFFERS[kind]))
        else:
            start_scripted(self, kind, role=role, listen=f"{_PRIVATE_LAN}.1")

    def start_relay(self, port: int = RELAY_PORT) -> TransitRelay:
        """A magic-wormhole transit relay on core router c1 (on the lab's
        internet, reached at its core address :data:`RELAY_ADDRESS`)."""
        relay = start_relay(self, "c1", RELAY_ADDRESS, port)
        self.daemons.append(relay)
        return relay

    def mappings(self, side: str) -> list[str]:
        """The port forwards miniupnpd has in *side*'s router now."""
        listing = forward_listing(self, "ra" if side == "a" else "rb")
        return re.findall(r"dport \d+ dnat ip to [\d.:]+", listing)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        for daemon in self.daemons:
            daemon.stop()
        self.daemons.clear()
        super().close()

    def host_address(self, side: str) -> str:
        """Host *side*'s own address in its LAN."""
        if self.sides[side].inner:
            return f"{_INNER_LAN}.2"
        if self.sides[side].nat == "none":
            return f"{self.wan[side][2]}.2"
        return f"{_PRIVATE_LAN}.2"

    def forward_port(self, side: str, port: int) -> None:
        """Port-forward *port* on the router of *side* to its host (for nc and
        socat, which cannot punch, in benchmarks)."""
        router = "ra" if side == "a" else "rb"
        host = self.host_address(side)
        self.nft(router, f"""
table ip labfwd {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" tcp dport {port} dnat to {host}:{port}
    }}
}}
insert rule inet lab forward ct status dnat accept
""")

    def cut_path(self) -> None:
        """Drop every packet through core router c1 from now on: the path
        between the two homes dies without a word (for dead-peer tests)."""
        self.nft("c1", """
table inet cut {
    chain forward { type filter hook forward priority -10; policy drop; }
}
""")

    def restore_path(self) -> None:
        """Undo :meth:`cut_path`: the path between the homes works again."""
        self.sh("c1", "nft delete table inet cut")

    # -- outages: what a home router does to a link when it fails --------------
    def reboot_router(self, side: str, resets_for: float = 5.0) -> threading.Timer:
        """*side*'s router "reboots": its connection tracking is gone, and
        for *resets_for* seconds it answers every packet of a connection it
        no longer knows (not a SYN) with a reset, as a rebooted router's
        stack does; then it forwards as before (new connections only: the
        old ones are forgotten).  Returns the timer that ends the resets."""
        router = "ra" if side == "a" else "rb"
        self.nft(router, """
table inet reboot {
    chain forward {
        type filter hook forward priority -20; policy accept;
        meta l4proto tcp tcp flags & (syn | ack) != syn reject with tcp reset
    }
}
""")
        self.sh(router, "conntrack -F 2>/dev/null || true")
        return self._later(resets_for, router, "nft delete table inet reboot; "
                                               "conntrack -F 2>/dev/null || true")

    def blackhole(self, side: str, seconds: float) -> threading.Timer:
        """*side*'s router drops every packet for *seconds* (a Wi-Fi drop, a
        DSL resync), keeping its connection tracking; then forwards again."""
        router = "ra" if side == "a" else "rb"
        self.nft(router, """
table inet blackhole {
    chain forward { type filter hook forward priority -20; policy drop; }
}
""")
        return self._later(seconds, router, "nft delete table inet blackhole")

    def remap(self, side: str) -> None:
        """*side*'s router comes back with other public ports: its
        connection tracking is gone and from now on its NAT gives every
        connection a random public port."""
        router = "ra" if side == "a" else "rb"
        self.sh(router, "nft delete table ip labnat")
        self.sides[side] = dataclasses.replace(self.sides[side], nat="random")
        self.nft(router, _nat_table(self.sides[side]))
        self.sh(router, "conntrack -F 2>/dev/null || true")

    def _later(self, seconds: float, role: str, script: str) -> threading.Timer:
        """Run *script* in *role* after *seconds* (unless the lab is closed first)."""
        def run() -> None:
            if self._built:
                self.sh(role, script + " 2>/dev/null || true")
        timer = threading.Timer(seconds, run)
        timer.daemon = True
        timer.start()
        self.timers.append(timer)
        return timer

    def ignore_time_exceeded(self, side: str) -> None:
        """Host *side* drops ICMP time-exceeded: stands in for a kernel that
        treats it as a soft error for a connecting socket (the BSDs), so
        that sentinels survive without IP_MINTTL (portable-mode tests)."""
        self.nft(side, """
table inet soft {
    chain input {
        type filter hook input priority -10; policy accept;
        icmp type time-exceeded drop
        icmpv6 type time-exceeded drop
    }
}
""")

    @staticmethod
    def _add_ipv6(config: dict) -> None:
        c1, c2 = _V6_CORE
        config["c1"] += [f"addr add {c1}/64 dev east nodad",
                         f"addr add {_V6['a'][2]}/64 dev west nodad",
                         f"route add {_V6['a'][0]}/64 via {_V6['a'][1]}",
                         f"route add default via {c2}"]
        config["c2"] += [f"addr add {c2}/64 dev west nodad",
                         f"addr add {_V6['b'][2]}/64 dev east nodad",
                         f"route add {_V6['b'][0]}/64 via {_V6['b'][1]}",
                         f"route add default via {c1}"]
        for side, router in (("a", "ra"), ("b", "rb")):
            lan, wan, gateway = _V6[side]
            config[router] += [f"addr add {wan}/64 dev wan nodad",
                               f"addr add {lan}1/64 dev lan nodad",
                               f"route add default via {gateway}"]
            config[side] += [f"addr add {lan}2/64 dev eth0 nodad",
                             f"route add default via {lan}1"]
