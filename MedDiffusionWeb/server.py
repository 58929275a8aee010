"""Starting the web app: checks, off-screen rendering, bind address and token, work area, clean exit.

`serve()` blocks until the server stops (Ctrl+C / SIGTERM); whatever way it ends, a run in progress is ended and
the app's temporary folder is removed.
"""

from __future__ import annotations

import errno
import os
import sys

from .safety import WorkArea, is_local_host, new_token

DEFAULT_PORT = 8080
UPLOAD_MESSAGE_MARGIN = 1 << 20  # room for the message around an upload's bytes


class WebUnavailable(Exception):
    """The web app cannot start here; the message is one line saying what to install or change."""


def check_dependencies() -> None:
    """The web extra imports (trame, trame-vuetify, trame-slicer, slicer-core with slicer-layer-dm); else one line."""
    import importlib

    missing = []
    for module, package in (("trame", "trame"), ("trame_vuetify", "trame-vuetify"), ("slicer", "slicer-core"),
                            ("slicer_layer_dm", "slicer-layer-dm"), ("trame_slicer", "trame-slicer")):
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a broken binary wheel raises anything
            missing.append(f"{package} ({type(error).__name__}: {error})" if not isinstance(error, ModuleNotFoundError)
                           else package)
    if missing:
        raise WebUnavailable(f"the web app needs {', '.join(missing)}; install them with `make venv` (or "
                             "pip install -e '.[web]' and pip install --no-deps slicer-layer-dm==2.0.0)")


def configure_offscreen_rendering() -> None:
    """Without a display, VTK renders through EGL (Mesa's llvmpipe on a CPU-only machine), as trame-slicer documents.
    An explicit VTK_DEFAULT_OPENGL_WINDOW (e.g. vtkOSMesaRenderWindow) is kept."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def limit_message_size(max_bytes: int) -> None:
    """wslink lets an authenticated client send messages of up to 4 GB; cap them near the upload limit, so an
    oversized upload that skips the page's own check is dropped before it is allocated."""
    from wslink import chunking

    original = chunking.UnChunker.set_max_message_size
    if getattr(original, "_meddiffusion_cap", None) is not None:
        original = original._meddiffusion_original

    def capped(self, size):
        return original(self, min(int(size), max_bytes))

    capped._meddiffusion_cap, capped._meddiffusion_original = max_bytes, original
    chunking.UnChunker.set_max_message_size = capped


def access_token(host: str, token: str | None) -> str | None:
    """The token the page must present: the given one; else, on a non-local bind, a new random one; else none."""
    if token:
        return token
    return None if is_local_host(host) else new_token()


def page_url(host: str, port: int, token: str | None) -> str:
    shown = "127.0.0.1" if host in ("localhost", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?secret={token}" if token else "")


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None, max_upload_mb: float = 512,
          open_browser: bool = False, device: str = "auto", announce=print) -> int:
    """Run the web app until it is stopped. A host other than a loopback address needs an access token: `token`,
    or a random one, printed with the URL. Returns 0."""
    check_dependencies()
    configure_offscreen_rendering()
    token = access_token(host, token)
    if max_upload_mb <= 0:
        raise WebUnavailable("--max-upload-mb must be positive")
    work = WorkArea(int(max_upload_mb * 2**20))
    app = None
    try:
        limit_message_size(work.max_upload_bytes + UPLOAD_MESSAGE_MARGIN)
        from trame.app import get_server

        from .app import MedDiffusionWebApp

        server = get_server("meddiffusion", client_type="vue3")
        # trame would read its own options from this process's command line: it gets none but the token.
        saved_argv, sys.argv = sys.argv, sys.argv[:1]
        server.cli.set_defaults(authKey=token or "wslink-secret")
        app = MedDiffusionWebApp(server, work, device=device)

        def ready(**_):
            url = page_url(host, server.port, token)
            announce(f"MedDiffusion web app: {url}")
            if token:
                announce("access token required (non-local bind): open the URL above, which carries it")
            sys.stdout.flush()

        server.controller.on_server_ready.add(ready)
        try:
            server.start(host=host, port=port, open_browser=open_browser, show_connection_info=False, timeout=0,
                         disable_logging=True)
        except OSError as error:
            reason = "the port is in use; choose another with --port" if error.errno == errno.EADDRINUSE else (
                error.strerror or str(error))
            raise WebUnavailable(f"cannot listen on {host}:{port}: {reason}") from None
        finally:
            sys.argv = saved_argv
    finally:
        if app is not None:
            app.shutdown()
        work.close()
    return 0
