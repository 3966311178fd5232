"""Mutation testing on demand: does the suite notice when learning breaks?

Each mutation is a deliberate bug, an exact text replacement in one file. For each, the script
copies the repository to a temporary folder, applies the mutation there, runs the mutation's
pytest selection on the copy and reports whether the suite caught it (some test failed) or the
mutation survived (everything passed), with the failing tests' names.

    .venv/bin/python tests/mutations.py                    # every mutation
    .venv/bin/python tests/mutations.py --only NAME ...    # some of them
    .venv/bin/python tests/mutations.py --list             # names, files and selections
    .venv/bin/python tests/mutations.py --tests tests/models/test_conditional.py --only NAME

Not collected by pytest (its name does not start with test_) and not run in CI: a full run
takes several minutes. The exit status is 1 when a mutation survived, 2 when the script could
not run (a mutation's original text is missing or repeated, or the suite fails unmutated).

The copy holds the files git tracks or would track (untracked files that are not ignored
count, so new tests count before they are committed). pytest runs with this checkout's
virtual environment, the copy as working directory and the copy first on PYTHONPATH; before
each run the script checks that the mutated module imports from the copy with the mutation in
it (the environment's editable install points at this checkout). A mutation whose original
text is not found exactly once stops the script before anything runs, so a mutation never goes
stale silently: update MUTATIONS when the code it mutates changes.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ("tests/models", "tests/training")
RUN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Mutation:
    """Replace `old` (found exactly once in `path`, relative to the repository) by `new`; the
    suite should then fail on `tests` (pytest selections; empty: DEFAULT_TESTS)."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = ()
    bug: str = ""

    @property
    def selection(self) -> tuple[str, ...]:
        return self.tests or DEFAULT_TESTS

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")


# The noise enters each sample as one constant added to every foreground score: the margins of
# all proposals over background move together, so their order, and with it every consistent
# argmax (and the per-tag and per-box choices), stays the noise-free one. (Rounding is
# monotone: at most two margins within a float's precision of each other could tie.)
_UNIFORM_NOISE_SHIFT = """\
        noise = self.draw_noise(k, grid, generator)
        foreground = torch.arange(self.num_classes + 1, device=noise.device) > 0
        shift = noise.mean(dim=(1, 2, 3))[:, None, None] * foreground
        return self.score(features, context, torch.zeros_like(noise)) + shift"""

MUTATIONS: list[Mutation] = [
    Mutation(
        "trainer-skips-optimiser-step",
        "training/trainer.py",
        "optimizer.step()",
        "pass",
        bug="no weight ever changes",
    ),
    Mutation(
        "c-step-without-algorithm-1",
        "training/steps.py",
        "if len(y_p) == 0:",
        "if True:",
        bug="every C-step is the annotation loss alone",
    ),
    Mutation(
        "warm-start-loss-zero",
        "training/steps.py",
        "        terms.append(annotation_loss(scores, item, item.candidates(), prior, config))\n"
        "    return mean_terms(terms)",
        "        terms.append(annotation_loss(scores, item, item.candidates(), prior, config))\n"
        "    return {key: value * 0 for key, value in mean_terms(terms).items()}",
        bug="the warm start trains nothing",
    ),
    Mutation(
        "noise-moves-scores-never-picks",
        "models/conditional.py",
        "        return self.score(features, context, self.draw_noise(k, grid, generator))",
        _UNIFORM_NOISE_SHIFT,
        tests=("tests/models", "tests/training", "tests/service/test_pseudo_labels.py"),
        bug="the K samples differ in their scores, never in their picks",
    ),
    Mutation(
        "noise-amplitude-zero",
        "models/conditional.py",
        "noise_amplitude: float = 30.0",
        "noise_amplitude: float = 0.0",
        tests=("tests/models", "tests/training", "tests/service/test_pseudo_labels.py"),
        bug="the K samples are one sample repeated",
    ),
    Mutation(
        "tag-mil-target-flipped",
        "models/warm_start.py",
        "return F.binary_cross_entropy(image_scores, target)",
        "return F.binary_cross_entropy(image_scores, 1 - target)",
        bug="the tag warm start learns the untagged classes",
    ),
    Mutation(
        "c-step-agreement-sign-flipped",
        "models/conditional_loss.py",
        "selection_score(margins[i], outputs.augmented[i]) - sample_scores[i] for i in range(k)",
        "sample_scores[i] - selection_score(margins[i], outputs.augmented[i]) for i in range(k)",
        bug="the C-step moves away from the prediction network",
    ),
]


@dataclass(frozen=True)
class Outcome:
    verdict: str  # caught | survived | broken (pytest could not run the tests) | timeout
    failed: tuple[str, ...]
    seconds: float
    detail: str = ""


