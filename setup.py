"""The wheel's one step beyond pyproject.toml: Cutover's home (fabfile.py, hosts.yaml and the example
site the sandbox deploys) copied into the package beside tasks/, lab/ and templates/, and the commit
it was built from recorded (an installed wheel has no git to ask)."""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
HOME_FILES = ("fabfile.py", "hosts.yaml")  # at the top of a checkout, in the package when installed
EXAMPLE = "example/site"


def _cutover():
    """cutover/__init__.py of this source tree (standard library only), without installing it."""
    spec = importlib.util.spec_from_file_location("cutover_source", ROOT / "cutover" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commit():
    """The source tree's commit: from git, else what an sdist recorded (it has no .git)."""
    cutover = _cutover()
    recorded = ROOT / "cutover" / cutover.COMMIT_FILE
    # only this tree's own .git: an unpacked sdist may lie inside another project's work tree
    found = cutover.git_commit(ROOT) if (ROOT / ".git").exists() else None
    return found or (recorded.read_text().strip() if recorded.is_file() else "unknown")


class BuildPy(build_py):
    def run(self):
        super().run()
        package = Path(self.build_lib) / "cutover"
        for name in HOME_FILES:
            shutil.copyfile(ROOT / name, package / name)
        shutil.rmtree(package / EXAMPLE, ignore_errors=True)
        shutil.copytree(ROOT / EXAMPLE, package / EXAMPLE)
        (package / _cutover().COMMIT_FILE).write_text(_commit() + "\n")


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "cutover" / _cutover().COMMIT_FILE
        target.unlink(missing_ok=True)  # a hard link to the tree's own, if any
        target.write_text(_commit() + "\n")


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
