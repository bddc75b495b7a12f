"""GET /api/v1/ports (agent-api.md §2.5): listening TCP ports on the any-address."""
import socket
import time

import pytest

from conftest import wait_until


def ports(agent):
    env = agent.api("GET", "/api/v1/ports")
    assert set(env) == {"status", "message", "ports", "lastUpdatedAt"}
    assert env["status"] == 0
    assert isinstance(env["lastUpdatedAt"], int)
    assert abs(env["lastUpdatedAt"] - time.time()) < 60
    assert env["ports"] == sorted(set(env["ports"]))
    return env["ports"]


def listener(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 0))
    s.listen()
    return s


def test_any_address_listener_appears_and_goes(agent):
    s = listener(socket.AF_INET, "0.0.0.0")
    port = s.getsockname()[1]
    wait_until(lambda: port in ports(agent), what="port listed")
    s.close()
    wait_until(lambda: port not in ports(agent), what="port gone after the cache")


def test_loopback_and_non_listening_are_not_reported(agent):
    lo = listener(socket.AF_INET, "127.0.0.1")
    bound = socket.socket()
    bound.bind(("0.0.0.0", 0))  # bound but not listening
    anyl = listener(socket.AF_INET, "0.0.0.0")
    wait_until(lambda: anyl.getsockname()[1] in ports(agent), what="marker listener")
    got = ports(agent)
    assert lo.getsockname()[1] not in got
    assert bound.getsockname()[1] not in got
    assert 22 not in got
    for s in (lo, bound, anyl):
        s.close()


def test_ipv6_any_listener(agent):
    try:
        s = listener(socket.AF_INET6, "::")
    except OSError:
        pytest.skip("no IPv6")
    port = s.getsockname()[1]
    wait_until(lambda: port in ports(agent), what="v6 port listed")
    s.close()


def test_own_port_is_excluded(agent_factory):
    a = agent_factory(addr="0.0.0.0:0")
    marker = listener(socket.AF_INET, "0.0.0.0")
    wait_until(lambda: marker.getsockname()[1] in ports(a), what="marker")
    assert a.port not in ports(a)
    marker.close()


def test_auth_required(agent):
    st, _, body = agent.get("/api/v1/ports", auth=False)
    assert st == 401 and body == b""
