"""The actors of a cluster: started and checked before a library is touched, fed with
calls, and replaced when they die.

One slot per CPU core of each CPU node, one per GPU of a GPU node (with that node's cores
shared among its GPUs). Each slot is an actor (worker.FaceWorker) pinned to its node,
holding its models for the whole scan; the driver keeps DEPTH calls queued at each, so
the next band travels while the current one is detected.

Faults are the driver's to handle, not Ray's restarts: an actor restarted by Ray onto a
node that died would wait for resources forever, and the scan with it. When a call finds
its actor dead (the process killed, the node gone), the call goes to the live slots
again, with the band it carried still in the object store, and a replacement actor is
asked for wherever the cluster has room; it joins when its models are loaded. Units of
work are idempotent (a band's detections replace whatever that band had), so a call run
twice does no harm. When no slot is left and none comes back in REPLACE_TIMEOUT, the
scan stops with one line; what it committed stays, for --resume.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gigaface.cluster import versions
from gigaface.cluster.connect import join, leave, one_line
from gigaface.cluster.worker import FaceWorker
from gigaface.errors import GigafaceError

DEPTH = 2              # calls queued at a slot
START_TIMEOUT = 300.0  # s for a first slot to load its models (a node starting workers is slow)
START_GRACE = 30.0     # s the others get after the first answered; later ones join when ready
REPLACE_TIMEOUT = 120.0
MAX_ATTEMPTS = 4       # a call whose worker died under it this many times fails the scan
STORE_SHARE = 0.5      # of the smallest node's object store that shipped bands may take
WAIT_STEP = 1.0        # s between looks at replacements while waiting for results


@dataclass
class Call:
    """One method call on a slot. `put` is shipped through the object store once (a band's
    pixels) and handed to the method as its first argument, for every try."""

    method: str
    args: tuple
    tag: object = None
    put: object = None
    nbytes: int = 0


@dataclass(eq=False)
class Slot:
    actor: object
    options: dict
    ready: object            # the ObjectRef of report() until the slot has answered
    report: dict | None = None
    load: int = 0
    alive: bool = True


@dataclass(eq=False)
class Pending:
    call: Call
    pool: "WorkerPool"
    slot: Slot | None = None
    ref: object = None
    stored: object = None    # the ObjectRef of call.put, kept for retries
    attempts: int = 0

    def result(self):
        """The call's value, waiting for it (a future, for the describe stage)."""
        return self.pool.wait(self)


