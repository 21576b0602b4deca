"""func.overlord.client: ``Overlord`` and ``Client`` as func scripts import them."""

from func_amqp.errors import Func_Client_Exception
from func_amqp.overlord.client import DEFAULT_PORT, Client, CommandAutomagic, Overlord

__all__ = ["DEFAULT_PORT", "Client", "CommandAutomagic", "Func_Client_Exception", "Overlord"]
