"""The edge agent: the program on the machine (``livedata agent``).

See :mod:`livedata.agent.agent` for what it does, :mod:`livedata.agent.delivery` for
when a message counts as sent, and :mod:`livedata.agent.spool` for its
store-and-forward queue.
"""

from livedata.agent.agent import Agent, AgentConfig
from livedata.agent.delivery import AckedDevice, NotDelivered
from livedata.agent.spool import Spool

__all__ = ["AckedDevice", "Agent", "AgentConfig", "NotDelivered", "Spool"]
