"""AdminService for the operator's tenants, the tenant's API keys and its data keys (issue 12):
ListTenants, DeleteTenant, ListApiKeys, RevokeApiKey, RotateTenantKey.
"""

from __future__ import annotations


class TenantAdmin:
    """Mixed into the service's servicer; its RPCs answer UNIMPLEMENTED until defined here."""
