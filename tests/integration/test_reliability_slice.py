"""The CI-sized slice of the reliability suite (docs/reliability.md): the bench scripts
bench/soak.py, bench/floods.py and bench/faults.py run briefly against a real sipws
subprocess.  Verdicts on tables, errors and answers are asserted; latency and RSS are
printed by the benches, never asserted here (a shared CI machine makes them noise).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Longest any one bench run of the slice may take (seconds).
RUN_LIMIT = 120


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                            timeout=RUN_LIMIT, cwd=str(ROOT))
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-4000:]
    return output


def verdicts(output: str, prefix: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if prefix in line]


def test_soak_slice_standalone_with_churn_ends_with_empty_tables_and_no_error():
    out = run_bench("soak.py", "--minutes", "0.35", "--interval", "7", "--warmup", "0", "--clients", "6",
                    "--idle-clients", "2", "--rate", "15", "--churn", "0.34", "--churn-every", "7",
                    "--keepalive", "2", "--hold", "0.2", "--t1", "0.05")
    tables = verdicts(out, "tables back to zero")
    errors = verdicts(out, "errors:")
    assert tables and tables[0].startswith("PASS"), out[-3000:]
    assert errors and errors[-1].startswith("PASS"), out[-3000:]
    assert "calls checked end to end 0," not in errors[-1], out[-3000:]  # calls really ran
    assert "reconnects 0," not in errors[-1], out[-3000:]  # churn really happened


def test_every_flood_briefly_with_the_legitimate_client_still_answered():
    out = run_bench("floods.py", "--quick")
    for name in ("half-open", "slow-headers", "handshake-burst", "message-burst", "oversized"):
        assert f"== {name}" in out, out[-3000:]
    answered = verdicts(out, "legitimate client answered throughout")
    assert len(answered) == 5 and all(line.startswith("PASS") for line in answered), out[-4000:]
    back = verdicts(out, "tables back to")
    assert back and all(line.startswith("PASS") for line in back), out[-4000:]


def test_core_restart_and_core_silent_every_request_answered_once():
    out = run_bench("faults.py", "--quick", "--only", "core")
    for phase in ("up", "core stopped", "core restarted", "core silent", "core answers"):
        line = [v for v in verdicts(out, f" {phase} ") if "{'sent'" in v]
        assert line and line[0].startswith("PASS"), out[-3000:]
    assert "PASS answered twice" in out, out[-3000:]
    assert out.rstrip().endswith("PASS faults: 1 run, 0 failed") or "PASS faults: 1 run, 0 failed" in out, out[-3000:]
