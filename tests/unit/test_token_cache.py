import time
from datetime import timedelta

from dspo.db import utcnow
from dspo.services.tokens import Principal, TokenCache

ALICE = Principal(1, "alice", "annotator")
BOB = Principal(2, "bob", "admin")


def test_an_entry_lives_ttl_seconds_and_never_past_the_tokens_expiry() -> None:
    cache = TokenCache(ttl_seconds=0.2)
    cache.put("a", ALICE, utcnow() + timedelta(hours=1), cache.generation)
    cache.put("b", BOB, utcnow() + timedelta(milliseconds=50), cache.generation)  # the token ends sooner
    cache.put("c", BOB, utcnow() - timedelta(seconds=1), cache.generation)  # already expired: not kept
    assert cache.get("a") == ALICE and cache.get("b") == BOB and cache.get("c") is None
    time.sleep(0.1)
    assert cache.get("a") == ALICE and cache.get("b") is None
    time.sleep(0.15)
    assert cache.get("a") is None


def test_forgetting_tokens_and_users() -> None:
    cache = TokenCache(ttl_seconds=60)
    expires = utcnow() + timedelta(hours=1)
    for token_hash, principal in (("a1", ALICE), ("a2", ALICE), ("b1", BOB)):
        cache.put(token_hash, principal, expires, cache.generation)
    cache.forget_token("a1")
    assert cache.get("a1") is None and cache.get("a2") == ALICE
    cache.forget_user(ALICE.id)
    assert cache.get("a2") is None and cache.get("b1") == BOB


def test_a_ttl_of_zero_caches_nothing() -> None:
    cache = TokenCache(ttl_seconds=0)
    cache.put("a", ALICE, utcnow() + timedelta(hours=1), cache.generation)
    assert cache.get("a") is None


def test_an_answer_read_before_a_forget_is_not_stored_after_it() -> None:
    cache = TokenCache(ttl_seconds=60)
    seen = cache.generation  # a lookup reads the database...
    cache.forget_user(BOB.id)  # ...an admin demotes bob meanwhile...
    cache.put("b1", BOB, utcnow() + timedelta(hours=1), seen)  # ...and the lookup's answer comes late
    assert cache.get("b1") is None
    cache.put("b1", BOB, utcnow() + timedelta(hours=1), cache.generation)
    assert cache.get("b1") == BOB
