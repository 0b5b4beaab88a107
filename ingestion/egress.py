"""The crawler's egress policy: which addresses it may connect to, checked at connect time.

An owner submits any URL, so without a policy the crawler would fetch loopback services, the
private network and the cloud metadata endpoint for them and store the answer as a document.
:class:`EgressPolicy` classifies addresses with :mod:`ipaddress` and refuses loopback, private
(RFC 1918, ``fc00::/7``), link-local (``169.254/16`` with the metadata address, ``fe80::/10``),
multicast, unspecified, reserved, shared (``100.64/10``) and every other address that is not
globally routable, IPv4 embedded in IPv6 (``::ffff:a.b.c.d``, NAT64, 6to4) by its IPv4 address,
and the metadata host names (``metadata.google.internal`` ...) and ``localhost``.

The check runs where connections are made, not on the URL: :class:`EgressTransport` is an httpx
transport whose connection pool uses :class:`EgressNetworkBackend`, which resolves the host
itself, checks *every* resolved address (one refused address refuses the host) and connects to
the checked IP. So redirects, robots.txt and later connections of a keep-alive pool are covered,
and DNS rebinding cannot swap the address between the check and the connect (there is no second
lookup). The request's Host header and TLS SNI / certificate check still use the host name
(httpcore takes both from the URL, not from the address connected to). A refused connection is
never attempted, so the owner learns "refused by the egress policy" and nothing about whether a
private port is open (no port-scan oracle).

``CHAT_ENGINE_CRAWL_ALLOW_PRIVATE=true`` (tests and a local demo crawling a site on 127.0.0.1)
allows private, loopback and link-local addresses, except the cloud metadata endpoints, which are
always refused; :func:`policy_from_settings` refuses that setting in production.

Test seams (constructor arguments, not settings): ``resolver`` (an async ``(host, port) ->
[address, ...]``, default :func:`system_resolver`), ``allow_networks`` (networks allowed although
the policy would refuse them), ``allow_hosts`` (host names whose resolved addresses are not
checked, e.g. a fake ``public.test`` that the test resolver maps to 127.0.0.1, so a redirect from
it to ``127.0.0.1`` itself is still refused) and ``inner`` (the httpcore backend that opens the
sockets, default :class:`httpcore.AnyIOBackend`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx

from runtime.config import Settings
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

ALLOW_PRIVATE_ENV = "CHAT_ENGINE_CRAWL_ALLOW_PRIVATE"
POLICY_TEXT = (
    "the crawler refuses private, loopback, link-local and metadata addresses "
    f"({ALLOW_PRIVATE_ENV})"
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Host names of cloud metadata services (refused whatever they resolve to) and local names.
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal",
    "instance-data", "instance-data.ec2.internal", "metadata.platformequinix.com",
    "metadata.tencentyun.com", "metadata.oraclecloud.com",
})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# Cloud metadata endpoints: refused even when private addresses are allowed.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS IPv6 metadata
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud (legacy)
))
SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
# Kinds allowed by allow_private (metadata and unusable kinds never are).
PRIVATE_KINDS = frozenset({"private", "loopback", "link-local", "shared (100.64.0.0/10)"})


class EgressRefused(httpx.ConnectError):
    """A connection the egress policy refused (never attempted). Its message names the policy;
    ``host`` is the host asked for and ``kind`` why (private, loopback, metadata ...)."""

    def __init__(self, message: str, *, host: str, kind: str) -> None:
        super().__init__(message)
        self.host = host
        self.kind = kind


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_NETWORK:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(address: str | IPAddress) -> str | None:
    """Why the crawler must not connect to ``address`` ("loopback", "private", "link-local",
    "metadata" ...), or None for a public (globally routable) address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        v4 = _embedded_ipv4(ip)
        if v4 is not None:
            return classify(v4)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_NETWORK:
        return "shared (100.64.0.0/10)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


