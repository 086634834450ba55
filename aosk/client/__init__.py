"""The AOSK Python SDK for trusted in-cluster services.

    from aosk.client import KernelClient
    from aosk.events import Budgets, AgentStarted

    with KernelClient.from_settings(settings) as kernel:
        kernel.spawn(agent_id="a-1", tenant_id="acme", name="researcher",
                     budgets=Budgets(max_tokens=100_000, max_tool_calls=50,
                                     max_steps=200, context_window_tokens=8_000),
                     capabilities=["search"])
        kernel.emit(AgentStarted, agent_id="a-1", tenant_id="acme").result()
        kernel.submit_task("a-1", "summarise the report", tenant_id="acme").result()
"""

from aosk.client._producer import Delivery, DeliveryFuture
from aosk.client.kernel_client import KernelClient, PendingEvent
from aosk.client.projections import AgentView, ProjectionReader, ProjectionTimeout
from aosk.client.verdicts import VerdictWatcher
from aosk.reads.tasks import TaskView

__all__ = [
    "AgentView", "Delivery", "DeliveryFuture", "KernelClient", "PendingEvent", "ProjectionReader", "ProjectionTimeout",
    "TaskView", "VerdictWatcher",
]
