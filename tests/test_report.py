"""``chat-engine report`` (issue 14): the seeded week of tests/test_analytics.py printed as tables
(the same figures as the API), its unanswered questions clustered with the CLI's local embedder,
and the daily breakdown written as a PNG that is opened and checked for size and drawn bars."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from runtime.cli import app
from tests.test_analytics import BITCOIN, START, at, expected, plan_week, seed, shift_plan

pytestmark = pytest.mark.timeout(600)


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


async def test_report_prints_the_figures_and_writes_a_png(client: httpx.AsyncClient, db: Any,
                                                          tmp_path: Path) -> None:
    import random

    from runtime.analytics.chart import STACK
    from tests.conftest import make_tenant

    tenant = await make_tenant(client, "Report Bikes")
    tid = uuid.UUID(tenant.id)
    # The seeded week, moved so that it ends yesterday (the report covers the last N days).
    plan = [s for s in plan_week(random.Random(3))
            if START <= s.created_at.date() <= START + timedelta(days=6)]
    end = datetime.now(UTC).date() - timedelta(days=1)
    shift = end - timedelta(days=6) - START
    shift_plan(plan, shift)
    await seed(db, tid, plan)
    async with db.acquire() as conn:
        sid = await conn.fetchval("SELECT id FROM sessions WHERE tenant_id = $1 LIMIT 1", tid)
        for q in BITCOIN:
            await conn.execute("INSERT INTO escalations (tenant_id, session_id, reason, signal, question, "
                               "created_at) VALUES ($1, $2, 'could not answer', 'low_coverage', $3, $4)",
                               tid, sid, q, at(end, 3600))
    # What the last 8 days (today included) must show, from the seed.
    today = end + timedelta(days=1)
    want = {ch: expected(plan, ch, today - timedelta(days=7), today) for ch in (None, "widget", "whatsapp")}
    assert want[None]["conversations"] > 40

    out = tmp_path / "charts" / "week.png"
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, app, ["report", "--tenant", tenant.id, "--days", "8", "--out", str(out),
                             "--embedder", "local"], env={"COLUMNS": "200"})
    text = result.output
    assert result.exit_code == 0, text
    assert "Report Bikes" in text
    row = re.search(r"conversations\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", text)
    assert row and [int(x) for x in row.groups()] == [
        want[None]["conversations"], want["widget"]["conversations"], want["whatsapp"]["conversations"]], text
    leads = re.search(r"leads captured\s*│\s*(\d+)\s*│", text)
    assert leads and int(leads.group(1)) == want[None]["leads"], text
    # The unanswered questions, clustered: both bitcoin wordings in one line asked twice.
    cluster = re.search(r"│\s*2\s*│\s*(.+?)\s*│\s*(.+?)\s*│", text.split("top unanswered questions")[1])
    assert cluster and {cluster.group(1), cluster.group(2)} == set(BITCOIN), text
    assert f"chart: {out}" in text.replace("\n", "")

    # The PNG: 1000x500, with the outcome colours' bars drawn (not a blank canvas).
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1000, 500)
        pixels = img.convert("RGB")
        colours = pixels.getcolors(maxcolors=1_000_000) or []
    counts = {c: n for n, c in colours}
    assert len(counts) > 50  # text, axes, antialiasing: a drawn chart, not a blank one
    for field, _, colour in STACK:  # the week has every outcome: each is a coloured stack
        assert want[None][field] > 0 and counts.get(rgb(colour), 0) > 300, (field, counts.get(rgb(colour)))
    assert counts[rgb(STACK[0][2])] > 5000  # handled by AI: the tallest stacks, far beyond a legend patch

    # Bad input: a clear message and exit code 2; nothing written.
    bad = await asyncio.to_thread(runner.invoke, app, ["report", "--tenant", "not-a-uuid"])
    assert bad.exit_code == 2 and "not a tenant id" in bad.output, bad.output
    missing = tmp_path / "missing.png"
    bad = await asyncio.to_thread(runner.invoke, app, ["report", "--tenant", str(uuid.uuid4()),
                                                       "--no-clusters", "--out", str(missing)])
    assert bad.exit_code == 2 and "tenant" in bad.output.lower() and not missing.exists(), bad.output