def _as_address(kind: str) -> str:
    """``kind`` as "host x resolves to <this>"."""
    if kind.startswith("a "):
        return kind
    if kind.startswith("not "):
        return f"an address that is {kind}"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the event loop's getaddrinfo), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class EgressPolicy:
    """Decides which addresses the crawler may connect to (see the module docstring).

    allow_private: allow private, loopback, link-local and shared addresses (never the metadata
    endpoints, multicast, unspecified or reserved ones). resolver, allow_networks, allow_hosts:
    the test seams described in the module docstring.
    """

    def __init__(
        self, *, allow_private: bool = False, resolver: Resolver | None = None,
        allow_networks: Iterable[str | IPNetwork] = (), allow_hosts: Iterable[str] = (),
    ) -> None:
        self.allow_private = allow_private
        self.resolver: Resolver = resolver or system_resolver
        self.allow_networks = tuple(
            ipaddress.ip_network(n) if isinstance(n, str) else n for n in allow_networks
        )
        self.allow_hosts = frozenset(_norm_host(h) for h in allow_hosts)

    def refusal(self, ip: IPAddress) -> str | None:
        """The kind of ``ip`` when the policy refuses it, else None."""
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return None
        kind = classify(ip)
        if kind is None or (self.allow_private and kind in PRIVATE_KINDS):
            return None
        return kind

    def check_name(self, host: str) -> None:
        """Refuse metadata and local host names (before any lookup)."""
        name = _norm_host(host)
        if name in self.allow_hosts or _literal(name) is not None:
            return
        if name in METADATA_NAMES:
            raise EgressRefused(f"host {name} is a cloud metadata name: {POLICY_TEXT}",
                                host=name, kind="metadata name")
        if not self.allow_private and (name in LOCAL_NAMES or name.endswith(".localhost")):
            raise EgressRefused(f"host {name} is a local name: {POLICY_TEXT}",
                                host=name, kind="local name")

    async def resolve(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The checked addresses to connect to for ``host``; raises :class:`EgressRefused` when
        the name or any address it resolves to is refused, httpcore ConnectError/ConnectTimeout
        when it does not resolve."""
        name = _norm_host(host)
        self.check_name(name)
        literal = _literal(name)
        if literal is not None:
            kind = self.refusal(literal)
            if kind is not None:
                raise EgressRefused(f"address {literal} is {kind}: {POLICY_TEXT}",
                                    host=name, kind=kind)
            return [str(literal)]
        try:
            async with asyncio.timeout(timeout):
                answers = list(await self.resolver(name, port))
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {name} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {name} ({exc})") from None
        addresses: list[IPAddress] = []
        for answer in answers:
            ip = ipaddress.ip_address(answer)
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise httpcore.ConnectError(f"could not resolve {name} (no addresses)")
        if name in self.allow_hosts:
            return [str(ip) for ip in addresses]
        for ip in addresses:
            kind = self.refusal(ip)
            if kind is not None:
                # The address itself is not named: it would tell the owner the inside DNS.
                log.info("egress policy refused %s (%s, %s)", name, ip, kind)
                raise EgressRefused(f"host {name} resolves to {_as_address(kind)}: {POLICY_TEXT}",
                                    host=name, kind=kind)
        return [str(ip) for ip in addresses]


def _norm_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


class EgressNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses ``policy`` allows: it
    resolves the host, checks every address, then has ``inner`` connect to the checked IP."""

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None
                 ) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        started = time.monotonic()
        addresses = await self.policy.resolve(host, port, timeout)
        last: Exception | None = None
        for address in addresses:
            left = None if timeout is None else max(0.001, timeout - (time.monotonic() - started))
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=left, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused(f"unix socket {path}: {POLICY_TEXT}", host=path, kind="unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class EgressTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (HTTP/1.1, no proxy: the policy must see the real destination) with a
    connection pool whose every connection goes through :class:`EgressNetworkBackend`."""

    def __init__(
        self, policy: EgressPolicy, *, inner: httpcore.AsyncNetworkBackend | None = None,
        verify: bool | ssl.SSLContext = True, limits: httpx.Limits | None = None, retries: int = 0,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits, retries=retries)
        # httpx builds its pool without a network-backend option; replace it with the same pool
        # over the policy's backend (checked, so an httpx that changes this fails loudly here).
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps an httpcore pool in _pool")
        self.policy = policy
        self.backend = EgressNetworkBackend(policy, inner)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True, http2=False, retries=retries, network_backend=self.backend,
        )


def policy_from_settings(settings: Settings, **seams: Any) -> EgressPolicy:
    """The policy ``settings`` ask for; ``crawl_allow_private`` in production is a ConfigError
    (the settings validator is not this module's, so the crawler checks it when it starts)."""
    if settings.crawl_allow_private and settings.environment == "production":
        raise ConfigError(
            f"{ALLOW_PRIVATE_ENV}=true is refused in production: the crawler must not fetch "
            "private, loopback or link-local addresses for tenants"
        )
    return EgressPolicy(allow_private=settings.crawl_allow_private, **seams)
