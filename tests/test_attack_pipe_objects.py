"""A subprocess's pipe objects answer introspection as natively (no host lie involved).

Under the shim a child's pipes are the LibOS's raw files (trusted/libos/fs.py's FileIO, a
Python class, under CPython's own Buffered* objects).  A lookup of a dunder name that is not
there is an AttributeError, as natively (getattr, hasattr, ``__fspath__``, ``__wrapped__``);
pickle and copy refuse the objects with CPython's TypeError and its message, whichever way
they ask; ``__getstate__`` answers (it was a TypeError); and the raw file's class has no
``__annotations__`` (its ``_k: Kernel`` made typing.get_type_hints on it a NameError).

subprocess's ``builtins`` (the guard on its error pipe, which only a lying host writes)
answers anyone but subprocess's report parsing as the builtins module does: an
AttributeError, not the IagoError, for a name it has not (asyncio's and unittest.mock's
checks ask for such names); and a report naming a dunder is the IagoError too, not the
TypeError subprocess raised when the guard's ``__class__`` became the "exception".
"""
from __future__ import annotations

import copy
import pickle
import subprocess
import typing

import pytest

from eleos_shim.errors import IagoError
from tests.libos_helpers import installed, make_transport
from tests.test_attack_spawn import liar  # noqa: F401  (the lying-host fixture for spawns)


def _outcome(fn, message: bool):
    try:
        value = fn()
    except Exception as exc:      # noqa: BLE001 - what it raises is the outcome
        return type(exc).__name__, str(exc) if message else None
    return "value", type(value).__name__


PROBES = {
    "getattr __foo__": (lambda o: getattr(o, "__foo__"), False),
    "getattr _foo": (lambda o: getattr(o, "_foo"), False),
    "hasattr __fspath__": (lambda o: hasattr(o, "__fspath__") or 0, False),
    "hasattr __wrapped__": (lambda o: hasattr(o, "__wrapped__") or 0, False),
    "hasattr __annotations__": (lambda o: hasattr(o, "__annotations__") or 0, False),
    "getattr __getstate__": (lambda o: o.__getstate__(), False),
    "pickle": (lambda o: pickle.dumps(o), True),
    "pickle 0": (lambda o: pickle.dumps(o, 0), True),
    "copy": (lambda o: copy.copy(o), True),
    "deepcopy": (lambda o: copy.deepcopy(o), True),
    "reduce": (lambda o: o.__reduce__(), True),
    "reduce_ex 1": (lambda o: o.__reduce_ex__(1), True),
    "reduce_ex 4": (lambda o: o.__reduce_ex__(4), True),
    "object reduce_ex 2": (lambda o: object.__reduce_ex__(o, 2), False),
    "get_type_hints": (lambda o: typing.get_type_hints(o), False),
    "get_type_hints class": (lambda o: typing.get_type_hints(type(o)), False),
}


def _probe_pipes():
    out = {}
    for bufsize in (-1, 0):           # buffered pipes, and the raw files themselves
        p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, bufsize=bufsize)
        try:
            objects = {"stdin": p.stdin, "stdout": p.stdout, "stderr": p.stderr}
            if bufsize:
                objects.update({"stdin.raw": p.stdin.raw, "stdout.raw": p.stdout.raw})
            for label, obj in objects.items():
                for name, (fn, message) in PROBES.items():
                    out[bufsize, label, name] = _outcome(lambda: fn(obj), message)
        finally:
            p.communicate(b"")
    return out


def test_a_childs_pipe_objects_answer_lookups_pickle_and_copy_as_natively():
    native = _probe_pipes()
    assert native[0, "stdout", "getattr __foo__"] == ("AttributeError", None)
    assert native[0, "stdout", "pickle"] == ("TypeError", "cannot pickle '_io.FileIO' object")
    with installed(make_transport("ocall")):
        routed = _probe_pipes()
    differ = {k: (native[k], routed[k]) for k in native if native[k] != routed[k]}
    assert differ == {}


@pytest.mark.parametrize("how", [pickle.dumps, copy.copy, copy.deepcopy])
def test_a_raw_file_is_still_never_copied(tmp_path, how):
    # A copy would hold the same fd and close it a second time.
    (tmp_path / "f").write_bytes(b"x")
    with installed(make_transport("ocall")):
        import io
        with io.FileIO(tmp_path / "f", "rb") as f:
            with pytest.raises(TypeError, match="cannot pickle"):
                how(f)
            assert f.read() == b"x"


def test_subprocesss_guarded_builtins_answer_everyone_else_as_the_builtins_module(liar):
    from unittest import mock
    guard = subprocess.builtins
    assert type(guard).__name__ == "_NoReportExpected"
    assert getattr(guard, "print") is print and getattr(guard, "OSError") is OSError
    assert not hasattr(guard, "_is_coroutine") and getattr(guard, "eleos_x", None) is None
    with pytest.raises(AttributeError):
        guard.eleos_x
    with mock.patch.object(subprocess, "builtins"):
        pass
    assert subprocess.builtins is guard
    mock.create_autospec(subprocess)


@pytest.mark.parametrize("report", [b"__class__:0:x", b"__init__:0:", b"__foo__:0:",
                                    b"print:0:", b"SystemExit:0:bye"])
def test_any_name_a_report_on_subprocesss_own_pipe_gives_is_caught(liar, report):
    t, _libos = liar
    t.report, t.report_pipe = report, 0
    with pytest.raises(IagoError, match="subprocess's error pipe"):
        subprocess.Popen(["/bin/true"])
    assert not t.report, "the lie was never told"