def check_mutations(mutations: list[Mutation]) -> list[str]:
    """Problems that keep mutations from applying: an original text found other than once."""
    problems = []
    for mutation in mutations:
        source = REPO / mutation.path
        if not source.is_file():
            problems.append(f"{mutation.name}: {mutation.path} does not exist")
            continue
        count = source.read_text().count(mutation.old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            problems.append(f"{mutation.name}: its original text is {where} in {mutation.path}")
    return problems


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


def copy_repository(destination: Path, files: list[str]) -> None:
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def copy_environment(copy: Path) -> dict[str, str]:
    """The environment of a run on the copy: its modules first on the path, no bytecode
    written (a mutated and a restored file could share a size and a second)."""
    path = os.pathsep.join(p for p in (str(copy), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_from_copy(copy: Path, module: str, expected: str) -> None:
    """Raises RuntimeError unless `module` imports from the copy with `expected` in its file."""
    probe = (
        "import importlib, sys\n"
        f"m = importlib.import_module({module!r})\n"
        "print(m.__file__)\n"
        f"sys.exit(0 if {expected!r} in open(m.__file__).read() else 3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=copy,
        env=copy_environment(copy),
        capture_output=True,
        text=True,
    )
    location = result.stdout.strip()
    if result.returncode != 0 or not Path(location).resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(
            f"{module} does not import from the copy with the mutation in it: imported from "
            f"{location or '?'} (exit {result.returncode}) {result.stderr[-2000:]}"
        )


def failed_tests(report: Path) -> tuple[str, ...]:
    """The node ids of the failed or erroring tests of a JUnit XML report."""
    if not report.is_file():
        return ()
    names = []
    for case in ElementTree.parse(report).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            path = case.get("classname", "").replace(".", "/")
            names.append(f"{path}.py::{case.get('name')}")
    return tuple(names)


def run_pytest(copy: Path, selection: tuple[str, ...], timeout: float) -> Outcome:
    report = copy / ".mutation-report.xml"
    report.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *selection,
    ]
    start = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=copy,
            env=copy_environment(copy),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Outcome("timeout", (), time.monotonic() - start, f"over {timeout:.0f} s")
    seconds = time.monotonic() - start
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    if result.returncode == 0:
        return Outcome("survived", (), seconds, summary[0])
    if result.returncode == 1:
        return Outcome("caught", failed_tests(report), seconds, summary[0])
    return Outcome("broken", (), seconds, (result.stdout + result.stderr)[-3000:])


def run_mutation(mutation: Mutation, files: list[str], tests: tuple[str, ...] | None) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as folder:
        copy = Path(folder)
        copy_repository(copy, files)
        source = copy / mutation.path
        source.write_text(source.read_text().replace(mutation.old, mutation.new))
        check_imports_from_copy(copy, mutation.module, mutation.new)
        return run_pytest(copy, tests or mutation.selection, RUN_TIMEOUT_S)


def run_baseline(files: list[str], selection: tuple[str, ...]) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as folder:
        copy = Path(folder)
        copy_repository(copy, files)
        for package in ("models", "training", "service"):
            check_imports_from_copy(copy, package, "")
        return run_pytest(copy, selection, RUN_TIMEOUT_S)


def print_outcome(name: str, outcome: Outcome, verdict: str | None = None) -> None:
    verdict = verdict or outcome.verdict
    print(f"{name:34} {verdict:9} {outcome.seconds:6.0f} s  {outcome.detail}", flush=True)
    for test in outcome.failed:
        print(f"{'':34}   failed: {test}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--tests", nargs="+", metavar="SELECTION", help="pytest selection for all")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the run of the unmutated copy"
    )
    args = parser.parse_args()

    by_name = {m.name: m for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        parser.error(f"unknown mutations {unknown}; known: {sorted(by_name)}")
    chosen = [by_name[name] for name in args.only] if args.only else MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.path:28} {' '.join(m.selection)}  ({m.bug})")
        return 0
    problems = check_mutations(chosen)
    if problems:
        print("mutations that no longer apply (update MUTATIONS):", *problems, sep="\n  ")
        return 2

    tests = tuple(args.tests) if args.tests else None
    files = repository_files()
    if not args.no_baseline:
        union = tests or tuple(dict.fromkeys(s for m in chosen for s in m.selection))
        baseline = run_baseline(files, union)
        passed = baseline.verdict == "survived"
        print_outcome("(unmutated)", baseline, "passed" if passed else baseline.verdict)
        if not passed:
            print("the suite does not pass without a mutation: fix that first")
            return 2
    outcomes = {}
    for mutation in chosen:
        outcomes[mutation.name] = run_mutation(mutation, files, tests)
        print_outcome(mutation.name, outcomes[mutation.name])
    survived = [name for name, o in outcomes.items() if o.verdict != "caught"]
    print(f"\n{len(outcomes) - len(survived)} of {len(outcomes)} mutations caught", end="")
    print(f"; not caught: {', '.join(survived)}" if survived else "")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
