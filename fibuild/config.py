"""Settings read from the environment at call time.

``Settings.from_env()`` is the only place fibuild reads ``FIBUILD_*`` variables; nothing is
read at import. Every knob is listed in ``KNOBS`` with its default and meaning: the one
place a default is written (``from_env`` reads through :func:`_raw`), and the source of the
README's table (:func:`env_table_markdown`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import ConfigError


@dataclass(frozen=True)
class Knob:
    env: str
    default: str
    meaning: str


KNOBS: tuple[Knob, ...] = (
    Knob("FIBUILD_ROOT", "", "Workspace root (holds defs/, solutions/, registry/). Empty: the "
         "nearest ancestor of the current directory holding defs/, else the user workspace "
         "(`XDG_DATA_HOME`) over the shipped library."),
    Knob("FIBUILD_CACHE_DIR", "~/.cache/fibuild", "Build cache: build directories, index, locks."),
    Knob("XDG_DATA_HOME", "~/.local/share", "User data home. `$XDG_DATA_HOME/fibuild` is the user workspace: "
         "when no workspace is found, commands read the shipped library through it and write there (bench "
         "records, traced workloads, imports), never into the installed package; `fibuild init --user` "
         "makes it, and the first write does."),
    Knob("FIBUILD_CUDA_ARCH_LIST", "", "CUDA archs to build for, e.g. `9.0a` or `8.0;9.0a`. "
         "Empty: the visible GPU's, else `9.0a`."),
    Knob("FIBUILD_NVCC_JOBS", "1", "Concurrent nvcc processes in one build (ninja pool depth)."),
    Knob("FIBUILD_MAX_JOBS", "", "ninja -j for build-all. Empty: the number of CPUs."),
    Knob("FIBUILD_DISABLE_BUILD", "0", "1: never compile; a cache miss raises BuildError."),
    Knob("FIBUILD_DEVICE", "", "Device for bench/load: `cpu`, `cuda` or `cuda:N`. Empty: cuda if available."),
    Knob("FIBUILD_PREPARE_TIMEOUT", "900", "Seconds a solution's load and first call may take in a bench "
         "worker or rank when it declares that work (`first_call: [jit]`, `[autotune]`, `[workspace]`; "
         "implied by a `flashinfer-python` dependency and by a distributed definition) or is visibly "
         "compiling (a compiler runs under the worker); any other first call gets `--timeout`. "
         "Overrunning is TIMEOUT, the phase named."),
    Knob("FIBUILD_LOG_LEVEL", "WARNING", "Python logging level of the `fibuild` logger."),
    Knob("FIBUILD_TRACE", "0", "1: record the shapes of FlashInfer, `F.linear`, sgl_kernel and vLLM `_C` "
         "norm/activation calls of any Python process as workloads under registry/ (through the installed "
         "`.pth` hook, and in vLLM's workers through its `vllm.general_plugins` entry point)."),
    Knob("FIBUILD_APPLY", "0", "1: run the fastest correct fibuild solution in place of those calls "
         "(the original where fibuild has nothing better)."),
    Knob("FIBUILD_TRUSTED_FLAGS", "", "Build flags to accept beyond fibuild's allowlist: space-separated "
         "shell patterns matched against each flag token, e.g. `-include *.h`. The one place a workspace "
         "that trusts its manifests' authors widens the list (see SECURITY.md); empty: the allowlist only."),
    Knob("FIBUILD_SERVING_WAIT", "0.25", "Seconds the serving integration (`FIBUILD_TRACE`/`FIBUILD_APPLY`) "
         "waits for a build lock or the build index that another process holds before it runs the "
         "original function instead (and says so once, in the log and in `stats()`)."),
    Knob("FIBUILD_MODE", "auto", "The cost `fibuild.load` and the serving integration rank by: `eager` "
         "(max of host and GPU time per call), `graph` (GPU time, for calls captured in a CUDA graph), "
         "`auto` (per key at its first call: graph while capturing)."),
    Knob("FIBUILD_STATS", "0", "1: with tracing or applying, print at exit what each patched API's calls did "
         "(substituted, original, fallbacks by reason; `fibuild.integrations.stats()`) and keep the totals "
         "for `fibuild trace report`."),
    Knob("FIBUILD_PDL", "1", "1: launch the kernels of solutions that declare `launch: {pdl: true}` with "
         "programmatic dependent launch where the GPU has it (sm_90+); 0: launch them plainly."),
    Knob("CUDA_HOME", "/usr/local/cuda", "CUDA toolkit root; never inferred from the nvcc on PATH."),
)

#: flashinfer-bench's variables. fibuild does not read them (its dataset is a different
#: layout, and a process with flashinfer-bench installed is flashinfer-bench's to patch); a
#: process started with one set, and without flashinfer-bench, says so once (see
#: :func:`flashinfer_bench_settings`).
FLASHINFER_BENCH_VARS: tuple[Knob, ...] = (
    Knob("FIB_ENABLE_TRACING", "", "flashinfer-bench's; not read by fibuild (said once on stderr when "
         "flashinfer-bench is not installed): set `FIBUILD_TRACE=1`."),
    Knob("FIB_ENABLE_APPLY", "", "flashinfer-bench's; not read, as above: set `FIBUILD_APPLY=1`."),
    Knob("FIB_DATASET_PATH", "", "flashinfer-bench's; not read, as above: set `FIBUILD_ROOT` to a "
         "workspace and bring the dataset in with `fibuild import flashinfer-trace DIR`."),
)

#: Variables the compilers read by themselves; their values go into the build key.
BUILD_ENV_VARS: tuple[str, ...] = ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "LIBRARY_PATH",
                                   "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN")


_DEFAULTS = {k.env: k.default for k in KNOBS}
TRUSTED_FLAGS_ENV = "FIBUILD_TRUSTED_FLAGS"


def _raw(env: Mapping[str, str], name: str) -> str:
    """The stripped value of knob ``name``: the environment's when set and non-empty, else
    its default from KNOBS."""
    return env.get(name, "").strip() or _DEFAULTS[name]


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _raw(env, name).lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected 0 or 1")


def _number(env: Mapping[str, str], name: str, convert, what: str, bound: str):
    """Knob ``name`` converted by ``convert`` (int or float), finite and > 0; None when it
    and its default are empty. ConfigError says ``expected <what> <bound>``."""
    raw = _raw(env, name)
    if not raw:
        return None
    try:
        value = convert(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {what}") from None
    if not 0 < value < math.inf:
        raise ConfigError(f"{name}={raw!r}: expected {what} {bound}")
    return value


def _int(env: Mapping[str, str], name: str) -> int | None:
    """Knob ``name`` as an integer >= 1, or None when it and its default are empty."""
    return _number(env, name, int, "an integer", ">= 1")


@dataclass(frozen=True)
class Settings:
    """Typed view of the environment. Build one per command; pass it down."""

    root: Path | None
    cache_dir: Path
    cuda_arch_list: tuple[str, ...]
    nvcc_jobs: int
    max_jobs: int
    disable_build: bool
    device: str
    log_level: str
    cuda_home: Path
    prepare_timeout_s: float  # the default covers FlashInfer's trtllm_comm JIT build (~300 s)
    build_env: tuple[tuple[str, str], ...] = ()  # the set BUILD_ENV_VARS, sorted (build key input)
    trace: bool = False  # FIBUILD_TRACE: the serving integration records calls
    apply: bool = False  # FIBUILD_APPLY: the serving integration substitutes calls
    trusted_flags: tuple[str, ...] = ()  # FIBUILD_TRUSTED_FLAGS: patterns of build flags let past the allowlist
    serving_wait_s: float = 0.25  # FIBUILD_SERVING_WAIT
    #: how long a build lock or the index may be waited for; None: as long as it takes (the
    #: CLI). The serving integration sets it to serving_wait_s; a longer wait is BusyError.
    wait_s: float | None = None
    mode: str = "auto"  # FIBUILD_MODE: eager | graph | auto
    stats: bool = False  # FIBUILD_STATS: print the integration's counters at exit
    pdl: bool = True  # FIBUILD_PDL: solutions declaring launch.pdl launch with PDL
    data_home: Path = Path("~/.local/share").expanduser()  # XDG_DATA_HOME: the user workspace's parent

    @property
    def user_root(self) -> Path:
        """The user workspace, ``$XDG_DATA_HOME/fibuild``: written to when no workspace is found."""
        return self.data_home / "fibuild"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read every knob from ``env`` (default ``os.environ``); raise ConfigError on bad values.

        ``overrides`` replace fields after reading (CLI options take precedence).
        """
        env = os.environ if env is None else env
        root = _raw(env, "FIBUILD_ROOT")
        archs = tuple(a.strip() for a in
                      _raw(env, "FIBUILD_CUDA_ARCH_LIST").replace(",", ";").replace(" ", ";").split(";")
                      if a.strip())
        device = _raw(env, "FIBUILD_DEVICE").lower()
        if device and device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
            raise ConfigError(f"FIBUILD_DEVICE={device!r}: expected cpu, cuda or cuda:N")
        mode = _raw(env, "FIBUILD_MODE").lower()
        if mode not in ("auto", "eager", "graph"):
            raise ConfigError(f"FIBUILD_MODE={mode!r}: expected auto, eager or graph")
        settings = cls(
            root=Path(root).expanduser().resolve() if root else None,
            cache_dir=Path(_raw(env, "FIBUILD_CACHE_DIR")).expanduser().resolve(),
            cuda_arch_list=archs,
            nvcc_jobs=_int(env, "FIBUILD_NVCC_JOBS") or 1,
            max_jobs=_int(env, "FIBUILD_MAX_JOBS") or (os.cpu_count() or 1),
            disable_build=_flag(env, "FIBUILD_DISABLE_BUILD"),
            device=device,
            log_level=_raw(env, "FIBUILD_LOG_LEVEL").upper(),
            cuda_home=Path(_raw(env, "CUDA_HOME")),
            build_env=tuple(sorted((k, env[k]) for k in BUILD_ENV_VARS if env.get(k))),
            prepare_timeout_s=_number(env, "FIBUILD_PREPARE_TIMEOUT", float, "a number of seconds", "> 0"),
            trace=_flag(env, "FIBUILD_TRACE"),
            apply=_flag(env, "FIBUILD_APPLY"),
            trusted_flags=trusted_flags(env),
            serving_wait_s=_number(env, "FIBUILD_SERVING_WAIT", float, "a number of seconds", "> 0"),
            mode=mode,
            stats=_flag(env, "FIBUILD_STATS"),
            pdl=_flag(env, "FIBUILD_PDL"),
            data_home=Path(_raw(env, "XDG_DATA_HOME")).expanduser().resolve(),
        )
        return dataclasses.replace(settings, **overrides) if overrides else settings


def trusted_flags(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The patterns of FIBUILD_TRUSTED_FLAGS (read now from ``env``, default ``os.environ``)."""
    return tuple(_raw(os.environ if env is None else env, TRUSTED_FLAGS_ENV).split())


def flashinfer_bench_settings(env: Mapping[str, str] | None = None) -> list[str]:
    """The FLASHINFER_BENCH_VARS set (non-empty, not ``0``) in ``env`` (default
    ``os.environ``), as ``NAME=value``."""
    env = os.environ if env is None else env
    return [f"{k.env}={env[k.env]}" for k in FLASHINFER_BENCH_VARS
            if env.get(k.env, "").strip() not in ("", "0")]


def env_table_markdown() -> str:
    """The knob table as Markdown (the README embeds it), flashinfer-bench's variables last."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{k.env}` | `{k.default}` | {k.meaning} |" for k in KNOBS + FLASHINFER_BENCH_VARS]
    return "\n".join(rows)
