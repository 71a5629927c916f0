"""The IP filter: IPv4 and IPv6 CIDRs, allow and block lists, the loopback exemption."""

from __future__ import annotations

import pytest

from engine.ip_filter import IPFilter, parse_ip, parse_network


def test_no_lists_allow_everyone() -> None:
    f = IPFilter()
    assert not f.active
    assert f.allows("203.0.113.9") and f.allows("2001:db8::1") and f.allows("")


def test_ipv4_allow_list() -> None:
    f = IPFilter(allow=["10.0.0.0/8", "192.168.1.7"])
    assert f.active
    assert f.allows("10.20.30.40") and f.allows("192.168.1.7")
    assert not f.allows("192.168.1.8") and not f.allows("11.0.0.1")
    assert not f.allows("2001:db8::1")  # an IPv6 client is not in an IPv4 list
    assert not f.allows("127.0.0.1")  # loopback is not exempt unless configured so


def test_ipv4_block_list_wins_over_allow() -> None:
    f = IPFilter(allow=["10.0.0.0/8"], block=["10.66.0.0/16"])
    assert f.allows("10.1.1.1")
    assert not f.allows("10.66.3.4")
    only_block = IPFilter(block=["198.51.100.0/24"])
    assert not only_block.allows("198.51.100.200") and only_block.allows("198.51.101.1")


def test_ipv6_allow_and_block() -> None:
    f = IPFilter(allow=["2001:db8::/32", "fd00::/8"], block=["2001:db8:bad::/48"])
    assert f.allows("2001:db8:1::5") and f.allows("fd12:3456::1")
    assert not f.allows("2001:db8:bad::1")
    assert not f.allows("2001:db9::1") and not f.allows("10.0.0.1")
    assert f.allows("2001:0DB8:0001:0000:0000:0000:0000:0005")  # any spelling of the address
    assert f.allows("[2001:db8::7]") and f.allows("fe80::1%eth0") is False


def test_ipv4_mapped_ipv6_is_treated_as_ipv4() -> None:
    f = IPFilter(allow=["10.0.0.0/8"])
    assert f.allows("::ffff:10.1.2.3")
    assert not IPFilter(block=["10.0.0.0/8"]).allows("::ffff:10.1.2.3")
    assert parse_ip("::ffff:10.1.2.3") == parse_ip("10.1.2.3")


@pytest.mark.parametrize("loopback", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_exemption(loopback: str) -> None:
    assert not IPFilter(allow=["10.0.0.0/8"]).allows(loopback)
    assert IPFilter(allow=["10.0.0.0/8"], exempt_loopback=True).allows(loopback)
    assert IPFilter(block=["127.0.0.0/8", "::1/128"], exempt_loopback=True).allows(loopback)
    assert not IPFilter(block=["127.0.0.0/8", "::1/128"]).allows(loopback)


def test_unparseable_clients_pass_only_without_an_allow_list() -> None:
    assert not IPFilter(allow=["10.0.0.0/8"]).allows("unix-socket")
    assert IPFilter(block=["10.0.0.0/8"]).allows("")


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
    ("2001:db8::1/32", "'2001:db8::1/32' has host bits set (did you mean 2001:db8::/32?)"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an IPv4 or IPv6 network (write 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32)"),
    ("intranet", "'intranet' is not an IPv4 or IPv6 network (write 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32)"),
    ("", "expected an IPv4 or IPv6 network such as 10.0.0.0/8 or 2001:db8::/32, got ''"),
    (42, "expected an IPv4 or IPv6 network such as 10.0.0.0/8 or 2001:db8::/32, got 42"),
])
def test_bad_networks_name_the_fix(text: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_network(text)
    assert str(e.value) == message
    with pytest.raises(ValueError):
        IPFilter(allow=[text])  # type: ignore[list-item]


def test_bare_addresses_are_single_hosts() -> None:
    assert str(parse_network("192.168.1.7")) == "192.168.1.7/32"
    assert str(parse_network("2001:db8::1")) == "2001:db8::1/128"
