"""Only what pyproject.toml cannot say: install fibuild_integrations.pth at the top of
site-packages (wheel and editable installs), the hook that enables fibuild's serving
integration when FIBUILD_TRACE or FIBUILD_APPLY is set. Everything else is in pyproject.toml."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path("fibuild", "integrations", "fibuild_integrations.pth")


class build_py_with_pth(build_py):
    """Copy the hook next to the packages in the wheel (site-packages' top level)."""

    def run(self):
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib, PTH.name)), preserve_mode=0)


cmdclass = {"build_py": build_py_with_pth}

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable installs
    editable_wheel = None

if editable_wheel is not None:
    class editable_wheel_with_pth(editable_wheel):
        """Add the hook to the editable wheel too (the editable build skips build_py's files)."""

        def _create_wheel_file(self, bdist_wheel):
            from wheel.wheelfile import WheelFile

            path = super()._create_wheel_file(bdist_wheel)
            with WheelFile(path, "a") as wheel:
                wheel.write(str(PTH), PTH.name)
            return path

    cmdclass["editable_wheel"] = editable_wheel_with_pth

setup(cmdclass=cmdclass)
