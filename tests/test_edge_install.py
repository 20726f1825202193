"""On an edge install (`pip install fedsim[edge]`: no torch, no Ray, no matplotlib), a command that
needs the sim extra says so in one line and exits with status 2; the others still work.
The edge install is imitated by a meta path finder that makes torch, ray and matplotlib unimportable."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ray", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Block())
from fedsim.cli import main
sys.argv = ["fedsim"] + sys.argv[1:]
main()
"""


def fedsim_edge(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [["run"], ["run", "configs/quickstart.yaml"], ["plugins"],
                                  ["sweep", "configs/quickstart.yaml", "--seeds", "0-1"], ["compare", "runs/x"]])
def test_sim_commands_say_to_install_the_sim_extra(args):
    res = fedsim_edge(*args)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 2, out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error:") and "pip install 'fedsim[sim]'" in out and "torch, ray, matplotlib" in out


def test_help_and_deploy_still_work():
    for args in (["--help"], ["run", "--help"], ["deploy", "--help"]):
        res = fedsim_edge(*args)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Usage" in res.stdout
