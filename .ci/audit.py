"""Audit the installed dependencies for known vulnerabilities with pip-audit; fail if any has one.

pip-audit asks a vulnerability database (PyPI's JSON API, or OSV) about every installed
package. A package with a known vulnerability fails the run. A package the database could not
be asked about is reported by name, loudly: where the network reaches package downloads but
not those APIs (this CI's sandbox), nothing can be audited, and the run says so rather than
pretending it checked anything.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    result = subprocess.run([sys.executable, "-m", "pip_audit", "--format", "json", "--skip-editable",
                             "--progress-spinner", "off"], capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(result.stdout, result.stderr, sep="\n")
        print("pip-audit did not produce a report", file=sys.stderr)
        return 1
    dependencies = report.get("dependencies", [])
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = len(dependencies) - len(skipped)
    for dependency in vulnerable:
        for vulnerability in dependency["vulns"]:
            fixed = ", ".join(vulnerability.get("fix_versions", [])) or "no fixed release"
            print(f"VULNERABLE {dependency['name']} {dependency['version']}: {vulnerability['id']} (fixed in {fixed})")
    if vulnerable:
        return 1
    if skipped:
        print(f"WARNING: {len(skipped)} of {len(dependencies)} installed packages could not be audited "
              f"(first reason: {skipped[0]['skip_reason']}); the vulnerability database is unreachable "
              "from here, so this run checked only the other packages.")
    print(f"pip-audit: {audited} packages audited, no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
