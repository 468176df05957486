"""Which build flags a solution manifest may carry: an allowlist per tool.

Building a workspace must run nothing but the compilers on its sources and write nothing
outside the build directory. The compiler drivers have many spellings that break this
(gcc's ``--for-linker`` alias of ``-Xlinker``, ``-Wp,-MD,<file>``, clang ``--config``,
``-fdump-tree-*=<file>``, nvcc ``-time <file>``, ...), so each field accepts only flag
forms known to be safe for the tool that reads it and refuses every other token:

- ``cflags`` (the C++ compiler, gcc or clang) and the pieces of nvcc's ``-Xcompiler``:
  ``-O*``, ``-g*``, ``-D``/``-U``, ``-std=``, ``-W<warning>``, ``-w``, ``-pedantic``,
  ``-pthread``, ``-f``/``-m`` switches that take no value or a value from a fixed list (never
  a path), ``--param=name=N``, and ``-I``/``-isystem``/``-iquote``/``-idirafter`` to a
  folder inside the solution (relative, no ``..``) or under a system include folder;
- ``cuda_cflags`` (nvcc): ``-O*``, ``-g``/``-G``, ``-lineinfo``, ``-D``/``-U``, ``-I``/
  ``-isystem`` (as above), ``-std=``, ``-gencode``/``-arch``/``-code`` with architecture
  names, ``--use_fast_math``, ``--expt-relaxed-constexpr``, ``--extended-lambda``,
  ``-maxrregcount``, ``--ftz``/``--prec-div``/``--prec-sqrt``/``--fmad``, diagnostics
  switches, ``--threads``, ``-Xcompiler`` (pieces as ``cflags``), ``-Xptxas`` and
  ``-Xcudafe`` with their known-harmless pieces;
- ``ldflags`` (the C++ driver linking): ``-l<name>``, ``-L`` to a system library folder,
  ``-pthread``, ``-shared``, ``-static-libstdc++``/``-static-libgcc``, ``-rdynamic``,
  ``-s``, the ``-O``/``-g``/``-f``/``-m`` forms above, ``-fuse-ld=`` bfd, gold, lld or mold,
  and ``-Wl,`` pieces from a list (``-z <keyword>``, ``--as-needed``, ``-rpath`` to a system
  library folder or ``$ORIGIN``, ``--gc-sections``, ``-Bsymbolic``, ...).

``FIBUILD_TRUSTED_FLAGS`` (space-separated shell patterns, e.g. ``'-include *.h'``) is the
one place a workspace that trusts its authors widens the list: a token matching one is
accepted as is. No token may hold a control character, trusted or not (a newline would
break the generated ninja file). Pure functions, no I/O; cost linear in the flags.
"""
from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Callable, Iterable, Sequence

from fibuild.config import TRUSTED_FLAGS_ENV

from .flag_dangers import danger as _danger

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: the fields of ``build`` and the tool that reads each
FIELD_TOOLS = {"cflags": "cxx", "cuda_cflags": "nvcc", "ldflags": "link"}
_TOOL_NAMES = {"cxx": "C++ compiler", "nvcc": "nvcc", "link": "link", "ptxas": "ptxas (-Xptxas)",
               "cudafe": "cudafe (-Xcudafe)", "ld": "linker (-Wl,)"}

#: folders a build may read headers from besides the solution's own
SYSTEM_INCLUDE_DIRS = ("/usr/include", "/usr/local/include", "/usr/local/cuda/include", "/opt/cuda/include")
#: folders ``-L`` and ``-rpath`` may name
SYSTEM_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64", "/lib", "/lib64",
                       "/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/opt/cuda/lib64")
_CUDA_VERSIONED = re.compile(r"/usr/local/cuda-[0-9.]+(/.*)?")

Check = Callable[[str], "str | None"]  # a value's refusal reason, or None

# -- value checks ------------------------------------------------------------------------

def _under(path: str, roots: Iterable[str]) -> bool:
    norm = posixpath.normpath(path)
    return any(norm == r or norm.startswith(r + "/") for r in roots)


