"""Ask the home router to open TCP ports, and learn the public address.

Sans-I/O codecs for the three protocols a home router may speak:
:mod:`.natpmp` (RFC 6886), :mod:`.pcp` (RFC 6887) and :mod:`.upnp`
(UPnP-IGD).  :mod:`.client` drives them over real sockets against the
default gateway only (no server, no third party).
"""

from .common import MalformedResponse, escape

__all__ = ["MalformedResponse", "escape"]
