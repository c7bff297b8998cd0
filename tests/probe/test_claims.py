"""AddressClaims: who held an address when, through starts, stops, late news and reuse."""

from __future__ import annotations

from scope_probe.claims import AddressClaims

IP = "172.17.0.3"


def test_an_address_belongs_to_whoever_held_it_at_the_time() -> None:
    claims = AddressClaims()
    claims.claim(IP, "old", 100.0)
    claims.release(IP, "old", 110.0)
    claims.claim(IP, "new", 111.0)
    assert claims.owner(IP, 99.0) is None
    old = claims.owner(IP, 105.0)
    assert old is not None and old.container_id == "old" and old.end == 110.0
    assert claims.owner(IP, 110.5) is None, "nobody held it between the two"
    new = claims.owner(IP, 111.0)
    assert new is not None and new.container_id == "new" and new.end is None
    assert claims.holder(IP) == "new"
    assert claims.holders() == {"new"}
    assert claims.addresses() == frozenset({IP})


def test_a_start_before_the_previous_holders_end_is_moved_to_it() -> None:
    """A container connected to a network long after it started claims the address from when it was free."""
    claims = AddressClaims()
    claims.claim(IP, "old", 100.0)
    claims.release(IP, "old", 110.0)
    claims.claim(IP, "new", 50.0)
    owner = claims.owner(IP, 105.0)
    assert owner is not None and owner.container_id == "old"
    new = claims.owner(IP, 110.0)
    assert new is not None and new.container_id == "new"


def test_an_end_learnt_late_gives_the_overlap_to_the_newer_claim() -> None:
    claims = AddressClaims()
    claims.claim(IP, "old", 100.0)
    claims.claim(IP, "new", 120.0)  # the old one's end was missed
    owner = claims.owner(IP, 125.0)
    assert owner is not None and owner.container_id == "new"
    owner = claims.owner(IP, 115.0)
    assert owner is not None and owner.container_id == "old"
    assert claims.holder(IP) == "new"


def test_removal_ends_claims_and_is_remembered_for_the_retention_time() -> None:
    claims = AddressClaims(retention=60.0)
    claims.claim(IP, "gone", 100.0)
    claims.claim(IP, "gone", 101.0)  # the same claim seen again changes nothing
    claims.remove("gone", 130.0)
    assert claims.removed("gone")
    owner = claims.owner(IP, 120.0)
    assert owner is not None and owner.end == 130.0
    assert claims.holder(IP) is None and not claims.holders()
    claims.remove("other", 200.0)  # pruning happens as time moves on
    assert not claims.removed("gone")
    assert claims.owner(IP, 120.0) is None
    assert claims.addresses() == frozenset()
