"""A fresh private directory named in an environment variable for the processes started
inside (``execgate serve``'s workers), removed at exit."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["private_dir_in_env"]


@contextmanager
def private_dir_in_env(env: str, *, prefix: str, entry: str | None = None) -> Iterator[Path]:
    """Make a directory (mode 0700), name it in ``$env`` (or ``entry`` inside it, when
    given), yield that path, and at exit restore ``$env`` and remove the directory. One
    already named in the environment is never reused: what an earlier run (or another
    user) left there is not this run's."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))  # mode 0700
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
