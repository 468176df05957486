"""Native builders: ``cpp`` (g++) and ``cuda`` (nvcc), linked against tvm-ffi.

``prepare`` copies the sources into ``<build dir>/src`` and writes one ``build.ninja``
with absolute paths and no pool declarations, so it runs alone (``ninja -f``) or inside
build-all's top file through ``subninja``. CUDA compiles use the pool named by the
variable ``nvcc_pool``, which only the top file defines: alone, the variable is empty and
no pool applies. The module is linked to ``$out.tmp`` then renamed, so a killed link
never leaves a half-written library under the artifact's name. ``load`` is
``tvm_ffi.load_module(artifact)[entry_symbol]``.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from fibuild.compile import toolchain
from fibuild.compile.builders import BuildPlan, register
from fibuild.compile.builders.loading import load_native
from fibuild.compile.builders.sources import copy_sources
from fibuild.compile.ninja import NinjaFile, shell_quote, write_if_different
from fibuild.config import Settings
from fibuild.errors import BuildError
from fibuild.spec import flags as flag_policy
from fibuild.spec.model import Definition, Solution
from fibuild.spec.variants import format_value

CXX_SUFFIXES = (".cc", ".cpp", ".cxx", ".c")
CUDA_SUFFIXES = (".cu",)
ARTIFACT = "module.so"
SRC_PLACEHOLDER = "$SRC"  # stands for <build dir>/src in the flags that enter the key


class NativeBuilder:
    """Shared by cpp and cuda; subclasses set ``language`` and ``uses_cuda``."""

    name = "native"
    version = 1
    language = ""
    uses_cuda = False

    def accepts(self, sol: Solution) -> bool:
        return sol.language == self.language

    def unavailable_reason(self, settings: Settings) -> str | None:
        if self.uses_cuda:
            reason = toolchain.cuda_unavailable_reason(settings)
        else:
            reason = toolchain.cxx_unavailable_reason()
        if reason is None and toolchain.tvm_ffi_paths() is None:
            reason = "apache-tvm-ffi is not installed"
        return reason

    # -- flags -------------------------------------------------------------------------
    def _includes(self, sol: Solution, src: str) -> list[str]:
        flags = []
        for inc in sol.build.include_dirs:
            why = flag_policy.include_dir_reason(inc)
            if why:
                raise BuildError(f"{sol.qualified_name}: build.include_dirs: {why}", solution=sol.qualified_name)
            path = inc if inc.startswith("/") else str(PurePosixPath(src) / inc)
            flags += ["-I", path]
        return flags

    def flags(self, sol: Solution, settings: Settings, src: str) -> dict[str, list[str]]:
        """Final compile and link flags; ``src`` is the sources dir (or the key placeholder).

        Raises BuildError when FIBUILD_CUDA_ARCH_LIST holds something that is not an arch,
        or when a flag would run or load another program (:mod:`fibuild.spec.flags`; also
        checked at validation, repeated here for solutions made from unchecked dicts).
        """
        for field in ("cflags", "cuda_cflags", "ldflags"):
            for _i, why in flag_policy.refusals(getattr(sol.build, field)):
                raise BuildError(f"{sol.qualified_name}: build.{field}: {why}", solution=sol.qualified_name)
        ffi = toolchain.tvm_ffi_paths()
        ffi_inc = ffi.include_dir if ffi else "<tvm-ffi missing>"
        ffi_lib = ffi.lib_dir if ffi else "<tvm-ffi missing>"
        includes = ["-isystem", ffi_inc] + self._includes(sol, src)
        includes += [f"-D{name}={format_value(value)}" for name, value in sol.constants]  # a variant's
        cuda_inc = ["-isystem", str(settings.cuda_home / "include")] if self.uses_cuda else []
        result = {
            "cxx": ["-O3", "-std=c++17", "-fPIC", *includes, *cuda_inc, *sol.build.cflags],
            "ldflags": [f"-L{ffi_lib}", "-ltvm_ffi", f"-Wl,-rpath,{ffi_lib}"],
        }
        if self.uses_cuda:
            try:
                gencode = toolchain.gencode_flags(toolchain.cuda_archs(settings))
            except ValueError as exc:
                raise BuildError(f"FIBUILD_CUDA_ARCH_LIST: {exc}", solution=sol.qualified_name) from None
            lib64 = settings.cuda_home / "lib64"
            # launch.pdl: the source launches with the PDL attribute under this define
            # (FIBUILD_PDL=0 builds it without; the flag is in the key, so both builds coexist)
            pdl = ["-DFIBUILD_LAUNCH_PDL=1"] if sol.pdl and settings.pdl else []
            result["nvcc"] = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", *gencode, *includes, *pdl,
                              *sol.build.cuda_cflags]
            result["ldflags"] += [f"-L{lib64}", "-lcudart", f"-Wl,-rpath,{lib64}"]
        result["ldflags"] += list(sol.build.ldflags)
        return result

    def key_inputs(self, defn: Definition, sol: Solution, settings: Settings) -> dict[str, Any]:
        cxx = toolchain.host_compiler()
        ffi = toolchain.tvm_ffi_paths()
        chain: dict[str, Any] = {"cxx": cxx.version if cxx else None, "cxx_path": cxx.path if cxx else None,
                                 "tvm_ffi": ffi.version if ffi else None, "machine": toolchain.machine()}
        archs: list[str] = []
        if self.uses_cuda:
            chain["nvcc"] = toolchain.nvcc_version(settings)
            chain["cuda_home"] = str(settings.cuda_home)
            archs = list(toolchain.cuda_archs(settings))
        return {"flags": self.flags(sol, settings, SRC_PLACEHOLDER), "toolchain": chain, "arch": archs,
                "env": dict(settings.build_env)}

    # -- build -------------------------------------------------------------------------
    def prepare(self, defn: Definition, sol: Solution, settings: Settings, build_dir: Path) -> BuildPlan:
        cxx = toolchain.host_compiler()
        if cxx is None:
            raise BuildError(f"unavailable: {toolchain.cxx_unavailable_reason()}", solution=sol.qualified_name)
        src = copy_sources(sol, build_dir)
        flags = self.flags(sol, settings, str(src))
        nf = NinjaFile()
        nf.comment(f"fibuild {self.language} build of {sol.qualified_name}; generated, do not edit.")
        nf.variable("cxx", shell_quote(cxx.path))
        nf.variable("cxxflags", " ".join(map(shell_quote, flags["cxx"])))
        nf.variable("ldflags", " ".join(map(shell_quote, flags["ldflags"])))
        nf.rule("cxx", "$cxx $cxxflags -MMD -MF $out.d -c $in -o $out", depfile="$out.d", deps="gcc",
                description=f"CXX {sol.qualified_name} $in")
        if self.uses_cuda:
            nf.variable("nvcc", shell_quote(toolchain.nvcc_path(settings)))
            nf.variable("nvccflags", " ".join(map(shell_quote, ["-ccbin", cxx.path, *flags["nvcc"]])))
            nf.rule("nvcc", "$nvcc $nvccflags --generate-dependencies-with-compile --dependency-output $out.d "
                    "-c $in -o $out", depfile="$out.d", deps="gcc", pool="$nvcc_pool",
                    description=f"NVCC {sol.qualified_name} $in")
        nf.rule("link", "$cxx $in -shared $ldflags -o $out.tmp && mv -f $out.tmp $out",
                description=f"LINK {sol.qualified_name}")
        objects = []
        for rel in sol.all_sources:
            suffix = PurePosixPath(rel).suffix
            if suffix in CUDA_SUFFIXES and not self.uses_cuda:
                raise BuildError(f"{sol.qualified_name}: {rel} is CUDA but the language is {self.language}",
                                 solution=sol.qualified_name, build_dir=build_dir)
            if suffix not in CXX_SUFFIXES + CUDA_SUFFIXES:
                continue  # headers and data travel with the copies
            obj = build_dir / "obj" / (rel.replace("/", "__") + ".o")
            nf.build([obj], "nvcc" if suffix in CUDA_SUFFIXES else "cxx", [src / rel])
            objects.append(obj)
        if not objects:
            raise BuildError(f"{sol.qualified_name}: no compilable source among {list(sol.all_sources)}",
                             solution=sol.qualified_name, build_dir=build_dir)
        artifact = build_dir / ARTIFACT
        nf.build([artifact], "link", objects)
        nf.default([artifact])
        ninja_file = build_dir / "build.ninja"
        write_if_different(ninja_file, nf.text())
        return BuildPlan(artifact=ARTIFACT, ninja_file=ninja_file)

    def load(self, build_dir: Path, meta: Mapping[str, Any]) -> Callable:
        return load_native(build_dir, meta)


@register("cpp")
class CppBuilder(NativeBuilder):
    name = "cpp"
    version = 1
    language = "cpp"
    uses_cuda = False


@register("cuda")
class CudaBuilder(NativeBuilder):
    name = "cuda"
    version = 1
    language = "cuda"
    uses_cuda = True


__all__ = ["CppBuilder", "CudaBuilder", "NativeBuilder"]