def include_dir_reason(value: str, cuda_home: str = "") -> str | None:
    """Why a header folder (``include_dirs`` entry, ``-I`` value) is refused, or None: it must
    be relative and stay inside the solution, or lie under a system include folder."""
    control = _CONTROL.search(value)
    if control:
        return f"{value!r} holds the control character {control.group()!r}"
    if not value or value.startswith(("-", "@")):
        return f"{value!r} is not a folder: an include folder is a path, not an option"
    if value.startswith("/"):
        roots = SYSTEM_INCLUDE_DIRS + ((posixpath.join(cuda_home, "include"),) if cuda_home else ())
        norm = posixpath.normpath(value)
        if _under(norm, roots) or (_CUDA_VERSIONED.fullmatch(norm) and "/include" in norm):
            return None
        return (f"{value!r} is outside the solution and the system include folders "
                f"({', '.join(roots)})")
    if posixpath.normpath(value).split("/")[0] == "..":
        return f"{value!r} leaves the solution folder"
    return None


def _library_dir(value: str, cuda_home: str = "") -> str | None:
    roots = SYSTEM_LIBRARY_DIRS + ((posixpath.join(cuda_home, "lib64"),) if cuda_home else ())
    norm = posixpath.normpath(value) if value.startswith("/") else ""
    if norm and (_under(norm, roots) or _CUDA_VERSIONED.fullmatch(norm)):
        return None
    return f"{value!r} is not a system library folder ({', '.join(roots)})"


def _pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)
    return lambda v: None if compiled.fullmatch(v) else f"{v!r} is not {what}"


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = _pattern(r"[0-9]+", "a number")
_ARCH = r"(sm|compute|lto)_[0-9]+[af]?"
_NVCC_ARCH = _pattern(rf"{_ARCH}|native|all|all-major", "a GPU architecture (sm_90a, compute_90a)")
_NVCC_CODE = _pattern(rf"\[?{_ARCH}(,{_ARCH})*\]?", "a list of GPU codes (sm_90a,compute_90a)")
_GENCODE = _pattern(rf"arch=compute_[0-9]+[af]?,code=\[?{_ARCH}(,{_ARCH})*\]?",
                    "arch=compute_XX,code=sm_XX")
_BOOL = _pattern(r"true|false", "true or false")
_STD = _pattern(r"(c|gnu|c\+\+|gnu\+\+)[0-9a-z]+", "a language standard (c++17)")
_MACRO = _pattern(rf"{_IDENT}(\([A-Za-z0-9_, .]*\))?(=.*)?", "a macro definition (NAME or NAME=value)")
_UNDEF = _pattern(_IDENT, "a macro name")
_PARAM = _pattern(r"[a-z0-9-]+=[0-9]+", "name=number")
_WORDS = _pattern(r"[A-Za-z0-9_,.-]+", "a list of names or numbers")
_LIBNAME = _pattern(r"[A-Za-z0-9_+.-]+", "a library name")

