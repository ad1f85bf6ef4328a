"""The import graph runs one way: each module imports only from lower layers.

The layers are the flow in the README's "Inside": options parsed once, a
session that punches (techniques), agrees (handshake), opens a channel and
relays or forwards.  A new module gets a layer here.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "punchcat"

LAYERS = [
    # foundations: no punchcat imports but errors
    ["errors", "schedule", "status", "sockopts", "mux", "handshake", "channel", "endpoints",
     "srp", "secret", "addresses", "routes", "backoff", "peerlock", "stream", "retention",
     "resume"],
    # punch techniques and the secret
    ["portmap", "portmap.common", "portmap.natpmp", "portmap.pcp", "portmap.upnp", "portmap.local",
     "portmap.results", "portmap.exchange", "portmap.driver", "portmap.pcp_driver",
     "portmap.natpmp_driver", "portmap.upnp_driver", "portmap.ledger", "portmap.handover",
     "portmap.engine",
     "portmap.client",
     "traverse", "traverse.timing", "traverse.errqueue", "traverse.hops", "traverse.diagnosis",
     "traverse.candidates", "traverse.tidy", "traverse.sentinel", "traverse.direct",
     "traverse.birthday", "traverse.mapped", "traverse.transit",
     "secure"],
    # agreeing on a connection; moving data
    ["agree", "ends", "relay", "acceptor", "rxsplice", "muxlink", "forward"],
    # one run, and the command lines
    ["options", "connect", "durable", "session", "whoami", "entry", "cli", "__main__", "__init__"],
    # the lab, on top of everything
    ["lab", "lab.netns", "lab.transit", "lab.router", "lab.net", "lab.lan", "lab.pairs", "lab.cli"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The punchcat modules *path* imports (relative imports resolved)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                base = [p for p in base if p]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("punchcat"):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:             # "from . import x" may name a module
                candidate = ".".join([*target, alias.name])
                found.add(candidate if candidate in RANK else ".".join(target))
    found.discard("")
    return found


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules - RANK.keys() == set(), "give new modules a layer in LAYERS"


def test_imports_only_go_down():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        for target in imports(path):
            if target in RANK and RANK[target] > RANK[name]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = {module_name(p): imports(p) & RANK.keys() for p in PACKAGE.rglob("*.py")}
    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, " -> ".join([*trail, node])
        visiting.add(node)
        for nxt in graph.get(node, ()):
            if nxt != node:
                visit(nxt, [*trail, node])
        visiting.discard(node)
        done.add(node)
    for node in graph:
        visit(node, [])
