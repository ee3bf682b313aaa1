"""Client addresses on their own: escaping what they say for the log,
normalising forwarded ones, and the per-address buckets' bounded memory
(tests/test_hostile_http.py has the same over real sockets)."""


def test_printable_escapes_and_truncates():
    from chatbox.logsafe import printable

    assert printable("Ann") == "Ann"
    assert printable("a\x1b[31mb\n\u200b\x9b") == "a\\x1b[31mb\\n\\u200b\\x9b"
    assert printable(b"\xff\x1b") == "\\xff\\x1b"
    assert printable("é 中文 😀") == "é 中文 😀"
    long = printable("\x1b" * 1000, limit=10)
    assert long == "\\x1b" * 10 + "..."


def test_forwarded_addresses_are_normalised_or_escaped():
    from chatbox.limits import client_address

    assert client_address("10.0.0.1", "203.0.113.7", 1) == "203.0.113.7"
    assert client_address("10.0.0.1", "2001:DB8::0:1", 1) == "2001:db8::1"
    assert client_address("10.0.0.1", "\x1b[31mx", 1) == "\\x1b[31mx"
    assert len(client_address("10.0.0.1", "a" * 5000, 1)) < 110


def test_address_keys_group_ipv6_by_64():
    from chatbox.limits import address_key

    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"


def test_connection_buckets_stay_bounded_whatever_the_address_space():
    import ipaddress

    from chatbox.limits import AddressBuckets, address_key

    buckets = AddressBuckets(rate=20, burst=100, max_keys=1000)
    # 20,000 addresses from one /64 are one client: 100 pass, then none.
    base = int(ipaddress.ip_address("2001:db8::"))
    passed = sum(
        buckets.take(address_key(str(ipaddress.ip_address(base + i))), 0.0)
        for i in range(20_000)
    )
    assert passed == 100 and len(buckets) == 1
    # 20,000 different /64s at once: memory stays at max_keys.
    for i in range(20_000):
        buckets.take(address_key(str(ipaddress.ip_address(base + (i << 64)))), 1.0)
    assert len(buckets) == 1000
    # Buckets idle long enough to be full again are forgotten, a few at each
    # take (so that forgetting never stalls one accept).
    for _ in range(250):
        buckets.take("198.51.100.1", 100.0)
    assert len(buckets) == 1
    # A bucket refills at its rate.
    assert buckets.take("203.0.113.7", 100.0)
    for _ in range(99):
        assert buckets.take("203.0.113.7", 100.0)
    assert not buckets.take("203.0.113.7", 100.0)
    assert buckets.take("203.0.113.7", 100.06)
