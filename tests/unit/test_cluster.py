"""The migrations rendered for a ClickHouse cluster: expected DDL for each kind of statement, and
every statement of every migration parsed by ClickHouse's own parser (no cluster can run here)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from callsight.storage.cluster import mutation, render, sharding_key
from callsight.storage.migrator import _LEDGER, available

CALLS = textwrap.dedent("""\
    CREATE TABLE IF NOT EXISTS calls
    (
        tenant_id  String,
        device_id  String,
        call_id    String,
        version    UInt64
    )
    ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(started_at)
    ORDER BY (tenant_id, device_id, call_id)""")


def test_without_a_cluster_every_statement_is_unchanged() -> None:
    for migration in available():
        for statement in migration.statements:
            assert render(statement, None) == (statement,)
            assert render(statement, "") == (statement,)
    assert mutation("DELETE FROM calls WHERE tenant_id = 't'", None) == (
        "DELETE FROM calls WHERE tenant_id = 't'"
    )


def test_a_table_becomes_a_replicated_local_table_and_a_distributed_one() -> None:
    local, distributed = render(CALLS, "prod")
    assert local == textwrap.dedent("""\
        CREATE TABLE IF NOT EXISTS calls_local ON CLUSTER prod
        (
            tenant_id  String,
            device_id  String,
            call_id    String,
            version    UInt64
        )
        ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/calls_local', \
'{replica}', version)
        PARTITION BY toYYYYMM(started_at)
        ORDER BY (tenant_id, device_id, call_id)""")
    assert distributed == (
        "CREATE TABLE IF NOT EXISTS calls ON CLUSTER prod AS calls_local\n"
        "ENGINE = Distributed(prod, currentDatabase(), calls_local,"
        " cityHash64(tenant_id, device_id))"
    )


def test_rows_are_sharded_by_device_where_a_table_has_one() -> None:
    assert sharding_key("(tenant_id String,\n device_id String)") == (
        "cityHash64(tenant_id, device_id)"
    )
    assert sharding_key("(\n    tenant_id String,\n    lead_id String\n)") == (
        "cityHash64(tenant_id)"
    )
    assert sharding_key("(\n    version UInt32\n)") == "rand()"


def test_an_engine_without_arguments_gets_only_the_replication_path() -> None:
    local, _ = render(_LEDGER.strip(), "prod")
    assert (
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/schema_migrations_local', '{replica}')"
    ) in local


def test_a_view_reads_and_writes_the_local_tables() -> None:
    statement = (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS call_versions_mv TO call_versions AS\n"
        "SELECT tenant_id, device_id, call_id, version FROM calls"
    )
    assert render(statement, "prod") == (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS call_versions_mv ON CLUSTER prod"
        " TO call_versions_local AS\n"
        "SELECT tenant_id, device_id, call_id, version FROM calls_local",
    )


def test_column_changes_reach_both_tables_in_a_safe_order_and_codecs_stay_local() -> None:
    add = "ALTER TABLE calls ADD COLUMN IF NOT EXISTS mode UInt8 DEFAULT 1 CODEC(T64, LZ4)"
    assert render(add, "prod") == (
        "ALTER TABLE calls_local ON CLUSTER prod\n"
        "ADD COLUMN IF NOT EXISTS mode UInt8 DEFAULT 1 CODEC(T64, LZ4)",
        "ALTER TABLE calls ON CLUSTER prod\nADD COLUMN IF NOT EXISTS mode UInt8 DEFAULT 1",
    )
    drop = "ALTER TABLE calls DROP COLUMN IF EXISTS a, DROP COLUMN IF EXISTS b"
    assert render(drop, "prod") == (
        "ALTER TABLE calls ON CLUSTER prod\nDROP COLUMN IF EXISTS a,\nDROP COLUMN IF EXISTS b",
        "ALTER TABLE calls_local ON CLUSTER prod\nDROP COLUMN IF EXISTS a, DROP COLUMN IF EXISTS b",
    )
    codec_only = "ALTER TABLE calls MODIFY COLUMN note CODEC(ZSTD(1))"
    assert render(codec_only, "prod") == (
        "ALTER TABLE calls_local ON CLUSTER prod\nMODIFY COLUMN note CODEC(ZSTD(1))",
    )
    setting = "ALTER TABLE calls MODIFY SETTING enable_block_number_column = 1"
    assert render(setting, "prod") == (
        "ALTER TABLE calls_local ON CLUSTER prod\nMODIFY SETTING enable_block_number_column = 1",
    )


def test_drops_optimizes_and_mutations_act_on_every_shard() -> None:
    assert render("DROP TABLE IF EXISTS call_rollups", "prod") == (
        "DROP TABLE IF EXISTS call_rollups ON CLUSTER prod SYNC",
        "DROP TABLE IF EXISTS call_rollups_local ON CLUSTER prod SYNC",
    )
    assert render("OPTIMIZE TABLE calls FINAL", "prod") == (
        "OPTIMIZE TABLE calls_local ON CLUSTER prod FINAL",
    )
    assert mutation("DELETE FROM parties WHERE tenant_id = {t:String}", "prod") == (
        "DELETE FROM parties_local ON CLUSTER prod WHERE tenant_id = {t:String}"
    )
    assert mutation("ALTER TABLE tenant_keys DELETE WHERE tenant_id = 'x'", "prod") == (
        "ALTER TABLE tenant_keys_local ON CLUSTER prod DELETE WHERE tenant_id = 'x'"
    )
    insert = "INSERT INTO parties SELECT * FROM calls"
    assert render(insert, "prod") == (insert,)
    assert mutation(insert, "prod") == insert


def test_a_cluster_name_is_an_identifier() -> None:
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        render(CALLS, "prod; DROP TABLE calls")


def test_every_rendered_statement_parses_in_clickhouse() -> None:
    statements = list(render(_LEDGER.strip(), "prod"))
    for migration in available():
        for statement in migration.statements:
            statements.extend(render(statement, "prod"))
    # Every table got both forms.
    created = [s.split()[5] for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS")]
    locals_ = {t.removesuffix("_local") for t in created if t.endswith("_local")}
    assert locals_ == {t for t in created if not t.endswith("_local")}
    assert "calls" in locals_
    # chDB in a child: this process may already hold another chDB path. The parser accepts
    # ON CLUSTER without a cluster; {shard} and {replica} are only substituted at execution.
    script = textwrap.dedent("""\
        import json, sys, chdb
        failed = []
        for statement in json.load(sys.stdin):
            try:
                chdb.query("EXPLAIN AST " + statement, "CSV")
            except Exception as exc:
                failed.append(f"{statement[:80]!r}: {str(exc)[:200]}")
        print(json.dumps(failed))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
