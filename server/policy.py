"""The device policy as the contract states it: SetDevicePolicy's input checked and turned into a
stored ``Policy``, and the ``DevicePolicy`` message a device gets.

A message carries the tenant's policy version, and, where a policy is in force, the tenant's
excluded numbers as ``never_upload``: lowercase hex HMAC-SHA256 of each E.164 number under the
tenant's match key (``TenantCipher.match_key``, derived from the blind-index key under its own
label). Hashing the list means decrypting every excluded number, so it is done once per change of
the list and kept per tenant: a fleet asking for its policy after a change costs one hashing.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence

from callsight.core.errors import InvalidArgument
from callsight.pipeline import phone
from callsight.pipeline.keys import TenantKeys
from callsight.pipeline.limits import MAX_SIM_IDS, MAX_TIMEZONE_BYTES, text_problem, too_many
from callsight.storage.policies import Excluded, InForce, OfficeHours, Policies, Policy
from callsight.v1 import ingest_pb2

MAX_SIM_SLOT = MAX_SIM_IDS - 1  # slots are 0-based
MIN_SYNC_INTERVAL_S = 60  # more often would drain batteries for nothing
MAX_SYNC_INTERVAL_S = 86_400  # a device silent for over a day looks dead in device health
MINUTES_PER_DAY = 1440


def policy_from(message: ingest_pb2.DevicePolicy, tenant_timezone: str) -> Policy:
    """The policy ``message`` asks for, or InvalidArgument naming every problem.

    ``version``, ``never_upload`` and ``match_key`` are the server's to set and are ignored, so
    a policy read with GetDevicePolicy can be changed and sent back as it is. Office hours
    without a time zone get the tenant's (stored as its name, so devices need not know it).
    """
    problems: list[str] = []
    field = "policy.sim_slots"
    if len(message.sim_slots) > MAX_SIM_IDS:
        problems.append(too_many(field, len(message.sim_slots), MAX_SIM_IDS))
    else:
        problems.extend(
            f"{field}[{i}] is {slot}; SIM slots are 0-{MAX_SIM_SLOT}"
            for i, slot in enumerate(message.sim_slots)
            if not 0 <= slot <= MAX_SIM_SLOT
        )
    interval = message.sync_interval_s
    if interval and not MIN_SYNC_INTERVAL_S <= interval <= MAX_SYNC_INTERVAL_S:
        problems.append(
            f"policy.sync_interval_s is {interval}; send 0 (the agent's default) or"
            f" {MIN_SYNC_INTERVAL_S}-{MAX_SYNC_INTERVAL_S} seconds"
        )
    hours = None
    if message.HasField("office_hours"):
        hours = _office_hours(message.office_hours, tenant_timezone, problems)
    if problems:
        raise InvalidArgument("; ".join(problems))
    return Policy(tuple(sorted(set(message.sim_slots))), hours, interval)


def _office_hours(
    hours: ingest_pb2.OfficeHours, tenant_timezone: str, problems: list[str]
) -> OfficeHours:
    field = "policy.office_hours"
    start, end = hours.start_minute, hours.end_minute
    if start >= MINUTES_PER_DAY:
        problems.append(f"{field}.start_minute is {start}; it must be 0-{MINUTES_PER_DAY - 1}")
    if not 1 <= end <= MINUTES_PER_DAY:
        problems.append(f"{field}.end_minute is {end}; it must be 1-{MINUTES_PER_DAY}")
    elif start >= end:
        problems.append(
            f"{field}.end_minute ({end}) must be after start_minute ({start}); a window"
            " across midnight is not supported"
        )
    if len(hours.weekdays) > 7:
        problems.append(too_many(f"{field}.weekdays", len(hours.weekdays), 7))
    else:
        problems.extend(
            f"{field}.weekdays[{i}] is {day}; ISO weekdays are 1 (Monday) to 7 (Sunday)"
            for i, day in enumerate(hours.weekdays)
            if not 1 <= day <= 7
        )
    timezone = hours.timezone or tenant_timezone
    problem = text_problem(timezone, f"{field}.timezone", MAX_TIMEZONE_BYTES)
    if problem is not None:
        problems.append(problem)
    else:
        try:
            phone.valid_timezone(timezone, f"{field}.timezone")
        except InvalidArgument as exc:
            problems.append(str(exc))
    return OfficeHours(start, end, tuple(sorted(set(hours.weekdays))), timezone)


class PolicyMessages:
    """Builds the ``DevicePolicy`` messages devices and admins read."""

    def __init__(self, policies: Policies, keys: TenantKeys) -> None:
        self._policies = policies
        self._keys = keys
        # tenant -> (the excluded numbers hashed, match key, their hashes); one per tenant.
        self._hashed: dict[str, tuple[Excluded, bytes, tuple[str, ...]]] = {}

    @property
    def policies(self) -> Policies:
        """The policies in memory that the messages are built from."""
        return self._policies

    async def for_employee(self, tenant_id: str, employee_id: str) -> ingest_pb2.DevicePolicy:
        """The policy in force for the employee's devices."""
        return await self.message(tenant_id, self._policies.in_force(tenant_id, employee_id))

    async def message(self, tenant_id: str, in_force: InForce) -> ingest_pb2.DevicePolicy:
        """``in_force`` as the contract's message; with no policy, only its version."""
        policy = in_force.policy
        if policy is None:
            return ingest_pb2.DevicePolicy(version=in_force.version)
        match_key, never_upload = await self._never_upload(tenant_id)
        message = ingest_pb2.DevicePolicy(
            version=in_force.version,
            sim_slots=policy.sim_slots,
            never_upload=never_upload,
            match_key=base64.b64encode(match_key).decode(),
            sync_interval_s=policy.sync_interval_s,
        )
        hours = policy.office_hours
        if hours is not None:
            message.office_hours.CopyFrom(
                ingest_pb2.OfficeHours(
                    start_minute=hours.start_minute,
                    end_minute=hours.end_minute,
                    weekdays=hours.weekdays,
                    timezone=hours.timezone,
                )
            )
        return message

    async def _never_upload(self, tenant_id: str) -> tuple[bytes, Sequence[str]]:
        excluded = self._policies.excluded(tenant_id)
        match_key = (await self._keys.keyring(tenant_id)).current.match_key()
        held = self._hashed.get(tenant_id)
        if held is not None and held[0] is excluded and held[1] == match_key:
            return match_key, held[2]
        keyring = await self._keys.keyring(tenant_id)
        hashes = tuple(
            sorted(
                hmac.digest(match_key, keyring.decrypt(sealed).encode(), "sha256").hex()
                for sealed in excluded.sealed
            )
        )
        self._hashed[tenant_id] = (excluded, match_key, hashes)
        return match_key, hashes
