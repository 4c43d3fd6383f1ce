"""A team MLflow tracking server: ``python -m spinegrade.cli.server`` (``make mlflow-server``).

Runs ``mlflow server`` with a database as backend store (default: SQLite in
mlruns/server/mlflow.db; PostgreSQL for a team, e.g. postgresql://mlflow@db:5432/mlflow) and
an artifact store that the server itself serves (``--serve-artifacts``): a local folder
(default mlruns/server/artifacts) or a bucket such as s3://bucket/prefix. Clients log over
HTTP only and need no access to the database or the bucket. It listens on 127.0.0.1 unless
--host says otherwise (0.0.0.0: every interface), and prints the URL and the
``export MLFLOW_TRACKING_URI=...`` line a teammate needs; the stages log to it with no code
change. --auth turns on MLflow's basic-auth app (users, passwords, per-experiment
permissions).

Options take their defaults from MLflow's own environment variables (MLFLOW_BACKEND_STORE_URI,
MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS,
MLFLOW_SERVER_ALLOWED_HOSTS, MLFLOW_AUTH_ADMIN_USERNAME / _PASSWORD; named in --help), and the
``mlflow server`` options this command does not set (MLFLOW_SERVER_CORS_ALLOWED_ORIGINS,
MLFLOW_UVICORN_OPTS, ...) reach it from the environment as they would without it. An env
file (--env-file, default .env in the current directory if there is one) is read as
``mlflow --env-file`` reads it (python-dotenv; the environment wins over the file, the
command line over both) and handed on to ``mlflow --env-file``, so a team can keep its
settings in one file. MLflow has no variable for --auth, --auth-database-uri and
--default-permission: --auth is given on the command line, and the other two can live in an
auth ini of your own (MLFLOW_AUTH_CONFIG_PATH). Before starting, the backend store is opened
once: a wrong URI, a missing database or an unreachable host is one error line naming the
URI (password masked). The server runs in its own process group; Ctrl-C, SIGTERM or SIGHUP
stop it and all its workers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from spinegrade.cli.process_group import (
    HOST,
    READY_TIMEOUT_S,
    mlflow_server,
    port_in_use,
    serve,
)
from spinegrade.core.io import atomic_path
from spinegrade.tracking import store as tracking

DEFAULT_PORT = 5000

DEFAULT_WORKERS = 2

DEFAULT_ENV_FILE = ".env"

DB_CONNECT_TIMEOUT_S = 5

PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")

# run in a child process with the server's environment: MLflow's own admin bootstrap, whose
# errors (missing secret key, no or too short password, unreachable user database) come back
# as one line instead of the traceback `mlflow server` would print
_AUTH_BOOTSTRAP = """
import sys, warnings
warnings.simplefilter("ignore")
try:
    from mlflow.server.auth import bootstrap_admin_user, get_flask_server_secret_key
    get_flask_server_secret_key()
    bootstrap_admin_user()
except Exception as exc:
    cause = getattr(exc, "orig", None) or exc
    print("AUTH-ERROR", getattr(cause, "message", None) or cause, file=sys.stderr)
    sys.exit(1)
