"""Audit the installed dependencies for known vulnerabilities with pip-audit; fail if any has one.

pip-audit asks a vulnerability database about every installed package: PyPI's JSON API first,
then OSV when PyPI's could not be asked (a mirror or proxy that serves only package downloads
answers 404 there). A package with a known vulnerability fails the run. When neither database
can be reached (this CI's sandbox reaches package downloads only), nothing can be audited and
the run says so loudly rather than pretending it checked anything; `--require-database` turns
that into a failure for CI runners that do have the network.

tests/test_dependency_audit.py runs this script against a local OSV-compatible server to prove
that a reported vulnerability fails it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

SERVICES = ("pypi", "osv")


def run_pip_audit(service: str, osv_url: str | None) -> dict[str, Any] | str:
    """One pip-audit run against one database: its JSON report, or why there is none."""
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--skip-editable",
               "--progress-spinner", "off", "--vulnerability-service", service]
    if service == "osv" and osv_url:
        command += ["--osv-url", osv_url]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        # pip-audit exits with a traceback when the database's host cannot be reached at all.
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"pip-audit could not ask {service}: {last_line[:300]}"
    if not isinstance(report, dict):
        return f"pip-audit printed an unexpected report for {service}"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", action="append", choices=SERVICES,
                        help="database to ask, in order (repeatable; default: pypi, then osv)")
    parser.add_argument("--osv-url", help="OSV query endpoint (default: pip-audit's, api.osv.dev)")
    parser.add_argument("--require-database", action="store_true",
                        help="fail when no database could be asked about every package")
    args = parser.parse_args(argv)

    notes: list[str] = []
    for service in args.service or SERVICES:
        report = run_pip_audit(service, args.osv_url)
        if isinstance(report, str):
            notes.append(report)
            continue
        dependencies = report.get("dependencies", [])
        vulnerable = [d for d in dependencies if d.get("vulns")]
        for dependency in vulnerable:
            for vulnerability in dependency["vulns"]:
                fixed = ", ".join(vulnerability.get("fix_versions", [])) or "no fixed release"
                print(f"VULNERABLE {dependency['name']} {dependency['version']}: "
                      f"{vulnerability['id']} (fixed in {fixed}) [{service}]")
        if vulnerable:
            return 1
        # The project itself is installed editable and is not a dependency to audit.
        dependencies = [d for d in dependencies if "editable" not in d.get("skip_reason", "")]
        skipped = [d for d in dependencies if "skip_reason" in d]
        if dependencies and not skipped:
            print(f"pip-audit ({service}): {len(dependencies)} packages audited, no known vulnerabilities")
            return 0
        notes.append(f"{service}: {len(skipped)} of {len(dependencies)} installed packages could not be "
                     f"audited (first reason: {skipped[0]['skip_reason'] if skipped else 'none installed'})")

    for note in notes:
        print(f"WARNING: {note}")
    print("WARNING: no vulnerability database answered for every package, so this run proved nothing "
          "about known vulnerabilities.")
    return 1 if args.require_database else 0


if __name__ == "__main__":
    sys.exit(main())
