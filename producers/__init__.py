"""Agency producers: the publisher library, the batch-file loader and the ``produce`` command.

Data flow position: agency system → **producers** (validate, encode, publish) → Kafka topics.
"""
