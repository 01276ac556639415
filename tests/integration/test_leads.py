"""ImportLeads, LeadActivity, leads in CallHistory and EraseNumber, end to end."""

from __future__ import annotations

import time
from collections import Counter

import grpc

from callsight.pipeline.crypto import Keyring
from callsight.pipeline.keys import TenantKeys
from callsight.storage import leads as stored_leads
from callsight.storage.database import Database
from callsight.storage.directory import Directory
from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
)
from tests.conftest import MASTER_KEY
from tests.integration import dataset
from tests.integration import reference_pages as ref
from tests.integration.dataset import Call
from tests.integration.helpers import (
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)
from tests.integration.test_reports_pages import (
    check_clients,
    filters,
    history_row,
    lead_row,
    walk,
)

CODE = grpc.StatusCode
T = common_pb2
A = admin_pb2
ROUND_ROBIN = A.ASSIGNMENT_STRATEGY_ROUND_ROBIN
LEAST_LOADED = A.ASSIGNMENT_STRATEGY_LEAST_LOADED
EXPLICIT = A.ASSIGNMENT_STRATEGY_EXPLICIT


def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


async def keyring(db: Database, tenant_id: str) -> Keyring:
    """The tenant's keyring, to read what was stored (ciphertexts only)."""
    return await TenantKeys(Directory(db), MASTER_KEY).keyring(tenant_id)


async def staff(channel: grpc.aio.Channel, tenant: Tenant, n: int) -> list[str]:
    """``n`` employees of the tenant, sorted by id."""
    return sorted(
        [await new_employee(channel, tenant, f"Emp {i}", f"+9170000001{i:02d}") for i in range(n)]
    )


def lead(number: str, **fields: object) -> admin_pb2.Lead:
    return admin_pb2.Lead(primary_number=number, **fields)  # type: ignore[arg-type]


async def import_leads(
    channel: grpc.aio.Channel, tenant: Tenant, leads: list[admin_pb2.Lead], **kw: object
) -> list[tuple[str, bool, str]]:
    response = await admin(channel).ImportLeads(
        admin_pb2.ImportLeadsRequest(leads=leads, **kw),  # type: ignore[arg-type]
        metadata=tenant.admin,
    )
    assert len(response.leads) == len(leads)
    return [(r.lead_id, r.is_new, r.employee_id) for r in response.leads]


def numbers(n: int, base: int = 0) -> list[str]:
    return [f"+9193{base + i:08d}" for i in range(n)]


