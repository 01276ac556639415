"""AdminService reads of what the tenant stored (issue 12): GetExcludedNumbers, ListLeads,
ListContacts.
"""

from __future__ import annotations


class ReadAdmin:
    """Mixed into the service's servicer; its RPCs answer UNIMPLEMENTED until defined here."""
