"""AdminService device policy (issue 12): SetDevicePolicy, GetDevicePolicy."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from callsight.core.errors import NotFound
from callsight.pipeline.limits import MAX_ID_BYTES, check_text
from callsight.server.auth import caller_tenant, current_caller
from callsight.server.policy import PolicyMessages, policy_from
from callsight.storage.directory import Directory
from callsight.storage.policies import TENANT
from callsight.v1 import admin_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class PolicyAdmin:
    """Mixed into the service's servicer: the tenant's device policy and employees' overrides."""

    _directory: Directory
    _policy_messages: PolicyMessages

    async def _policy_employee(self, tenant_id: str, employee_id: str) -> str:
        """The request's employee id (TENANT when empty), or NotFound."""
        employee_id = check_text(employee_id.strip(), "employee_id", MAX_ID_BYTES)
        if employee_id and not await self._directory.employee_exists(tenant_id, employee_id):
            raise NotFound(f"employee {employee_id} does not exist in this tenant")
        return employee_id or TENANT

    async def SetDevicePolicy(
        self, request: admin_pb2.SetDevicePolicyRequest, context: Context
    ) -> admin_pb2.SetDevicePolicyResponse:
        tenant_id = current_caller().tenant_id
        employee_id = await self._policy_employee(tenant_id, request.employee_id)
        # Unset clears the override, or the tenant's own policy (devices then upload everything).
        policy = None
        if request.HasField("policy"):
            tenant = await caller_tenant(self._directory)
            policy = policy_from(request.policy, tenant.timezone)
        messages = self._policy_messages
        await messages.policies.put(tenant_id, employee_id, policy)
        effective = await messages.for_employee(tenant_id, employee_id)
        return admin_pb2.SetDevicePolicyResponse(effective=effective)

    async def GetDevicePolicy(
        self, request: admin_pb2.GetDevicePolicyRequest, context: Context
    ) -> admin_pb2.GetDevicePolicyResponse:
        tenant_id = current_caller().tenant_id
        employee_id = await self._policy_employee(tenant_id, request.employee_id)
        messages = self._policy_messages
        in_force = messages.policies.in_force(tenant_id, employee_id)
        return admin_pb2.GetDevicePolicyResponse(
            policy=await messages.message(tenant_id, in_force), overridden=in_force.overridden
        )
