"""Linear chains of network namespaces for the hop-discovery lab tests.

A chain is a list of :class:`Node` joined left to right by veth pairs, one
:class:`Link` between each neighbour pair.  Routers forward; a router may
masquerade out of one side (``nat``), drop unsolicited traffic from one side
(``firewall``, a stateful firewall like a home router's), and drop the ICMP
time-exceeded it would send itself (``silent``).  Routes are derived from
the chain: each node's default route points toward the middle (side ``a``
nodes to the right, side ``b`` nodes to the left), and a router learns the
subnets on its other side unless a NAT hides them.

A chain is a :class:`punchcat.lab.netns.Namespaces`: nothing is linked to
the host's network, and every namespace is deleted on close, also after a
failure.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass

from punchcat.lab.netns import Namespaces
from punchcat.lab.netns import run as _run


@dataclass(frozen=True)
class Node:
    role: str
    side: str = "a"                 # "a": default route to the right; "b": to the left
    router: bool = True
    nat: str | None = None          # "left"/"right": masquerade out of that interface
    firewall: str | None = None     # "left"/"right": drop new inbound from that interface
    silent: bool = False            # drop the ICMP time-exceeded this router generates


@dataclass(frozen=True)
class Link:
    left: str                       # "192.168.1.2/24": the left node's address
    right: str                      # the right node's address on the same subnet


def _addr(cidr: str) -> str:
    return cidr.split("/")[0]


def _net(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).network)


class Chain(Namespaces):
    """Build with ``with Chain(nodes, links) as chain:``; see the module docstring."""

    def __init__(self, nodes: list[Node], links: list[Link], ratelimit: bool = False):
        if len(links) != len(nodes) - 1:
            raise ValueError("one link between each pair of neighbours")
        self.nodes = nodes
        self.links = links
        self.ratelimit = ratelimit
        self.roles = tuple(node.role for node in nodes)
        super().__init__()

    # -- building ----------------------------------------------------------
    def build_network(self) -> None:
        for i, link in enumerate(self.links):
            self.link(self.nodes[i].role, "right", self.nodes[i + 1].role, "left")
        for i, node in enumerate(self.nodes):
            self._configure(i, node)

    def _ifaces(self, i: int) -> list[tuple[str, Link, str]]:
        """(interface, link, this node's address) for node *i*."""
        out = []
        if i > 0:
            out.append(("left", self.links[i - 1], self.links[i - 1].right))
        if i < len(self.links):
            out.append(("right", self.links[i], self.links[i].left))
        return out

    def _hidden(self, i: int, j: int) -> bool:
        """Whether link *j* is hidden from node *i* by a NAT between them."""
        if j < i:       # link j joins nodes j and j+1, left of i
            return any(self.nodes[k].nat == "right" for k in range(j + 1, i))
        return any(self.nodes[k].nat == "left" for k in range(i + 1, j + 1))

    def _configure(self, i: int, node: Node) -> None:
        name = self.ns[node.role]
        # No duplicate address detection: addresses usable at once.
        sysctls = {f"ipv6/conf/{iface}/accept_dad": 0
                   for iface in ("all", "default", *(i for i, _l, _a in self._ifaces(i)))}
        if node.router:
            sysctls.update({"ipv4/ip_forward": 1, "ipv6/conf/all/forwarding": 1})
        if not self.ratelimit:
            # Linux answers 6 ICMP errors per destination at once, then one a
            # second; repeated measurements would run into that.
            sysctls.update({"ipv4/icmp_ratelimit": 0, "ipv6/icmp/ratelimit": 0})
        self.sh(node.role, "; ".join(f"echo {v} > /proc/sys/net/{k}" for k, v in sysctls.items()))
        # Links up before addresses: an IPv6 address added to a link that is
        # down joins its solicited-node group up to a second after the link
        # comes up, and until then neighbour solicitations go unanswered.
        batch = ["link set lo up"] + [f"link set {iface} up" for iface, _l, _a in self._ifaces(i)]
        for iface, _link, addr in self._ifaces(i):
            batch.append(f"addr add {addr} dev {iface}" + (" nodad" if ":" in addr else ""))
        # Default route toward the middle of the chain, via the neighbour there.
        toward = "right" if node.side == "a" else "left"
        j = i if toward == "right" else i - 1
        neighbour = i + 1 if toward == "right" else i - 1
        if 0 <= j < len(self.links) and self.nodes[neighbour].router:
            gateway = self.links[j].right if toward == "right" else self.links[j].left
            batch.append(f"route add default via {_addr(gateway)}")
        # Specific routes toward the other side, for subnets no NAT hides.
        if node.router:
            for k, link in enumerate(self.links):
                if k in (i - 1, i) or self._hidden(i, k):
                    continue
                direction = "right" if k > i else "left"
                if direction == toward:
                    continue
                via = self.links[i] if direction == "right" else self.links[i - 1]
                gateway = via.right if direction == "right" else via.left
                if (":" in gateway) != (":" in link.left):
                    continue
                batch.append(f"route add {_net(link.left)} via {_addr(gateway)}")
        _run(["ip", "-n", name, "-batch", "-"], stdin="\n".join(batch) + "\n")
        rules = self._ruleset(node)
        if rules:
            self.nft(node.role, rules)

    @staticmethod
    def _ruleset(node: Node) -> str:
        if not node.router:
            return ""
        guard = f'iifname "{node.firewall}" drop' if node.firewall else ""
        output = ("icmp type time-exceeded drop\n        icmpv6 type time-exceeded drop"
                  if node.silent else "")
        rules = f"""
table inet pchop {{
    chain input {{
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert,
                       nd-router-solicit, nd-router-advert }} accept
        {guard}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        {guard}
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        {output}
    }}
}}
"""
        if node.nat:
            rules += f"""
table ip pchopnat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{node.nat}" masquerade
    }}
}}
"""
        return rules

    # -- using -------------------------------------------------------------
    def run(self, role: str, argv: list[str], timeout: float = 60, **kwargs):
        return subprocess.run(self.command(role, argv), capture_output=True, text=True,
                              timeout=timeout, **kwargs)


    def receive_elsewhere(self, role: str, iface: str) -> bool:
        """Have *role* process what arrives on *iface* on another CPU (RPS),
        so that an answer comes back after the sender's system call has
        returned, as on a real network (over veth it otherwise comes back
        within the call).  False on a machine with one CPU."""
        cpus = os.cpu_count() or 1
        if cpus < 2:
            return False
        mask = format(((1 << min(cpus, 32)) - 1) & ~1, "x")      # every CPU but 0
        self.sh(role, f"echo {mask} > /sys/class/net/{iface}/queues/rx-0/rps_cpus")
        return True


# -- the topologies of the tests ------------------------------------------------

def _far_side(answer: str = "drop") -> tuple[list[Node], list[Link]]:
    """core 1 ... far host, after the link into core 1 (shared by (a), (b), (d))."""
    nodes = [Node("c1"), Node("c2", side="b"),
             Node("rb", side="b", nat="left", firewall="left" if answer == "drop" else None),
             Node("b", side="b", router=False)]
    links = [Link("192.0.2.1/30", "192.0.2.2/30"), Link("203.0.113.1/24", "203.0.113.20/24"),
             Link("192.168.1.1/24", "192.168.1.2/24")]
    return nodes, links


def one_nat(answer: str = "drop", silent: bool = False) -> Chain:
    """(a) host - NAT router - core - core - far router - far host ((d) with *silent*)."""
    far_nodes, far_links = _far_side(answer)
    nodes = [Node("a", router=False), Node("ra", nat="right", firewall="right", silent=silent),
             *far_nodes]
    links = [Link("192.168.1.2/24", "192.168.1.1/24"), Link("198.51.100.10/24", "198.51.100.1/24"),
             *far_links]
    return Chain(nodes, links)


def two_nats(answer: str = "drop") -> Chain:
    """(b) host - inner NAT (a docker bridge) - home NAT - core - core - far router - far host."""
    far_nodes, far_links = _far_side(answer)
    nodes = [Node("a", router=False), Node("dk", nat="right"),
             Node("ra", nat="right", firewall="right"), *far_nodes]
    links = [Link("172.17.0.2/24", "172.17.0.1/24"), Link("192.168.1.2/24", "192.168.1.1/24"),
             Link("198.51.100.10/24", "198.51.100.1/24"), *far_links]
    return Chain(nodes, links)


def same_link() -> Chain:
    """(c) two hosts on one link."""
    return Chain([Node("a", router=False), Node("b", side="b", router=False)],
                 [Link("192.168.1.2/24", "192.168.1.3/24")])


def ipv6_firewalls(answer: str = "drop") -> Chain:
    """(e) IPv6: host - firewall - core - core - firewall - host, global addresses, no NAT."""
    guard = "left" if answer == "drop" else None
    nodes = [Node("a", router=False), Node("fa", firewall="right"), Node("c1"),
             Node("c2", side="b"), Node("fb", side="b", firewall=guard),
             Node("b", side="b", router=False)]
    links = [Link("2001:db8:a::2/64", "2001:db8:a::1/64"),
             Link("2001:db8:1::10/64", "2001:db8:1::1/64"),
             Link("2001:db8:12::1/64", "2001:db8:12::2/64"),
             Link("2001:db8:2::1/64", "2001:db8:2::20/64"),
             Link("2001:db8:b::1/64", "2001:db8:b::2/64")]
    return Chain(nodes, links)
