"""CPython's own tests, a fast subset, under the shim: every test that passes under plain
python in this run passes under sgx and eleos too (scripts/conformance.py; `make
conformance` runs all the modules)."""
import pytest

from scripts import conformance

# Seconds each, and together they reach select/poll/epoll, sockets' blocking rule and
# fcntl, pipes and files.
SUBSET = ("test.test_epoll", "test.test_poll", "test.test_select",
          "test.test_socket.NonBlockingTCPTests", "test.test_socket.BasicUnixTest",
          "test.test_socket.RecvmsgIntoUnixStreamTest", "test.test_socket.SCMRightsTest",
          "test.test_os.PosixTester", "test.test_os.FDInheritanceTests")


@pytest.fixture(scope="module")
def plain():
    return {m: conformance.run_module(m, "plain", test_timeout=60) for m in SUBSET}


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
@pytest.mark.parametrize("module", SUBSET)
def test_cpython_tests_that_pass_plain_pass_under_the_shim(plain, module, mode):
    shim = conformance.run_module(module, mode, test_timeout=60)
    assert sum(s in conformance.PASS for s, _ in plain[module].values()) > 0
    assert conformance.regressions(plain[module], shim) == {}
