"""func-amqp: func's remote-call API carried over an AMQP broker."""

__version__ = "0.1.0"
