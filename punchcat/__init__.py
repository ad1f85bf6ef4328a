"""punchcat: netcat through two NATs, with nothing but the peer's IP address."""

__version__ = "0.1.0"