#: ``-f<name>=<value>`` forms (gcc, clang) with a value from a fixed set, never a path
_F_VALUES: dict[str, Check] = {
    "visibility": _pattern(r"default|hidden|protected|internal", "a visibility"),
    "fp-contract": _pattern(r"fast|on|off|fast-honor-pragmas", "fast, on or off"),
    "diagnostics-color": _pattern(r"always|never|auto", "always, never or auto"),
    "lto": _pattern(r"auto|thin|full|jobserver|[0-9]+", "auto, thin, full or a number"),
    "excess-precision": _pattern(r"fast|standard|16", "fast or standard"),
    "tls-model": _pattern(r"global-dynamic|local-dynamic|initial-exec|local-exec", "a TLS model"),
    "denormal-fp-math": _pattern(r"ieee|preserve-sign|positive-zero|dynamic", "a denormal mode"),
    "fp-model": _pattern(r"precise|strict|fast", "precise, strict or fast"),
    "cf-protection": _pattern(r"full|branch|return|none|check", "a protection"),
    "vect-cost-model": _pattern(r"unlimited|dynamic|cheap|very-cheap", "a cost model"),
    "simd-cost-model": _pattern(r"unlimited|dynamic|cheap|very-cheap", "a cost model"),
    "input-charset": _pattern(r"[A-Za-z0-9_.:-]+", "a character set"),
    "exec-charset": _pattern(r"[A-Za-z0-9_.:-]+", "a character set"),
    "use-ld": _pattern(r"bfd|gold|lld|mold", "bfd, gold, lld or mold"),
    "strict-flex-arrays": _pattern(r"[0-3]", "0 to 3"),
    **{name: _pattern(r"[a-z0-9,_-]+", "a list of sanitizers")
       for name in ("sanitize", "no-sanitize", "sanitize-recover", "no-sanitize-recover", "sanitize-trap")},
    **{name: _NUMBER for name in (
        "template-depth", "constexpr-depth", "constexpr-steps", "constexpr-loop-limit",
        "constexpr-ops-limit", "max-errors", "error-limit", "abi-version", "inline-limit",
        "bracket-depth", "macro-backtrace-limit", "template-backtrace-limit", "openmp-version",
        "max-include-depth", "message-length", "concepts-diagnostics-depth", "lto-partition-size")},
    **{name: _pattern(r"[0-9:]+", "a number") for name in (
        "align-functions", "align-loops", "align-jumps", "align-labels")},
}
#: ``-f`` switches without a value that still write outside the build directory
_F_REFUSED = re.compile(r"(c\+\+-)?modules.*|implicit-module.*|cxx-modules|module-.*|plugin.*|pass-plugin.*")
_F_SWITCH = re.compile(r"-f(no-)?([A-Za-z0-9][A-Za-z0-9+_.-]*)(=(.*))?")
_M_SWITCH = re.compile(r"-m(?!llvm$)(no-)?[a-z0-9][a-z0-9_+.-]*(=[A-Za-z0-9_.+,-]+)?")
_W_SWITCH = re.compile(r"-W[A-Za-z0-9][A-Za-z0-9_+=.-]*")
_O_LEVEL = re.compile(r"-O[0-3sgz]?|-Ofast")
_G_LEVEL = re.compile(r"-g[0-3]?|-ggdb[0-3]?|-gdwarf(-[2-5])?|-gline-tables-only|-gno-column-info")


def _f_switch(token: str) -> str | None:
    """None when ``token`` is an acceptable ``-f`` switch, "" when it is no ``-f`` switch,
    else why it is refused."""
    match = _F_SWITCH.fullmatch(token)
    if not match:
        return ""
    name, value = match.group(2), match.group(4)
    if value is None:
        if match.group(1) is None and _F_REFUSED.fullmatch(name):
            return "writes or loads files outside the build directory"
        return None
    check = _F_VALUES.get(name)
    if check is None:
        return "takes a value fibuild does not know to be safe (it may name a file)"
    return check(value)


# -- the per-tool grammars ----------------------------------------------------------------

class _Grammar:
    """Accepted forms for one tool: exact tokens, regex tokens, options with a value
    (joined after ``=``, joined directly, or the next token) and piece lists."""

    def __init__(self, *, exact: Iterable[str] = (), regexes: Iterable[re.Pattern] = (),
                 valued: dict[str, Check] | None = None, joined: dict[str, Check] | None = None,
                 functions: Iterable[Callable[[str], "str | None"]] = (),
                 pieces: dict[str, str] | None = None):
        self.exact = frozenset(exact)
        self.regexes = tuple(regexes)
        self.valued = valued or {}    # option -> value check; value after "=" or as the next token
        self.joined = joined or {}    # prefix -> value check; value glued on (-DNAME, -lm)
        self.functions = tuple(functions)
        self.pieces = pieces or {}    # option -> tool of its comma-separated pieces


