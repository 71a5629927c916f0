"""Hot reload: watch the config file and the spec directories, compile, swap or keep.

A change is compiled off the event loop (in a thread) into a complete new Runtime. On success the
gateway's one reference is swapped; requests already running keep the Runtime they started with.
On failure every located problem is logged and the old Runtime keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from .compile import build
from .errors import OmniError, SpecError

if TYPE_CHECKING:
    from .gateway import Gateway


class Reloader:
    def __init__(self, gw: Gateway, *, debounce_ms: int = 50) -> None:
        self.gw = gw
        self.debounce_ms = debounce_ms
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()  # one build at a time; each compares with what is live
        self._recheck: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._task, self._recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _targets(self) -> tuple[list[Path], set[Path], set[Path]]:
        """Directories to watch (none recursively), the config file, and the spec directories.

        The config file is watched through its directory (editors replace files by renaming, so
        watching the file itself would lose it after the first save); not recursively, because the
        data directory usually sits beside it and is written on every request. A spec root is
        watched with its providers/ and formats/, where spec files live."""
        rt = self.gw.runtime
        dirs: list[Path] = []
        files: set[Path] = set()
        spec_dirs: set[Path] = set()
        for p in map(Path, rt.watch_paths):
            if p.is_dir():
                dirs.append(p)
                for kind in ("providers", "formats"):
                    dirs.append(p / kind)
                    spec_dirs.add((p / kind).resolve())
            else:
                files.add(p.resolve())
                dirs.append(p.resolve().parent)
        return [d for d in dict.fromkeys(dirs) if d.exists()], files, spec_dirs

    async def _run(self) -> None:
        recheck = False
        while not self._stop.is_set():
            dirs, files, spec_dirs = self._targets()
            if recheck:  # a change made while the watch was being moved is not lost
                self._recheck = asyncio.get_running_loop().create_task(self._reload_soon())

            def relevant(change: watchfiles.Change, path: str, files: set[Path] = files, spec_dirs: set[Path] = spec_dirs) -> bool:
                p = Path(path)
                if p in files or p.resolve() in files or p.resolve() in spec_dirs:  # a spec dir made or removed
                    return True
                return p.suffix in (".yaml", ".yml") and p.parent.resolve() in spec_dirs

            async for _changes in watchfiles.awatch(
                *dirs, watch_filter=relevant, debounce=self.debounce_ms, step=20, stop_event=self._stop, recursive=False
            ):
                await self.reload()
                recheck = self._targets() != (dirs, files, spec_dirs)
                if recheck:
                    break  # the config names other spec directories now (or one appeared): watch those

    async def _reload_soon(self) -> None:
        await asyncio.sleep(0.2)  # once the new watch is in place
        await self.reload()

    async def reload(self) -> bool:
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> bool:
        gw = self.gw
        old = gw.runtime
        try:
            new = await asyncio.to_thread(build, old.config_file, generation=old.generation + 1)
        except SpecError as e:
            gw.last_reload_error = str(e)
            gw.log.error(f"config reload failed, still serving generation {old.generation}:\n{e}")
            return False
        except OmniError as e:
            gw.last_reload_error = str(e)
            gw.log.error(f"config reload failed, still serving generation {old.generation}: {e}")
            return False
        if new.fingerprint == old.fingerprint:
            return False
        gw.swap(new)
        gw.log.info("config reloaded", extra={"generation": new.generation, "fingerprint": new.fingerprint})
        if gw.usage is not None:
            gw.usage.audit("system", "config.reload", new.config_file, {"generation": new.generation, "fingerprint": new.fingerprint})
        return True
