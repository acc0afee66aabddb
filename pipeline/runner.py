"""The supervisor: starts the stage processes and capture threads, and stops them without loss.

``run`` analyses the configured cameras until SIGTERM/SIGINT (or until every file camera has
ended); ``replay_files`` pushes video files through the same pipeline, lossless and as fast as
it goes. Shutdown is in-band: capture stops and sends EOS, then STOP follows the frames still
in flight, so inference drains them and incidents closes every open incident and flushes SQL
before the processes exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from pipeline.backoff import Backoff
from pipeline.capture import EOS_TIMEOUT_MS, CaptureThread, SourceSpec, spread_phases
from pipeline.config import Settings
from pipeline.incidents import incidents_main
from pipeline.inference import inference_main
from pipeline.messages import EventHeader, StopHeader, encode_control
from pipeline.transport import Endpoints, Receiver, close_context, make_endpoints, pull_socket, push_socket, send

log = logging.getLogger(__name__)
STAGES = {"incidents": incidents_main, "inference": inference_main}
"""Started in this order: each stage binds its input before its upstream starts sending."""
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 30.0
"""Beyond the database flush timeout, how long the stages get to drain after STOP."""
EXIT_GRACE_S = 10.0
"""How long a stage that reported `done` gets to exit before it is killed. Nothing is in flight by
then: inference reports done only after incidents acknowledged the end of the detections stream."""
POLL_MS = 100
_run_counter = 0


class PipelineError(RuntimeError):
    """A stage failed to start or died; the message says which and why."""


@dataclass
class SourceResult:
    """What happened to one source (a replayed file or a camera)."""

    camera: str
    path: str
    frames: int = 0
    """Frames analysed by the detector."""
    incidents: int = 0
    expected: int | None = None
    sent: int = 0
    """Frames capture sent: every one of a file must be analysed."""
    copies: int = 0
    """Pixel copies capture made sending them (``pipeline.copies``)."""
    lossless: bool = True
    """Files are; live cameras drop frames by design."""
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def problem(self) -> str | None:
        """Why this source did not run completely: its error, or frames sent but never analysed."""
        if self.error:
            return self.error
        if self.lossless and self.frames < self.sent:
            return f"only {self.frames} of {self.sent} frames analysed"
        return None

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class ReplayReport:
    files: list[SourceResult]
    elapsed_s: float
    interrupted: bool = False
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Final counters of each stage (its ``done`` event), e.g. dropped frames, db retries."""

    @property
    def frames(self) -> int:
        return sum(f.frames for f in self.files)

    @property
    def incidents(self) -> int:
        return sum(f.incidents for f in self.files)

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def problems(self) -> list[str]:
        """Everything that keeps the run from being complete, one line each (empty when ok)."""
        return [f"{f.path}: {f.problem}" for f in self.files if f.problem] + self.pipeline_problems

    @property
    def pipeline_problems(self) -> list[str]:
        """Failures of the stages rather than of one source: a stage error, uncommitted incidents."""
        found = [f"{name} stage failed: {s['error']}" for name, s in self.stages.items() if "error" in s]
        incidents = self.stages.get("incidents", {})
        if incidents.get("spooled"):
            found.append(f"{incidents['spooled']} incident record(s) not committed to the database "
                         "(kept in the spool, written at the next start)")
        if incidents.get("quarantined"):
            found.append(f"{incidents['quarantined']} incident record(s) refused by the database (quarantined in the spool)")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


ProgressCallback = Callable[["Supervisor"], None]


class Observer:
    """Watches a run from the supervisor's thread (systemd watchdog, metrics, retention): must not block.

    ``on_ready`` once the stages and captures are up, ``on_event`` for every stage event,
    ``on_tick`` every poll of the supervisor's loop, ``on_stop`` when shutdown begins.
    """

    def on_ready(self, supervisor: Supervisor) -> None:
        pass

    def on_event(self, stage: str, event: str, data: dict[str, Any]) -> None:
        pass

    def on_tick(self, supervisor: Supervisor) -> None:
        pass

    def on_stop(self, supervisor: Supervisor) -> None:
        pass


