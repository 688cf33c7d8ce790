"""Fake modules.call_queue: the WebUI's one generation queue lock and its wrappers."""

from modules import fifo_lock, shared

queue_lock = fifo_lock.FIFOLock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f


def wrap_gradio_gpu_call(func, extra_outputs=None):
    def f(*args, **kwargs):
        with queue_lock:
            shared.state.begin(job="task")
            try:
                return func(*args, **kwargs)
            finally:
                shared.state.end()

    return f
