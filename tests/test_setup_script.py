"""scripts/setup_env.sh: the disk check before the ~6 GiB torch install."""
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_setup_stops_early_with_a_clear_message_when_the_disk_is_too_small(tmp_path):
    venv = tmp_path / "venv"
    env = dict(os.environ, SSPRL_VENV=str(venv), SSPRL_MIN_FREE_GIB="1000000000",
               PYTHON=sys.executable)
    env.pop("SSPRL_SYSTEM_SITE_PACKAGES", None)
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", "setup_env.sh")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "need about 1000000000 GiB of free disk" in proc.stderr
    assert "SSPRL_VENV" in proc.stderr
    # It stopped before installing anything into the new venv.
    assert not list(venv.glob("lib/python*/site-packages/torch"))