class Supervisor:
    """Owns one pipeline run: stage processes, capture threads and the events channel."""

    def __init__(
        self, settings: Settings, specs: list[SourceSpec], stop: threading.Event | None = None, observers: Sequence[Observer] = (),
        *, restart: bool = False,
    ) -> None:
        global _run_counter
        _run_counter += 1
        self.settings = settings
        self.specs = specs
        self.stop = stop or threading.Event()
        self.endpoints: Endpoints = make_endpoints(settings, f"sw{os.getpid()}-{_run_counter}")
        self.results = {
            spec.camera: SourceResult(spec.camera, str(spec.source), lossless=spec.kind != "live") for spec in specs
        }
        self.stages: dict[str, dict[str, Any]] = {}
        self._ready: set[str] = set()
        self._done: set[str] = set()
        self._last_beat: dict[str, float] = {}
        self._control: zmq.Socket | None = None
        """supervisor -> inference: STOP, and incidents' acknowledgement of the end of the detections stream."""
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self._captures: list[CaptureThread] = []
        self._capture_stop = threading.Event()
        self._started = 0.0
        self.observers = tuple(observers)
        self.restart = restart
        """Live runs restart a failed stage (bounded, with backoff); replays fail loudly instead."""
        self.restarts: Counter[str] = Counter()
        """Stage restarts so far, by stage (the metrics endpoint reads them)."""
        self._restart_times: dict[str, deque[float]] = {name: deque() for name in STAGES}
        self._restart_due: dict[str, float] = {}
        self._spawned_at: dict[str, float] = {}

    def run(self, on_progress: ProgressCallback | None = None) -> ReplayReport:
        """Start, analyse until the sources end or ``stop`` is set, drain, and report."""
        ctx = zmq.Context()
        events = Receiver(pull_socket(ctx, self.endpoints.events, 1000), self.settings.logging.rate_limit_s, "supervisor")
        self._started = time.monotonic()
        self._control = push_socket(ctx, self.endpoints.control, 10)
        try:
            self._start_stages(events)
            self._start_captures(ctx)
            self._observe("on_ready", self)
            self._watch(events, on_progress)
            self._shutdown(ctx, events, on_progress)
        except KeyboardInterrupt:
            self.stop.set()
            self._shutdown(ctx, events, on_progress)
        except PipelineError:
            self._rescue_incidents(ctx, events)
            raise
        finally:
            self._kill_leftovers()
            close_context(ctx, 0)
            self.endpoints.remove_files()
        return ReplayReport(
            files=list(self.results.values()),
            elapsed_s=time.monotonic() - self._started,
            interrupted=self.stop.is_set(),
            stages=self.stages,
        )

    @property
    def captures(self) -> list[CaptureThread]:
        return self._captures

    @property
    def stage_pids(self) -> dict[str, int | None]:
        return {name: process.pid for name, process in self._processes.items()}

    @property
    def restarting(self) -> set[str]:
        """Stages the supervisor is restarting (waiting out the backoff, or not ready yet): the
        systemd watchdog does not count their silence as a stall, the crash-loop bound covers them."""
        return set(self._restart_due) | {name for name in self._spawned_at if name not in self._ready}

    def _start_stages(self, events: Receiver) -> None:
        for name in STAGES:
            self._spawn(name)
        self._wait_ready(events)

    def _spawn(self, name: str) -> None:
        process = multiprocessing.get_context("spawn").Process(
            target=STAGES[name], args=(self.settings, self.endpoints, os.getpid()), name=f"scratchwatch-{name}"
        )
        process.start()
        self._processes[name] = process
        self._spawned_at[name] = time.monotonic()

    def _wait_ready(self, events: Receiver) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self._ready != set(STAGES):
            if time.monotonic() > deadline:
                raise PipelineError(f"stages {sorted(set(STAGES) - self._ready)} not ready after {READY_TIMEOUT_S:.0f}s")
            self._poll(events)
            self._check_alive()

    def _start_captures(self, ctx: zmq.Context) -> None:
        for spec in self.specs:
            thread = CaptureThread(
                spec, ctx, self.endpoints.frames, self.settings.transport.hwm, self.settings.capture, self._capture_stop,
                curve=self.endpoints.curve,
                control=self.endpoints.control,
            )
            self._captures.append(thread)
            thread.start()

    def _watch(self, events: Receiver, on_progress: ProgressCallback | None) -> None:
        """Until every source ended or a stop is requested; a dead stage is an error."""
        while not self.stop.is_set() and not all(c.stats.finished for c in self._captures):
            self._poll(events)
            self._supervise()
            self._collect_capture_stats()
            self._observe("on_tick", self)
            if on_progress:
                on_progress(self)

    def _observe(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            getattr(observer, hook)(*args)

    def _shutdown(self, ctx: zmq.Context, events: Receiver, on_progress: ProgressCallback | None) -> None:
        """Stop capture, send STOP behind the frames in flight, wait for both stages to finish."""
        self._observe("on_stop", self)
        self._capture_stop.set()
        deadline = time.monotonic() + self.settings.capture.open_timeout_s + 2
        while any(t.is_alive() for t in self._captures) and time.monotonic() < deadline:
            self._poll(events)  # the EOS acknowledgements the capture threads wait for
        self._collect_capture_stats()
        ended = tuple(c.spec.camera for c in self._captures if c.stats.finished)
        if self._restart_due:  # a stage waiting out its restart delay: start it now, so it drains and closes cleanly
            for name in list(self._restart_due):
                self._spawn(name)
            self._restart_due.clear()
            self._wait_ready(events)
        if any(name not in self._processes or not self._processes[name].is_alive() for name in STAGES):
            self._rescue_incidents(ctx, events)
            return
        send(self._control, encode_control(StopHeader(sources=ended)))
        deadline = time.monotonic() + self.settings.database.flush_timeout_s + STOP_GRACE_S
        while self._done != set(STAGES) and time.monotonic() < deadline:
            self._poll(events)
            if on_progress:
                on_progress(self)
            if any(not p.is_alive() and p.exitcode not in (0, None) for p in self._processes.values()):
                self._poll(events)  # collect the error event
                break
        for name, process in self._processes.items():
            # a stage that reported `done` has nothing left to lose: it gets a short grace to exit
            grace = EXIT_GRACE_S if name in self._done else STOP_GRACE_S
            process.join(max(0.0, min(grace, deadline - time.monotonic())))

    def _stop_incidents_directly(self, ctx: zmq.Context) -> None:
        control = push_socket(ctx, self.endpoints.detections, 1, curve=self.endpoints.curve)
        send(control, encode_control(StopHeader()))
        control.close()

    def _rescue_incidents(self, ctx: zmq.Context, events: Receiver) -> None:
        """Inference died: STOP the incidents stage directly so it closes and flushes what it has."""
        process = self._processes.get("incidents")
        if process is None or not process.is_alive() or "incidents" in self._done:
            return
        log.warning("stopping the incidents stage directly so open incidents are closed and saved")
        self._stop_incidents_directly(ctx)
        deadline = time.monotonic() + self.settings.database.flush_timeout_s + STOP_GRACE_S
        while "incidents" not in self._done and process.is_alive() and time.monotonic() < deadline:
            self._poll(events)
        process.join(max(0.0, deadline - time.monotonic()))

    def _poll(self, events: Receiver) -> None:
        message = events.recv(POLL_MS)
        while message is not None:
            if isinstance(message, EventHeader):
                self._on_event(message)
            message = events.recv(0)

    def _on_event(self, event: EventHeader) -> None:
        self._observe("on_event", event.stage, event.event, event.data)
        self._last_beat[event.stage] = time.monotonic()
        if event.event == "eos":
            for thread in self._captures:
                if thread.spec.camera == event.data.get("camera"):
                    thread.acked.set()
        elif event.event == "ready":
            self._ready.add(event.stage)
            self.stages[event.stage] = dict(event.data)
        elif event.event in ("progress", "heartbeat"):  # a heartbeat carries the stage's counters too
            self.stages.setdefault(event.stage, {}).update(event.data)
            if event.stage == "incidents":
                self._on_counts(event.data)
        elif event.event == "stopping" and event.stage == "incidents":
            self._relay_end_acknowledgement(event)
        elif event.event == "done":
            self._done.add(event.stage)
            self.stages.setdefault(event.stage, {}).update(event.data)
            if event.stage == "incidents":
                self._on_counts(event.data)
        elif event.event == "error":
            self._done.add(event.stage)
            self.stages.setdefault(event.stage, {})["error"] = event.data.get("message", "unknown error")
            log.error("%s stage failed: %s", event.stage, self.stages[event.stage]["error"])

    def _relay_end_acknowledgement(self, event: EventHeader) -> None:
        """Incidents took the STOP (after every detection before it): tell inference, which may now close."""
        if self._control is not None and not send(self._control, encode_control(event), block=False):
            log.warning("could not relay the incidents stage's acknowledgement of the STOP to inference")

    def _on_counts(self, data: dict[str, Any]) -> None:
        """The incidents stage sees every analysed frame: its counters are the pipeline's."""
        elapsed = time.monotonic() - self._started
        for camera, count in data.get("frames", {}).items():
            result = self.results.get(camera)
            if result is not None and count != result.frames:
                result.frames, result.elapsed_s = count, elapsed
        for camera, count in data.get("incidents", {}).items():
            if camera in self.results:
                self.results[camera].incidents = count

    def _collect_capture_stats(self) -> None:
        for thread in self._captures:
            result = self.results[thread.spec.camera]
            result.expected = thread.stats.expected
            result.sent = thread.stats.sent
            result.copies = thread.stats.copies
            result.error = thread.stats.error

    def _supervise(self) -> None:
        """A stage that died, failed or stalled: a replay fails with its reason, a live run restarts it."""
        now = time.monotonic()
        for name in STAGES:
            if name in self._restart_due:
                if now >= self._restart_due[name]:
                    del self._restart_due[name]
                    self._spawn(name)
                continue
            try:
                self._check_alive(name)
                self._check_heartbeat(name, now)
            except PipelineError as failure:
                if not self.restart:
                    raise
                self._schedule_restart(name, str(failure), now)

    def _check_alive(self, name: str | None = None) -> None:
        """A dead or failed stage (or one that never got ready) raises PipelineError with its reason."""
        for stage in [name] if name else list(self._processes):
            process = self._processes[stage]
            if not process.is_alive() and stage not in self._done:
                reason = self.stages.get(stage, {}).get("error") or f"exit code {process.exitcode}"
                raise PipelineError(f"{stage} stage stopped unexpectedly: {reason}")
            if stage in self.stages and "error" in self.stages[stage]:
                raise PipelineError(f"{stage} stage failed: {self.stages[stage]['error']}")
            if stage in self._done and not self.stop.is_set():
                raise PipelineError(f"{stage} stage ended while its sources still run")
            if stage not in self._ready and time.monotonic() - self._spawned_at.get(stage, time.monotonic()) > READY_TIMEOUT_S:
                raise PipelineError(f"{stage} stage not ready after {READY_TIMEOUT_S:.0f}s")

    def _check_heartbeat(self, name: str, now: float) -> None:
        """A stage that stopped reporting (wedged in a driver call, stopped, deadlocked) has failed."""
        limit = self.settings.transport.stall_timeout_s
        last = self._last_beat.get(name)
        if last is not None and name in self._ready and name not in self._done and now - last > limit:
            raise PipelineError(f"{name} stage stalled: no heartbeat for {now - last:.0f} s "
                                f"(transport.stall_timeout_s is {limit:g})")

    def _schedule_restart(self, name: str, reason: str, now: float) -> None:
        """Kill what is left of the stage and start it again after a backoff; a crash loop fails the run.

        Records the stage had accepted are in the spool: the next incidents process adopts them (and
        closes the incidents it left open), so a restart loses at most the frames in flight.
        """
        policy = self.settings.supervisor
        recent = self._restart_times[name]
        while recent and now - recent[0] > policy.restart_window_s:
            recent.popleft()
        if len(recent) >= policy.max_restarts:
            raise PipelineError(f"{reason}; not restarting it again: {len(recent)} restart(s) within "
                                f"{policy.restart_window_s:g} s (supervisor.max_restarts is {policy.max_restarts})")
        process = self._processes[name]
        if process.is_alive():  # stalled: alive but silent (SIGSTOP, a wedged driver call)
            process.kill()
        process.join(5)
        recent.append(now)
        backoff = Backoff(policy.restart_initial_s, policy.restart_max_s, 0.0)
        backoff.attempt = len(recent) - 1
        delay = backoff.next()
        self.restarts[name] += 1
        self._restart_due[name] = now + delay
        for state in (self._ready, self._done):
            state.discard(name)
        self._last_beat.pop(name, None)
        self.stages.setdefault(name, {}).pop("error", None)
        log.error("%s; restarting it in %.1f s (restart %d, %d within %g s)", reason, delay, self.restarts[name],
                  len(recent), policy.restart_window_s)

    def _kill_leftovers(self) -> None:
        for thread in self._captures:
            if thread.is_alive():  # only a failed run gets here with captures still going
                thread.abort.set()
        self._capture_stop.set()
        for thread in self._captures:  # their sockets die with the context: let them finish first
            thread.join(EOS_TIMEOUT_MS / 1000 + 1)
        for name, process in self._processes.items():
            if process.is_alive():
                log.warning("%s stage still running at exit; stopping it", name)
                process.kill()
                process.join(5)
                if name not in self._done:  # its final counts never came: the run cannot claim success
                    self.stages.setdefault(name, {}).setdefault("error", "did not finish in time and was killed")


def camera_specs(settings: Settings) -> list[SourceSpec]:
    return spread_phases([SourceSpec.from_camera(camera) for camera in settings.cameras if camera.enabled])


def replay_specs(settings: Settings, files: list[Path], *, realtime: bool = False) -> list[SourceSpec]:
    """Files as sources ``replay:<stem>`` (``-2``, ``-3``... when stems repeat)."""
    specs: list[SourceSpec] = []
    seen: dict[str, int] = {}
    for path in files:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        camera = f"replay:{stem}" if seen[stem] == 1 else f"replay:{stem}-{seen[stem]}"
        specs.append(SourceSpec(camera=camera, source=str(Path(path).resolve()), fps=settings.replay.fps, realtime=realtime))
    return spread_phases(specs)


def replay_files(
    settings: Settings,
    files: list[Path],
    *,
    realtime: bool = False,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Replay video files through the real pipeline; a failing file does not stop the others."""
    supervisor = Supervisor(settings, replay_specs(settings, [Path(f) for f in files], realtime=realtime), stop)
    if not progress:
        return supervisor.run()
    from pipeline.progress import ReplayProgress

    with ReplayProgress() as display:
        report = supervisor.run(display.update)
        display.update(supervisor, force=True)
    display.summary(report)
    return report


def run_cameras(settings: Settings, stop: threading.Event | None = None, observers: Sequence[Observer] = ()) -> ReplayReport:
    """Analyse the configured cameras until ``stop`` is set or every (file) camera ended; failed
    stages are restarted (``supervisor`` config), a crash loop ends the run with PipelineError."""
    specs = camera_specs(settings)
    if not specs:
        raise PipelineError("no enabled camera in the config: add one under `cameras`")
    return Supervisor(settings, specs, stop, observers, restart=settings.supervisor.restart).run()
