"""The project's own compiler and devnet binaries, installed by `npm ci`.

Nothing here downloads anything: solcjs and anvil come from `node_modules`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from medmeter.errors import ToolchainError
from medmeter.fileio import write_atomic
from medmeter.workspace import Workspace

SOLC_DRIVER = Path("tools") / "solc-standard-json.cjs"
ANVIL_NATIVE = Path("@foundry-rs") / "anvil-linux-amd64" / "bin" / "anvil"
ANVIL_WRAPPER = Path(".bin") / "anvil"
SOLCX_BINARY_PATH_ENV = "SOLCX_BINARY_PATH"


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        raise ToolchainError("node is not on PATH: install Node.js 20 and run `make install`.")
    return node


def solc_driver(workspace: Workspace) -> Path:
    driver = workspace.root / SOLC_DRIVER
    if not (workspace.node_modules / "solc" / "package.json").is_file():
        raise ToolchainError(
            f"solcjs is not installed under {workspace.node_modules}: run `npm ci` (or `make install`)."
        )
    return driver


def solc_version(workspace: Workspace) -> str:
    """Full solcjs version, e.g. `0.8.28+commit.7893614a.Emscripten.clang`."""
    out = subprocess.run(
        [node_executable(), str(solc_driver(workspace)), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ToolchainError(f"solcjs failed to report its version: {out.stderr.strip()}; run `npm ci`.")
    return out.stdout.strip().splitlines()[-1].removeprefix("Version: ")


def anvil_executable(workspace: Workspace) -> Path:
    """The native anvil binary from npm (preferred, so signals reach anvil itself)."""
    for candidate in (workspace.node_modules / ANVIL_NATIVE, workspace.node_modules / ANVIL_WRAPPER):
        if candidate.exists():
            return candidate
    raise ToolchainError(f"anvil is not installed under {workspace.node_modules}: run `npm ci` (or `make install`).")


SHIM_DIR_NAME = "solc-bin"


def solcx_binary_dir(workspace: Workspace | None = None) -> Path:
    """The folder py-solc-x (and so brownie) searches for `solc-v<version>` executables.

    $SOLCX_BINARY_PATH if set (`make install` sets it for the checkout's venv), else the checkout's
    own `.medmeter/solc-bin/`: one checkout's install never replaces another's, as a shared
    `~/.solcx` would."""
    if env := os.environ.get(SOLCX_BINARY_PATH_ENV):
        return Path(env)
    if workspace is not None:
        return workspace.state_dir / SHIM_DIR_NAME
    return Path.home() / ".solcx"


def install_solcx_shim(workspace: Workspace, target_dir: Path | None = None) -> Path:
    """Install `solc-v<version>` for py-solc-x: a shell script that answers `--version`
    without loading the compiler (brownie asks several times per compile) and hands
    everything else to the Node front end. If the checkout it points into is gone, compiling
    says so in one sentence instead of a Node stack trace."""
    full_version = solc_version(workspace)
    base_version = full_version.split("+", 1)[0]
    folder = target_dir or solcx_binary_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / f"solc-v{base_version}"
    driver = solc_driver(workspace).resolve()
    solcjs = (workspace.node_modules / "solc" / "package.json").resolve()
    script = (
        "#!/bin/sh\n"
        "# Installed by `medmeter toolchain install`: solcjs from the medmeter project's node_modules.\n"
        'if [ "$1" = "--version" ]; then\n'
        "  echo 'solc, the solidity compiler commandline interface'\n"
        f"  echo 'Version: {full_version}'\n"
        "  exit 0\n"
        "fi\n"
        f'if [ ! -f "{driver}" ] || [ ! -f "{solcjs}" ]; then\n'
        f'  echo "error: {shim} runs solcjs from the medmeter checkout {workspace.root}, which is gone or not '
        'installed: run `make install` (or `medmeter toolchain install`) in the checkout you use." >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec "{node_executable()}" "{driver}" "$@"\n'
    )
    executable = stat.S_IRWXU | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    if shim.is_file() and shim.read_text() == script and os.access(shim, os.X_OK):
        return shim  # every compile installs it; another process may be running it right now
    # Atomic and executable before it appears: a compile in another process never runs half a script,
    # nor finds it without its execute bit (the test suite's workers compile side by side).
    write_atomic(shim, script, mode=executable)
    return shim
