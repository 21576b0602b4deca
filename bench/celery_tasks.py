"""The Celery side of ``bench/pool.py``: an app with one no-op task.

Imported by the benchmark process and by each ``python -m celery -A celery_tasks worker``
it starts (``bench/`` on ``PYTHONPATH``). The broker URL and the queue come from the
environment, so that workers and client agree without a config file:

- ``BENCH_CELERY_BROKER_URL``: the AMQP URL of the benchmark's RabbitMQ node;
- ``BENCH_CELERY_QUEUE``: the queue of this run (its own, nothing else consumes it).

Settings, as the comparison asks for them: ``task_acks_late`` (a task is acknowledged
after it ran, as func-amqp acknowledges a job only once its outcome is published),
``worker_prefetch_multiplier = 1`` (a worker holds at most ``--concurrency`` unacked
tasks), a durable queue, and the ``rpc://`` result backend: results travel back over the
same broker to the client, in non-persistent messages kept in the client's memory
(func-amqp's job events are persistent messages in a durable quorum queue, folded into a
file per job). Everything else is Celery's default: a *classic* queue (Celery's
``task_default_queue_type`` is ``classic``), persistent task messages (delivery mode 2),
no publisher confirms (``confirm_publish`` is off unless set in
``broker_transport_options``).
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

BROKER_ENV = "BENCH_CELERY_BROKER_URL"
QUEUE_ENV = "BENCH_CELERY_QUEUE"

QUEUE = os.environ.get(QUEUE_ENV, "bench.celery")

app = Celery("celery_tasks", broker=os.environ.get(BROKER_ENV, "amqp://guest:guest@127.0.0.1:5672//"), backend="rpc://")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_queues=(Queue(QUEUE, Exchange(QUEUE, type="direct", durable=True), routing_key=QUEUE, durable=True),),
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> int:
    """The no-op job: does nothing, returns 1 (as func's ``test.ping``)."""
    return 1