def slot_plan(nodes: list[dict]) -> list[dict]:
    """Actor options for every slot of the cluster's live nodes (ray.nodes())."""
    plan = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if gpus:
            share = max(1, cpus // gpus) if cpus else 0
            plan += [{"node": node["NodeID"], "num_cpus": share, "num_gpus": 1, "cpus": max(1, share)}] * gpus
        else:
            plan += [{"node": node["NodeID"], "num_cpus": 1, "num_gpus": 0, "cpus": 1}] * cpus
    return plan


@dataclass
class WorkerPool:
    ray: object
    address: str
    runtime: str | None
    precision: str | None
    tile: int
    slots: list[Slot] = field(default_factory=list)
    budget: int = 0
    in_flight_bytes: int = 0
    replacements: int = 0
    last_death: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    joined: bool = True  # this pool joined the cluster, and leaves it on close
    actor_class: object = None

    # --- start ---------------------------------------------------------------------------
    @classmethod
    def start(cls, address: str, runtime: str | None = None, precision: str | None = None, tile: int = 640,
              files: Iterable[tuple[str, int]] = ()) -> "WorkerPool":
        """Join the cluster, start a slot on every core or GPU, check that each runs this
        gigaface and sees `files` (path, size) as this process does; or one clear error
        with nothing left running."""
        from gigaface.engine.runtime import PRECISION_ENV, RUNTIME_ENV

        ray, joined = join(address)
        # Workers do not inherit this process's environment: what it says goes with them.
        pool = cls(ray, address, runtime or os.environ.get(RUNTIME_ENV), precision or os.environ.get(PRECISION_ENV),
                   tile, joined=joined)
        try:
            pool._start_slots()
            pool._check_files(list(files))
        except BaseException:
            pool.close()
            raise
        return pool

    def _start_slots(self) -> None:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        plan = slot_plan(nodes)
        if not plan:
            raise GigafaceError(f"the Ray cluster at {self.address} has no CPU or GPU for gigaface's workers")
        stores = [n["Resources"].get("object_store_memory", 0) for n in nodes]
        self.budget = int(STORE_SHARE * min(s for s in stores if s)) if any(stores) else 1 << 28
        self.slots = [self._new_slot(options) for options in plan]
        deadline = time.monotonic() + START_TIMEOUT
        driver = versions.report()
        while any(s.report is None for s in self.slots) and time.monotonic() < deadline:
            waiting = [s.ready for s in self.slots if s.report is None]
            ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=WAIT_STEP)
            for slot in [s for s in self.slots if s.report is None and s.ready in ready]:
                slot.report = self._answer(slot)
                versions.check_same(driver, slot.report["versions"], f"node {self._where(slot)}")
                if len(self.live()) == 1:
                    deadline = min(deadline, time.monotonic() + START_GRACE)
        if not self.live():
            raise GigafaceError(f"no worker could start on the Ray cluster at {self.address} in {START_TIMEOUT:.0f} s:"
                                " its CPUs are taken (by another scan?)")
        # Slots still loading (or waiting for a CPU another job holds) join when they
        # answer (_refresh), as replacements do; their versions are checked then too.

    def _new_slot(self, options: dict, pinned: bool = True) -> Slot:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(options["node"], soft=False) if pinned else "DEFAULT"
        if self.actor_class is None:  # one class for every slot: Ray exports its definition once
            self.actor_class = self.ray.remote(FaceWorker)
        actor = self.actor_class.options(
            num_cpus=options["num_cpus"], num_gpus=options["num_gpus"], max_restarts=0, max_task_retries=0,
            scheduling_strategy=strategy).remote(self.runtime, self.precision, self.tile, options["cpus"])
        return Slot(actor, options, actor.report.remote())

    def _answer(self, slot: Slot) -> dict:
        """A starting slot's report, or one line on why it could not start."""
        try:
            return self.ray.get(slot.ready)
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, GigafaceError):  # e.g. a runtime this node does not have
                raise GigafaceError(f"a worker on the Ray cluster at {self.address}: {cause}") from None
            raise GigafaceError(f"gigaface's worker cannot start on the Ray cluster at {self.address}: "
                                f"{one_line(cause)} (install the same gigaface on every node)") from None

    def _where(self, slot: Slot) -> str:
        report = slot.report or {}
        return f"{report.get('host', '?')} ({slot.options['node'][:8]})"

    def _check_files(self, files: list[tuple[str, int]]) -> None:
        if not files:
            return
        per_node = {}
        for slot in self.live():
            per_node.setdefault(slot.options["node"], slot)
        refs = {slot.actor.check_files.remote(files): slot for slot in per_node.values()}
        for ref, slot in refs.items():
            problems = self.ray.get(ref)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise GigafaceError(f"an input file is missing or different on node {self._where(slot)}: "
                                    f"{problems[0]}{more}; every node must see the input files at the same path "
                                    "(a network filesystem)")

    # --- who works -----------------------------------------------------------------------
    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.alive and s.report is not None]

    @property
    def size(self) -> int:
        return max(1, len(self.live()))

    def reports(self) -> list[dict]:
        return [s.report for s in self.live()]

    def _refresh(self) -> None:
        """Slots that finished loading their models join."""
        starting = [s for s in self.slots if s.alive and s.report is None]
        if not starting:
            return
        ready, _ = self.ray.wait([s.ready for s in starting], num_returns=len(starting), timeout=0)
        for slot in [s for s in starting if s.ready in ready]:
            try:
                report = self.ray.get(slot.ready)
            except Exception as exc:  # the replacement died too
                with self.lock:
                    slot.alive = False
                self.last_death = one_line(exc)
                continue
            versions.check_same(versions.report(), report["versions"], f"node {report.get('host', '?')}")
            slot.report = report

    def _lost(self, slot: Slot, exc: BaseException) -> None:
        """A slot's actor died: drop it and ask for another wherever there is room."""
        with self.lock:
            if not slot.alive:
                return
            slot.alive = False
            self.last_death = one_line(exc)
            if self.replacements >= 2 * max(1, len(self.slots)):
                return  # workers keep dying: no more replacements, the live ones go on
            self.replacements += 1
            replacement = self._new_slot(slot.options, pinned=False)
            self.slots.append(replacement)
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass  # already gone

    def _pick(self) -> Slot:
        """The least loaded live slot, waiting for a replacement when none is left."""
        deadline = time.monotonic() + REPLACE_TIMEOUT
        while True:
            self._refresh()
            with self.lock:
                live = self.live()
                if live:
                    return min(live, key=lambda s: s.load)
                starting = [s for s in self.slots if s.alive]
            if not starting or time.monotonic() >= deadline:
                raise GigafaceError(f"no worker left on the Ray cluster at {self.address} (the last one died: "
                                    f"{self.last_death}); what was committed stays: run the scan again with --resume")
            self.ray.wait([s.ready for s in starting], num_returns=1, timeout=WAIT_STEP)

    # --- calls -----------------------------------------------------------------------------
    def submit(self, call: Call) -> Pending:
        """Send one call now, to the least loaded slot."""
        pending = Pending(call, self)
        self._send(pending)
        return pending

    def _send(self, pending: Pending) -> None:
        slot = self._pick()
        if pending.call.put is not None:
            try:
                pending.stored = self.ray.put(pending.call.put)
            except Exception as exc:  # the object store is full and may not spill
                raise GigafaceError(f"cannot ship {pending.call.nbytes / 1e6:,.0f} MB of pixels through Ray's object "
                                    f"store ({one_line(exc)}); give the nodes a larger --object-store-memory") from None
            pending.call.put = None  # the driver's copy goes; the stored one stays for retries
        args = (pending.stored, *pending.call.args) if pending.stored is not None else pending.call.args
        with self.lock:
            slot.load += 1
            self.in_flight_bytes += pending.call.nbytes
        pending.slot = slot
        pending.ref = getattr(slot.actor, pending.call.method).remote(*args)

    def _release(self, pending: Pending) -> None:
        with self.lock:
            if pending.slot is not None:
                pending.slot.load -= 1
                self.in_flight_bytes -= pending.call.nbytes
            pending.slot = None

    def _room(self, nbytes: int) -> bool:
        with self.lock:
            live = self.live()
            if not live or min(s.load for s in live) >= DEPTH:
                return False
            return self.in_flight_bytes == 0 or self.in_flight_bytes + nbytes <= self.budget

    def _take(self, pending: Pending) -> tuple[bool, object]:
        """(True, value) for a finished call; (False, None) when its worker died and the
        call was sent again."""
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

        try:
            value = self.ray.get(pending.ref)
        except (RayActorError, WorkerCrashedError, ObjectLostError) as exc:
            slot = pending.slot
            self._release(pending)
            self._lost(slot, exc)
            pending.attempts += 1
            if pending.attempts >= MAX_ATTEMPTS:
                raise GigafaceError(f"a unit of work failed {pending.attempts} times, its worker dying each time "
                                    f"({one_line(exc)}); what was committed stays: run the scan again with --resume"
                                    ) from None
            self._send(pending)
            return False, None
        except RayTaskError as exc:
            self._release(pending)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, GigafaceError):
                raise GigafaceError(str(cause)) from None
            raise
        self._release(pending)
        pending.stored = None
        return True, value

    def wait(self, pending: Pending):
        while True:
            done, value = self._take(pending)
            if done:
                return value

    def map(self, calls: Iterable[Call]) -> Iterator[tuple[Call, object]]:
        """(call, value) for every call, as they finish; calls are taken from `calls` only
        while a slot has room and the shipped bytes fit the object store's share."""
        pending: dict = {}
        source = iter(calls)
        waiting: Call | None = None
        exhausted = False
        try:
            while True:
                while not exhausted:
                    if waiting is None:
                        waiting = next(source, None)
                        if waiting is None:
                            exhausted = True
                            break
                    if pending and not self._room(waiting.nbytes):
                        break
                    sent = self.submit(waiting)
                    waiting = None
                    pending[sent.ref] = sent
                if not pending:
                    return
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=WAIT_STEP)
                self._refresh()
                for ref in ready:
                    call = pending.pop(ref)
                    done, value = self._take(call)
                    if done:
                        yield call.call, value
                    else:
                        pending[call.ref] = call
        finally:
            for call in pending.values():  # stopped early (an error): what is queued is dropped
                self._release(call)
                try:
                    self.ray.cancel(call.ref)
                except Exception:
                    pass

    def close(self) -> None:
        for slot in self.slots:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:
                pass
        self.slots = []
        if self.joined:
            leave()
