"""The NAT lab: real Linux NAT routers in network namespaces, on one box.

:mod:`.net` builds the network (hosts, routers, their nftables rulesets),
:mod:`.pairs` runs punchcat pairs across it, and :mod:`.cli` is the
``punchcat-lab`` demo.  Used by the tests, the benchmarks and the demo.
"""

from .net import ANSWERS, NAT_MODES, Lab, LabUnavailable, Side, missing_prerequisites
from .pairs import PUNCHCAT, Run, endless_input, occupy_ports, run_pair

__all__ = ["ANSWERS", "NAT_MODES", "Lab", "LabUnavailable", "Side", "missing_prerequisites",
           "PUNCHCAT", "Run", "endless_input", "occupy_ports", "run_pair"]
