"""After a full test run: no token any test issued may appear in any log the
gateways under test wrote (target/test-logs/*.log). Tokens are listed by the
harness in target/test-logs/issued-tokens.txt as they are minted. A token's
signature part alone is searched too, since a leak could cut a token up.

Exit 1 naming the log file (never printing the token) when one is found.
"""

import pathlib
import sys


def main() -> int:
    logs = pathlib.Path(__file__).resolve().parents[2] / "target" / "test-logs"
    issued_file = logs / "issued-tokens.txt"
    if not issued_file.exists():
        print("check_token_leaks: no tokens were issued; nothing to check")
        return 0
    tokens = {line.strip() for line in issued_file.read_text().splitlines() if line.strip()}
    needles = set(tokens)
    needles.update(token.rsplit(".", 1)[-1] for token in tokens if token.count(".") == 2)
    needles = {needle for needle in needles if len(needle) >= 16}
    leaks = []
    log_files = sorted(logs.glob("*.log"))
    for log in log_files:
        text = log.read_text(errors="replace")
        if any(needle in text for needle in needles):
            leaks.append(log.name)
    print(
        f"check_token_leaks: {len(tokens)} issued tokens, {len(log_files)} gateway logs, "
        f"{len(leaks)} with a token"
    )
    for name in leaks:
        print(f"  token found in {name}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