def _grammars(cuda_home: str) -> dict[str, _Grammar]:
    include = lambda v: include_dir_reason(v, cuda_home)  # noqa: E731
    library = lambda v: _library_dir(v, cuda_home)  # noqa: E731
    common_includes = {"-I": include, "-isystem": include}
    cxx = _Grammar(
        exact={"-w", "-pedantic", "-pedantic-errors", "-pthread", "-pipe", "-nostdinc", "-nostdinc++", "-ansi"},
        regexes=(_O_LEVEL, _G_LEVEL, _W_SWITCH, _M_SWITCH),
        valued={"-std": _STD, "--param": _PARAM, "-isystem": include, "-iquote": include,
                "-idirafter": include, "-I": include, "-D": _MACRO, "-U": _UNDEF},
        joined={"-D": _MACRO, "-U": _UNDEF, "-I": include, "-isystem": include, "-iquote": include,
                "-idirafter": include},
        functions=(_f_switch,),
    )
    link = _Grammar(
        exact={"-pthread", "-shared", "-static-libstdc++", "-static-libgcc", "-rdynamic", "-s", "-w"},
        regexes=(_O_LEVEL, _G_LEVEL, _M_SWITCH),
        valued={"-l": _LIBNAME, "-L": library},
        joined={"-l": _LIBNAME, "-L": library},
        functions=(_f_switch,),
        pieces={"-Wl": "ld"},
    )
    nvcc = _Grammar(
        exact={"-g", "-G", "--device-debug", "-lineinfo", "--generate-line-info", "--use_fast_math",
               "-use_fast_math", "--expt-relaxed-constexpr", "-expt-relaxed-constexpr",
               "--expt-extended-lambda", "-expt-extended-lambda", "--extended-lambda", "-extended-lambda",
               "--restrict", "-restrict", "-res-usage", "--resource-usage", "-w", "--disable-warnings",
               "--source-in-ptx", "-src-in-ptx", "--display-error-number", "-err-no",
               "--extra-device-vectorization", "-extra-device-vectorization", "--keep-device-functions",
               "-keep-device-functions", "-m64", "--no-host-device-initializer-list"},
        regexes=(re.compile(r"-O[0-3]?"), _W_SWITCH),
        valued={"-std": _STD, "--std": _STD, "-gencode": _GENCODE, "--generate-code": _GENCODE,
                "-arch": _NVCC_ARCH, "--gpu-architecture": _NVCC_ARCH, "-code": _NVCC_CODE,
                "--gpu-code": _NVCC_CODE, "-maxrregcount": _NUMBER, "--maxrregcount": _NUMBER,
                **{f"{d}{name}": _BOOL for d in ("-", "--") for name in ("ftz", "prec-div", "prec-sqrt", "fmad")},
                "-rdc": _BOOL, "--relocatable-device-code": _BOOL,
                "-t": _NUMBER, "--threads": _NUMBER, "--split-compile": _NUMBER, "-split-compile": _NUMBER,
                "--default-stream": _pattern(r"legacy|null|per-thread", "legacy, null or per-thread"),
                "-default-stream": _pattern(r"legacy|null|per-thread", "legacy, null or per-thread"),
                "-dopt": _pattern(r"on|off", "on or off"), "--dopt": _pattern(r"on|off", "on or off"),
                "--compress-mode": _pattern(r"default|size|speed|balance|none", "a compression mode"),
                **{f"{d}diag-{kind}": _WORDS for d in ("-", "--") for kind in ("suppress", "warn", "error")},
                **common_includes, "-D": _MACRO, "-U": _UNDEF},
        joined={"-D": _MACRO, "-U": _UNDEF, **common_includes},
        pieces={"-Xcompiler": "cxx", "--compiler-options": "cxx", "-Xptxas": "ptxas",
                "--ptxas-options": "ptxas", "-Xcudafe": "cudafe"},
    )
    ptxas = _Grammar(
        exact={"-v", "--verbose", "--warn-on-spills", "-warn-spills", "--warn-on-local-memory-usage",
               "-warn-lmem-usage", "--warn-on-double-precision-use", "-warn-double-usage", "--Werror",
               "-Werror", "--suppress-stack-size-warning", "-suppress-stack-size-warning",
               "--allow-expensive-optimizations", "-allow-expensive-optimizations", "-lineinfo",
               "--generate-line-info", "--sp-bounds-check", "-sp-bounds-check"},
        regexes=(re.compile(r"-O[0-3]"),),
        valued={**{f"{d}{n}": _NUMBER for d in ("-", "--") for n in ("maxrregcount", "register-usage-level")},
                **{f"{d}{n}": _pattern(r"ca|cg|cs|lu|cv|wb|wt", "a cache mode")
                   for d in ("-", "--") for n in ("dlcm", "dscm", "def-load-cache", "def-store-cache")},
                "--allow-expensive-optimizations": _BOOL, "-allow-expensive-optimizations": _BOOL,
                "--fmad": _BOOL, "-fmad": _BOOL},
    )
    cudafe = _Grammar(
        exact={"--display_error_number", "--no_display_error_number"},
        valued={f"--diag_{kind}": _WORDS for kind in ("suppress", "warning", "error", "remark")},
    )
    ld = _Grammar(
        exact={"--as-needed", "--no-as-needed", "--no-undefined", "-O1", "-O2", "--gc-sections",
               "--no-gc-sections", "--strip-all", "-s", "--strip-debug", "-S", "-Bsymbolic",
               "-Bsymbolic-functions", "--no-allow-shlib-undefined", "--allow-shlib-undefined",
               "--enable-new-dtags", "--disable-new-dtags", "-Bstatic", "-Bdynamic", "--whole-archive",
               "--no-whole-archive", "--start-group", "--end-group", "--push-state", "--pop-state",
               "--build-id", "--eh-frame-hdr"},
        valued={"-z": _pattern(r"now|lazy|relro|norelro|defs|undefs|noexecstack|execstack|origin|nodelete|"
                               r"text|notext|nodlopen|separate-code|noseparate-code|"
                               r"(max|common)-page-size=[0-9]+", "a -z keyword"),
                **{k: lambda v: None if v == "$ORIGIN" or v.startswith("$ORIGIN/") and ".." not in v
                   else library(v) for k in ("-rpath", "--rpath", "-R")},
                "--exclude-libs": _WORDS, "--hash-style": _pattern(r"gnu|sysv|both", "gnu, sysv or both"),
                "--build-id": _pattern(r"none|md5|sha1|uuid|fast", "a build-id style"),
                "--icf": _pattern(r"all|safe|none", "all, safe or none"), "-l": _LIBNAME},
        joined={"-l": _LIBNAME, "-z": _pattern(r"now|relro|defs|noexecstack|origin|nodelete", "a -z keyword")},
    )
    return {"cxx": cxx, "link": link, "nvcc": nvcc, "ptxas": ptxas, "cudafe": cudafe, "ld": ld}


