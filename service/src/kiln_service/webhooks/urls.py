"""Which webhook URLs Kiln may call: http(s) only, and no internal addresses unless allowed.

A webhook makes the service send requests wherever a tenant says; without this check a tenant
could reach the metadata service, the database or anything else on the operator's network (SSRF).
The host is resolved and every address it resolves to must be public. The check runs when a URL
is registered and again before every attempt (a name may later resolve elsewhere), and each attempt
connects to the address that was checked (:func:`pin_webhook_url`), never to a second lookup's
answer: a name that resolves to a public address for the check and to an internal one a moment
later (DNS rebinding) cannot redirect the request.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from kiln_service.errors import UploadRejectedError

__all__ = ["ALLOW_HINT", "PinnedURL", "WebhookURLError", "check_webhook_url", "pin_webhook_url"]

ALLOW_HINT = ("An operator can allow internal addresses with KILN_WEBHOOK_ALLOW_PRIVATE_URLS=true "
              "(for receivers on a trusted network or in tests).")


class WebhookURLError(UploadRejectedError):
    """The webhook URL is not one Kiln will call (422 ``invalid_webhook_url``)."""

    code = "invalid_webhook_url"


@dataclass(frozen=True)
class PinnedURL:
    """Where one attempt sends its request.

    Attributes:
        url: The URL to request; its host is the checked IP address when the address is pinned.
        headers: ``Host`` for a pinned address (the name the receiver expects), else empty.
        extensions: httpx request extensions: ``sni_hostname`` for a pinned https URL, so TLS
            still presents and verifies the receiver's name.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """Check that ``url`` is an http(s) URL to a public address (or that private ones are allowed).

    Args:
        url: The URL.
        allow_private: ``KILN_WEBHOOK_ALLOW_PRIVATE_URLS``.

    Returns:
        The URL, stripped.

    Raises:
        WebhookURLError: Another scheme, no host, an unresolvable host, or an internal address.
    """
    url = _well_formed(url)
    if not allow_private:
        _public_addresses(url)
    return url


def pin_webhook_url(url: str, *, allow_private: bool) -> PinnedURL:
    """Check ``url`` as :func:`check_webhook_url` does and pin it to the address that was checked.

    With private addresses allowed nothing is resolved here and the URL is used as given.

    Raises:
        WebhookURLError: As :func:`check_webhook_url`.
    """
    url = _well_formed(url)
    if allow_private:
        return PinnedURL(url)
    addresses = _public_addresses(url)
    parts = urlsplit(url)
    host = str(addresses[0])
    netloc = f"[{host}]" if addresses[0].version == 6 else host
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    host_header = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": str(parts.hostname)} if parts.scheme == "https" else {}
    return PinnedURL(pinned, {"host": host_header}, extensions)


def _well_formed(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookURLError(f"webhook URL {url!r} must be an http:// or https:// URL with a host")
    if len(url) > 2048:
        raise WebhookURLError("webhook URL is longer than 2048 characters")
    if parts.username or parts.password:
        raise WebhookURLError("webhook URL must not carry a user name or password; "
                              "check the webhook-signature header instead")
    return url


def _public_addresses(url: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address the URL's host resolves to; all must be public."""
    url = _well_formed(url)
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookURLError(f"webhook host {parts.hostname!r} does not resolve: {exc}") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise WebhookURLError(
                f"webhook URL {url!r} points to {address}, a loopback, private or otherwise "
                f"internal address, which Kiln does not call. {ALLOW_HINT}")
    if not addresses:
        raise WebhookURLError(f"webhook host {parts.hostname!r} resolves to no address")
    return addresses
