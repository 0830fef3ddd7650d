"""One training run per workdir: the lock file `WORKDIR/lock`.

`WorkdirLock(workdir)` (a context manager) creates the workdir if needed and
takes `WORKDIR/lock`, a JSON record of the owner (host, pid, process start
time, UTC start time, command line). On a local or network file system the
lock is an exclusive `flock` on that file, taken without waiting (atomic;
released by the kernel when the owner dies, however it dies):

* held by a live run -> `WorkdirBusy`, one line naming the owner;
* left by a run of this host whose process is gone (SIGKILL, crash) -> taken
  over, with one warning line naming the dead owner;
* left by a run of another host -> `WorkdirBusy` (its liveness cannot be
  checked from here): delete the lock file if that run is gone.

On object stores (`gs://...`), where no lock primitive exists, the same
record is checked and written without atomicity (best effort).
In multi-process runs only process 0 takes the lock; the other processes
learn the outcome through `vit_jax.training.process_agree` (a collective).
"""

import datetime
import fcntl
import json
import os
import re
import socket
import sys
import time
from typing import Optional

from etils import epath
import jax

from vit_jax.training import metrics
from vit_jax.training import process_agree

NAME = 'lock'


class WorkdirError(ValueError):
  """The workdir cannot be used (one-line message)."""


class WorkdirBusy(WorkdirError):
  """Another run holds the workdir."""


def _is_remote(workdir: str) -> bool:
  return bool(re.match(r'^[a-zA-Z][\w+.-]*://', str(workdir)))


def _proc_start_ticks(pid: int) -> Optional[int]:
  """Start time of `pid` in clock ticks since boot (Linux), None if unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int, start_ticks: Optional[int]) -> bool:
  """Whether process `pid` of this host runs (and is the one that started at
  `start_ticks`, when known; not a zombie)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by another user
  try:
    with open(f'/proc/{pid}/stat') as f:
      if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
        return False
  except (OSError, IndexError):
    pass
  now = _proc_start_ticks(pid)
  return start_ticks is None or now is None or now == start_ticks


def describe(owner: dict) -> str:
  return (f'host {owner.get("host", "?")} pid {owner.get("pid", "?")} '
          f'started {owner.get("started", "?")}')


def _me() -> dict:
  pid = os.getpid()
  return {'host': socket.gethostname(), 'pid': pid,
          'pid_start_ticks': _proc_start_ticks(pid),
          'started': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%d %H:%M:%S UTC'),
          'command': ' '.join(sys.argv)}


def _parse(text: str) -> Optional[dict]:
  try:
    owner = json.loads(text)
    return owner if isinstance(owner, dict) else None
  except ValueError:
    return None


def create(workdir: str) -> epath.Path:
  """Creates `workdir` (and parents); WorkdirError if that is impossible."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
      raise NotADirectoryError(f'{workdir} is not a directory')
  except (OSError, ValueError) as e:
    reason = getattr(e, 'strerror', None) or str(e)
    raise WorkdirError(f'cannot create workdir {workdir}: {reason}') from None
  return path


class WorkdirLock:
  """Holds `WORKDIR/lock` for the lifetime of a run (see module doc)."""

  def __init__(self, workdir: str):
    self.workdir = str(workdir)
    self.path = os.path.join(self.workdir, NAME)
    self._fd: Optional[int] = None
    self._remote = _is_remote(self.workdir)

  # -- local and network file systems ------------------------------------

  def _busy(self, owner: Optional[dict], why: str) -> WorkdirBusy:
    who = describe(owner) if owner else 'an unknown owner'
    return WorkdirBusy(f'workdir {self.workdir} is in use by another run '
                       f'({who}; lock file {self.path}){why}')

  def _read_owner(self, fd: Optional[int] = None) -> Optional[dict]:
    for _ in range(20):  # the owner may be writing it right now
      try:
        if fd is not None:
          text = os.pread(fd, 1 << 16, 0).decode(errors='replace')
        else:
          with open(self.path) as f:
            text = f.read()
      except OSError:
        text = ''
      if (owner := _parse(text)) is not None:
        return owner
      time.sleep(0.05)
    return None

  def _acquire_local(self) -> str:
    """Takes the lock; returns a warning ('' if none)."""
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise WorkdirError(f'cannot write the lock file {self.path}: '
                           f'{e.strerror}') from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
      except BlockingIOError:
        owner = self._read_owner()
        os.close(fd)
        raise self._busy(owner, '; wait for it to finish or use another '
                         '--workdir') from None
      except OSError:  # no flock on this file system: the record decides
        flocked = False
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # released (and unlinked) while we opened it: retry
        os.close(fd)
        continue
      break
    warning = ''
    text = os.pread(fd, 1 << 16, 0).decode(errors='replace')
    owner = _parse(text) if text.strip() else None
    if text.strip():
      me = socket.gethostname()
      if owner is None:
        if not flocked:
          os.close(fd)
          raise self._busy(None, f'; its record is unreadable: delete '
                           f'{self.path} if no run uses the workdir')
        warning = f'taking over the unreadable lock file {self.path}'
      elif owner.get('host') != me:
        os.close(fd)
        raise self._busy(owner, f'; its liveness cannot be checked from '
                         f'host {me}: delete {self.path} if that run is gone')
      elif _alive(int(owner.get('pid', -1)), owner.get('pid_start_ticks')):
        os.close(fd)
        raise self._busy(owner, '; wait for it to finish or use another '
                         '--workdir')
      else:
        warning = (f'taking over the stale lock of a run that is gone '
                   f'({describe(owner)}; lock file {self.path})')
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me(), indent=1).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return warning

  def _release_local(self) -> None:
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
        os.unlink(self.path)
    except OSError:
      pass
    os.close(fd)

  # -- object stores (best effort) -----------------------------------------

  def _acquire_remote(self) -> str:
    path = epath.Path(self.workdir) / NAME
    warning = ''
    if path.exists():
      owner = _parse(path.read_text())
      if (owner and owner.get('host') == socket.gethostname()
          and not _alive(int(owner.get('pid', -1)),
                         owner.get('pid_start_ticks'))):
        warning = (f'taking over the stale lock of a run that is gone '
                   f'({describe(owner)}; lock file {path})')
      else:
        raise self._busy(owner, f'; delete {path} if that run is gone')
    path.write_text(json.dumps(_me(), indent=1))
    self._fd = -1
    return warning

  def _release_remote(self) -> None:
    if self._fd is not None:
      self._fd = None
      try:
        (epath.Path(self.workdir) / NAME).unlink()
      except OSError:
        pass

  # -- both ------------------------------------------------------------------

  def acquire(self) -> None:
    """Creates the workdir and takes the lock (process 0; every process
    agrees on the outcome). Raises WorkdirError/WorkdirBusy (one line)."""

    def take() -> str:
      create(self.workdir)
      return (self._acquire_remote() if self._remote
              else self._acquire_local())

    warning = process_agree.from_process_0(take)
    if warning:
      metrics.log(f'warning: {warning}')

  def release(self) -> None:
    if jax.process_index() == 0:
      if self._remote:
        self._release_remote()
      else:
        self._release_local()

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
