"""Which build flags a solution manifest may carry: argv tokens that compile, never run.

Building a workspace must run nothing but the compilers on its sources, so a flag is
refused when the toolchains document it as making the compiler driver or the linker
run or load another program, read more options from a file, or write outside the
build directory:

- gcc/clang driver: ``-wrapper``, ``-B``/``--prefix``, ``-specs``, ``-fplugin``,
  ``-fplugin-arg-*``, ``-iplugindir``, ``-fpass-plugin`` (clang), ``--ld-path``,
  ``--gcc-toolchain``/``--gcc-install-dir`` (clang picks tool binaries there),
  ``-fuse-ld=`` other than bfd, gold, lld or mold, a response file ``@file``, the
  raw pass-throughs ``-Xclang`` (``-load``, ``-plugin``), ``-Xlinker``,
  ``-Xpreprocessor``, ``-Xassembler`` (use the inspectable ``-Wl,``/``-Wp,``/``-Wa,``);
  ``-Wl,``/``-Wp,``/``-Wa,`` pieces are checked (``-plugin``, ``--plugin-opt``,
  ``--load-pass-plugin``, ``-fplugin``, ``@file``, ...);
- nvcc: ``-ccbin``/``--compiler-bindir``, ``-arbin``/``--archiver-binary``,
  ``--run``/``--run-args``, ``-optf``/``--options-file``, ``-Xlinker``/``--linker-options``,
  ``-Xarchive``/``--archive-options`` (``ar --plugin``), and ``-Xcompiler``/
  ``--compiler-options`` whose pieces fail the gcc checks;
- writes elsewhere: ``-o``, ``-MF``, ``-dumpdir``, ``-dumpbase``, ``-save-temps``,
  nvcc ``-odir``/``--output-directory``, ``--keep-dir``.

Reading files is allowed (``-include``, ``-imacros``, ``-I``, ``--sysroot``, libraries):
it runs nothing. Every token must also be free of control characters (a newline would
break the generated ninja file). Pure functions, no I/O.
"""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: exact driver options (gcc, clang, nvcc) that run or load a program or read an options file
_EXACT = {
    "-wrapper": "makes gcc run every sub-command through another program",
    "-specs": "makes gcc read a spec file, which can run any program",
    "--specs": "makes gcc read a spec file, which can run any program",
    "-B": "makes the compiler driver take its sub-programs (cc1, as, ld) from another folder",
    "--prefix": "makes the compiler driver take its sub-programs from another folder",
    "-Xclang": "passes raw options to clang's front end (-load, -plugin run other code)",
    "-Xlinker": "passes raw options to the linker; use -Wl, (which fibuild inspects)",
    "--linker-options": "passes raw options to the linker; use -Wl, (which fibuild inspects)",
    "-Xpreprocessor": "passes raw options to the preprocessor; use -Wp, (which fibuild inspects)",
    "-Xassembler": "passes raw options to the assembler; use -Wa, (which fibuild inspects)",
    "-ccbin": "makes nvcc run another host compiler",
    "--compiler-bindir": "makes nvcc run another host compiler",
    "-arbin": "makes nvcc run another archiver",
    "--archiver-binary": "makes nvcc run another archiver",
    "-run": "makes nvcc run the program it builds",
    "--run": "makes nvcc run the program it builds",
    "-run-args": "passes arguments to a program nvcc runs",
    "--run-args": "passes arguments to a program nvcc runs",
    "-optf": "makes nvcc read more options from a file",
    "--options-file": "makes nvcc read more options from a file",
    "-o": "writes the output outside the build directory",
    "-MF": "writes the dependency file outside the build directory",
    "--dependency-output": "writes the dependency file outside the build directory",
    "-odir": "writes the output outside the build directory",
    "--output-directory": "writes the output outside the build directory",
    "-dumpdir": "writes auxiliary files outside the build directory",
    "-dumpbase": "writes auxiliary files outside the build directory",
    "-keep-dir": "writes intermediate files outside the build directory",
    "--keep-dir": "writes intermediate files outside the build directory",
    "-Xarchive": "passes raw options to the archiver (ar --plugin loads code)",
    "--archive-options": "passes raw options to the archiver (ar --plugin loads code)",
}

