"""Check that requirements.lock still matches pyproject.toml's runtime dependencies.

The lock's header names the command that wrote it (`uv pip compile pyproject.toml ...`). This
runs that command again on a copy of the lock: uv keeps every pin of the output file that still
fits pyproject.toml, so the copy comes out with the same pins exactly when nothing was added,
removed or constrained out of the lock since it was written. Any difference in the pinned
packages, versions or markers fails, with the difference and the command that refreshes the lock.
A difference in hashes alone (a release that gained a file since) is reported, not failed: pip
accepts any file whose hash is listed.

Needs the package index (uv reads the candidates' metadata), as the image build does.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
HEADER = re.compile(r"^#\s+(uv pip compile .*)$", re.MULTILINE)


def logical_lines(text: str) -> list[str]:
    """The requirement lines of a lock, continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pins(text: str) -> dict[str, str]:
    """Requirement (name==version and marker) -> its sorted hashes, for every line of a lock."""
    result: dict[str, str] = {}
    for line in logical_lines(text):
        requirement, *hashes = line.split(" --hash=")
        result[" ".join(requirement.split())] = " ".join(sorted(hashes))
    return result


def lock_command(text: str) -> list[str]:
    match = HEADER.search(text)
    if match is None:
        raise SystemExit(f"{LOCK.name} has no `uv pip compile` command in its header")
    command = shlex.split(match[1])
    if "--output-file" not in command or command[command.index("--output-file") + 1] != LOCK.name:
        raise SystemExit(f"the command in {LOCK.name}'s header does not write {LOCK.name}: {match[1]}")
    return command


def uv_executable() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("uv is missing: it comes with the test extra (pip install -e '.[test]')")
    return found


def main() -> int:
    committed = LOCK.read_text(encoding="utf-8")
    command = lock_command(committed)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / LOCK.name
        copy.write_text(committed, encoding="utf-8")
        argv = [uv_executable(), *command[1:]]
        argv[argv.index("--output-file") + 1] = str(copy)
        result = subprocess.run([*argv, "--quiet"], cwd=ROOT, capture_output=True, text=True, check=False,
                                timeout=300)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            print(f"{LOCK.name}: uv could not resolve pyproject.toml's dependencies", file=sys.stderr)
            return 1
        regenerated = copy.read_text(encoding="utf-8")

    before, after = pins(committed), pins(regenerated)
    if set(before) != set(after):
        for requirement in sorted(set(before) - set(after)):
            print(f"  - {requirement}")
        for requirement in sorted(set(after) - set(before)):
            print(f"  + {requirement}")
        print(f"{LOCK.name} is out of sync with pyproject.toml; refresh it with:\n    {shlex.join(command)}")
        return 1
    changed = [requirement for requirement in before if before[requirement] != after[requirement]]
    if changed:
        print(f"note: the index lists other files for {', '.join(changed)} than {LOCK.name} "
              f"(same versions); refreshing it would update their hashes")
    print(f"{LOCK.name}: {len(before)} pins, in sync with pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