def _check_value(check: Check, option: str, value: str) -> str | None:
    why = check(value)
    return f"{option} {value!r}: {why}" if why else None


def _scan(tokens: Sequence[str], tool: str, grammars: dict[str, _Grammar],
          trusted: Sequence[str]) -> list[tuple[int, str]]:
    """``[(index, reason)]`` for the refused tokens of one list read by ``tool``."""
    grammar = grammars[tool]
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not isinstance(token, str):
            i += 1
            continue
        control = _CONTROL.search(token)
        if control:
            out.append((i, f"{token!r} holds the control character {control.group()!r}; a flag is "
                           "one argument on one line"))
            i += 1
            continue
        if any(fnmatch.fnmatchcase(token, pattern) for pattern in trusted):
            i += 1
            continue
        verdict, consumed = _verdict(tokens, i, tool, grammar, grammars, trusted)
        if verdict:
            out.append(verdict)
        i += consumed
    return out


def _verdict(tokens: Sequence[str], i: int, tool: str, grammar: _Grammar, grammars: dict[str, _Grammar],
             trusted: Sequence[str]) -> tuple[tuple[int, str] | None, int]:
    """The refusal of ``tokens[i]`` (with the value it takes) or None, and how many tokens it used."""
    token = tokens[i]
    if token in grammar.exact or any(r.fullmatch(token) for r in grammar.regexes):
        return None, 1
    head, eq, value = token.partition("=")
    for option, piece_tool in grammar.pieces.items():  # -Xcompiler v, -Xcompiler=v, -Wl,a,b
        if option == "-Wl" and not token.startswith("-Wl,"):
            continue
        if token == option or (eq and head == option) or option == "-Wl":
            if token == option:
                if i + 1 >= len(tokens) or not isinstance(tokens[i + 1], str):
                    return (i, f"{token!r} expects a value after it"), 1
                value, at, used = tokens[i + 1], i + 1, 2
            else:
                value, at, used = (token[4:] if option == "-Wl" else value), i, 1
            refused = _scan(value.split(","), piece_tool, grammars, trusted)
            if refused:
                where = f"{tokens[i]} {value!r}" if at != i else repr(token)
                return (at, f"{where}: {refused[0][1]}"), used
            return None, used
    if eq and head in grammar.valued:
        why = _check_value(grammar.valued[head], head, value)
        return ((i, why) if why else None), 1
    if token in grammar.valued:
        if i + 1 >= len(tokens) or not isinstance(tokens[i + 1], str):
            return (i, f"{token!r} expects a value after it"), 1
        why = _check_value(grammar.valued[token], token, tokens[i + 1])
        return ((i + 1, why) if why else None), 2
    for prefix, check in grammar.joined.items():
        if token.startswith(prefix) and len(token) > len(prefix):
            why = _check_value(check, prefix, token[len(prefix):])
            return ((i, why) if why else None), 1
    reasons = [f(token) for f in grammar.functions]
    if None in reasons:
        return None, 1
    detail = _danger(token) or next((r for r in reasons if r), "")
    what = f"{token!r} {detail}" if detail else f"{token!r} is not among the {_TOOL_NAMES[tool]} flags fibuild accepts"
    # A refused option's value (``-MJ F``) is not reported as a second problem.
    used = 2 if detail and i + 1 < len(tokens) and not str(tokens[i + 1]).startswith("-") else 1
    return (i, f"{what}; fibuild accepts only flags known to run nothing but the compilers and to write "
               f"only into the build directory ({TRUSTED_FLAGS_ENV} widens the list)"), used


