"""The edge agent: the program on the machine (``livedata agent``).

See :mod:`livedata.agent.agent` for what it does and :mod:`livedata.agent.spool` for
its store-and-forward queue.
"""

from livedata.agent.agent import Agent, AgentConfig
from livedata.agent.spool import Spool

__all__ = ["Agent", "AgentConfig", "Spool"]
