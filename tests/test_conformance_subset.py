"""CPython's own tests, a fast subset, under the shim: every test that passes under plain
python in this run passes under sgx and eleos too (scripts/conformance.py; `make
conformance` runs all the modules)."""
import pytest

from scripts import conformance

# Seconds each; together they reach select/poll/epoll, sockets' blocking rule and fcntl,
# recvmsg_into and SCM_RIGHTS, child processes (test_select), utime and links, the enclave
# heap's maps (test_mmap: resize, with blocks), io.FileIO and non-blocking buffered writes
# (CMiscIOTest), a TLS peer's reset under a write (test_wrong_cert_tls13).
SUBSET = ("test.test_epoll", "test.test_select", "test.test_mmap", "test.test_io.CMiscIOTest",
          "test.test_ssl.ThreadedTests.test_wrong_cert_tls13",
          *(f"test.test_poll.PollTests.test_{t}" for t in ("poll1", "poll3",
                                                          "poll_c_limits", "poll_unit_tests")),
          "test.test_socket.NonBlockingTCPTests", "test.test_socket.TestUnixDomain",
          "test.test_socket.RecvmsgIntoUnixStreamTest",
          "test.test_socket.RecvmsgIntoSCMRightsStreamTest",
          "test.test_os.UtimeTests", "test.test_os.LinkTests")


@pytest.fixture(scope="module")
def plain():
    return conformance.run_module(",".join(SUBSET), "plain", test_timeout=60)


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
def test_cpython_tests_that_pass_plain_pass_under_the_shim(plain, mode):
    shim = conformance.run_module(",".join(SUBSET), mode, test_timeout=60)
    passed = [tid for tid, (s, _) in plain.items() if s in conformance.PASS]
    assert all(any(t == name or t.startswith(name + ".") for t in passed) for name in SUBSET)
    assert conformance.regressions(plain, shim) == {}
