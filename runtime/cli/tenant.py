"""``chat-engine tenant ...``: tenant administration from the command line."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from runtime.cli.console import console
from runtime.config import load_settings

app = typer.Typer(help="Tenants.", no_args_is_help=True)


@app.command("create")
def create(
    name: str,
    owner_name: Annotated[str, typer.Option()] = "Owner",
    owner_email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a tenant and its owner; prints the ids and the owner's API key (shown once)."""
    from runtime.bot_config import BotConfig
    from runtime.db.migrate import upgrade
    from runtime.db.pool import create_pool
    from runtime.db.tenants import create_tenant
    from runtime.services import running_services

    settings = load_settings()

    async def _create(dsn: str) -> tuple[Any, Any, str]:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await create_tenant(
                    conn, name, owner_name, owner_email, BotConfig().model_dump(mode="json")
                )
        finally:
            await pool.close()

    with running_services(settings, redis=False) as services:
        upgrade(services.database_url)
        tenant, owner, key = asyncio.run(_create(services.database_url))
    console.print(f"tenant_id     : {tenant['id']}")
    console.print(f"owner_user_id : {owner['id']}")
    console.print(f"owner_api_key : {key}   (shown once)")
