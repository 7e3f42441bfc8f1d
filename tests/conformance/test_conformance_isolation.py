"""The conformance run survives a case whose kernel kills its process (a fault in emulated code):
chunks run in child processes, and the case that dies is reported as an error with its signal,
the others as they ran."""
import os
import signal

from graphopt.conformance import CaseResult, _death, _run_isolated


class _Case:  # the one attribute the isolation reads; picklable for the spawned child
    def __init__(self, name):
        self.name = name


def _dies_on_fatal(cases, ops, backend, conn):
    """A stand-in for a chunk run: each case passes, but one named 'fatal' kills the process."""
    if any(c.name == "fatal" for c in cases):
        os.kill(os.getpid(), signal.SIGSEGV)
    conn.send([CaseResult(c.name, ops[c.name], "pass") for c in cases])
    conn.close()


def test_a_case_that_kills_its_process_is_an_error_and_the_rest_still_run():
    cases = [_Case("fine"), _Case("fatal")]
    got = _run_isolated(cases, {"fine": "Relu", "fatal": "Conv"}, "cuda-emu", worker=_dies_on_fatal)
    assert [(r.name, r.op, r.status) for r in got] == [("fine", "Relu", "pass"), ("fatal", "Conv", "error")]
    assert got[1].detail == "crashed: the process died of SIGSEGV"
    assert _death(3) == "the process exited with status 3"
