"""The migrations rendered for a ClickHouse cluster (``CALLSIGHT_CLUSTER``).

The migrations are written for one ClickHouse (the embedded default or a single server). On a
cluster every table becomes two: ``<table>_local``, a ``Replicated*MergeTree`` holding each
shard's rows on every replica of that shard, and ``<table>``, a ``Distributed`` table over them
that the code reads and writes as before, so no query of the application changes. Rows are
sharded by ``cityHash64(tenant_id, device_id)`` where the table has a device (calls, contacts,
telemetry, call_versions: a device's versions of a record meet on one shard, where
ReplacingMergeTree collapses them, and the dedup loader's reads stay exact), by
``cityHash64(tenant_id)`` otherwise. Every statement runs ``ON CLUSTER``:

- ``CREATE TABLE IF NOT EXISTS t (...) ENGINE = X(args) ...`` becomes the local table with
  ``ReplicatedX('/clickhouse/tables/{shard}/{database}/t_local', '{replica}', args)`` and the
  ``Distributed`` table ``AS`` it;
- a materialized view reads and writes the local tables, so it fires on each shard's inserts;
- ``ALTER TABLE`` goes to the local table; column changes (add, drop, rename, modify type) also
  to the Distributed table, without codecs, which a Distributed table does not store;
- ``DROP TABLE`` drops both; ``OPTIMIZE`` and mutations act on the local table;
- ``INSERT ... SELECT`` goes through the Distributed tables unchanged.

The application's own mutations at run time (``DELETE FROM t WHERE ...`` of erasure and tenant
deletion, ``ALTER TABLE t DELETE``) are rewritten the same way by ``mutation``, which
``storage.database.Database.command`` applies when it was given a cluster.

Queries that join a sharded table with another (parties, leads, employees) need
``distributed_product_mode = 'global'`` in the cluster's user profile; ``README.md`` says how to
set up the cluster. Only the rendering is tested here (unit tests against expected DDL, and every
statement parsed by ClickHouse's own parser): no cluster can be started on the test machines.
"""

from __future__ import annotations

import re

LOCAL_SUFFIX = "_local"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CREATE_TABLE = re.compile(
    rf"^CREATE TABLE IF NOT EXISTS ({_NAME})\s*(\(.*\))\s*ENGINE\s*=\s*(\w+)(?:\(([^)]*)\))?(.*)$",
    re.S,
)
_CREATE_VIEW = re.compile(
    rf"^CREATE MATERIALIZED VIEW IF NOT EXISTS ({_NAME})\s+TO\s+({_NAME})\s+AS\s+(.*)$", re.S
)
_ALTER = re.compile(rf"^ALTER TABLE ({_NAME})\s+(.*)$", re.S)
_DROP = re.compile(rf"^DROP TABLE IF EXISTS ({_NAME})\s*$", re.S)
_OPTIMIZE = re.compile(rf"^OPTIMIZE TABLE ({_NAME})\b(.*)$", re.S)
_FROM = re.compile(rf"\bFROM\s+({_NAME})\b")
_COLUMN_CLAUSE = re.compile(r"^(ADD|DROP|RENAME|MODIFY)\s+COLUMN\b", re.I)
_CODEC = re.compile(r"\s+CODEC\((?:[^()]|\([^()]*\))*\)")
_REPLICATED = {"MergeTree", "ReplacingMergeTree", "AggregatingMergeTree", "SummingMergeTree"}


def render(statement: str, cluster: str | None) -> tuple[str, ...]:
    """The statements to run for one migration statement: itself without a cluster."""
    if not cluster:
        return (statement,)
    if not re.fullmatch(_NAME, cluster):
        raise ValueError(f"cluster name {cluster!r} must be letters, digits and underscores")
    on = f"ON CLUSTER {cluster}"
    if match := _CREATE_TABLE.match(statement):
        return _create_table(match, cluster, on)
    if match := _CREATE_VIEW.match(statement):
        view, target, select = match.groups()
        select = _FROM.sub(lambda m: f"FROM {m.group(1)}{LOCAL_SUFFIX}", select)
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} {on} "
            f"TO {target}{LOCAL_SUFFIX} AS\n{select}",
        )
    if match := _ALTER.match(statement):
        return _alter(match.group(1), match.group(2), on)
    if match := _DROP.match(statement):
        table = match.group(1)
        return (
            f"DROP TABLE IF EXISTS {table} {on} SYNC",
            f"DROP TABLE IF EXISTS {table}{LOCAL_SUFFIX} {on} SYNC",
        )
    if match := _OPTIMIZE.match(statement):
        return (f"OPTIMIZE TABLE {match.group(1)}{LOCAL_SUFFIX} {on}{match.group(2)}",)
    return (statement,)