#: option prefixes (``-Bdir``, ``-fplugin=x.so``, ``--specs=f``, ...)
_PREFIXES = (
    ("-B", "makes the compiler driver take its sub-programs (cc1, as, ld) from another folder"),
    ("--prefix=", "makes the compiler driver take its sub-programs from another folder"),
    ("-specs=", "makes gcc read a spec file, which can run any program"),
    ("--specs=", "makes gcc read a spec file, which can run any program"),
    ("-fplugin", "makes the compiler load a plugin (a shared library)"),
    ("-iplugindir", "points the compiler at a plugin folder"),
    ("-fpass-plugin", "makes clang load a pass plugin (a shared library)"),
    ("--ld-path", "makes clang run another linker program"),
    ("--gcc-toolchain", "makes clang take its tools from another installation"),
    ("--gcc-install-dir", "makes clang take its tools from another installation"),
    ("-Xclang", "passes raw options to clang's front end"),
    ("-ccbin=", "makes nvcc run another host compiler"),
    ("--compiler-bindir=", "makes nvcc run another host compiler"),
    ("-arbin=", "makes nvcc run another archiver"),
    ("--archiver-binary=", "makes nvcc run another archiver"),
    ("--run-args", "passes arguments to a program nvcc runs"),
    ("-optf=", "makes nvcc read more options from a file"),
    ("--options-file=", "makes nvcc read more options from a file"),
    ("--linker-options=", "passes raw options to the linker; use -Wl, (which fibuild inspects)"),
    ("-Xlinker=", "passes raw options to the linker; use -Wl, (which fibuild inspects)"),
    ("-Xarchive=", "passes raw options to the archiver (ar --plugin loads code)"),
    ("--archive-options=", "passes raw options to the archiver (ar --plugin loads code)"),
    ("-save-temps", "writes intermediate files outside the build directory"),
    ("-dumpdir", "writes auxiliary files outside the build directory"),
    ("-dumpbase", "writes auxiliary files outside the build directory"),
    ("-odir=", "writes the output outside the build directory"),
    ("--output-directory=", "writes the output outside the build directory"),
    ("--keep-dir=", "writes intermediate files outside the build directory"),
    ("-MF", "writes the dependency file outside the build directory"),
    ("--dependency-output=", "writes the dependency file outside the build directory"),
)

#: pieces of ``-Wl,`` (GNU ld, gold, lld, mold) that load code or read options
_LINKER_PIECES = ("-plugin", "--plugin", "-plugin-opt", "--plugin-opt", "--load-pass-plugin",
                  "-load-pass-plugin", "-wrapper", "--wrapper-program")
_SAFE_LINKERS = ("bfd", "gold", "lld", "mold")
#: nvcc options whose value (``=v`` or the next token) is a comma list of host-compiler options
_COMPILER_PASS = ("-Xcompiler", "--compiler-options")


def _driver_reason(token: str) -> str | None:
    """Why a gcc/clang/nvcc driver token is refused, or None."""
    if token.startswith("@"):
        return "makes the compiler read more options from a file (a response file)"
    if token in _EXACT:
        return _EXACT[token]
    for prefix, why in _PREFIXES:
        if token.startswith(prefix):
            return why
    if token.startswith("-fuse-ld="):
        linker = token.split("=", 1)[1]
        if linker not in _SAFE_LINKERS:
            return f"-fuse-ld= accepts only {', '.join(_SAFE_LINKERS)}: another value names a linker program"
    if token.startswith("-o") and len(token) > 2 and not token.startswith(("-optf", "-odir", "-objtemp")):
        return "writes the output outside the build directory"
    for head, check in (("-Wl,", _linker_piece_reason), ("-Wp,", _driver_reason), ("-Wa,", _at_file)):
        if token.startswith(head):
            for piece in token[len(head):].split(","):
                why = check(piece)
                if why:
                    return f"{head}{piece} {why}"
    return None


def _linker_piece_reason(piece: str) -> str | None:
    if piece.startswith("@"):
        return "makes the linker read more options from a file"
    if piece.startswith(_LINKER_PIECES):
        return "makes the linker load a plugin or run another program"
    return None


def _at_file(piece: str) -> str | None:
    return "makes the assembler read more options from a file" if piece.startswith("@") else None


def refusals(tokens: list[str] | tuple[str, ...]) -> list[tuple[int, str]]:
    """``[(index, reason)]`` for each refused token of one flag list (cflags, cuda_cflags,
    ldflags). A value given as the next token (``-Xcompiler -wrapper,...``) is checked
    with its option and reported at the value's index."""
    out: list[tuple[int, str]] = []
    passthrough = False
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            continue
        control = _CONTROL.search(token)
        if control:
            out.append((i, f"{token!r} holds the control character {control.group()!r}; a flag is "
                           "one argument on one line"))
            continue
        if passthrough:  # the value of -Xcompiler/--compiler-options
            passthrough = False
            why = _compiler_pieces(token)
            if why:
                out.append((i, f"{tokens[i - 1]} {token!r}: {why}"))
            continue
        if token in _COMPILER_PASS:
            passthrough = True
            continue
        head, eq, value = token.partition("=")
        if eq and head in _COMPILER_PASS:
            why = _compiler_pieces(value)
            if why:
                out.append((i, f"{token!r}: {why}"))
            continue
        why = _driver_reason(token)
        if why:
            out.append((i, f"{token!r} {why}; fibuild refuses it, since building a workspace "
                           "must run nothing but the compilers"))
    if passthrough:
        out.append((len(tokens) - 1, f"{tokens[-1]!r} expects a value after it"))
    return out


def _compiler_pieces(value: str) -> str | None:
    for piece in value.split(","):
        why = _driver_reason(piece)
        if why:
            return f"{piece!r} {why}"
    return None


def include_dir_reason(value: str) -> str | None:
    """Why an ``include_dirs`` entry is refused: a control character, or a leading ``-``
    (it would be read as an option)."""
    control = _CONTROL.search(value)
    if control:
        return f"{value!r} holds the control character {control.group()!r}"
    if value.startswith("-") or value.startswith("@"):
        return f"{value!r} starts with {value[0]!r}: an include folder is a path, not an option"
    return None
