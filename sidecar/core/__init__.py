"""The evaluation core every lane shares: one evaluation path (`evaluator`), one attribute
policy (`attributes`), one set of field rules (`requests`), one event validation (`events`),
one door for clients' own impressions (`exposures`) and one table of refusals and the status
each lane answers with (`refusals`).

Lanes (`sidecar.api`) only translate their wire form to these calls and back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.attributes import AttributePolicy
from sidecar.core.evaluator import Evaluator
from sidecar.core.events import EventQueue
from sidecar.core.exposures import Exposures
from sidecar.limits import RequestLimits


@dataclass(frozen=True, slots=True)
class Core:
    """What every lane is built from: so a lane's constructor is the same for all of them,
    and a new lane cannot be given different limits from the others."""

    evaluator: Evaluator
    policy: AttributePolicy
    limits: RequestLimits
    events: EventQueue
    exposures: Exposures

    @classmethod
    def build(
        cls,
        evaluator: Evaluator,
        limits: RequestLimits,
        events: EventQueue,
        exposures: Exposures | None = None,
    ) -> Core:
        """`exposures` None: clients' impressions are accepted and dropped (no pipeline)."""
        policy = AttributePolicy(limits.max_attributes, limits.max_attribute_size)
        exposures = exposures or Exposures(None, limits.max_batch_items)
        return cls(evaluator, policy, limits, events, exposures)
