"""The func modules shipped with func-amqp: one file per module, as func kept them."""
