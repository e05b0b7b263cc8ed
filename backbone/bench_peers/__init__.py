"""The processor benchmark's peers and the harness that runs every job the same way.

* :mod:`.ceiling`: the fastest any Python consumer gets here (bare confluent-kafka + fastavro).
* :mod:`.naive_faust`: the straightforward Faust version of the KPI job (one agent, state
  written per event).
* :mod:`.quix_job`: the same job in Quix Streams (its own state, group-by and windows).
* :mod:`.jobs`: runs a job as a child process and decides, from its Prometheus counters, when
  it has consumed every input and delivered every output (Tansu's high watermarks are wrong,
  so nothing here relies on them).
* :mod:`.kpi_compare`: the "outputs equal" check between the jobs' KPI windows.
"""

from __future__ import annotations


def peer_topic(peer: str, contract_topic: str) -> str:
    """A peer's own copy of an output topic (``backbone.kpi_windows.v1`` → ``bench.<peer>.kpi_windows``),
    so that its rows never mix with our job's on the shared benchmark broker."""
    name = contract_topic.removeprefix("backbone.").rsplit(".v", 1)[0]
    return f"bench.{peer}.{name}"
