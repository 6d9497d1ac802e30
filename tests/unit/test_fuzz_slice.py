"""A CI-sized slice of bench/fuzz.py: each target with a few thousand inputs of a fixed seed.

The long runs (1,000,000 inputs per target) and their figures are in docs/reliability.md; this
slice is the same generators and oracles, so a regression in a parser, the framer, the HEP codec
or the WebSocket server protocol shows here as a failing input with the seed and index that
rebuild it (``python bench/fuzz.py --target T --seed S --start I --inputs 1 --verbose``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

FUZZ_PATH = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"
SEED = 20240613
#: Inputs per target: a few seconds each on one core.
SLICE = {"ws": 2000, "sip": 4000, "framer": 4000, "hep": 4000}


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("sipws_bench_fuzz", FUZZ_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


@pytest.mark.parametrize("target", sorted(SLICE))
def test_fuzz_slice(target):
    result = fuzz.run(target, seed=SEED, inputs=SLICE[target])
    assert result.inputs == SLICE[target]
    assert result.failure_count == 0, result.report()
    # the generators reach both sides of each oracle, not only rejections
    accepted = sum(n for outcome, n in result.outcomes.items()
                   if outcome.startswith(("accepted", "101", "round trip ok", "decode accepted", "split ok")))
    assert accepted > SLICE[target] // 20, result.report()


def test_fuzz_slice_leaves_the_process_as_it_found_it():
    import txaio
    from twisted.logger import globalLogPublisher

    loop = txaio.config.loop
    observers = list(globalLogPublisher._observers)
    fuzz.run("ws", seed=SEED, inputs=20)
    assert txaio.config.loop is loop
    assert list(globalLogPublisher._observers) == observers


def test_inputs_are_rebuilt_from_seed_and_index():
    target = fuzz.SipTarget()
    first = target.generate(fuzz.input_rng(SEED, 1234))
    assert target.generate(fuzz.input_rng(SEED, 1234)) == first
    assert target.generate(fuzz.input_rng(SEED + 1, 1234)) != first
