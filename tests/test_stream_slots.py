"""Open event streams' slots under the caps (runtime/api/streams.py) on the real Redis, with the
refresher's periods shortened: an open stream's slot outlives many lease periods, a closed one
is gone at once, one nobody refreshes lapses, slots are refreshed each on its own schedule
(spread over the period, not all in one burst), and Redis going away and coming back (through
the killable proxy) only delays refreshes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from runtime.api import streams
from runtime.config import get_settings
from runtime.events import redis_client
from tests.conftest import LoopbackProxy, Services

pytestmark = pytest.mark.timeout(120)

REFRESH_S, TICK_S, LEASE_S, RETRY_S = 2.0, 0.1, 6.0, 0.5


@pytest.fixture
def fast_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "SLOT_REFRESH_S", REFRESH_S)
    monkeypatch.setattr(streams, "SLOT_TICK_S", TICK_S)
    monkeypatch.setattr(streams, "STREAM_LEASE_S", LEASE_S)
    monkeypatch.setattr(streams, "SLOT_RETRY_S", RETRY_S)


async def _expiry(rds: Any, slot: streams.StreamSlot) -> float | None:
    """The slot's lease expiry (Unix seconds) in its session's set, or None when absent."""
    score = await rds.zscore(slot.keys[0], slot.slot_id)
    return None if score is None else float(score)


async def test_open_slots_stay_each_on_its_own_schedule_and_closed_or_orphaned_ones_go(
    services: Services, fast_refresh: None
) -> None:
    rds = redis_client(services.redis_url)
    tenant = uuid.uuid4()
    try:
        first = await streams.acquire_stream_slot(rds, get_settings(), tenant, uuid.uuid4())
        await asyncio.sleep(1.0)  # half a refresh period later
        second = await streams.acquire_stream_slot(rds, get_settings(), tenant, uuid.uuid4())
        orphan = await streams.acquire_stream_slot(rds, get_settings(), tenant, uuid.uuid4())
        streams._refresher(rds).slots.discard(orphan)  # its process "forgot" it: nobody refreshes
        await asyncio.sleep(LEASE_S + REFRESH_S)

        # Open slots outlived their first lease: refreshed, so they expire in the future.
        now = time.time()
        for slot in (first, second):
            expiry = await _expiry(rds, slot)
            assert expiry is not None and expiry > now, (expiry, now)
        # Each was refreshed on its own schedule, not in one burst with the other.
        assert abs(first.refreshed_at - second.refreshed_at) > 0.4, (first.refreshed_at,
                                                                      second.refreshed_at)
        # The orphan's lease lapsed, and the next admission prunes it.
        orphan_expiry = await _expiry(rds, orphan)
        assert orphan_expiry is not None and orphan_expiry < now
        third = await streams.acquire_stream_slot(rds, get_settings(), tenant, uuid.uuid4())
        assert await rds.zscore(orphan.keys[1], orphan.slot_id) is None
        assert await rds.zscore(third.keys[1], third.slot_id) is not None

        # A closed stream's slot is gone at once; the other stays.
        await first.release()
        assert await _expiry(rds, first) is None
        assert await _expiry(rds, second) is not None
        await second.release()
        await third.release()
        assert await rds.zcard(streams.tenant_streams_key(tenant)) == 0
    finally:
        await rds.aclose()


async def test_redis_away_delays_refreshes_and_they_resume_when_it_is_back(
    services: Services, fast_refresh: None
) -> None:
    proxy = LoopbackProxy.for_url(services.redis_url)
    await proxy.start()
    rds = redis_client(proxy.url(services.redis_url))
    direct = redis_client(services.redis_url)
    try:
        slot = await streams.acquire_stream_slot(rds, get_settings(), uuid.uuid4(), uuid.uuid4())
        taken = await _expiry(direct, slot)
        assert taken is not None
        proxy.block()
        await asyncio.sleep(REFRESH_S + 1.0)
        assert await _expiry(direct, slot) == taken  # not refreshed while Redis was away
        assert proxy.refused > 0  # it did try
        refused = proxy.refused
        await asyncio.sleep(1.0)
        # Backing off: at most one try per RETRY_S (and a connection attempt or two each).
        assert proxy.refused - refused <= 4 * (1.0 / RETRY_S + 1), (refused, proxy.refused)
        proxy.unblock()
        deadline = time.monotonic() + 10
        while (await _expiry(direct, slot) or 0) <= taken:
            assert time.monotonic() < deadline, "the slot was not refreshed once Redis was back"
            await asyncio.sleep(0.1)
        await slot.release()
        assert await _expiry(direct, slot) is None
    finally:
        await rds.aclose()
        await direct.aclose()
        await proxy.stop()
