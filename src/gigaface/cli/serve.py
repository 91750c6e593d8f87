"""`gigaface serve` and `gigaface view`: the REST service and the web viewer."""
from __future__ import annotations

import re
from typing import Optional

import typer

from gigaface.cli.console import err, say
from gigaface.cli.options import check_port_number, data_folder, host_name
from gigaface.engine.source import DEFAULT_MAX_PIXELS
from gigaface.errors import GigafaceError
from gigaface.library.store import Library

MAX_UPLOAD_MB = 1 << 20   # 1 TB: past any image libvips would be asked to read


def serve(db: str = typer.Argument(..., help="Library file (created if missing)."),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every one)."),
          port: int = typer.Option(8000, help="TCP port (0 picks a free one)."),
          public: bool = typer.Option(False, "--public", help="Also serve the anonymised images to anyone, at /public."),
          max_upload_mb: int = typer.Option(4096, "--max-upload-mb", help="Largest image upload accepted."),
          max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse larger images."),
          data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Admins may add captures by their path "
                                                 "under this folder; without it, by upload only."),
          allow_host: Optional[list[str]] = typer.Option(None, "--allow-host", help="A DNS name the server is reached "
                                                         "by (repeatable); loopback and the --host address always work."),
          cluster: Optional[str] = typer.Option(None, "--cluster", help="Run the scan jobs on a Ray cluster: HOST:PORT of "
                                                "its head, ray://HOST:10001 or auto (default: $GIGAFACE_CLUSTER; needs "
                                                "gigaface[ray]).")) -> None:
    """Run the REST service and the web viewer; every request needs a token (gigaface token create)."""
    from gigaface.service.serve import Config, serve as run_server

    check_port_number(port)
    if not 1 <= max_upload_mb <= MAX_UPLOAD_MB:
        raise GigafaceError(f"--max-upload-mb {max_upload_mb}: give 1 to {MAX_UPLOAD_MB} (MB)")
    if max_pixels < 1:
        raise GigafaceError(f"--max-pixels {max_pixels}: give a positive number of pixels")
    hosts = tuple(host_name(name) for name in allow_host or ())
    address = _cluster_reached(cluster)
    data = data_folder(data_dir) if data_dir is not None else None
    sock = _check_port(host, port)
    try:
        library = Library(db, create=True)
    except BaseException:
        sock.close()
        raise
    if not any(not t.revoked for t in library.tokens.all()):
        err.print(f"[yellow]no tokens yet: create one with `gigaface token create {db} --name you --role admin`")
    library.close()
    port = sock.getsockname()[1]
    say(f"gigaface: serving {db} on http://{_url_host(host)}:{port}/ (API docs at /docs)"
        + (f", public view at http://{_url_host(host)}:{port}/public" if public else ""))
    run_server(Config(db, public=public, max_upload=max_upload_mb << 20, max_pixels=max_pixels, data_dir=data,
                      host=host, allow_hosts=hosts, cluster=address), sock)


def view(db: str = typer.Argument(..., help="Library file."),
         port: int = typer.Option(8000, help="TCP port on 127.0.0.1 (0 picks a free one)."),
         browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the viewer in a web browser."),
         data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Captures may be added by their path "
                                                "under this folder; without it, by upload only.")) -> None:
    """Open the viewer for one library on this computer (127.0.0.1 only), with a key made for this run."""
    import secrets
    import webbrowser

    from gigaface.service.serve import Config, serve as run_server

    check_port_number(port)
    data = data_folder(data_dir) if data_dir is not None else None
    Library(db)
    sock = _check_port("127.0.0.1", port)
    # The page must prove it was opened from this URL: the key is in its fragment, which a
    # browser sends to no server and in no Referer, so no other page can learn it.
    key = secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/#key={key}"
    say(f"gigaface: viewer for {db} at {url} (Ctrl-C to stop)")
    run_server(Config(db, local=True, local_key=key, data_dir=data), sock,
               on_ready=(lambda: webbrowser.open(url)) if browser else None)


def _cluster_reached(cluster: str | None) -> str | None:
    """The jobs' cluster, checked now (Ray installed, the head answering), not at the first job."""
    from gigaface.cluster.connect import check_reachable, cluster_address, import_ray

    address = cluster_address(cluster)
    if address is not None:
        import_ray()
        check_reachable(address)
    return address


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_port(host: str, port: int):
    """A socket bound to host:port for the server, or a clear error saying which of the two
    is wrong. SO_REUSEADDR, as uvicorn sets it: a server stopped a moment ago leaves its
    connections in TIME_WAIT, which must not keep the next one from starting."""
    import errno
    import ipaddress
    import socket

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        address = (host, port)
    except ValueError:
        if re.fullmatch(r"[0-9.]+", host):
            raise GigafaceError(f"--host {host}: not a valid IP address") from None
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except (socket.gaierror, UnicodeError):
            raise GigafaceError(f"--host {host}: not an address or a name this machine can resolve") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise GigafaceError(f"--host {host}: not an address of this machine") from None
        if exc.errno == errno.EADDRINUSE:
            raise GigafaceError(f"cannot listen on {host}:{port}: the port is in use; choose another --port") from None
        if exc.errno == errno.EACCES:
            raise GigafaceError(f"cannot listen on port {port}: it needs privileges; choose one above 1023") from None
        raise GigafaceError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock
