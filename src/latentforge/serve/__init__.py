"""A web page and a JSON/HTTP API over one trained run.

    from latentforge.serve import create_app, serve
    app = create_app("runs/dcgan")          # a FastAPI app: mount it, or test it with TestClient
    serve("runs/dcgan", port=8000)          # or run it with uvicorn on 127.0.0.1:8000

Needs the `serve` extra (fastapi, uvicorn, python-multipart). See `serve/app.py` for the endpoints.
"""

from .app import DEFAULT_ASSET, Limits, ServeError, create_app, serve

__all__ = ["DEFAULT_ASSET", "Limits", "ServeError", "create_app", "serve"]
