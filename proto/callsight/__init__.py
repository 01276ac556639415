"""callsight: team call analytics over gRPC and ClickHouse.

``callsight.v1`` is the generated contract, ``callsight.core`` what every layer shares (errors,
clock). Imports go one way only: ``callsight.server`` -> ``callsight.pipeline`` ->
``callsight.storage`` -> ``callsight.core``. ``callsight.loadtest`` is a client of the contract.
"""
