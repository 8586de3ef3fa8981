"""An installed wheel carries the default topology and the shipped playbooks: built here,
installed into a fresh venv outside the repository, and run from another directory."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]


def test_an_installed_wheel_runs_shipped_playbooks_from_any_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    [wheel] = wheels.glob("testbed-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # the dependencies are this venv's (a .pth after site-packages); testbed is the wheel's
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*PIP, "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import testbed; print(testbed.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(env_dir)), where  # the wheel's copy, not the repository's
    testbed = str(env_dir / "bin" / "testbed")
    for target in ("bug-884631", str(REPO / "playbooks" / "bug-884631.yaml")):
        p = subprocess.run(
            [testbed, "run", target, "--list"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        )
        assert p.returncode == 0, p.stderr
        assert "late-client/fix-guard" in p.stdout and "slow-dst/fix-off" in p.stdout
