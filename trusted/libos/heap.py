"""TRUSTED side: the app's anonymous memory, ``mmap.mmap(-1, n)``, redirected to the enclave heap.

When the configuration gives the enclave a heap (EPC pages under the modeled SGX driver, or an
SUVM region), an anonymous mmap is how an unmodified app asks for a large buffer, so that is
what is redirected: ``heap_factory(length, **kwargs)`` returns the object the app gets.
File-backed mappings and ``isinstance(x, mmap.mmap)`` keep working (the heap's objects count
as mmaps too, so apps that check the type accept them).
"""
from __future__ import annotations

import mmap as _mmapmod

_RealMmap = _mmapmod.mmap
_POSITIONAL = ("flags", "prot", "access", "offset")


class _MmapType(type):
    """Metaclass: instances of the real mmap type and of the heap's types are all mmaps."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, _RealMmap) or type(obj) in cls._heap_types

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _RealMmap) or sub in cls._heap_types


def mmap_class(heap_factory):
    """The class patched in as ``mmap.mmap``."""

    def __new__(cls, fileno, length, *args, **kwargs):
        if fileno == -1 and heap_factory is not None:
            for name, value in zip(_POSITIONAL, args):
                kwargs[name] = value
            obj = heap_factory(length, **kwargs)
            if not isinstance(obj, _RealMmap):
                cls._heap_types.add(type(obj))
            return obj
        return _RealMmap.__new__(cls, fileno, length, *args, **kwargs)

    def __repr__(self):
        # The C repr names the type by tp_name, which for this class is "mmap": say
        # "mmap.mmap" as the real type does.
        text = _RealMmap.__repr__(self)
        return "<mmap.mmap" + text[len("<mmap"):] if text.startswith("<mmap ") else text

    return _MmapType("mmap", (_RealMmap,), {
        "__new__": __new__, "__module__": "mmap", "_heap_types": set(),
        "__doc__": _RealMmap.__doc__, "__repr__": __repr__})
