"""Network helpers for Harvest's own listeners (Flight, bridges): loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import socket


def _is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    # An IPv6 socket bound to 127.0.0.1 reports it as ::ffff:127.0.0.1, which Python 3.11 does not call loopback.
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, ::ffff:127.x.y.z and names that resolve only to them (e.g. localhost)."""
    try:
        return _is_loopback_address(host)
    except ValueError:
        try:
            return all(_is_loopback_address(str(info[4][0])) for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def port_taken(host: str, port: int) -> bool:
    """Whether something on this machine already listens on (or holds) `host:port`."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
