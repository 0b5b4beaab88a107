"""Postgres access: pool, migrations and plain-SQL queries per entity (all tenant-scoped)."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection as queries accept it: a bare connection or one acquired from a pool.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy[Any]