async def test_round_robin_is_the_default_and_cycles_in_order(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    e = await staff(channel, tenant, 3)
    result = await import_leads(channel, tenant, [lead(n) for n in numbers(7)])
    assert [employee for _, _, employee in result] == [e[i % 3] for i in range(7)]
    assert all(is_new for _, is_new, _ in result)
    assert len({lead_id for lead_id, _, _ in result}) == 7

    chosen = [e[2], e[0], e[2]]  # a repeated id counts once
    result = await import_leads(
        channel,
        tenant,
        [lead(n) for n in numbers(3, 100)],
        strategy=ROUND_ROBIN,
        employee_ids=chosen,
    )
    assert [employee for _, _, employee in result] == [e[2], e[0], e[2]]


async def test_least_loaded_gives_each_lead_to_the_fewest_open_leads(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    e = await staff(channel, tenant, 3)
    existing = await import_leads(
        channel,
        tenant,
        [
            lead(n, employee_id=who)
            for n, who in zip(numbers(4), [e[0], e[0], e[0], e[1]], strict=True)
        ],
        strategy=EXPLICIT,
    )
    # An existing lead in the import keeps its employee and does not count as a new one.
    batch = [lead(n) for n in numbers(6, 50)]
    batch.insert(2, lead(numbers(1)[0]))
    result = await import_leads(channel, tenant, batch, strategy=LEAST_LOADED)
    load = Counter({e[0]: 3, e[1]: 1, e[2]: 0})
    expected: list[tuple[str, bool, str]] = []
    for item in batch:
        if item.primary_number == numbers(1)[0]:
            expected.append((existing[0][0], False, e[0]))
            continue
        pick = min(e, key=lambda who: load[who])  # ties go to the lowest id
        load[pick] += 1
        expected.append(("new", True, pick))
    assert [(r[0] if not r[1] else "new", r[1], r[2]) for r in result] == expected

    # Over a chosen pool, loads still count every lead of the tenant.
    result = await import_leads(
        channel, tenant, [lead(numbers(1, 90)[0])], strategy=LEAST_LOADED, employee_ids=[e[0]]
    )
    assert result[0][2] == e[0]


async def test_explicit_assignment_needs_known_employees(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel)
    e = await staff(channel, tenant, 2)
    result = await import_leads(
        channel,
        tenant,
        [lead(numbers(1)[0], employee_id=e[1]), lead(numbers(1, 1)[0], employee_id=e[0])],
        strategy=EXPLICIT,
    )
    assert [r[2] for r in result] == [e[1], e[0]]
    error = await expect_status(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(
                leads=[
                    lead(numbers(1, 10)[0], employee_id=e[0]),
                    lead(numbers(1, 11)[0]),
                    lead(numbers(1, 12)[0], employee_id="nobody"),
                ],
                strategy=EXPLICIT,
            ),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    details = error.details() or ""
    assert "leads[1].employee_id is required" in details
    assert "leads[2].employee_id 'nobody'" in details
    await expect_status(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(leads=[lead(numbers(1, 20)[0])], employee_ids=["ghost"]),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert len(await stored_leads.all_leads(db, tenant.tenant_id)) == 2


async def test_every_invalid_lead_is_reported_and_nothing_is_imported(
    channel: grpc.aio.Channel, db: Database
) -> None:
    tenant = await new_tenant(channel)
    await staff(channel, tenant, 1)
    error = await expect_status(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(
                leads=[
                    lead(""),
                    lead("98765 43210"),
                    lead("12"),
                    lead("9876543211", secondary_number="abc"),
                ]
            ),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    details = error.details() or ""
    assert "leads[0].primary_number is required" in details
    assert "leads[2].primary_number" in details
    assert "leads[3].secondary_number" in details
    assert "leads[1]" not in details
    assert await stored_leads.all_leads(db, tenant.tenant_id) == []

    error = await expect_status(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(leads=[lead(n) for n in numbers(10_001)]),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "10000" in (error.details() or "")
    nobody = await new_tenant(channel)
    await expect_status(
        admin(channel).ImportLeads(
            admin_pb2.ImportLeadsRequest(leads=[lead(numbers(1)[0])]), metadata=nobody.admin
        ),
        CODE.FAILED_PRECONDITION,
    )


async def test_a_large_import_is_taken_whole(channel: grpc.aio.Channel, db: Database) -> None:
    tenant = await new_tenant(channel)
    e = await staff(channel, tenant, 4)
    result = await import_leads(channel, tenant, [lead(n) for n in numbers(10_000, 5000)])
    assert Counter(r[2] for r in result) == dict.fromkeys(e, 2500)
    assert len(await stored_leads.all_leads(db, tenant.tenant_id)) == 10_000


def plain(ring: Keyring, row: stored_leads.Lead) -> dict[str, object]:
    """A stored lead, decrypted."""
    return {
        "lead_id": row.lead_id,
        "employee_id": row.employee_id,
        "first_name": ring.decrypt(row.first_name_enc),
        "last_name": ring.decrypt(row.last_name_enc),
        "company": ring.decrypt(row.company_enc),
        "primary": ring.decrypt(row.primary_enc),
        "secondary": ring.decrypt(row.secondary_enc),
        "secondary_bidx": row.secondary_bidx,
        "email": ring.decrypt(row.email_enc),
        "address": ring.decrypt(row.address_enc),
        "city": ring.decrypt(row.city_enc),
        "tags": row.tags,
        "created_at_ms": row.created_at_ms,
    }


async def stored(db: Database, ring: Keyring, tenant_id: str) -> dict[str, dict[str, object]]:
    return {row.lead_id: plain(ring, row) for row in await stored_leads.all_leads(db, tenant_id)}


async def test_on_existing_modes(channel: grpc.aio.Channel, db: Database) -> None:
    tenant = await new_tenant(channel)
    e = await staff(channel, tenant, 2)
    ring = await keyring(db, tenant.tenant_id)
    ((lead_id, is_new, owner),) = await import_leads(
        channel,
        tenant,
        [lead("098765 43210", first_name=" Asha ", address="1 MG Road", city="Pune")],
    )
    assert is_new and owner == e[0]
    original = (await stored(db, ring, tenant.tenant_id))[lead_id]
    assert original["primary"] == "+919876543210"
    assert original["first_name"] == "Asha"
    assert original["secondary_bidx"] == bytes(32)
    row = (await stored_leads.all_leads(db, tenant.tenant_id))[0]
    assert b"Asha" not in row.first_name_enc and b"MG Road" not in row.address_enc
    assert row.primary_bidx == ring.blind_index("+919876543210")

    # IGNORE is the default: same number in another format, nothing changes.
    changed = lead("+91 98765 43210", first_name="Other", company="Acme", email="a@x.in")
    assert await import_leads(channel, tenant, [changed]) == [(lead_id, False, e[0])]
    assert await import_leads(
        channel, tenant, [changed], on_existing=A.ON_EXISTING_IGNORE, strategy=LEAST_LOADED
    ) == [(lead_id, False, e[0])]
    assert (await stored(db, ring, tenant.tenant_id))[lead_id] == original

    # FILL_BLANKS: only the empty fields are taken.
    fill = lead(
        "9876543210",
        first_name="Other",
        last_name="Rao",
        company="Acme",
        secondary_number="09123456789",
        email="asha@acme.in",
        city="Mumbai",
        tags=["hot"],
    )
    result = await import_leads(channel, tenant, [fill], on_existing=A.ON_EXISTING_FILL_BLANKS)
    assert result == [(lead_id, False, e[0])]
    filled = (await stored(db, ring, tenant.tenant_id))[lead_id]
    assert filled == {
        **original,
        "last_name": "Rao",
        "company": "Acme",
        "secondary": "+919123456789",
        "secondary_bidx": ring.blind_index("+919123456789"),
        "email": "asha@acme.in",
        "tags": ("hot",),
    }

    # OVERWRITE replaces every field; id, creation and assignment stay.
    result = await import_leads(
        channel,
        tenant,
        [lead("9876543210", first_name="New")],
        on_existing=A.ON_EXISTING_OVERWRITE,
        strategy=ROUND_ROBIN,
        employee_ids=[e[1]],
    )
    assert result == [(lead_id, False, e[0])]
    overwritten = (await stored(db, ring, tenant.tenant_id))[lead_id]
    assert overwritten == {
        **original,
        "first_name": "New",
        "address": "",
        "city": "",
    }
    # ... unless EXPLICIT names a new employee.
    result = await import_leads(
        channel,
        tenant,
        [lead("9876543210", first_name="New", employee_id=e[1])],
        on_existing=A.ON_EXISTING_OVERWRITE,
        strategy=EXPLICIT,
    )
    assert result == [(lead_id, False, e[1])]
    assert (await stored(db, ring, tenant.tenant_id))[lead_id]["employee_id"] == e[1]

    # A number twice in one request: created once, the repeat meets it.
    twice = await import_leads(
        channel,
        tenant,
        [lead("9000000001", first_name="A"), lead("+919000000001", last_name="B")],
        on_existing=A.ON_EXISTING_FILL_BLANKS,
    )
    assert twice[0][1] and not twice[1][1] and twice[0][0] == twice[1][0]
    both = (await stored(db, ring, tenant.tenant_id))[twice[0][0]]
    assert (both["first_name"], both["last_name"]) == ("A", "B")
    assert len(await stored_leads.all_leads(db, tenant.tenant_id)) == 2
    # Each lead has one current row, however often it was written.
    rows = await db.query(
        "SELECT count() FROM leads FINAL WHERE tenant_id = {t:String}", {"t": tenant.tenant_id}
    )
    assert rows[0][0] == 2


async def created_at(db: Database, tenant_id: str) -> dict[str, int]:
    rows = await db.query(
        "SELECT lead_id, toUnixTimestamp64Milli(created_at) FROM leads FINAL"
        " WHERE tenant_id = {t:String}",
        {"t": tenant_id},
    )
    return {lead_id: int(ms) for lead_id, ms in rows}


async def test_calls_are_matched_to_leads(channel: grpc.aio.Channel, db: Database) -> None:
    truth = await dataset.build(channel, seed=5, employees=3, calls_per_device=120, days=4)
    e = sorted(truth.employees)
    visible = truth.visible()
    called: dict[str, list[str]] = {
        who: [
            n for n, _ in Counter(c.number for c in visible if c.employee_id == who).most_common()
        ]
        for who in e
    }
    used: set[str] = set()

    def pick(candidates: list[str]) -> str:
        number = next(n for n in candidates if n not in used)
        used.add(number)
        return number

    a0, a1, a2 = pick(called[e[0]]), pick(called[e[0]]), pick(called[e[0]])
    b0, b1 = pick(called[e[1]]), pick(called[e[1]])
    solo = pick([n for n in called[e[0]] if n not in called[e[1]] + called[e[2]]])
    c0, c1 = pick(called[e[2]]), pick(called[e[2]])
    plan = [
        # (primary, secondary, employee)
        (a0, "", e[0]),
        (a1, a2, e[0]),
        (b0, b1, e[1]),
        (b1, b1, e[1]),  # both numbers equal: each call counts once
        (solo, "", e[2]),  # assigned to someone who never called it
        ("+919555500001", "", e[2]),  # never called
        (c0, a0, e[2]),  # shares a number with the first lead
        (c1, "", e[2]),
    ]
    before = int(time.time() * 1000)
    result = await import_leads(
        channel,
        truth.tenant,
        [lead(p, secondary_number=s, employee_id=who) for p, s, who in plan],
        strategy=EXPLICIT,
    )
    after = int(time.time() * 1000)
    created = await created_at(db, truth.tenant.tenant_id)
    assert all(before <= created[lead_id] <= after for lead_id, _, _ in result)
    leads = [
        ref.Lead(lead_id, who, tuple(n for n in (p, s) if n), created[lead_id])
        for (lead_id, _, _), (p, s, who) in zip(result, plan, strict=True)
    ]

    # Calls after the import: a positive time to first call.
    device = await enroll(channel, truth.tenant, e[0], region="IN")
    late = [
        Call(device.device_id, f"late-{k}", e[0], number, "", kind, start, duration, "", "", start)
        for k, (number, kind, start, duration) in enumerate(
            [
                (a0, T.CALL_TYPE_OUTGOING, after + 90_500, 0),
                (a2, T.CALL_TYPE_INCOMING, after + 120_000, 45),
                (a0, T.CALL_TYPE_OUTGOING, after + 200_000, 12),
            ]
        )
    ]
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
        ingest_pb2.UploadRequest(
            seq=1,
            batch_id="late",
            calls=ingest_pb2.CallLogBatch(
                records=[
                    ingest_pb2.CallRecord(
                        call_id=c.call_id,
                        number=c.number,
                        type=c.type,  # type: ignore[arg-type]
                        started_at_ms=c.started_at_ms,
                        duration_s=c.duration_s,
                    )
                    for c in late
                ]
            ),
        ),
        metadata=auth(device.device_token),
    )
    assert ack.accepted == len(late)
    calls = [*truth.calls, *late]

    day = dataset.DAY_MS
    cases = [
        filters(truth, to_ms=truth.end_ms + day),
        filters(truth, from_ms=after, to_ms=truth.end_ms + day),
        filters(truth, to_ms=truth.end_ms + day, employee_ids=[e[0], e[2]]),
        filters(truth, to_ms=truth.end_ms + day, call_types=[T.CALL_TYPE_OUTGOING]),
    ]
    for request_filter, reference_filter in cases:
        selected = ref.select(truth, reference_filter, calls)
        expected = ref.lead_activity(selected, leads, reference_filter.employee_ids)
        rows = await walk(channel, truth.tenant.admin, "LeadActivity", request_filter, 3)
        assert [lead_row(m) for m in rows] == expected
    # With calls only after the import, times to first call are the seconds since creation.
    request_filter, reference_filter = cases[1]
    rows = await walk(channel, truth.tenant.admin, "LeadActivity", request_filter, 100)
    first = {m.lead_id: m for m in rows}[result[0][0]]
    assert first.calls == 2 and first.connected_calls == 1
    assert first.time_to_first_call_s == (after + 90_500 - created[result[0][0]]) // 1000 > 0
    # The full history, including the late calls, carries the lead of each call's number.
    request_filter, reference_filter = cases[0]
    history = await walk(channel, truth.tenant.admin, "CallHistory", request_filter, 250)
    expected_history = ref.call_history(ref.select(truth, reference_filter, calls), leads)
    assert [history_row(m) for m in history] == expected_history
    # Leads 1, 2, 4, 6 and 7 always show; 0 and 3 only where they have the smaller id.
    assert len({m.lead_id for m in history} - {""}) >= 5


async def test_erase_number_removes_it_everywhere(channel: grpc.aio.Channel, db: Database) -> None:
    truth = await dataset.build(channel, seed=13, employees=2, calls_per_device=80, days=3)
    tenant = truth.tenant
    ring = await keyring(db, tenant.tenant_id)
    counts = Counter(c.number for c in truth.calls if c.number not in truth.excluded)
    gone, other = (n for n, _ in counts.most_common(2))
    e = sorted(truth.employees)
    imported = await import_leads(
        channel,
        tenant,
        [
            lead(gone),
            lead(other, secondary_number=gone),
            lead("+919555500002", secondary_number=other),
        ],
    )
    device = await enroll(channel, tenant, e[0], region="IN")
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)

    def contact(contact_id: str, version: int, *numbers: str) -> ingest_pb2.Contact:
        return ingest_pb2.Contact(
            contact_id=contact_id, name="Friend", numbers=numbers, updated_at_ms=version
        )

    for seq, batch in enumerate(
        [
            [
                contact("c1", 1, "0" + gone[3:]),
                contact("c2", 1, other, gone),
                contact("c3", 1, gone, other),
                contact("c4", 1, other),
            ],
            [contact("c3", 2, other)],  # the newest c3 no longer holds the number
        ],
        1,
    ):
        ack = await ingest.Upload(
            ingest_pb2.UploadRequest(
                seq=seq, batch_id=f"c{seq}", contacts=ingest_pb2.ContactBatch(records=batch)
            ),
            metadata=auth(device.device_token),
        )
        assert ack.rejected == 0, ack

    erased = await admin(channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number=f"+91 {gone[3:8]} {gone[8:]}"), metadata=tenant.admin
    )
    assert (erased.erased_calls, erased.erased_contacts, erased.erased_leads) == (
        counts[gone],
        2,
        2,
    )

    # No report shows it; everything else is as before.
    params = {"t": tenant.tenant_id, "b": ring.blind_index(gone)}
    for table, holds in (
        ("calls", "client_key = reinterpretAsUInt64(substring({b:FixedString(32)}, 1, 8))"),
        ("parties", "number_bidx = {b:FixedString(32)}"),
        ("contacts", "has(numbers_bidx, {b:FixedString(32)})"),
        ("leads", "primary_bidx = {b:FixedString(32)} OR secondary_bidx = {b:FixedString(32)}"),
    ):
        rows = await db.query(
            f"SELECT count() FROM {table} WHERE tenant_id = {{t:String}} AND ({holds})", params
        )
        assert rows[0][0] == 0, table
    contacts = await db.query(
        "SELECT contact_id FROM contacts FINAL WHERE tenant_id = {t:String} ORDER BY contact_id",
        params,
    )
    assert [r[0] for r in contacts] == ["c3", "c4"]
    remaining = [imported[2][0]]
    assert [r.lead_id for r in await stored_leads.all_leads(db, tenant.tenant_id)] == remaining

    kept = [c for c in truth.calls if c.number != gone]
    request_filter, reference_filter = filters(truth, include_excluded=True)
    selected = ref.select(truth, reference_filter, kept)
    history = await walk(channel, tenant.admin, "CallHistory", request_filter, 200)
    leads = [ref.Lead(remaining[0], imported[2][2], ("+919555500002", other), 0)]
    assert [history_row(m) for m in history] == ref.call_history(selected, leads)
    await check_clients(channel, truth, request_filter, selected, 25)

    # An excluded number: erased, and off the excluded list too.
    personal = sorted(truth.excluded)[0]
    erased = await admin(channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number=personal), metadata=tenant.admin
    )
    assert erased.erased_calls == sum(c.number == personal for c in truth.calls)
    excluded = await db.query(
        "SELECT count() FROM excluded_numbers FINAL WHERE tenant_id = {t:String}", params
    )
    assert excluded[0][0] == len(truth.excluded) - 1
    unique = await walk(channel, tenant.admin, "UniqueClients", request_filter, 1000)
    assert {m.number for m in unique} & {gone, personal} == set()

    # Erasing again finds nothing; bad input and REPORTS keys are refused.
    again = await admin(channel).EraseNumber(
        admin_pb2.EraseNumberRequest(number=gone), metadata=tenant.admin
    )
    assert (again.erased_calls, again.erased_contacts, again.erased_leads) == (0, 0, 0)
    for bad in ("", "12"):
        await expect_status(
            admin(channel).EraseNumber(
                admin_pb2.EraseNumberRequest(number=bad), metadata=tenant.admin
            ),
            CODE.INVALID_ARGUMENT,
        )
    key = await admin(channel).CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="dash", role=T.ROLE_REPORTS), metadata=tenant.admin
    )
    await expect_status(
        admin(channel).EraseNumber(
            admin_pb2.EraseNumberRequest(number=other), metadata=auth(key.api_key)
        ),
        CODE.PERMISSION_DENIED,
    )
    # A REPORTS key reads lead activity: the one lead left.
    activity = await walk(channel, auth(key.api_key), "LeadActivity", report_pb2.ReportFilter(), 10)
    assert [m.lead_id for m in activity] == remaining
