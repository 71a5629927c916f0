"""Client addresses: parsing IPv4/IPv6 addresses and CIDRs, and the IP filter every route obeys.

Shared by the IP filter (/api/settings/ip-filter) and the policy `ip` field, so an address means
the same thing in both: IPv4-mapped IPv6 (::ffff:10.0.0.1) is folded to IPv4, and a CIDR with host
bits set is refused with the network that was probably meant.

Public surface: IPFilter, parse_ip, parse_network, ip_in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> Address | None:
    """An address, IPv4-mapped IPv6 folded to IPv4 (so ::ffff:10.0.0.1 matches 10.0.0.0/8); None
    when `text` is not an address (a unix socket peer, an empty client)."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_network(text: Any) -> Network:
    """A CIDR (a bare address is a /32 or /128). Raises ValueError with a message naming the fix."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected an IPv4 or IPv6 network such as 10.0.0.0/8 or 2001:db8::/32, got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 network (write 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32)")
    raise ValueError(f"{text!r} has host bits set (did you mean {loose}?)")


def ip_in(x: str | None, nets: list[Network]) -> bool:
    addr = parse_ip(x)
    return addr is not None and any(addr.version == n.version and addr in n for n in nets)


class IPFilter:
    """Who may connect. A blocked address is refused; with an allow list, only listed addresses
    pass. Loopback passes regardless only when `exempt_loopback` is set (an operator who lists
    networks usually means every client, the local one included). Addresses that cannot be
    parsed pass only when there is no allow list."""

    __slots__ = ("allow", "allows", "block", "exempt_loopback")

    def __init__(self, allow: Sequence[str] = (), block: Sequence[str] = (), exempt_loopback: bool = False) -> None:
        self.allow = [parse_network(a) for a in allow]
        self.block = [parse_network(b) for b in block]
        self.exempt_loopback = exempt_loopback
        self.allows: Callable[[str], bool] = lru_cache(maxsize=4096)(self._allows)

    @property
    def active(self) -> bool:
        return bool(self.allow or self.block)

    def _allows(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None:
            return not self.allow
        if self.exempt_loopback and addr.is_loopback:
            return True
        if any(addr.version == n.version and addr in n for n in self.block):
            return False
        return not self.allow or any(addr.version == n.version and addr in n for n in self.allow)
