"""A fresh private directory named in an environment variable for the processes started
inside (``execgate serve``'s workers), removed at exit."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from execgate.errors import ConfigError
from execgate.keyfile import refuse_shared_writes

__all__ = ["LOCK_FLAGS", "SERVICE_LOCK", "private_dir_in_env"]

# In a service's private directory: held (shared) by each of its processes while it
# lives; a directory whose lock nobody holds is left over (see execgate.cli.serve).
SERVICE_LOCK: Final = "service.lock"
# How every lock file of a service is opened: never through a link, never waiting (a
# FIFO planted in its place opens at once, and is then refused as no regular file).
LOCK_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@contextmanager
def private_dir_in_env(
    env: str, *, prefix: str, entry: str | None = None, parent: Path | None = None
) -> Iterator[Path]:
    """Make a directory (mode 0700) in ``parent`` (made 0700 if missing; by default the
    system's temporary directory), name it in ``$env`` (or ``entry`` inside it, when
    given), yield that path, and at exit restore ``$env`` and remove the directory. One
    already named in the environment is never reused: what an earlier run (or another
    user) left there is not this run's.

    ``execgate serve`` makes its directories in the home's ``run/``: a cleaner of
    temporary files (systemd-tmpfiles ages ``/tmp``) would remove files a long-running
    service still needs."""
    if parent is not None:
        try:
            with suppress(FileExistsError):  # checked below, whatever it is
                parent.mkdir(mode=0o700)
            status = parent.lstat()
        except OSError as exc:
            raise ConfigError(f"cannot make {parent}: {exc.strerror or exc}") from exc
        if not stat.S_ISDIR(status.st_mode):
            raise ConfigError(f"{parent} is not a directory; remove it")
        refuse_shared_writes(parent, status.st_mode, "run directory")
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mode 0700
    path = directory if entry is None else directory / entry
    previous = os.environ.get(env)
    os.environ[env] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = previous
        shutil.rmtree(directory, ignore_errors=True)
