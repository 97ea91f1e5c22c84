"""A workflow worker: serves the tasks of one task queue (docs/nats-api.md).

    python workflow_worker.py nats://127.0.0.1:4222 shouting

A task's `input` is what the step's `input:` template rendered. This worker
answers `{"shout": <input.text in capitals>}`, or fails the task when the
input says `"fail": true`. It stops on SIGTERM or SIGINT, after the tasks
it holds.
"""

import asyncio
import json
import signal
import sys

import nats
from nats.errors import TimeoutError as NoTask


def handle(task_input):
    if task_input.get("fail"):
        raise ValueError("asked to fail")
    return {"shout": task_input["text"].upper()}


async def serve(url, queue):
    nc = await nats.connect(url)
    js = nc.jetstream()
    # The engine makes the queue's durable consumer; workers share it.
    tasks = await js.pull_subscribe(
        f"sy.wf.task.{queue}", durable=f"wf-task-{queue}", stream="WFTASKS"
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"serving task queue {queue}", flush=True)
    while not stop.is_set():
        try:
            batch = await tasks.fetch(16, timeout=1)
        except NoTask:
            continue
        for msg in batch:
            task = json.loads(msg.data)
            # A long task sends this now and then to keep its lease (30 s).
            await msg.in_progress()
            try:
                answer = {"output": handle(task["input"])}
            except Exception as e:  # the task failed: the step is told why
                answer = {"error": str(e)}
            # The answer first, then the ack: a worker that dies in between
            # is given the task again, and the answer's message id (the
            # task's id) keeps a second answer out.
            await js.publish(
                f"sy.wf.done.{task['id']}",
                json.dumps(answer).encode(),
                headers={"Nats-Msg-Id": task["id"]},
            )
            await msg.ack()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