"""


class SetupError(ValueError):
    """A setting that keeps the server from starting; the message names it."""


def server_dir(root: str | Path | None = None) -> Path:
    """mlruns/server in the workspace: the default home of the store, artifacts and users."""
    return tracking.workspace_root(root) / "mlruns" / "server"


def default_backend_uri(root: str | Path | None = None) -> str:
    return f"sqlite:///{server_dir(root) / 'mlflow.db'}"


def _one_line(text: object, secret: str | None = None) -> str:
    line = " ".join(str(text).split())
    return line.replace(secret, "***") if secret else line


def check_backend(uri: str) -> None:
    """Open and close one connection to the backend store; SetupError naming ``uri`` (its
    password masked) if that fails. A SQLite database's folder is created."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = tracking.redact(uri)
    examples = "sqlite:////abs/path/mlflow.db or postgresql://user@host:5432/db"
    try:
        url = make_url(uri)
        backend = url.get_backend_name()
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise SetupError(f"backend store {shown} is not a database URI ({examples})") from None
    except ImportError as exc:
        raise SetupError(f"backend store {shown}: driver missing ({exc})") from None
    if backend == "sqlite" and url.database and url.database != ":memory:":
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"backend store {shown}: {exc}") from None
    timeout = backend in ("postgresql", "mysql")  # libpq's and the MySQL drivers' keyword
    connect_args = {"connect_timeout": DB_CONNECT_TIMEOUT_S} if timeout else {}
    try:
        engine = create_engine(url, connect_args=connect_args)
    except ImportError as exc:
        hint = " (pip install 'psycopg[binary]')" if backend == "postgresql" else ""
        raise SetupError(f"backend store {shown}: driver missing ({exc}){hint}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        reason = _one_line(getattr(exc, "orig", None) or exc, url.password)
        raise SetupError(f"cannot open backend store {shown}: {reason}") from None
    finally:
        engine.dispose()


def artifacts_destination(dest: str) -> str:
    """A local folder (created, as an absolute file: URI) or a bucket URI, as given."""
    parts = urllib.parse.urlsplit(dest)
    if parts.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parts.path) if parts.scheme else dest)
        path = path.expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"artifacts destination {dest}: {exc}") from None
        return path.as_uri()
    if parts.scheme == "s3" and importlib.util.find_spec("boto3") is None:
        raise SetupError(
            f"artifacts destination {dest} needs boto3 on the server: pip install boto3"
        )
    return dest


def auth_database_uri(backend_uri: str) -> str:
    """Where basic-auth keeps its users by default: basic_auth.db beside a SQLite store; in
    the store's own database otherwise (its own tables, version table alembic_version_auth)."""
    store = tracking.local_store_dir(backend_uri)
    return f"sqlite:///{store / 'basic_auth.db'}" if store else backend_uri


