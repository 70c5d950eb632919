"""Which webhook URLs Kiln may call: http(s) only, and no internal addresses unless allowed.

A webhook makes the service send requests wherever a tenant says; without this check a tenant
could reach the metadata service, the database or anything else on the operator's network (SSRF).
The host is resolved and every address it resolves to must be public. The check runs when a URL
is registered and again before every attempt (a name may later resolve elsewhere).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from kiln_service.errors import UploadRejectedError

__all__ = ["ALLOW_HINT", "WebhookURLError", "check_webhook_url"]

ALLOW_HINT = ("An operator can allow internal addresses with KILN_WEBHOOK_ALLOW_PRIVATE_URLS=true "
              "(for receivers on a trusted network or in tests).")


class WebhookURLError(UploadRejectedError):
    """The webhook URL is not one Kiln will call (422 ``invalid_webhook_url``)."""

    code = "invalid_webhook_url"


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
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookURLError(f"webhook URL {url!r} must be an http:// or https:// URL with a host")
    if len(url) > 2048:
        raise WebhookURLError("webhook URL is longer than 2048 characters")
    if parts.username or parts.password:
        raise WebhookURLError("webhook URL must not carry a user name or password; "
                              "check the webhook-signature header instead")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookURLError(f"webhook host {parts.hostname!r} does not resolve: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookURLError(
                f"webhook URL {url!r} points to {address}, a loopback, private or otherwise "
                f"internal address, which Kiln does not call. {ALLOW_HINT}")
    return url
