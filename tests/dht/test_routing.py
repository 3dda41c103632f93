"""Contacts and the routing table: XOR ordering, bucket bounds, ping-before-evict, subnet limits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeone.dht.contact import Contact, contacts_from_wire
from zeone.dht.routing import ID_BITS, RoutingTable, common_prefix_length, node_id_from_int
from zeone.errors import ProtocolError
from zeone.identity import NodeId

ids = st.integers(min_value=0, max_value=2**ID_BITS - 1)


def contact(value: int, *addresses: str) -> Contact:
    return Contact(node_id_from_int(value), addresses or (f"memory://n{value % 10**6}",))


def check_invariants(table: RoutingTable) -> None:
    nonempty = [i for i in range(ID_BITS) if table.bucket_contacts(i)]
    assert table.statistics()["buckets"] == len(nonempty)
    assert table.deepest_bucket() == (nonempty[-1] if nonempty else -1)
    assert len(table) == sum(len(table.bucket_contacts(i)) for i in nonempty)
    for index in nonempty:
        assert len(table.bucket_contacts(index)) <= table.k


def in_bucket(table: RoutingTable, index: int, rng: random.Random, *addresses: str) -> Contact:
    return Contact(table.random_id_in_bucket(index, rng), addresses or ("memory://x",))


# -- Contact --------------------------------------------------------------------------------------


def test_contact_wire_round_trip_and_derived_values() -> None:
    c = Contact(node_id_from_int(5), ("tcp://1.2.3.4:4001", "memory://a"))
    assert Contact.from_wire(c.to_wire()) == c
    assert c.int_id == 5
    assert c.prefixes == {"1.2.3.0/24"}


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("tcp://10.1.2.3:1", "10.1.2.0/24"),
        ("tcp://[2001:db8:1:2:3::4]:1", "2001:db8:1:2::/64"),
        ("tcp://[::ffff:8.8.8.8]:1", "8.8.8.0/24"),
        ("tcp://example.org:1", "name:example.org"),
        ("tcp://127.0.0.1:1", None),
        ("tcp://[::1]:1", None),
        ("memory://node3", None),
    ],
)
def test_contact_prefixes(address: str, prefix: str | None) -> None:
    expected = {prefix} if prefix else set()
    assert Contact(node_id_from_int(1), (address,)).prefixes == expected


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        [b"x" * 20],
        [b"x" * 19, []],
        ["x" * 20, []],
        [b"x" * 20, "memory://a"],
        [b"x" * 20, ["memory://a"] * 17],
        [b"x" * 20, ["tcp://" + "a" * 300 + ":1"]],
        [b"x" * 20, [""]],
        [b"x" * 20, [42]],
        [b"x" * 20, ["no scheme"]],
        [b"x" * 20, ["tcp://1.2.3.4"]],  # no port
    ],
)
def test_contact_from_wire_rejects_malformed(wire: object) -> None:
    with pytest.raises(ProtocolError):
        Contact.from_wire(wire)


def test_contact_list_limit() -> None:
    wire = [contact(i).to_wire() for i in range(5)]
    assert len(contacts_from_wire(wire, limit=5)) == 5
    with pytest.raises(ProtocolError):
        contacts_from_wire(wire, limit=4)
    with pytest.raises(ProtocolError):
        contacts_from_wire({"a": 1}, limit=4)


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    local=ids,
    others=st.lists(ids, max_size=120, unique=True),
    target=ids,
    count=st.integers(min_value=0, max_value=40),
    k=st.integers(min_value=1, max_value=8),
    exclude_some=st.booleans(),
)
def test_closest_is_sorted_and_equals_brute_force(
    local: int, others: list[int], target: int, count: int, k: int, exclude_some: bool
) -> None:
    table = RoutingTable(node_id_from_int(local), k=k)
    for value in others:
        table.add(contact(value))
    members = [c.int_id for c in table]
    assert len(members) == len(table) == len(set(members))
    assert local not in members
    for index in range(ID_BITS):
        assert len(table.bucket_contacts(index)) <= k
        assert all(
            common_prefix_length(local, c.int_id) == index for c in table.bucket_contacts(index)
        )
    check_invariants(table)
    for value in others[::4]:  # evictions and removals keep the bookkeeping right
        table.ping_failed(value)
        table.remove(value + 1)
    check_invariants(table)
    members = [c.int_id for c in table]
    excluded = set(members[::3]) if exclude_some else set()
    result = table.closest(node_id_from_int(target), count, exclude=excluded)
    expected = sorted((m for m in members if m not in excluded), key=lambda m: m ^ target)[:count]
    assert [c.int_id for c in result] == expected


@settings(max_examples=40)
@given(local=ids, index=st.integers(min_value=0, max_value=ID_BITS - 1), seed=st.integers())
def test_random_id_in_bucket_lands_in_that_bucket(local: int, index: int, seed: int) -> None:
    table = RoutingTable(node_id_from_int(local))
    value = table.random_id_in_bucket(index, random.Random(seed))
    assert table.bucket_index(value) == index


@settings(max_examples=40)
@given(
    octets=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=40),
    limit=st.integers(min_value=1, max_value=3),
)
def test_per_prefix_limit_holds_in_every_bucket(octets: list[int], limit: int) -> None:
    rng = random.Random(len(octets))
    table = RoutingTable(node_id_from_int(0), k=8, max_per_prefix=limit)
    for n, third in enumerate(octets):
        bucket = n % 2  # two buckets, many contacts each
        table.add(in_bucket(table, bucket, rng, f"tcp://198.51.{third}.{n % 250 + 1}:4001"))
    for index in (0, 1):
        for cache in (table.bucket_contacts(index), table.replacement_contacts(index)):
            for third in range(4):
                prefix = f"198.51.{third}.0/24"
                assert sum(prefix in c.prefixes for c in cache) <= limit


# -- bucket behaviour -----------------------------------------------------------------------------


def full_bucket(k: int = 4) -> tuple[RoutingTable, list[Contact], random.Random]:
    rng = random.Random(1)
    table = RoutingTable(node_id_from_int(2**159 + 12345), k=k)
    members = [in_bucket(table, 0, rng) for _ in range(k)]
    for member in members:
        assert table.add(member) is None
    return table, members, rng


def test_lru_order_and_touch() -> None:
    table, members, _ = full_bucket()
    assert table.bucket_contacts(0) == members
    assert table.touch(members[0].node_id)
    assert table.bucket_contacts(0) == [*members[1:], members[0]]
    table.add(members[1])  # hearing from a known contact also moves it to the tail
    assert table.bucket_contacts(0) == [members[2], members[3], members[0], members[1]]
    assert not table.touch(node_id_from_int(7))


def test_full_bucket_asks_for_ping_and_evicts_only_on_failure() -> None:
    table, members, rng = full_bucket()
    newcomer = in_bucket(table, 0, rng)
    assert table.add(newcomer) == members[0]  # ping the least recently seen
    assert newcomer not in list(table) and table.replacement_contacts(0) == [newcomer]
    # It answered: it stays (now most recently seen); the newcomer keeps waiting.
    table.touch(members[0].node_id)
    assert table.bucket_contacts(0)[-1] == members[0]
    assert table.add(in_bucket(table, 0, rng)) == members[1]
    # The next one did not answer: evicted, and the freshest replacement takes its place.
    latest = table.replacement_contacts(0)[-1]
    assert table.ping_failed(members[1]) == latest
    assert members[1].node_id not in table
    assert table.bucket_contacts(0)[-1] == latest
    assert len(table) == 4
    assert table.ping_failed(members[1]) is None  # already gone: nothing happens
    check_invariants(table)
    waiting = table.replacement_contacts(0)
    for member in list(table):
        table.ping_failed(member)
    check_invariants(table)
    assert list(table) == waiting  # what was left in the replacement cache


def test_rpc_failures_evict_only_when_a_replacement_waits() -> None:
    table, members, rng = full_bucket()
    for _ in range(10):
        assert not table.record_failure(members[2].node_id)
    assert members[2].node_id in table  # no replacement: a dead contact beats an empty slot
    newcomer = in_bucket(table, 0, rng)
    table.add(newcomer)
    assert table.record_failure(members[2].node_id)
    assert members[2].node_id not in table and newcomer.node_id in table


def test_remove_promotes_and_a_message_resets_failures() -> None:
    table, members, rng = full_bucket()
    table.record_failure(members[0].node_id)
    table.touch(members[0].node_id)
    assert table.failures(members[0].node_id) == 0
    waiting = in_bucket(table, 0, rng)
    table.add(waiting)
    assert table.remove(members[3].node_id)
    assert waiting.node_id in table
    assert not table.remove(members[3].node_id)


def test_local_id_is_never_added() -> None:
    local = node_id_from_int(99)
    table = RoutingTable(local)
    assert table.add(Contact(local, ())) is None
    assert len(table) == 0 and local not in table
    assert table.closest(local) == []


def test_prefix_limit_refuses_a_third_contact_from_one_subnet() -> None:
    rng = random.Random(3)
    table = RoutingTable(node_id_from_int(0), k=20)
    same = [in_bucket(table, 0, rng, f"tcp://203.0.113.{i}:4001") for i in range(1, 4)]
    for c in same:
        table.add(c)
    assert [c in list(table) for c in same] == [True, True, False]
    table.add(in_bucket(table, 1, rng, "tcp://203.0.113.9:4001"))  # other bucket: its own quota
    table.add(in_bucket(table, 0, rng, "tcp://203.0.114.1:4001"))  # other /24
    table.add(in_bucket(table, 0, rng, "memory://a"))  # exempt
    assert len(table) == 5
    assert table.statistics()["rejected_prefix"] == 1
    unlimited = RoutingTable(node_id_from_int(0), max_per_prefix=None)
    for c in same:
        unlimited.add(c)
    assert len(unlimited) == 3


def test_stale_buckets_and_refresh_bookkeeping() -> None:
    rng = random.Random(4)
    table = RoutingTable(node_id_from_int(2**100), created=0.0)
    for index in (0, 1, 5):
        table.add(in_bucket(table, index, rng))
    assert table.stale_buckets(10.0, 3600.0) == []
    stale = table.stale_buckets(4000.0, 3600.0, rng)
    assert [table.bucket_index(x) for x in stale] == list(range(6))  # up to the deepest
    table.mark_refreshed(stale[2], 3900.0)
    assert [table.bucket_index(x) for x in table.stale_buckets(4000.0, 3600.0)] == [0, 1, 3, 4, 5]


def test_records_round_trip_keeps_order_and_skips_damage() -> None:
    table, members, rng = full_bucket()
    far = in_bucket(table, 3, rng, "tcp://192.0.2.1:4001")
    table.add(far)
    table.touch(members[0].node_id)
    records = table.to_records()
    restored, skipped = RoutingTable.from_records(table.local, records, k=4)
    assert skipped == 0
    assert restored.to_records() == records
    assert restored.bucket_contacts(0)[-1] == members[0]
    damaged, skipped = RoutingTable.from_records(
        table.local, [*records, "junk", [b"short", []], [b"x" * 20, ["bad address"]]], k=4
    )
    assert skipped == 3 and len(damaged) == len(table)
    assert RoutingTable.from_records(table.local, {"not": "a list"})[1] == 1


def test_constructor_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RoutingTable(NodeId(bytes(20)), k=0)
    with pytest.raises(ValueError):
        RoutingTable(NodeId(bytes(20)), max_per_prefix=0)
