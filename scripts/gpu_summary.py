#!/usr/bin/env python3
"""Summarises one `scripts/gpu-check.sh` run from its logs, reporting only
what happened.

    gpu_summary.py LOGS SUMMARY.json   write the summary of the logs in LOGS
    gpu_summary.py --self-test         check the rules below on canned logs

LOGS holds `plan.txt` (the steps planned, one per line), `steps.tsv` (one line
per step that ran: name, exit code, seconds), `NAME.log` for each step, and
`meta.tsv` (key, value: the card, the deadline). The rules:

- A test executable (a step named `test-*`) that crashed, timed out or printed
  no `test result:` line has failed, whatever it printed before.
- Failed tests are read from libtest's `failures:` block, which
  `--nocapture` does not interleave with the tests' own output.
- A test that passed but printed "skipped: no GPU" (or "skipped: no NCCL") was skipped, not run.
- A planned step with no line in `steps.tsv` was not reached.
Standard library only: it runs wherever python3 does.
"""

import json
import os
import re
import sys
import tempfile

TIMED_OUT = 124
KILLED = 137  # the time-out's KILL after its grace, or the OOM killer


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def last_json(text):
    """The last line of `text` that parses as a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_libtest(text, code):
    """Verdicts of one test executable's `--nocapture` log and exit code."""
    results = re.findall(
        r"^test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored", text, re.M
    )
    failed = set()
    for block in re.finditer(r"^failures:\n\n?((?:    \S+\n)+)", text, re.M):
        failed.update(line.strip() for line in block.group(1).splitlines())
    # Under --test-threads=1 a test's own output lands between its
    # "test NAME ... " and its verdict: each test's segment runs to the next.
    starts = list(re.finditer(r"^test (\S+) \.\.\. ", text, re.M))
    skipped, passed = [], []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        segment = text[m.end() : end]
        name = m.group(1)
        if name in failed:
            continue
        segment = re.split(r"^(?:failures:|test result:|running \d+ tests?)", segment, flags=re.M)[0]
        lines = segment.split() or [""]
        if lines[-1] != "ok":
            continue
        if "skipped: no GPU" in segment or "skipped: no NCCL" in segment:
            skipped.append(name)
        else:
            passed.append(name)
    if code == TIMED_OUT:
        result = "timed out"
    elif code == KILLED:
        result = "killed (time-out or out of memory)"
    elif not results:
        result = "crashed" if code != 0 else "no test result"
    elif code != 0 or failed or any(r[0] != "ok" for r in results):
        result = "failed"
    else:
        result = "ok"
    if result != "ok" and not failed and starts:
        # The test that was running when it died never got a verdict.
        last = starts[-1].group(1)
        if last not in passed and last not in skipped:
            failed.add(last)
    return {
        "exit": code,
        "result": result,
        "passed": sorted(passed),
        "failed": sorted(failed),
        "skipped": sorted(skipped),
    }


