"""The client's IP address for per-IP rate limits, behind zero or more reverse proxies.

Two layers can claim to know the client:

- Serve's HTTP proxy runs uvicorn with proxy headers on. For a peer in uvicorn's
  ``FORWARDED_ALLOW_IPS`` (loopback by default) it replaces ``scope["client"]`` with an address
  taken from that peer's ``X-Forwarded-For``, and the port becomes 0 unless the header named one.
- The operator's list, ``CHAT_ENGINE_TRUSTED_PROXIES``: only a peer inside it is believed.

A rewrite by uvicorn is undone first (the peer was one of uvicorn's trusted hosts, not the
address in the header), then the operator's list decides. A real TCP peer never has port 0, so
the rewrite is recognised without reaching into uvicorn's internals.
"""

from __future__ import annotations

import functools
import ipaddress
import os

from starlette.requests import Request

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: str) -> IPAddress | None:
    """``value`` as an address (an IPv4-mapped IPv6 address as its IPv4 one); None if not one."""
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=1)
def _server_trusted_stand_in() -> str | None:
    """One address standing for the hosts whose X-Forwarded-For Serve's uvicorn believes
    (``FORWARDED_ALLOW_IPS``, default ``127.0.0.1,::1``): its first entry, a network as its
    network address. None when uvicorn trusts everyone (``*``) or nobody (empty)."""
    raw = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    first = next((h.strip() for h in raw.split(",") if h.strip()), None)
    if first is None or first == "*":
        return None
    if "/" in first:
        try:
            return str(ipaddress.ip_network(first, strict=False).network_address)
        except ValueError:
            return None
    return first


def _peer(request: Request, hops: list[str]) -> str:
    """The TCP peer as it was before the server's own proxy-header rewrite.

    hops: the X-Forwarded-For entries, left to right. A client of port 0 whose host is one of
    the hops was written by uvicorn from the header: the real peer was a host uvicorn trusts,
    reported as :func:`_server_trusted_stand_in`.
    """
    if request.client is None:
        return "unknown"
    host, port = request.client.host, request.client.port
    if port != 0 or not hops:
        return host
    stand_in = _server_trusted_stand_in()
    if stand_in is None:
        return host
    host_ip = parse_ip(host)
    for hop in hops:
        if hop == host or (host_ip is not None and parse_ip(hop.strip("[]")) == host_ip):
            return stand_in
    return host


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def client_ip(request: Request, trusted_proxies: list[str]) -> str:
    """The client's address (a string: an IP, or the peer's host as given, or ``"unknown"``).

    The TCP peer (from before the server's rewrite, see the module docstring), unless the peer is
    inside one of ``trusted_proxies`` (CIDRs, CHAT_ENGINE_TRUSTED_PROXIES): then the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy. Entries to its left were written
    by the client and prove nothing; a malformed entry stops the walk at the last proxy.
    """
    hops = [h.strip() for value in request.headers.getlist("x-forwarded-for") for h in value.split(",")]
    hops = [h for h in hops if h]
    peer = _peer(request, hops)
    peer_ip = parse_ip(peer)
    if not trusted_proxies or peer_ip is None:
        return peer
    networks = _networks(tuple(trusted_proxies))
    if not any(peer_ip in net for net in networks):
        return peer
    client = peer_ip
    for hop in reversed(hops):
        hop_ip = parse_ip(hop)
        if hop_ip is None:
            break
        client = hop_ip
        if not any(hop_ip in net for net in networks):
            break
    return str(client)
