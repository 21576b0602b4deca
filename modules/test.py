"""func's ``test`` module: trivial methods for checking that calls, errors and
options travel end to end."""

import time
from typing import Any

from func_amqp.minion.modules.func_module import FuncModule

_INT_ARG = {"type": "int", "optional": False, "description": "An int"}


class Test(FuncModule):
    version = "11.11.11"
    api_version = "0.0.1"
    description = "Just a very simple example module"

    class Config(FuncModule.Config):
        example = "1"
        string_option = "some string here"
        int_option = 37
        bool_option = True
        float_option = 3.14159
        testvalue = "this is a test. It is only a test"

    def add(self, numb1: Any, numb2: Any) -> Any:
        return numb1 + numb2

    def ping(self) -> int:
        return 1

    def sleep(self, t: int | str) -> float:
        """Sleep ``t`` seconds and return the time of day: a slow call for tests."""
        time.sleep(int(t))
        return time.time()

    def explode(self) -> None:
        """Raise, to test remote exception handling."""
        raise Exception("khhhhhhaaaaaan!!!!!!")

    def explode_no_string(self) -> None:
        """Raise without a message, to test remote exception handling."""
        raise Exception()

    def echo(self, data: Any) -> Any:
        """Return whatever was passed in."""
        return data

    def bigint(self) -> int:
        """An integer greater than 2**32 - 1, past XML-RPC's int limit."""
        return 2**32

    def configfoo(self) -> dict[str, Any]:
        """The module's options, as a dict so that they can travel."""
        return self.options.as_dict()

    def config_save(self) -> dict[str, Any]:
        self.save_config()
        return self.options.as_dict()

    def config_set(self, key_name: str, value: Any) -> dict[str, Any]:
        setattr(self.options, key_name, value)
        self.save_config()
        return self.options.as_dict()

    def config_get(self, key_name: str) -> Any:
        return self.options.value(key_name)

    def config_get_test(self) -> Any:
        return self.options.value("testvalue")

    def register_method_args(self) -> dict[str, Any]:
        return {
            "add": {
                "args": {"numb1": _INT_ARG, "numb2": _INT_ARG},
                "description": "Gives back the sum of 2 integers",
            },
            "ping": {"args": {}, "description": "Ping the minion"},
            "sleep": {
                "args": {
                    "t": {"type": "int", "optional": False, "description": "Num of sec"}
                },
                "description": "Sleep for a while",
            },
            "explode": {"args": {}, "description": "Raises an exception"},
            "echo": {
                "args": {
                    "data": {
                        "type": "string",
                        "optional": False,
                        "description": "The message to send",
                    }
                },
                "description": "Echoes back the sent data",
            },
            "bigint": {"args": {}, "description": "Returns a number greater than 2^32-1"},
        }
