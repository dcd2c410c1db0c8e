"""Who may write a results folder: one configuration at a time, each run by one process.

Several ``memtune compare`` processes with the same settings may share one ``--out`` folder and split its
plan between them: before training a run, a process claims it (an exclusive ``flock`` on
``.memtune/claims/<run>.lock``, held while the run trains) and checks that no record of it has appeared
meanwhile; a run another process holds or has finished is skipped. A process with other settings is
refused while any process is live in the folder: the live ones hold a shared lock on
``.memtune/live.lock`` and the settings they write under are in ``.memtune/comparison.json``. Once the
folder is idle, the records themselves decide (``results.check_config``). A ``torchrun`` comparison
(all ranks train the same runs) needs the folder to itself.

The kernel drops ``flock`` locks when their process dies, so a killed comparison leaves no stale claim.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..io import atomic_write
from .results import config_differences

STATE_DIR = ".memtune"


def _try_lock(f, mode: int) -> bool:
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FolderClaim:
    """Held for a whole comparison (a context manager): the folder's settings, and claims on its runs.

    ``alone=True`` (torchrun) refuses the folder while another comparison is live in it and keeps others
    out until the end."""

    def __init__(self, out: str | os.PathLike, config: dict[str, Any], alone: bool = False):
        self.state = Path(out) / STATE_DIR
        self.config, self.alone = config, alone
        self._live = None
        self._claims: dict[tuple, Any] = {}

    def __enter__(self) -> "FolderClaim":
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "claims").mkdir(exist_ok=True)
        with open(self.state / "enter.lock", "a+b") as guard:  # one process at a time checks in
            fcntl.flock(guard, fcntl.LOCK_EX)
            live = open(self.state / "live.lock", "a+b")  # noqa: SIM115 - held until __exit__
            try:
                self._check_in(live, idle=_try_lock(live, fcntl.LOCK_EX))
            except BaseException:
                live.close()
                raise
            self._live = live
        return self

    def _check_in(self, live, idle: bool) -> None:
        folder = self.state.parent
        recorded = self._recorded()
        if not idle and self.alone:
            raise ConfigError(
                f"another memtune compare is writing to {folder} (pid {recorded.get('pid')} on {recorded.get('host')}); "
                f"a torchrun comparison needs the folder to itself: wait for it or use another --out"
            )
        if not idle and recorded.get("config") not in (None, self.config):
            raise ConfigError(
                f"another memtune compare (pid {recorded.get('pid')} on {recorded.get('host')}) is writing to {folder} "
                f"with other settings ({config_differences(recorded['config'], self.config)}). Wait for it to finish, "
                f"repeat its settings to share its plan, or use another --out."
            )
        if idle or not recorded:
            info = {"config": self.config, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
            atomic_write(self.state / "comparison.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
        if not self.alone:
            fcntl.flock(live, fcntl.LOCK_SH)  # from exclusive (if idle) to shared: others with these settings may join

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded = json.loads((self.state / "comparison.json").read_text())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def claim(self, key: tuple, done: Callable[[], set]) -> bool:
        """Claim the run ``key`` for this process: False when another process holds it, or ``done()`` (the run
        keys in the results file, read after the claim) shows it finished meanwhile."""
        digest = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:24]
        f = open(self.state / "claims" / f"{digest}.lock", "a+b")  # noqa: SIM115 - held until release
        if not _try_lock(f, fcntl.LOCK_EX):
            f.close()
            return False
        if key in done():
            f.close()
            return False
        self._claims[key] = f
        return True

    def release(self, key: tuple) -> None:
        f = self._claims.pop(key, None)
        if f is not None:
            f.close()  # the lock files stay: removing one while another process opens it would split the claim

    def __exit__(self, *exc: Any) -> None:
        for key in list(self._claims):
            self.release(key)
        if self._live is not None:
            self._live.close()
            self._live = None
