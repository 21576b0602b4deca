"""func.minion.modules.func_module: ``FuncModule`` for modules written for func."""

from func_amqp.minion.modules.func_module import BaseConfig, FuncModule, findout

__all__ = ["BaseConfig", "FuncModule", "findout"]