_DELETE = re.compile(rf"^\s*DELETE FROM ({_NAME})(\s+WHERE\b.*)$", re.S)
_ALTER_MUTATION = re.compile(rf"^\s*ALTER TABLE ({_NAME})(\s+(?:DELETE|UPDATE)\b.*)$", re.S)


def mutation(statement: str, cluster: str | None) -> str:
    """A run-time DELETE or ALTER ... DELETE/UPDATE aimed at the local tables of ``cluster``;
    anything else, or any statement without a cluster, unchanged."""
    if not cluster or "ON CLUSTER" in statement:
        return statement
    for pattern, verb in ((_DELETE, "DELETE FROM"), (_ALTER_MUTATION, "ALTER TABLE")):
        if match := pattern.match(statement):
            table, rest = match.groups()
            return f"{verb} {table}{LOCAL_SUFFIX} ON CLUSTER {cluster}{rest}"
    return statement


def sharding_key(columns: str) -> str:
    """How a table's rows are spread over shards, from its column list."""
    has = {m.group(1) for m in re.finditer(rf"^\s*({_NAME})\s", columns.strip("()"), re.M)}
    if {"tenant_id", "device_id"} <= has:
        return "cityHash64(tenant_id, device_id)"
    if "tenant_id" in has:
        return "cityHash64(tenant_id)"
    return "rand()"


def _create_table(match: re.Match[str], cluster: str, on: str) -> tuple[str, ...]:
    table, columns, engine, args, rest = match.groups()
    if engine not in _REPLICATED:
        raise ValueError(f"table {table}: no replicated form of engine {engine}")
    local = f"{table}{LOCAL_SUFFIX}"
    path = f"'/clickhouse/tables/{{shard}}/{{database}}/{local}', '{{replica}}'"
    engine_args = f"{path}, {args}" if args else path
    return (
        f"CREATE TABLE IF NOT EXISTS {local} {on}\n{columns}\n"
        f"ENGINE = Replicated{engine}({engine_args}){rest}",
        f"CREATE TABLE IF NOT EXISTS {table} {on} AS {local}\n"
        f"ENGINE = Distributed({cluster}, currentDatabase(), {local}, {sharding_key(columns)})",
    )


def _clauses(commands: str) -> list[str]:
    """The comma-separated clauses of an ALTER, commas inside parentheses kept."""
    clauses, depth, start = [], 0, 0
    for i, char in enumerate(commands):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            clauses.append(commands[start:i].strip())
            start = i + 1
    clauses.append(commands[start:].strip())
    return [c for c in clauses if c]


def _alter(table: str, commands: str, on: str) -> tuple[str, ...]:
    local = f"ALTER TABLE {table}{LOCAL_SUFFIX} {on}\n{commands}"
    columns = [
        _CODEC.sub("", clause) for clause in _clauses(commands) if _COLUMN_CLAUSE.match(clause)
    ]
    # A codec-only MODIFY COLUMN leaves nothing for the Distributed table to change.
    columns = [c for c in columns if not re.fullmatch(rf"MODIFY\s+COLUMN\s+{_NAME}", c, re.I)]
    if not columns:
        return (local,)
    distributed = f"ALTER TABLE {table} {on}\n" + ",\n".join(columns)
    dropping = any(c.upper().startswith("DROP") for c in columns)
    # Added columns exist below before the Distributed table shows them; dropped ones leave it
    # first.
    return (distributed, local) if dropping else (local, distributed)
