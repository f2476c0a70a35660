"""`latentforge serve [RUN]`: the web page and HTTP API (latentforge.serve) from the command line.

cli.py calls `register(app)`; everything heavy is imported only when the command runs.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Optional

import typer


def _check_bind(host: str, port: int) -> None:
    """Fail early, with one line, when the address cannot be bound (uvicorn would log and exit)."""
    from .cli import UserError

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"cannot resolve --host {host!r}: {e}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: only a live listener blocks
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: the port is in use or not allowed ({e.strerror}); "
                            "pick another with --port") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the latentforge Typer app."""

    @app.command("serve")
    def serve_cmd(
        run: Optional[Path] = typer.Argument(None, help="Run directory to serve; default: the bundled Fashion-MNIST DCGAN."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on. 0.0.0.0 exposes it to your network (no authentication!)."),
        port: int = typer.Option(8000, help="TCP port."),
        max_batch: int = typer.Option(64, help="Most images per request and per model batch."),
        timeout: float = typer.Option(30.0, help="Seconds one request may take, queueing included (then 503)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    ) -> None:
        """Serve a web page and an HTTP API for generating and exploring images.

        Example: latentforge serve runs/dcgan --port 8000   (then open http://127.0.0.1:8000/)
        """
        from .cli import UserError, console

        if max_batch < 1:
            raise UserError(f"--max-batch must be positive, got {max_batch}")
        if timeout <= 0:
            raise UserError(f"--timeout must be positive, got {timeout}")
        if run is not None and not run.is_dir():
            raise UserError(f"{run} is not a directory; pass a run directory made by `latentforge train`")
        _check_bind(host, port)
        try:
            from .serve import app as serve_app
        except ImportError as e:
            raise UserError(f"serving needs the serve extra ({e.name} is missing): pip install 'latentforge[serve]'") from None
        if not _is_loopback(host):
            console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can use the "
                          "API; there is no authentication", highlight=False)
        try:
            web = serve_app.create_app(run, max_batch=max_batch, timeout_s=timeout, device=device)
        except serve_app.ServeError as e:
            raise UserError(str(e)) from None
        m = web.state.model
        url_host = f"[{host}]" if ":" in host else host
        console.print(f"model: {m.run_dir.name} ({m.config.model}, {m.resolution} px, on {m.device}); "
                      f"open http://{url_host}:{port}/  (API docs: /docs; Ctrl-C stops)", highlight=False)
        serve_app.serve(web, host=host, port=port)
