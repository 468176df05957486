"""Why a refused build flag is dangerous: explanations for the refusals of
:mod:`fibuild.spec.flags`. Only the messages use this table; the gate is the allowlist, so
a flag missing here is still refused, with a plainer message."""
from __future__ import annotations

_DANGERS = (
    ("-wrapper", "makes gcc run every sub-command through another program"),
    ("-specs", "makes gcc read a spec file, which can run any program"),
    ("--specs", "makes gcc read a spec file, which can run any program"),
    ("-B", "makes the compiler driver take its sub-programs (cc1, as, ld) from another folder"),
    ("--prefix", "makes the compiler driver take its sub-programs from another folder"),
    ("-fplugin", "makes the compiler load a plugin (a shared library)"),
    ("-fpass-plugin", "makes clang load a pass plugin (a shared library)"),
    ("-iplugindir", "points the compiler at a plugin folder"),
    ("--config", "makes clang read a configuration file (which can load a plugin)"),
    ("--ld-path", "makes clang run another linker program"),
    ("--gcc-toolchain", "makes clang take its tools from another installation"),
    ("--gcc-install-dir", "makes clang take its tools from another installation"),
    ("-Xclang", "passes raw options to clang's front end (-load, -plugin run other code)"),
    ("-Xlinker", "passes raw options to the linker; use -Wl, (which fibuild inspects)"),
    ("--for-linker", "passes raw options to the linker (gcc's long -Xlinker); use -Wl,"),
    ("--linker-options", "passes raw options to the linker; use -Wl, (which fibuild inspects)"),
    ("-Xpreprocessor", "passes raw options to the preprocessor"),
    ("-Xassembler", "passes raw options to the assembler"),
    ("-Wp,", "passes raw options to the preprocessor (-MD,<file> writes anywhere)"),
    ("-Wa,", "passes raw options to the assembler (-adhln=<file>, --MD <file> write anywhere)"),
    ("-ccbin", "makes nvcc run another host compiler"),
    ("--compiler-bindir", "makes nvcc run another host compiler"),
    ("-arbin", "makes nvcc run another archiver"),
    ("--archiver-binary", "makes nvcc run another archiver"),
    ("--run-args", "passes arguments to a program nvcc runs"),
    ("-run", "makes nvcc run the program it builds"),
    ("--run", "makes nvcc run the program it builds"),
    ("-optf", "makes nvcc read more options from a file"),
    ("--options-file", "makes nvcc read more options from a file"),
    ("-Xarchive", "passes raw options to the archiver (ar --plugin loads code)"),
    ("--archive-options", "passes raw options to the archiver (ar --plugin loads code)"),
    ("-Xnvlink", "passes raw options to nvlink"),
    ("-time", "makes nvcc write a timing file anywhere"),
    ("--time", "makes nvcc write a timing file anywhere"),
    ("-fdump-", "writes compiler dumps (to any file with =<file>)"),
    ("-fopt-info", "writes optimization reports (to any file with =<file>)"),
    ("-fprofile-", "reads or writes profile files at a path"),
    ("-fproc-stat-report", "writes a report file anywhere"),
    ("-MJ", "writes a compilation database entry anywhere"),
    ("--serialize-diagnostics", "writes diagnostics to any file"),
    ("-aux-info", "writes declarations to any file"),
    ("-save-temps", "writes intermediate files outside the build directory"),
    ("-dumpdir", "writes auxiliary files outside the build directory"),
    ("-dumpbase", "writes auxiliary files outside the build directory"),
    ("-Map", "writes a link map to any file"),
    ("-M", "writes a dependency file (fibuild writes its own)"),
    ("-o", "writes the output outside the build directory"),
    ("-odir", "writes the output outside the build directory"),
    ("--output-directory", "writes the output outside the build directory"),
    ("-keep", "writes intermediate files outside the build directory"),
    ("--keep", "writes intermediate files outside the build directory"),
    *((p, "makes the linker load a plugin or run another program") for p in (
        "-plugin", "--plugin", "-plugin-opt", "--plugin-opt", "--load-pass-plugin", "-wrapper-program")),
    ("-mllvm", "passes raw options to LLVM (some write files)"),
)


def danger(token: str) -> str:
    """What ``token`` is known to do that fibuild refuses ("" when nothing is known)."""
    if token.startswith("@"):
        return "makes the compiler read more options from a file (a response file)"
    if token.startswith("-fuse-ld="):
        return "-fuse-ld= accepts only bfd, gold, lld, mold: another value names a linker program"
    for prefix, why in _DANGERS:
        glued = prefix.endswith((",", "-")) or len(prefix) <= 2 or prefix.startswith("-f")  # -Wp,x -Bdir -MD
        if token == prefix or token.startswith(prefix) and (glued or token[len(prefix)] == "="):
            return why
    return ""
