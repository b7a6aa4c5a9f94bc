"""Start-up: ``cratebridge --help`` and ``cratebridge engines --json`` against ``python -c pass``.

Twenty alternating rounds (baseline, --help, engines) on the same interpreter;
the figure is the median of each command's time over the median baseline.
Also checks, with ``-X importtime`` on the real console script, that neither
command imports an engine (cwltool, toil, snakemake, schema_salad, ...).
Target: no engine imported. The ratios are reported, not judged.
"""

from __future__ import annotations

import argparse
import subprocess

from _common import VENV_BIN, CannotMeasure, main_guard, median, timed_run, verdict

# The engines themselves and their heavy libraries. The thin plugin modules
# (cratebridge_cwl, ...) are reported but allowed: ``engines`` loads them to ask
# each plugin for its capabilities and engine version.
ENGINE_MODULES = ("cwltool", "toil", "snakemake", "schema_salad", "cwl_utils", "rdflib",
                  "galaxy", "mistune")
PLUGIN_PREFIX = "cratebridge_"


def imported_modules(argv: list[str]) -> set[str]:
    """Top-level names of every module imported while running ``argv`` (a Python script)."""
    done = subprocess.run([str(VENV_BIN / "python"), "-X", "importtime", *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise CannotMeasure(f"{argv} exited {done.returncode}")
    names = set()
    for line in done.stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            if module != "imported package":
                names.add(module.split(".")[0])
    if "cratebridge" not in names:
        raise CannotMeasure("-X importtime gave no import list")
    return names


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    python = str(VENV_BIN / "python")
    cli = str(VENV_BIN / "cratebridge")
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "cratebridge --help": [cli, "--help"],
        "cratebridge engines --json": [cli, "engines", "--json"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm the page cache once
        timed_run(argv)
    for _ in range(args.rounds):
        for name, argv in commands.items():
            times[name].append(timed_run(argv))
    base = median(times["python -c pass"])
    print(f"start-up, {args.rounds} alternating rounds, interpreter {python}")
    print(f"  {'python -c pass':28s} median {base * 1000:7.1f} ms  (baseline)")
    for name in list(commands)[1:]:
        m = median(times[name])
        print(f"  {name:28s} median {m * 1000:7.1f} ms  ratio {m / base:5.2f}  "
              f"added {(m - base) * 1000:6.1f} ms")
    ok = True
    checks = (("--help", [cli, "--help"]), ("engines --json", [cli, "engines", "--json"]))
    for label, argv in checks:
        modules = imported_modules(argv)
        engines = sorted(set(ENGINE_MODULES) & modules)
        plugins = sorted(m for m in modules if m.startswith(PLUGIN_PREFIX))
        print(f"  cratebridge {label}: engine modules imported: {', '.join(engines) or 'none'}; "
              f"plugin modules loaded: {', '.join(plugins) or 'none'}")
        ok = ok and not engines
    print(verdict(ok, "cratebridge --help and engines --json import no engine module"))
    return 0


if __name__ == "__main__":
    main_guard(run)
