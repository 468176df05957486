"""The JSON-lines protocol between the runners and their child processes (nothing is pickled).

Both children, the benchmark worker (:mod:`fibuild.bench.worker`) and a distributed rank
(:mod:`fibuild.bench.distributed_rank`), run :func:`child_main`: the first line is
``{"op": "init", ...}``, answered ``{"op": "ready", "environment", "pid"}`` or
``{"op": "error", "error"}``; then ``{"op": "prepare", ...}`` and ``{"op": "run", ...}``
are answered by the handler's ``prepare`` / ``run`` (one ``result`` line each) until
``{"op": "exit"}`` or EOF. A reply with ``"fatal": true`` ends the child at once with exit
code 3 (a CUDA error or a half-done collective: nothing is torn down that could block).

The child keeps the real stdout for the protocol; file descriptor 1 is pointed at stderr so
whatever a kernel prints cannot corrupt it. Also here: the JSON forms of Settings and
Workloads that travel in these messages, and the parent's read of a child's stderr tail.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, Callable, Mapping

from fibuild.config import Settings
from fibuild.devices import device_environment
from fibuild.spec.model import InputSpec, Workload

#: Exit code of a child that left after a fatal reply.
FATAL_EXIT = 3
STDERR_TAIL = 3000


def settings_to_json(settings) -> dict[str, Any]:
    """A Settings as JSON: paths as ``{"path": ...}``, tuples as lists."""
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            value = {"path": str(value)}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def settings_from_json(data: Mapping[str, Any]):
    """Inverse of :func:`settings_to_json`."""
    values = {}
    for f in fields(Settings):
        if f.name not in data:
            continue  # a field with a default the sender did not know
        value = data[f.name]
        if isinstance(value, dict) and set(value) == {"path"}:
            value = Path(value["path"])
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[f.name] = value
    return Settings(**values)


def workload_to_json(workload) -> dict[str, Any]:
    return {"uuid": workload.uuid, "axes": dict(workload.axes), "source": workload.source,
            "inputs": {name: {"kind": s.kind, "value": s.value, "path": s.path, "tensor_key": s.tensor_key}
                       for name, s in workload.inputs.items()}}


def workload_from_json(data: Mapping[str, Any]):
    return Workload(uuid=data["uuid"], axes={k: int(v) for k, v in data["axes"].items()},
                    inputs={k: InputSpec(**v) for k, v in data.get("inputs", {}).items()},
                    source=data.get("source", ""))


def stderr_tail(stream: IO[bytes], limit: int = STDERR_TAIL) -> str:
    """The last ``limit`` bytes of a child's stderr file, decoded and stripped."""
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    return stream.read().decode("utf-8", "replace").strip()


def serve(start: Callable[[Mapping[str, Any]], Any], proto_in, proto_out) -> int:
    """Answer the protocol on ``proto_in``/``proto_out`` with the handler ``start(init)``
    returns (it has ``device``, ``prepare(msg)`` and ``run(msg)``; both never raise).

    Returns 0 after ``exit`` or EOF, 2 when ``start`` raised (an ``error`` reply is sent),
    FATAL_EXIT after a fatal reply.
    """
    def send(obj: dict) -> None:
        proto_out.write(json.dumps(obj, default=str) + "\n")
        proto_out.flush()

    first = proto_in.readline()
    if not first:
        return 0
    try:
        handler = start(json.loads(first))

        send({"op": "ready", "environment": device_environment(handler.device), "pid": os.getpid()})
    except Exception as exc:
        send({"op": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 2
    for line in proto_in:
        if not line.strip():
            continue
        msg = json.loads(line)
        op = msg.get("op")
        if op == "exit":
            break
        if op in ("prepare", "run"):
            reply = getattr(handler, op)(msg)
            send(reply)
            if reply.get("fatal"):
                return FATAL_EXIT
    return 0


def child_main(start: Callable[[Mapping[str, Any]], Any], on_exit: Callable[[], None] | None = None) -> int:
    """The body of a child's ``main()``: protocol on the real stdout, fd 1 to stderr, then
    :func:`serve`. After a fatal reply the process leaves with ``os._exit`` (a CUDA context
    or a process group may be in a state where an orderly exit blocks); after ``exit``,
    ``on_exit`` runs (e.g. leaving the process group) and the code is returned.
    """
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = serve(start, sys.stdin, proto_out)
    if code == FATAL_EXIT:
        sys.stderr.flush()
        os._exit(code)
    if code == 0 and on_exit is not None:
        on_exit()
    return code
