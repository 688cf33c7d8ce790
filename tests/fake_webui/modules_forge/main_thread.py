"""Fake modules_forge.main_thread: Forge's task list polled by the process's main thread.

Same contract as Forge: ``run_and_wait_result`` queues a task and waits; a
task's exception is printed and swallowed (the result is then None).
``loop`` runs until ``stop()`` (tests run it in a thread that plays Forge's main thread).
"""

import threading
import time
import traceback

lock = threading.Lock()
last_id = 0
waiting_list = []
finished_list = []
worker_thread_ids = []  #: threads that ran tasks (tests check generation ran there)
_stop = threading.Event()


class Task:
    def __init__(self, task_id, func, args, kwargs):
        self.task_id = task_id
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.result = None
        self.exception = None

    def work(self):
        worker_thread_ids.append(threading.get_ident())
        try:
            self.result = self.func(*self.args, **self.kwargs)
        except Exception as e:
            traceback.print_exc()
            self.exception = e


def loop():
    _stop.clear()
    while not _stop.is_set():
        time.sleep(0.01)
        if len(waiting_list) > 0:
            with lock:
                task = waiting_list.pop(0)
            task.work()
            with lock:
                finished_list.append(task)


def stop():
    _stop.set()


def async_run(func, *args, **kwargs):
    global last_id
    with lock:
        last_id += 1
        new_task = Task(task_id=last_id, func=func, args=args, kwargs=kwargs)
        waiting_list.append(new_task)
    return new_task.task_id


def run_and_wait_result(func, *args, **kwargs):
    current_id = async_run(func, *args, **kwargs)
    while True:
        time.sleep(0.01)
        finished_task = None
        for t in finished_list.copy():
            if t.task_id == current_id:
                finished_task = t
                break
        if finished_task is not None:
            with lock:
                finished_list.remove(finished_task)
            return finished_task.result
