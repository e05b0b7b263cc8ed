"""Event contracts: the Avro schemas agencies publish against, the agency registry, and the codec.

Data flow position: agency → **schemas** (validate + encode) → Kafka → processors (decode) → ClickHouse.
"""
