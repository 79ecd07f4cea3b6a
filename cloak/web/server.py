"""``python -m cloak serve``: the page, served on this machine (uvicorn), opened in the browser.

The server binds to the loopback address (127.0.0.1) unless ``host=`` names another
one; then anyone who can reach this machine can use the page, and a warning says so.
The models are loaded once, before the server starts.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from omegaconf import DictConfig

from cloak.builders import build_from_config
from cloak.web.app import create_app
from cloak.web.strengths import build_presets

log = logging.getLogger("cloak")

#: Host names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) reaches only this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """The warning to log when the server would be reachable from other machines, else ``None``."""
    if is_loopback(host):
        return None
    return (
        f"host={host}: the page is reachable from other machines on port {port}, so anyone on your "
        "network can upload photos to it and use this computer's processor. Leave host= at its default "
        "(127.0.0.1) unless you mean this."
    )


def allowed_hosts(host: str) -> list[str] | None:
    """``Host`` header values to accept: on loopback only this machine's names (blocks DNS rebinding)."""
    if is_loopback(host):
        return ["127.0.0.1", "localhost", "::1", "[::1]"]
    return None


def page_url(host: str, port: int) -> str:
    """The URL to open: a wildcard bind (``0.0.0.0``, ``::``) is visited through loopback."""
    name = host.strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return f"http://{name}:{port}/"
    if address.is_unspecified:
        return f"http://127.0.0.1:{port}/" if address.version == 4 else f"http://[::1]:{port}/"
    return f"http://[{name}]:{port}/" if address.version == 6 else f"http://{name}:{port}/"


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread (tests, benchmarks)."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 30.0) -> None:
        """Asks the server to shut down (the app's worker stops and deletes its results) and waits."""
        self.server.should_exit = True
        self.thread.join(timeout)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with ``port=0``)."""
    return int(server.servers[0].sockets[0].getsockname()[1])


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> RunningServer:
    """Runs ``app`` with uvicorn in a daemon thread and waits until it accepts connections.

    Raises:
        RuntimeError: the server did not start within ``timeout`` seconds.
    """
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cloak-web-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the web server did not start on {host}:{port}; is the port in use?")
        time.sleep(0.05)
    return RunningServer(server, thread, page_url(host, bound_port(server)))


def serve(cfg: DictConfig, overrides: Sequence[str] | None = None) -> None:
    """Loads the models, serves the page until interrupted (Ctrl+C), and opens it in the browser.

    Args:
        cfg: the composed ``serve`` config (``configs/serve.yaml``).
        overrides: the Hydra overrides ``cfg`` was composed with (the command line's). Each
            preset is composed from them with its own ``strength=``, as on the command line,
            and cloaks with the model that selects (high: ``ensemble_all``, unless ``model=``
            was given). ``None``: the presets are composed without overrides and all cloak
            with ``cfg.model``.
    """
    host, port = str(cfg.host), int(cfg.port)
    warning = exposure_warning(host, port)
    if warning:
        log.warning(warning)
    log.info("Loading the face models (model=%s, device=%s)...", cfg.model._target_.rsplit(".", 1)[-1], cfg.device)
    parts = build_from_config(cfg, need_attack=False)
    page_model = None if overrides is None else parts.model
    presets, default_strength = build_presets(overrides or (), page_model)
    app = create_app(cfg, parts, presets, default_strength, allowed_hosts=allowed_hosts(host))
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    )
    threading.Thread(
        target=_announce, args=(server, host, bool(cfg.open_browser)), name="cloak-announce", daemon=True
    ).start()
    server.run()
    log.info("Stopped; every uploaded photo and result was deleted.")


def _announce(server: uvicorn.Server, host: str, open_browser: bool) -> None:
    """Waits for the server to listen, logs its URL and opens the browser."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    url = page_url(host, bound_port(server))
    log.info("cloak's page is ready at %s (photos stay on this computer; Ctrl+C stops it)", url)
    if open_browser and not webbrowser.open(url):
        log.info("Could not open a browser here; open %s yourself", url)
