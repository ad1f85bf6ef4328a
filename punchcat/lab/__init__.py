"""The NAT lab: real Linux NAT routers in network namespaces, on one box.

:mod:`.netns` holds the namespace plumbing, :mod:`.net` builds two homes
behind NAT routers (hosts, routers, their nftables rulesets), :mod:`.lan`
two hosts near each other (one link, a plain router, one shared NAT),
:mod:`.router` is the router lab (a home router that maps ports: miniupnpd
or a scripted NAT-PMP responder, and the portmap client driven behind it),
:mod:`.pairs` runs punchcat pairs across them, and :mod:`.cli` is the
``punchcat-lab`` demo.  Used by the tests, the benchmarks and the demo.
"""

from .lan import LanLab
from .net import ANSWERS, NAT_MODES, Lab, Side
from .netns import LabUnavailable, missing_prerequisites
from .pairs import PUNCHCAT, Run, endless_input, occupy_ports, run_pair

__all__ = ["ANSWERS", "NAT_MODES", "Lab", "LanLab", "LabUnavailable", "Side",
           "missing_prerequisites", "PUNCHCAT", "Run", "endless_input", "occupy_ports",
           "run_pair"]
