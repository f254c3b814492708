"""`tubervae serve` (and `make serve`): a registered model served from a checked copy of its files.

The version's files are copied out of the artifact store into a private temporary folder and checked
against the SHA-256 digests recorded when it was registered (`registry.verified_copy`). Only then does
`mlflow models serve` start, on that folder and in this environment (`--env-manager local`, so the
installed tubervae builds the model): a changed, added or missing file stops it in one line naming the
file, before any of the model's code has run. The copy is removed when the server stops.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException

from tubervae.runs import registry
from tubervae.runs.tracker import Tracker

log = logging.getLogger(__name__)
REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))")


def registered_version(tracker: Tracker, model_uri: str):
    """The model version that `models:/<name>@<alias>` or `models:/<name>/<version>` names."""
    found = REGISTERED.fullmatch(model_uri)
    if found is None:
        raise ValueError(
            f"--model {model_uri!r}: expected a registered model, models:/<name>@<alias> or models:/<name>/<version> "
            "(the digests that are checked before serving live on a registered version)"
        )
    name, alias, number = found.group("name", "alias", "version")
    if alias is not None:
        version = registry.version_by_alias(tracker, name, alias)
    else:
        try:
            version = tracker.client.get_model_version(name, number)
        except MlflowException:
            version = None
    if version is None:
        raise RuntimeError(
            f"no model {model_uri} in the registry at {tracker.uri}: run the register and classify stages "
            "first (dvc repro classify)"
        )
    return version


def serve(
    model_uri: str, *, root: str | Path = ".", host: str = "127.0.0.1", port: int = 5001, workers: int = 1
) -> int:
    """Serve `model_uri` from a checked local copy until the server stops; returns its exit code (0 when
    stopped by SIGTERM or SIGINT).

    Raises ModelFilesError (a RuntimeError) before starting anything when the files do not match.
    """
    tracker = Tracker(root)
    version = registered_version(tracker, model_uri)
    folder = Path(tempfile.mkdtemp(prefix="tubervae-serve-"))
    try:
        model_dir = registry.verified_copy(tracker, version, folder)
        log.info(
            "serving %s version %s on %s:%d: its %d files match the digests recorded at registration",
            version.name,
            version.version,
            host,
            port,
            len(list(p for p in model_dir.rglob("*") if p.is_file())),
        )
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
        command += ["-h", host, "-p", str(port), "-w", str(workers)]
        server = subprocess.Popen(command)
        stopped = []

        def stop(signum, frame):  # passed on: the server stops, then the copy goes
            stopped.append(signum)
            server.send_signal(signum)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = server.wait()
            return 0 if stopped else code  # asked to stop: not a failure
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if server.poll() is None:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