def write_auth_config(
    path: Path, database_uri: str, admin_username: str, default_permission: str
) -> Path:
    """MLflow's basic-auth ini (MLFLOW_AUTH_CONFIG_PATH); no password in it, mode 0600 since
    the database URI may hold one. configparser interpolates %, so it is doubled."""
    text = (
        "# written by spinegrade.cli.server; the admin password is passed in the environment\n"
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def auth_environment(args: argparse.Namespace, backend_uri: str) -> dict[str, str]:
    """The variables MLflow's basic-auth app reads, after checking it can start with them."""
    if importlib.util.find_spec("flask_wtf") is None:
        raise SetupError("--auth needs Flask-WTF (MLflow's auth extra): pip install 'Flask-WTF<2'")
    env = {
        # a static key shared by all workers (CSRF of the sign-up form); random per start
        # unless the environment or .env sets one
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or secrets.token_hex(32),
    }
    if args.admin_password:
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = args.admin_password
    user = args.admin_username
    config = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if config and not Path(config).is_file():
        raise SetupError(f"MLFLOW_AUTH_CONFIG_PATH={config}: no such file")
    if not config:  # our own ini; an ini of yours keeps its admin_username unless one is given
        user = user or "admin"
        database = args.auth_database_uri or auth_database_uri(backend_uri)
        if database != backend_uri:
            check_backend(database)
        home = tracking.local_store_dir(backend_uri) or server_dir()
        path = write_auth_config(home / "basic_auth.ini", database, user, args.default_permission)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(path)
    if user:
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = user
    done = subprocess.run(
        [sys.executable, "-c", _AUTH_BOOTSTRAP],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("AUTH-ERROR ")]
        why = lines[-1].removeprefix("AUTH-ERROR ") if lines else done.stderr.strip()[-500:]
        raise SetupError(f"basic auth cannot start: {_one_line(why, args.admin_password)}")
    return env


def public_host(host: str) -> str:
    """The name teammates use for ``host``: this machine's name for a wildcard address."""
    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


def local_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host``."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host) or public_host(host)


def allowed_hosts(host: str, given: str | None) -> str | None:
    """MLflow's Host-header allow-list: ``given``; else, beyond loopback, its defaults
    (localhost, private IPs) plus the name in the printed URL, so that URL is accepted."""
    if given or host in ("127.0.0.1", "localhost", "::1"):
        return given
    from mlflow.server.security_utils import get_default_allowed_hosts

    wildcard = host in ("0.0.0.0", "::", "")
    names = {socket.getfqdn(), socket.gethostname()} if wildcard else {public_host(host)}
    return ",".join(
        [*get_default_allowed_hosts(), *sorted(names), *sorted(f"{n}:*" for n in names)]
    )


def server_command(
    backend_uri: str,
    artifacts: str,
    host: str,
    port: int,
    workers: int,
    auth: bool = False,
    hosts: str | None = None,
    env_file: Path | None = None,
) -> list[str]:
    """The ``mlflow server`` command line: proxied artifacts (clients get mlflow-artifacts:
    URIs and upload through the server), the basic-auth app with ``auth``, and
    ``mlflow --env-file`` with ``env_file``."""
    cmd = mlflow_server(backend_uri, host, port, workers)
    if env_file is not None:  # mlflow's own option: before the subcommand
        cmd[1:1] = ["--env-file", str(env_file)]
    cmd += ["--serve-artifacts", "--artifacts-destination", artifacts]
    if hosts:
        cmd += ["--allowed-hosts", hosts]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def load_env_file(path: Path) -> list[str]:
    """Read an env file as ``mlflow --env-file`` does (python-dotenv's ``load_dotenv``,
    ``override=False``: a variable the environment sets keeps its value); the names it set."""
    from dotenv import load_dotenv

    before = set(os.environ)
    load_dotenv(path, override=False)
    return sorted(set(os.environ) - before)


def env_file_path(given: str | None) -> Path | None:
    """The env file to read: ``given`` (SetupError if it does not exist, as in ``mlflow
    --env-file``), else .env in the current directory if there is one."""
    if given is None:
        default = Path(DEFAULT_ENV_FILE)
        return default if default.is_file() else None
    path = Path(given)
    if not path.is_file():
        raise SetupError(f"environment file '{given}' does not exist")
    return path


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m spinegrade.cli.server",
        description=(__doc__ or "").split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  make mlflow-server\n"
            "  make mlflow-server ARGS='--host 0.0.0.0 --auth"
            " --backend-store-uri postgresql://mlflow@db.internal:5432/mlflow"
            " --artifacts-destination s3://team-bucket/mlflow'\n"
            "  the same from a .env file (MLflow's variable names) and the command line:\n"
            "    MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.internal:5432/mlflow\n"
            "    MLFLOW_ARTIFACTS_DESTINATION=s3://team-bucket/mlflow\n"
            "    MLFLOW_HOST=0.0.0.0\n"
            "    MLFLOW_AUTH_ADMIN_PASSWORD=<12 characters or more>\n"
            "  make mlflow-server ARGS=--auth\n"
            "teammates:\n"
            "  export MLFLOW_TRACKING_URI=http://<server>:5000\n"
            "  export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>"
            "  # with --auth"
        ),
    )
    p.add_argument(
        "--env-file",
        default=None,
        help="read variables from this file as `mlflow --env-file` does (python-dotenv; the "
        "environment wins over the file) and pass it on to mlflow; default "
        f"{DEFAULT_ENV_FILE} in the current directory, if there is one",
    )
    p.add_argument(
        "--backend-store-uri",
        default=env("MLFLOW_BACKEND_STORE_URI"),
        help="SQLAlchemy URI of the runs database [MLFLOW_BACKEND_STORE_URI]; "
        "default sqlite:///<workspace>/mlruns/server/mlflow.db; a team: "
        "postgresql://user:password@host:5432/db (driver: psycopg) or "
        "mysql+pymysql://user:password@host:3306/db",
    )
    p.add_argument(
        "--artifacts-destination",
        default=env("MLFLOW_ARTIFACTS_DESTINATION"),
        help="where the server stores artifacts [MLFLOW_ARTIFACTS_DESTINATION]; default "
        "<workspace>/mlruns/server/artifacts; a folder, or s3://bucket/prefix (boto3 and the "
        "server's AWS_* / MLFLOW_S3_ENDPOINT_URL variables), gs://, wasbs://...",
    )
    p.add_argument(
        "--host",
        default=env("MLFLOW_HOST", HOST),
        help="address to listen on [MLFLOW_HOST] (default: %(default)s; 0.0.0.0 for the team)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=env("MLFLOW_PORT", str(DEFAULT_PORT)),
        help="[MLFLOW_PORT] (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=env("MLFLOW_WORKERS", str(DEFAULT_WORKERS)),
        help="uvicorn workers [MLFLOW_WORKERS] (default: %(default)s)",
    )
    p.add_argument(
        "--allowed-hosts",
        default=env("MLFLOW_SERVER_ALLOWED_HOSTS"),
        help="Host headers MLflow accepts, comma-separated [MLFLOW_SERVER_ALLOWED_HOSTS]; "
        "default localhost and private IPs, plus this machine's name when --host is 0.0.0.0",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app: users, passwords, permissions (`mlflow server "
        "--app-name basic-auth`; like it, no environment variable)",
    )
    p.add_argument(
        "--admin-username",
        default=env("MLFLOW_AUTH_ADMIN_USERNAME"),
        help="admin created at the first start [MLFLOW_AUTH_ADMIN_USERNAME] (default: admin)",
    )
    p.add_argument(
        "--admin-password",
        default=env("MLFLOW_AUTH_ADMIN_PASSWORD"),
        help="its password, 12 characters or more, needed only until the admin exists "
        "[MLFLOW_AUTH_ADMIN_PASSWORD; prefer the variable: options show in ps]",
    )
    p.add_argument(
        "--auth-database-uri",
        default=None,
        help="SQLAlchemy URI of the users database; default basic_auth.db beside a SQLite "
        "store, else the store's own database. Ignored when MLFLOW_AUTH_CONFIG_PATH names an "
        "auth ini of your own (its database_uri; the way to keep this setting in a file)",
    )
    p.add_argument(
        "--default-permission",
        choices=PERMISSIONS,
        default="READ",
        help="what every user may do with others' experiments (default: %(default)s). "
        "Ignored when MLFLOW_AUTH_CONFIG_PATH names an auth ini of your own (its "
        "default_permission)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help="seconds to wait for the server to answer (default: %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    # the env file first: it fills the defaults of the options (MLflow's variables)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--env-file", default=None)
    pre, _ = first.parse_known_args(argv)
    try:
        env_file = env_file_path(pre.env_file)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loaded = load_env_file(env_file) if env_file else []
    args = parser().parse_args(argv)

    backend = args.backend_store_uri or default_backend_uri()
    shown = tracking.redact(backend)
    try:
        check_backend(backend)
        artifacts = artifacts_destination(
            args.artifacts_destination or str(server_dir() / "artifacts")
        )
        if port_in_use(args.port, args.host):
            raise SetupError(
                f"port {args.port} on {args.host} is in use (another server?); "
                "stop it or choose another port with --port"
            )
        auth_env = auth_environment(args, backend) if args.auth else {}
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    local_url = f"http://{local_host(args.host)}:{args.port}"
    team_url = f"http://{public_host(args.host)}:{args.port}"
    hosts = allowed_hosts(args.host, args.allowed_hosts)
    cmd = server_command(
        backend, artifacts, args.host, args.port, args.workers, args.auth, hosts, env_file
    )
    if loaded:
        print(f"read {', '.join(sorted(loaded))} from {env_file}", flush=True)
    print(
        f"starting mlflow server on {local_url} (store {shown}, artifacts {artifacts})", flush=True
    )

    def announce(proc: subprocess.Popen) -> None:
        lines = [
            "",
            f"MLflow tracking server: {team_url}",
            "Point runs at it (each teammate, in the shell or .env):",
            f"    export MLFLOW_TRACKING_URI={team_url}",
        ]
        if args.auth:
            user = auth_env.get("MLFLOW_AUTH_ADMIN_USERNAME")
            admin = f"admin user '{user}'" if user else "admin user of MLFLOW_AUTH_CONFIG_PATH"
            lines += [
                "    export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>",
                f"(basic auth on: {admin}; users are created at "
                f"{team_url}/signup or POST /api/2.0/mlflow/users/create)",
            ]
        elif args.host not in ("127.0.0.1", "localhost", "::1"):
            lines.append("(no --auth: anyone who reaches this port can read and change runs)")
        lines += [f"(server process group {proc.pid}; Ctrl-C stops it and all its workers)", ""]
        print("\n".join(lines), flush=True)

    return serve(
        cmd,
        local_url,
        announce,
        name="MLflow tracking server",
        timeout=args.timeout,
        env={**os.environ, **auth_env},
    )


if __name__ == "__main__":
    sys.exit(main())
