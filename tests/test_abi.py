"""One ABI, two spellings: the C header and eleos_shim/abi.py agree."""
import re

from eleos_shim import abi
from trusted._native._enclave import ffi as enclave_ffi
from untrusted._native._host import ffi as host_ffi


def test_ocall_numbers_match_the_header():
    assert abi.header_ops() == abi.OP


REQ_FIELDS = ("state", "op", "ret", "out_len", "out2_len", "args", "buf", "buf_len", "buf2",
              "buf2_len", "seq")


def test_request_layout_is_the_same_for_both_halves():
    layouts = [[ffi.offsetof("struct eleos_req", f) for f in REQ_FIELDS]
               for ffi in (enclave_ffi, host_ffi)]
    assert layouts[0] == layouts[1]
    for ffi in (enclave_ffi, host_ffi):
        assert ffi.sizeof("struct eleos_req") == 8 + 6 * 8 + 4 * 8 + 3 * 8 + 8
        assert ffi.sizeof("struct eleos_stat") == __import__("struct").calcsize(abi.STAT_FORMAT)


def test_a_reply_is_in_the_cache_line_of_the_slot_state():
    # A worker publishing DONE then hands the producer one line back (a ring slot is 128-byte
    # aligned: ELEOS_RING_SLOT_SIZE), not two.
    for ffi in (enclave_ffi, host_ffi):
        assert ffi.offsetof("struct eleos_req", "state") == 0
        assert ffi.offsetof("struct eleos_req", "out2_len") + 8 <= 64
        assert ffi.offsetof("struct eleos_req", "ret") + 8 <= 64


def test_header_constants_match_python():
    with open(abi.HEADER) as f:
        text = f.read()
    consts = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define ELEOS_(\w+)\s+(\d+)u?\b", text)}
    assert consts["PATH_RPC"] == abi.PATH_RPC and consts["PATH_FALLBACK"] == abi.PATH_FALLBACK
    assert consts["RPC_FALLBACK"] == abi.RPC_FALLBACK and consts["RPC_CORRUPT"] == abi.RPC_CORRUPT
    assert consts["SLOT_DONE"] == abi.SLOT_DONE and consts["T_AEX"] == abi.T_AEX
    assert consts["OP_COUNT"] == len(abi.OPS)


def test_spawn_fields_and_msg_name_size_match_the_header():
    with open(abi.HEADER) as f:
        text = f.read()
    enum = re.search(r"enum eleos_spawn_field \{(.*?)\};", text, re.S).group(1)
    names = [n.strip().removeprefix("ELEOS_SP_").lower() for n in enum.split(",") if n.strip()]
    assert names == list(abi.SPAWN_FIELDS) + ["fixed"]
    kinds = dict(re.findall(r"#define ELEOS_SPAWN_(\w+)\s+(\d+)", text))
    assert kinds == {"OPEN": str(abi.SPAWN_OPEN), "CLOSE": str(abi.SPAWN_CLOSE),
                     "DUP2": str(abi.SPAWN_DUP2)}
    assert re.search(r"#define ELEOS_MSG_NAME_MAX\s+(\d+)", text).group(1) == \
        str(abi.MSG_NAME_MAX)
