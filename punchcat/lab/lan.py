"""Two machines at home, near each other: what a new user tries first.

Three shapes (``LanLab(kind)``), each with hosts ``a`` and ``b``:

``link``
    one link, no router, no NAT::

        host a ──────────── host b
        192.168.9.2         192.168.9.3

``routed``
    a plain router between two subnets, no NAT::

        host a ── router ── host b
        192.168.9.2   .9.1 | .10.1   192.168.10.2

``shared``
    both behind one NAT router, each naming its public address (what two
    users who copy their "public IP" from a web page do)::

        host a ─┐
                ├─ router (bridge br0, 192.168.1.1 | 198.51.100.10) ── core
        host b ─┘
        192.168.1.2 and .3

    With ``hairpin=True`` the router loops traffic for its own public
    address back into the LAN (to the other host, from its public address),
    as routers with "NAT loopback" do; without, it answers it itself.
"""

from __future__ import annotations

from .netns import Namespaces

KINDS = ("link", "routed", "shared")
PUBLIC = "198.51.100.10"

_SHARED_RULESET = """
table inet lab {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        iifname "wan" drop
    }
}
table ip labnat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""

#: Loopback NAT: traffic from one host to the public address goes to the
#: other, and appears to come from the public address.
_HAIRPIN_RULESET = f"""
table ip hairpin {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "br0" ip saddr 192.168.1.2 ip daddr {PUBLIC} dnat to 192.168.1.3
        iifname "br0" ip saddr 192.168.1.3 ip daddr {PUBLIC} dnat to 192.168.1.2
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "br0" ct status dnat snat to {PUBLIC}
    }}
}}
"""


class LanLab(Namespaces):
    """Two hosts near each other (module docstring); use as a context manager."""

    def __init__(self, kind: str = "link", hairpin: bool = False):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        self.kind = kind
        self.hairpin = hairpin
        self.roles = {"link": ("a", "b"), "routed": ("a", "r", "b"),
                      "shared": ("a", "r", "c1", "b")}[kind]
        super().__init__()

    def host_address(self, side: str) -> str:
        """Host *side*'s own address."""
        return {"link": {"a": "192.168.9.2", "b": "192.168.9.3"},
                "routed": {"a": "192.168.9.2", "b": "192.168.10.2"},
                "shared": {"a": "192.168.1.2", "b": "192.168.1.3"}}[self.kind][side]

    def peer_of(self, side: str, v6: bool = False) -> str:
        if v6:
            raise ValueError("the LAN lab is IPv4 only")
        if self.kind == "shared":
            return PUBLIC
        return self.host_address("b" if side == "a" else "a")

    def build_network(self) -> None:
        if self.kind == "link":
            self.link("a", "eth0", "b", "eth0")
            for side in "ab":
                self.configure(side, ["eth0"], [f"addr add {self.host_address(side)}/24 dev eth0"])
        elif self.kind == "routed":
            self.link("a", "eth0", "r", "lana")
            self.link("b", "eth0", "r", "lanb")
            self.configure("r", ["lana", "lanb"], ["addr add 192.168.9.1/24 dev lana",
                                                   "addr add 192.168.10.1/24 dev lanb"],
                           forward=True)
            for side, gateway in (("a", "192.168.9.1"), ("b", "192.168.10.1")):
                self.configure(side, ["eth0"], [f"addr add {self.host_address(side)}/24 dev eth0",
                                                f"route add default via {gateway}"])
        else:
            self.link("a", "eth0", "r", "porta")
            self.link("b", "eth0", "r", "portb")
            self.link("r", "wan", "c1", "west")
            self.configure("r", ["porta", "portb"], [
                "link add br0 type bridge", "link set br0 up",
                "link set porta master br0", "link set portb master br0",
                "addr add 192.168.1.1/24 dev br0", f"addr add {PUBLIC}/24 dev wan",
                "link set wan up", "route add default via 198.51.100.1"], forward=True)
            # Looping traffic back out of br0 is what a hairpin does: no redirects.
            self.sh("r", "echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects; "
                         "echo 0 > /proc/sys/net/ipv4/conf/br0/send_redirects")
            self.configure("c1", ["west"], ["addr add 198.51.100.1/24 dev west"], forward=True)
            for side in "ab":
                self.configure(side, ["eth0"], [f"addr add {self.host_address(side)}/24 dev eth0",
                                                "route add default via 192.168.1.1"])
            self.nft("r", _SHARED_RULESET + (_HAIRPIN_RULESET if self.hairpin else ""))
