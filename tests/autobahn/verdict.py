#!/usr/bin/env python3
"""Reads the Autobahn|Testsuite fuzzing client's reports for tests/autobahn/run.

`gateway-spec` writes the fuzzing client's spec for the gateway run: every
case of the echo run whose expected events hold no echoed message, section 9
(echo performance) apart (the gateway relays Django's messages and echoes
nothing, so a case that needs an echo says nothing about it). `judge` requires every case of both runs to be
OK, NON-STRICT or INFORMATIONAL, and no case worse than docs/autobahn.json
records; with --write-docs it records this run there and in docs/autobahn.md.
"""

import argparse
import collections
import datetime
import json
import pathlib
import sys

ALLOWED_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
ALLOWED_CLOSE = {"OK", "INFORMATIONAL"}
# How good a verdict is; a case may move down this list, never up.
RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1}
WORST = 9


def case_key(case_id):
    return [int(part) for part in case_id.split(".")]


def reports(outdir):
    """Every case report of a run, by case id."""
    found = {}
    for path in pathlib.Path(outdir).glob("*_case_*.json"):
        report = json.loads(path.read_text())
        found[report["id"]] = report
    if not found:
        sys.exit(f"autobahn: no case reports in {outdir}")
    return found


def needs_echo(report):
    expected = report.get("expected") or {}
    return any(event and event[0] == "message" for events in expected.values() for event in events)


# Section 9 times echoes of large and many messages: nothing in it is about
# a server that does not echo.
ECHO_ONLY_SECTIONS = {"9"}


def gateway_spec(args):
    cases = sorted(
        (
            case
            for case, report in reports(args.echo).items()
            if not needs_echo(report) and case.split(".")[0] not in ECHO_ONLY_SECTIONS
        ),
        key=case_key,
    )
    json.dump(
        {
            "outdir": args.outdir,
            "servers": [{"agent": "gateway", "url": args.url}],
            "cases": cases,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        },
        sys.stdout,
    )


def verdicts(outdir):
    return {case: [report["behavior"], report["behaviorClose"]] for case, report in reports(outdir).items()}


def rank(verdict):
    behavior, close = verdict
    if behavior not in ALLOWED_BEHAVIOR or close not in ALLOWED_CLOSE:
        return WORST
    return max(RANK[behavior], RANK[close])