def summarise(logs):
    meta = dict(
        line.split("\t", 1) for line in read(os.path.join(logs, "meta.tsv")).splitlines() if "\t" in line
    )
    plan = [l.strip() for l in read(os.path.join(logs, "plan.txt")).splitlines() if l.strip()]
    steps = {}
    for line in read(os.path.join(logs, "steps.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].lstrip("-").isdigit():
            code = int(parts[1])
            steps[parts[0]] = {
                "exit": code,
                "seconds": int(parts[2]) if parts[2].isdigit() else None,
                "status": "ok" if code == 0
                else "timed out" if code == TIMED_OUT
                else "killed (time-out or out of memory)" if code == KILLED
                else "failed",
            }
    not_reached = [s for s in plan if s not in steps]
    executables = {}
    for name, step in steps.items():
        if name.startswith("test-"):
            executables[name[5:]] = parse_libtest(read(os.path.join(logs, name + ".log")), step["exit"])
            step["status"] = executables[name[5:]]["result"]
    for name in not_reached:
        if name.startswith("test-"):
            executables[name[5:]] = {"exit": None, "result": "not reached", "passed": [], "failed": [], "skipped": []}
    count = lambda key: sum(len(e[key]) for e in executables.values())
    cuda_tests = {
        "passed": count("passed"),
        "failed": count("failed"),
        "skipped": count("skipped"),
        "failed_tests": sorted(f"{e}::{t}" for e, v in executables.items() for t in v["failed"]),
        "executables_not_ok": sorted(
            e for e, v in executables.items() if v["result"] not in ("ok", "not reached")
        ),
    }
    check = read(os.path.join(logs, "check.log"))
    pretrain = {}
    for mode in ("graph", "eager"):
        text = read(os.path.join(logs, f"pretrain-{mode}.log"))
        knn = re.findall(r"kNN accuracy \(teacher, k=200\): ([0-9.]+)%", text)
        run = last_json(text) or {}
        pretrain[mode] = {
            "pairs_per_s": run.get("pairs_per_s"),
            "knn_percent": float(knn[-1]) if knn else None,
        }
    summary = {
        "card": meta.get("card") or "unknown",
        "verdict": verdict(cuda_tests, steps, not_reached),
        "cuda_tests": cuda_tests,
        "executables": executables,
        "check": {
            "exit": steps.get("check", {}).get("exit"),
            "passed": re.findall(r"^pass\s+(.+?)\s*$", check, re.M),
            "failed": re.findall(r"^FAIL\s+(.+?)\s*$", check, re.M),
        },
        "torch_control": last_json(read(os.path.join(logs, "torch-control.log"))),
        "jit_cold": last_json(read(os.path.join(logs, "jit-cold.log"))),
        "jit_warm": last_json(read(os.path.join(logs, "jit-warm.log"))),
        "p1_eager": last_json(read(os.path.join(logs, "p1-eager.json"))),
        "p1_graph": last_json(read(os.path.join(logs, "p1-graph.json"))),
        "p1_deterministic": last_json(read(os.path.join(logs, "p1-deterministic.json"))),
        "p1_compile": last_json(read(os.path.join(logs, "p1-compile.json"))),
        "deterministic_repeat": last_json(read(os.path.join(logs, "deterministic-repeat.log"))),
        "fashion_mnist_knn_percent": pretrain["graph"]["knn_percent"],
        "fashion_mnist_pretrain": pretrain,
        "steps": steps,
        "not_reached": not_reached,
        "deadline_s": int(meta["deadline"]) if meta.get("deadline", "").isdigit() else None,
        "seconds": int(meta["seconds"]) if meta.get("seconds", "").isdigit() else None,
    }
    return summary


def verdict(cuda_tests, steps, not_reached):
    """One line a reader can trust without reading the rest."""
    parts = []
    failures = []
    if cuda_tests["failed"]:
        failures.append(f"{cuda_tests['failed']} CUDA tests failed")
    if cuda_tests["executables_not_ok"]:
        failures.append("test executables not ok: " + ", ".join(cuda_tests["executables_not_ok"]))
    # The checks whose failure is the GPU's or the loader's, not a benchmark's.
    failed_checks = sorted(n for n in ("check", "deterministic-repeat") if n in steps and steps[n]["status"] != "ok")
    if failed_checks:
        failures.append("checks failed: " + ", ".join(failed_checks))
    if failures:
        parts.append("FAILED: " + "; ".join(failures))
    if cuda_tests["passed"] == 0:
        parts.append(f"no CUDA test ran ({cuda_tests['skipped']} skipped, none passed)")
    else:
        parts.append(f"{cuda_tests['passed']} CUDA tests passed, {cuda_tests['skipped']} skipped")
    bad = sorted(n for n, s in steps.items() if s["status"] != "ok" and not n.startswith("test-"))
    if bad:
        parts.append("steps not ok: " + ", ".join(bad))
    if not_reached:
        parts.append("cut short, not reached: " + ", ".join(not_reached))
    return "; ".join(parts)


# --- self-test: canned logs for each way a run can go wrong ------------------

PASSING = """
running 2 tests
test conv ... conv/forward on cuda:0
ok
test step ... step/f32 on cuda:0
ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.10s
"""

FAILING_NOCAPTURE = """
running 3 tests
test batchnorm ... batchnorm/forward on cuda:0
ok
test conv ... conv/forward on cuda:0
thread 'conv' panicked at tests/parity/conv.rs:10:5:
conv forward: max error 3.2 at 17
FAILED
test pool ... pool/max on cuda:0
ok

failures:

failures:
    conv

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s
"""

CRASHED = """
running 2 tests
test augment ... augment/crop on cuda:0
ok
test batchnorm ... batchnorm/forward on cuda:0
"""

SKIPPED = """
running 2 tests
test conv ... skipped: no GPU (no CUDA driver (libcuda.so) on this machine)
ok
test step ... skipped: no NCCL (NCCL not found: data parallel on more than one GPU needs it)
ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
"""


def canned(files, steps, plan):
    logs = tempfile.mkdtemp(prefix="gpu-summary-")
    files = dict(files, **{"meta.tsv": "card\tNVIDIA H200, 143771 MiB\ndeadline\t420\nseconds\t61\n"})
    files["plan.txt"] = "\n".join(plan) + "\n"
    files["steps.tsv"] = "".join(f"{n}\t{c}\t{s}\n" for n, c, s in steps)
    for name, text in files.items():
        with open(os.path.join(logs, name), "w") as f:
            f.write(text)
    return summarise(logs)


def self_test():
    failures = []

    def expect(case, cond, what):
        print(f"{'ok  ' if cond else 'FAIL'} {case}: {what}")
        if not cond:
            failures.append(case)

    plan = ["check", "test-cuda_parity", "test-cuda_graph", "p1-eager"]
    s = canned(
        {"test-cuda_parity.log": PASSING, "test-cuda_graph.log": PASSING},
        [("check", 0, 3), ("test-cuda_parity", 0, 10), ("test-cuda_graph", 0, 5), ("p1-eager", 0, 60)],
        plan,
    )
    expect("all pass", s["cuda_tests"]["passed"] == 4 and not s["cuda_tests"]["failed"], "4 passed, none failed")
    expect("all pass", s["verdict"] == "4 CUDA tests passed, 0 skipped", s["verdict"])

    s = canned(
        {"test-cuda_parity.log": CRASHED, "test-cuda_graph.log": PASSING},
        [("check", 0, 3), ("test-cuda_parity", 139, 10), ("test-cuda_graph", 0, 5), ("p1-eager", 0, 60)],
        plan,
    )
    e = s["executables"]["cuda_parity"]
    expect("crashed", e["result"] == "crashed" and e["exit"] == 139, f"result {e['result']}, exit {e['exit']}")
    expect("crashed", e["failed"] == ["batchnorm"], f"the test running at the crash failed: {e['failed']}")
    expect("crashed", s["verdict"].startswith("FAILED"), s["verdict"])

    s = canned(
        {"test-cuda_parity.log": PASSING.split("test step")[0], "test-cuda_graph.log": PASSING},
        [("check", 0, 3), ("test-cuda_parity", 124, 120), ("test-cuda_graph", 0, 5), ("p1-eager", 0, 60)],
        plan,
    )
    e = s["executables"]["cuda_parity"]
    expect("timed out", e["result"] == "timed out" and e["passed"] == ["conv"], f"{e['result']}, passed {e['passed']}")
    expect("timed out", "cuda_parity" in s["cuda_tests"]["executables_not_ok"], s["verdict"])

    s = canned(
        {"test-cuda_parity.log": FAILING_NOCAPTURE, "test-cuda_graph.log": PASSING},
        [("check", 0, 3), ("test-cuda_parity", 101, 10), ("test-cuda_graph", 0, 5), ("p1-eager", 0, 60)],
        plan,
    )
    e = s["executables"]["cuda_parity"]
    expect("failing under --nocapture", e["failed"] == ["conv"], f"failed {e['failed']}")
    expect("failing under --nocapture", e["passed"] == ["batchnorm", "pool"], f"passed {e['passed']}")
    expect("failing under --nocapture", s["cuda_tests"]["failed_tests"] == ["cuda_parity::conv"], str(s["cuda_tests"]["failed_tests"]))

    s = canned(
        {"test-cuda_parity.log": PASSING},
        [("check", 0, 3), ("test-cuda_parity", 0, 10)],
        plan,
    )
    expect("cut by the deadline", s["not_reached"] == ["test-cuda_graph", "p1-eager"], f"not reached {s['not_reached']}")
    expect("cut by the deadline", s["executables"]["cuda_graph"]["result"] == "not reached", s["executables"]["cuda_graph"]["result"])
    expect("cut by the deadline", "cut short" in s["verdict"] and s["p1_eager"] is None, s["verdict"])
    expect("cut by the deadline", not s["verdict"].startswith("FAILED"), "not reached is not failed")

    s = canned(
        {"test-cuda_parity.log": SKIPPED, "test-cuda_graph.log": SKIPPED},
        [("check", 0, 3), ("test-cuda_parity", 0, 1), ("test-cuda_graph", 0, 1), ("p1-eager", 1, 2)],
        plan,
    )
    t = s["cuda_tests"]
    expect("every CUDA test skipped", t["passed"] == 0 and t["skipped"] == 4, f"passed {t['passed']}, skipped {t['skipped']}")
    expect("every CUDA test skipped", "no CUDA test ran (4 skipped, none passed)" in s["verdict"], s["verdict"])
    expect("every CUDA test skipped", "steps not ok: p1-eager" in s["verdict"], s["verdict"])

    s = canned(
        {"test-cuda_parity.log": PASSING, "test-cuda_graph.log": PASSING},
        [("check", 1, 3), ("test-cuda_parity", 0, 10), ("test-cuda_graph", 137, 5), ("p1-eager", 0, 60)],
        plan,
    )
    expect("a failed check, an executable killed", s["verdict"].startswith("FAILED") and "checks failed: check" in s["verdict"], s["verdict"])
    expect("a failed check, an executable killed", s["executables"]["cuda_graph"]["result"].startswith("killed"), s["executables"]["cuda_graph"]["result"])

    s = canned(
        {"test-cuda_parity.log": "", "test-cuda_graph.log": PASSING},
        [("check", 0, 3), ("test-cuda_parity", 0, 1), ("test-cuda_graph", 0, 5), ("p1-eager", 0, 60)],
        plan,
    )
    e = s["executables"]["cuda_parity"]
    expect("no test result line", e["result"] == "no test result", e["result"])
    expect("no test result line", s["verdict"].startswith("FAILED"), s["verdict"])

    run = '{"steps": 600, "knn_acc": 0.71, "pairs_per_s": %s, "train_seconds": 9.0}'
    s = canned(
        {
            "pretrain-graph.log": "kNN accuracy (teacher, k=200): 71.25%\nrun folder: x\n" + run % 9000.5 + "\n",
            "pretrain-eager.log": "kNN accuracy (teacher, k=200): 71.30%\nrun folder: y\n" + run % 4000.0 + "\n",
        },
        [("pretrain-graph", 0, 20), ("pretrain-eager", 0, 30)],
        ["pretrain-graph", "pretrain-eager"],
    )
    p = s["fashion_mnist_pretrain"]
    expect("pretrain graph vs eager", p["graph"] == {"pairs_per_s": 9000.5, "knn_percent": 71.25}, str(p["graph"]))
    expect("pretrain graph vs eager", p["eager"] == {"pairs_per_s": 4000.0, "knn_percent": 71.3}, str(p["eager"]))
    expect("pretrain graph vs eager", s["fashion_mnist_knn_percent"] == 71.25, str(s["fashion_mnist_knn_percent"]))

    cases = 9
    print(f"{cases - len(set(failures))} passed, {len(set(failures))} failed")
    return 1 if failures else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    summary = summarise(argv[1])
    text = json.dumps(summary, indent=1)
    with open(argv[2], "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
