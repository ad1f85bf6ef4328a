"""Ask the home router to open TCP ports, and learn the public address.

Sans-I/O codecs for the three protocols a home router may speak:
:mod:`.natpmp` (RFC 6886), :mod:`.pcp` (RFC 6887) and :mod:`.upnp`
(UPnP-IGD).  One driver per protocol (:mod:`.pcp_driver`,
:mod:`.natpmp_driver`, :mod:`.upnp_driver`) runs its codec over real sockets
(:mod:`.exchange`) against the default gateway only (no server, no third
party); :mod:`.engine` chooses among them and keeps the mappings, and
:mod:`.client` runs it in a background thread.
"""

from .common import MalformedResponse, escape

__all__ = ["MalformedResponse", "escape"]
