"""Address classes: inside, near, shared, private (pure)."""

import ipaddress

import pytest

from punchcat.addresses import classify_ipv4, is_inside, is_near, is_shared, unmapped


@pytest.mark.parametrize("address,inside", [
    ("10.1.2.3", True), ("172.16.0.1", True), ("172.31.255.254", True), ("172.32.0.1", False),
    ("192.168.1.1", True), ("100.64.0.1", True), ("100.127.255.254", True),
    ("100.128.0.1", False), ("169.254.1.1", True), ("127.0.0.1", True),
    ("198.51.100.1", False), ("203.0.113.20", False), ("192.0.2.2", False),  # documentation
    ("198.18.1.1", False), ("8.8.8.8", False),
    ("fd00::1", True), ("fe80::1", True), ("::1", True), ("2001:db8:1::1", False),
    ("::ffff:192.168.1.1", True), ("::ffff:8.8.8.8", False)])
def test_inside_addresses(address, inside):
    assert is_inside(address) is inside


@pytest.mark.parametrize("address,near", [
    ("10.1.2.3", True), ("172.20.0.1", True), ("192.168.1.1", True), ("169.254.1.1", True),
    ("fd00::1", True), ("fe80::1", True),
    # A carrier's other customers share 100.64/10 behind its NAT; loopback is probed.
    ("100.64.0.1", False), ("127.0.0.1", False), ("::1", False),
    ("8.8.8.8", False), ("2001:db8::1", False),
    ("::ffff:192.168.1.1", False)])          # not unmapped (unlike is_inside)
def test_near_addresses(address, near):
    assert is_near(address) is near
    assert is_near(ipaddress.ip_address(address)) is near


def test_shared_addresses_are_carrier_grade_nat():
    assert is_shared("100.64.0.1") and is_shared("100.127.255.255") and is_shared("::ffff:100.64.0.1")
    assert not is_shared("100.128.0.1") and not is_shared("192.168.1.1")
    assert not is_shared("2001:db8::1")


def test_an_ipv4_mapped_address_reads_as_ipv4():
    assert unmapped(ipaddress.ip_address("::ffff:10.1.2.3")) == ipaddress.ip_address("10.1.2.3")
    assert unmapped(ipaddress.ip_address("2001:db8::1")) == ipaddress.ip_address("2001:db8::1")
    assert unmapped(ipaddress.ip_address("10.1.2.3")) == ipaddress.ip_address("10.1.2.3")


def test_an_ipv4_address_is_private_shared_special_or_public():
    assert classify_ipv4("192.168.0.5") == "private"
    assert classify_ipv4("10.0.0.1") == "private" and classify_ipv4("172.31.0.1") == "private"
    assert classify_ipv4("100.64.1.1") == "shared" and classify_ipv4("100.127.255.255") == "shared"
    assert classify_ipv4("100.128.0.1") == "public" and classify_ipv4("5.5.5.1") == "public"
    assert classify_ipv4("0.0.0.0") == "unspecified" and classify_ipv4("169.254.1.1") == "other-special"