def refusals(tokens: Sequence[str], tool: str = "cxx", *, trusted: Sequence[str] = (),
             cuda_home: str = "") -> list[tuple[int, str]]:
    """``[(index, reason)]`` for each refused token of one flag list read by ``tool``
    (``cxx``, ``nvcc`` or ``link``; :data:`FIELD_TOOLS` maps the manifest fields). A value
    given as the next token (``-Xcompiler -wrapper,...``) is reported at the value's index.
    ``trusted``: shell patterns of tokens accepted as they are; ``cuda_home``: one more
    system folder (``<cuda_home>/include``, ``<cuda_home>/lib64``)."""
    return _scan(list(tokens), tool, _grammars(cuda_home), tuple(trusted))


def rebased_includes(tokens: Sequence[str], src: str) -> list[str]:
    """``tokens`` with each relative ``-I``/``-isystem``/``-iquote``/``-idirafter`` folder made
    absolute under ``src`` (the build's copy of the solution), as ``include_dirs`` are."""
    out = list(tokens)
    options = ("-isystem", "-iquote", "-idirafter", "-I")
    for i, token in enumerate(out):
        for option in options:
            if token == option and i + 1 < len(out) and not out[i + 1].startswith("/"):
                out[i + 1] = posixpath.join(src, out[i + 1])
            elif token.startswith(option) and len(token) > len(option):
                folder = token[len(option):]
                if not folder.startswith("/"):
                    out[i] = option + posixpath.join(src, folder)
            else:
                continue
            break
    return out
