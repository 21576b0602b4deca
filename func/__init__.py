"""Import shim: lets unchanged func scripts run on func-amqp.

``import func.overlord.client as fc``, ``func.utils.is_error`` and
``from func.minion.modules import func_module`` resolve to func-amqp's implementations.
"""
