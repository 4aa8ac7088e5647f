"""Serving: an OpenAI-compatible HTTP API with continuous batching, and a browser playground.

    python -m gpt2 serve path/to/checkpoint --port 8000

app.py holds the routes and OpenAI's shapes, protocol.py the request models and the error type,
scheduler.py the continuous-batching scheduler that owns the model, static/ the playground page.
FastAPI and uvicorn are core dependencies, so the main install serves.
"""

from gpt2.serve.scheduler import Job, QueueFull, Scheduler, SeqParams

__all__ = ["Job", "QueueFull", "Scheduler", "SeqParams", "create_app", "run_serve"]


def __getattr__(name: str):
    # app.py imports FastAPI: load it only when asked (the scheduler alone needs only torch).
    if name in ("create_app", "run_serve"):
        from gpt2.serve import app

        return getattr(app, name)
    raise AttributeError(name)