def judge(args):
    runs = {"echo": verdicts(args.echo), "gateway": verdicts(args.gateway)}
    baseline_path = pathlib.Path(args.baseline)
    baseline = json.loads(baseline_path.read_text())["runs"] if baseline_path.exists() else {}
    problems = []
    for run, cases in runs.items():
        for case, verdict in cases.items():
            if rank(verdict) == WORST:
                problems.append(f"{run} {case}: {verdict[0]} / close {verdict[1]}")
        for case, recorded in baseline.get(run, {}).items():
            now = cases.get(case)
            if now is None:
                problems.append(f"{run} {case}: recorded as {recorded[0]}, not run now")
            elif rank(now) > rank(recorded):
                problems.append(f"{run} {case}: {now[0]} / close {now[1]}, recorded {recorded[0]} / close {recorded[1]}")
    for run, cases in runs.items():
        counts = collections.Counter(verdict[0] for verdict in cases.values())
        print(f"autobahn {run}: {len(cases)} cases, " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    if problems:
        print("autobahn: conformance regressed:", file=sys.stderr)
        for problem in sorted(problems):
            print("  " + problem, file=sys.stderr)
        sys.exit(1)
    if args.write_docs:
        write_docs(runs, reports(args.echo), baseline_path)


def write_docs(runs, echo_reports, baseline_path):
    baseline_path.write_text(json.dumps({"runs": runs}, indent=1, sort_keys=True) + "\n")
    lines = [
        "# RFC 6455 conformance: the Autobahn|Testsuite fuzzing client",
        "",
        "Written by `tests/autobahn/run --write-docs` (do not edit by hand; rerun it);",
        "`scripts/test` runs the same two runs and fails when a case does worse than",
        "[`autobahn.json`](autobahn.json) records. Client: autobahntestsuite 0.8.2 on",
        f"Python 2.7. Run of {datetime.date.today().isoformat()}.",
        "",
        "1. **The echo server** (`tests/src/bin/echo-server.rs`): the gateway's own",
        "   `DirectTransport` and frame reader (`gateway/src/edge/frames.rs`), echoing",
        "   every message. Sections 1-7, 9 (large messages, fragmented or not) and 10.",
        "2. **The gateway** itself (default `direct` driver, a real token in the URL,",
        "   its own Redis, `limits.inbound_rate = 0` so the client's frame rate is not",
        "   what is judged): every case of run 1 whose expected events hold no echoed",
        "   message. The gateway relays Django's messages and echoes nothing, so a",
        "   case that needs an echo (text and binary echo, large messages, the",
        "   valid-UTF-8 cases) says nothing about it; everything about framing,",
        "   control frames, reserved bits and opcodes, fragmentation errors, invalid",
        "   UTF-8 and the close handshake is run against it.",
        "",
        "| run | cases | OK | NON-STRICT | INFORMATIONAL | other |",
        "|---|---|---|---|---|---|",
    ]
    for run, cases in runs.items():
        counts = collections.Counter(verdict[0] for verdict in cases.values())
        other = len(cases) - counts["OK"] - counts["NON-STRICT"] - counts["INFORMATIONAL"]
        lines.append(f"| {run} | {len(cases)} | {counts['OK']} | {counts['NON-STRICT']} | {counts['INFORMATIONAL']} | {other} |")
    lines += ["", "## By section", "", "| section | echo server | gateway |", "|---|---|---|"]
    sections = sorted({case.split(".")[0] for run in runs.values() for case in run}, key=int)
    for section in sections:
        cells = []
        for run in ("echo", "gateway"):
            cases = [v for c, v in runs[run].items() if c.split(".")[0] == section]
            if not cases:
                cells.append("not run")
                continue
            counts = collections.Counter(v[0] for v in cases)
            cells.append(", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
        lines.append(f"| {section} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Every case not plain OK", ""]
    lines += ["| run | case | verdict | close | what the case does |", "|---|---|---|---|---|"]
    for run, cases in runs.items():
        for case in sorted(cases, key=case_key):
            behavior, close = cases[case]
            if behavior == "OK" and close == "OK":
                continue
            # The suite's descriptions go on in HTML (the message parts).
            description = " ".join(echo_reports[case]["description"].split("<")[0].split())
            description = description.replace("|", "\\|")
            if len(description) > 160:
                description = description[:157] + "..."
            lines.append(f"| {run} | {case} | {behavior} | {close} | {description} |")
    lines += [
        "",
        "NON-STRICT (6.4.3, 6.4.4): invalid UTF-8 inside one text frame that",
        "arrives in several TCP reads is refused (1007) once the whole frame is in,",
        "not at the first bad byte; a fragmented message is checked fragment by",
        "fragment (6.4.1, 6.4.2 are OK). INFORMATIONAL cases are those the RFC",
        "leaves open (close codes above 4999, a ping after the close).",
        "",
        "The `actix-ws` driver (`server.websocket_driver = \"actix-ws\"`) closes with",
        "the same codes, but after invalid UTF-8 actix-ws stops reading the",
        "connection, so the client's answer to the close is never read and the",
        "client drops the connection itself (\"FAILED BY CLIENT\" on the close",
        "behaviour of the invalid-UTF-8 cases); the default `direct` driver is the",
        "one run here.",
        "",
    ]
    pathlib.Path(baseline_path).with_suffix(".md").write_text("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    spec = commands.add_parser("gateway-spec")
    spec.add_argument("--echo", required=True)
    spec.add_argument("--url", required=True)
    spec.add_argument("--outdir", required=True)
    verdict = commands.add_parser("judge")
    verdict.add_argument("--echo", required=True)
    verdict.add_argument("--gateway", required=True)
    verdict.add_argument("--baseline", required=True)
    verdict.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.command == "gateway-spec":
        gateway_spec(args)
    else:
        judge(args)


if __name__ == "__main__":
    main()
