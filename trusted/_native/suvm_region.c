/*
 * suvm_region.c - the app-facing fast path of SUVM memory (trusted/, inside the enclave).
 *
 * SecureMemory and SPointer (trusted/suvm.py) are Python subclasses of the type defined here,
 * `Region`: a window [cur, hi) of one SUVM allocation [lo, hi).  Its item and slice access,
 * read/write/seek/tell/read_byte/write_byte are C, because a resident access must cost about
 * what slicing a plain mmap costs (Eleos's target: the SUVM fast path within 1.2x of plain
 * memory, issue 4), and a Python method plus a cffi call plus ffi.buffer costs ~5x that.
 *
 * Why a CPython type inside a cffi module: cffi API mode compiles this file into a real
 * CPython extension, so it may use the C API; suvm_region_register() (called once, through
 * cffi) creates the type with PyType_FromSpec and adds it to the module as `Region`.
 *
 * GIL: a resident access copies with the GIL held (a memcpy, like mmap slicing does); as soon
 * as a page is missing the GIL is released for the fault handler (AES-GCM, eviction), so other
 * app threads run meanwhile.  The core never touches the GIL.
 *
 * No buffer protocol: a secure pointer translates every access in software, there is no
 * stable address to hand out, so asking for a buffer raises a TypeError that says so.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "suvm.h"

typedef struct {
    PyObject_HEAD
    suvm_t *s;
    uint64_t lo, cur, hi;   /* allocation [lo, hi), this window starts at cur */
    Py_ssize_t pos;         /* mmap file position, relative to cur */
    int closed;
    int owns;               /* the finalizer frees [lo, hi) from heap (SecureMemory's) */
    suvm_heap_t *heap;      /* the allocator it came from (_bind_new), else NULL */
} Region;

static PyObject *integrity_error;   /* eleos_shim.errors.IntegrityError */
static PyTypeObject *region_type;   /* Region itself, for _swap's check (kept for good) */

static int raise_rc(int rc)
{
    switch (rc) {
    case SUVM_EINTEGRITY:
        PyErr_SetString(integrity_error, "SUVM page failed its integrity check (tampered, swapped or "
                        "replayed by the host); no data returned");
        break;
    case SUVM_ERANGE:
        PyErr_SetString(PyExc_IndexError, "SUVM access outside the allocated space");
        break;
    case SUVM_ENOMEM:
        PyErr_SetString(PyExc_MemoryError, "SUVM backing store is full");
        break;
    default:
        PyErr_Format(PyExc_RuntimeError, "SUVM internal error %d", rc);
    }
    return -1;
}

/* The one access routine: fast path with the GIL, fault handler without it. */
static int region_io(Region *r, uint64_t addr, void *buf, size_t n, int write)
{
    if (!r->s) {
        PyErr_SetString(PyExc_ValueError, "SUVM region is not bound");
        return -1;
    }
    size_t done = suvm_copy_resident(r->s, addr, buf, n, write);
    if (done == n)
        return 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = write ? suvm_write(r->s, addr + done, (uint8_t *)buf + done, n - done)
               : suvm_read(r->s, addr + done, (uint8_t *)buf + done, n - done);
    Py_END_ALLOW_THREADS
    return rc ? raise_rc(rc) : 0;
}

static int check_open(Region *r)
{
    if (r->closed || !r->s) {
        PyErr_SetString(PyExc_ValueError, "mmap closed or invalid");
        return -1;
    }
    return 0;
}

static PyObject *read_span(Region *r, Py_ssize_t start, Py_ssize_t n)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (!out || n == 0)
        return out;
    if (region_io(r, r->cur + (uint64_t)start, PyBytes_AS_STRING(out), (size_t)n, 0) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static Py_ssize_t region_length(Region *r)
{
    if (check_open(r) < 0)
        return -1;
    return (Py_ssize_t)(r->hi - r->cur);
}

static PyObject *region_subscript(Region *r, PyObject *item)
{
    if (check_open(r) < 0)
        return NULL;
    Py_ssize_t len = (Py_ssize_t)(r->hi - r->cur);
    if (PySlice_Check(item)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(item, &start, &stop, &step) < 0)
            return NULL;
        Py_ssize_t n = PySlice_AdjustIndices(len, &start, &stop, step);
        if (step == 1)
            return read_span(r, start, n);
        if (n == 0)
            return PyBytes_FromStringAndSize(NULL, 0);
        /* Stepped: read the covering span once, then pick. */
        Py_ssize_t lo = step > 0 ? start : start + (n - 1) * step;
        Py_ssize_t span = (n - 1) * (step > 0 ? step : -step) + 1;
        PyObject *whole = read_span(r, lo, span);
        if (!whole)
            return NULL;
        PyObject *out = PyBytes_FromStringAndSize(NULL, n);
        if (out) {
            const char *src = PyBytes_AS_STRING(whole);
            char *dst = PyBytes_AS_STRING(out);
            for (Py_ssize_t i = 0, at = start - lo; i < n; i++, at += step)
                dst[i] = src[at];
        }
        Py_DECREF(whole);
        return out;
    }
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += len;
        if (i < 0 || i >= len) {
            PyErr_SetString(PyExc_IndexError, "mmap index out of range");
            return NULL;
        }
        uint8_t b;
        if (region_io(r, r->cur + (uint64_t)i, &b, 1, 0) < 0)
            return NULL;
        return PyLong_FromLong(b);
    }
    PyErr_SetString(PyExc_TypeError, "SUVM indices must be integers or slices");
    return NULL;
}

static int region_ass_subscript(Region *r, PyObject *item, PyObject *value)
{
    if (check_open(r) < 0)
        return -1;
    if (!value) {
        PyErr_SetString(PyExc_TypeError, "SUVM memory object doesn't support item deletion");
        return -1;
    }
    Py_ssize_t len = (Py_ssize_t)(r->hi - r->cur);
    if (PySlice_Check(item)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(item, &start, &stop, &step) < 0)
            return -1;
        Py_ssize_t n = PySlice_AdjustIndices(len, &start, &stop, step);
        Py_buffer view;
        if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0)
            return -1;
        int rc = 0;
        if (view.len != n) {
            PyErr_SetString(PyExc_IndexError, "mmap slice assignment is wrong size");
            rc = -1;
        } else if (step == 1) {
            if (n)
                rc = region_io(r, r->cur + (uint64_t)start, view.buf, (size_t)n, 1);
        } else {
            const uint8_t *src = view.buf;
            for (Py_ssize_t i = 0, at = start; i < n && rc == 0; i++, at += step)
                rc = region_io(r, r->cur + (uint64_t)at, (void *)(src + i), 1, 1);
        }
        PyBuffer_Release(&view);
        return rc;
    }
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return -1;
        if (i < 0)
            i += len;
        if (i < 0 || i >= len) {
            PyErr_SetString(PyExc_IndexError, "mmap index out of range");
            return -1;
        }
        long v = PyLong_AsLong(value);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < 0 || v > 255) {
            PyErr_SetString(PyExc_ValueError, "mmap item value must be in range(0, 256)");
            return -1;
        }
        uint8_t b = (uint8_t)v;
        return region_io(r, r->cur + (uint64_t)i, &b, 1, 1);
    }
    PyErr_SetString(PyExc_TypeError, "SUVM indices must be integers or slices");
    return -1;
}

static int region_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    (void)view; (void)flags;
    PyErr_Format(PyExc_TypeError,
                 "%s has no buffer protocol: SUVM memory is reached through secure pointers that "
                 "translate every access in software, so there is no address to share (as with "
                 "Eleos's spointers); copy it out with m[a:b] instead", Py_TYPE(self)->tp_name);
    return -1;
}

/* ---- methods ---- */

static PyObject *region_bind(Region *r, PyObject *args)
{
    unsigned long long h, lo, cur, hi;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "KKKK|n", &h, &lo, &cur, &hi, &pos))
        return NULL;
    if (!h || lo > cur || cur > hi) {
        PyErr_SetString(PyExc_ValueError, "bad SUVM region bounds");
        return NULL;
    }
    r->s = (suvm_t *)(uintptr_t)h;
    r->lo = lo; r->cur = cur; r->hi = hi;
    r->pos = pos < 0 ? 0 : pos;      /* a resize keeps the position, even past the end (as mmap) */
    r->closed = 0;
    Py_RETURN_NONE;
}

static PyObject *region_mark_closed(Region *r, PyObject *unused)
{
    (void)unused;
    r->closed = 1;
    Py_RETURN_NONE;
}

/* Owning an allocation and making or giving one up are one C call each, never a Python call
 * and a bind: a signal handler (KeyboardInterrupt) or a finalizer runs between any two
 * bytecodes, and one that raised after the allocator returned and before the region held
 * the result leaked it (no object would ever free it).  From the moment suvm_heap_alloc
 * succeeds the region owns the allocation, and SecureMemory's finalizer frees what a region
 * owns.  `heap` is the Suvm's suvm_heap_t, which outlives the instance (suvm.py). */

/* _bind_new(handle, heap, n, owns) -> (rc, addr): allocate n bytes and bind [addr, addr + n)
 * at position 0; `owns`: the region's finalizer frees them if nothing else has (a map: no
 * Python __del__, whose first bytecodes a KeyboardInterrupt could cut short, and which runs
 * while the instance's __dict__, and so the Suvm and its heap, are still alive).  On an
 * error nothing is bound and addr is what suvm_heap_alloc left (the end it needed, for
 * SUVM_ENOMEM). */
static PyObject *region_bind_new(Region *r, PyObject *args)
{
    unsigned long long h, heap, n;
    int owns;
    if (!PyArg_ParseTuple(args, "KKKp", &h, &heap, &n, &owns))
        return NULL;
    if (!h || !heap) {
        PyErr_SetString(PyExc_ValueError, "bad SUVM handle");
        return NULL;
    }
    if (r->s && !r->closed) {
        PyErr_SetString(PyExc_ValueError, "SUVM region already holds an allocation");
        return NULL;
    }
    uint64_t addr = 0, size = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS          /* the allocator may grow the store: an OCALL */
    rc = suvm_heap_alloc((suvm_heap_t *)(uintptr_t)heap, n, &addr, &size);
    Py_END_ALLOW_THREADS
    if (rc == 0) {
        r->s = (suvm_t *)(uintptr_t)h;
        r->lo = r->cur = addr;
        r->hi = addr + n;
        r->pos = 0;
        r->closed = 0;
        r->heap = (suvm_heap_t *)(uintptr_t)heap;
        r->owns = owns;
    }
    return Py_BuildValue("iK", rc, (unsigned long long)addr);
}

/* _swap(other): exchange the allocations (and open state) of two regions; each keeps its
 * position.  A resize builds the new allocation in a region of its own, then swaps. */
static PyObject *region_swap(Region *r, PyObject *other)
{
    if (!PyObject_TypeCheck(other, region_type)) {
        PyErr_SetString(PyExc_TypeError, "_swap needs another SUVM region");
        return NULL;
    }
    Region *o = (Region *)other, t = *r;
    r->s = o->s; r->lo = o->lo; r->cur = o->cur; r->hi = o->hi; r->closed = o->closed;
    r->owns = o->owns; r->heap = o->heap;
    o->s = t.s; o->lo = t.lo; o->cur = t.cur; o->hi = t.hi; o->closed = t.closed;
    o->owns = t.owns; o->heap = t.heap;
    Py_RETURN_NONE;
}

/* _release(heap) -> rc, or None if the region held nothing: mark it closed and free its
 * allocation [lo, hi) in one call, so that neither happens without the other. */
static PyObject *region_release(Region *r, PyObject *arg)
{
    unsigned long long heap = PyLong_AsUnsignedLongLong(arg);
    if (heap == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!r->s || r->closed)
        Py_RETURN_NONE;
    r->closed = 1;
    uint64_t lo = r->lo;
    int rc;
    Py_BEGIN_ALLOW_THREADS          /* freeing pages discards them from the store */
    rc = suvm_heap_free((suvm_heap_t *)(uintptr_t)heap, lo);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(rc);
}

static PyObject *region_read(Region *r, PyObject *args)
{
    PyObject *arg = Py_None;
    if (!PyArg_ParseTuple(args, "|O:read", &arg) || check_open(r) < 0)
        return NULL;
    Py_ssize_t len = (Py_ssize_t)(r->hi - r->cur), left = len - r->pos;
    if (left < 0) left = 0;
    Py_ssize_t n = left;
    if (arg != Py_None) {
        n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 0 || n > left)
            n = left;
    }
    PyObject *out = read_span(r, r->pos, n);
    if (out)
        r->pos += n;
    return out;
}

static PyObject *region_write(Region *r, PyObject *arg)
{
    if (check_open(r) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t len = (Py_ssize_t)(r->hi - r->cur);
    if (r->pos > len || len - r->pos < view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "data out of range");
        return NULL;
    }
    int rc = view.len ? region_io(r, r->cur + (uint64_t)r->pos, view.buf, (size_t)view.len, 1) : 0;
    Py_ssize_t n = view.len;
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    r->pos += n;
    return PyLong_FromSsize_t(n);
}

static PyObject *region_read_byte(Region *r, PyObject *unused)
{
    (void)unused;
    if (check_open(r) < 0)
        return NULL;
    if (r->pos >= (Py_ssize_t)(r->hi - r->cur)) {
        PyErr_SetString(PyExc_ValueError, "read byte out of range");
        return NULL;
    }
    uint8_t b;
    if (region_io(r, r->cur + (uint64_t)r->pos, &b, 1, 0) < 0)
        return NULL;
    r->pos++;
    return PyLong_FromLong(b);
}

static PyObject *region_write_byte(Region *r, PyObject *arg)
{
    if (check_open(r) < 0)
        return NULL;
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (v < 0 || v > 255) {   /* as mmap's "b" argument format */
        PyErr_SetString(PyExc_OverflowError, v < 0 ? "unsigned byte integer is less than minimum"
                                                   : "unsigned byte integer is greater than maximum");
        return NULL;
    }
    if (r->pos >= (Py_ssize_t)(r->hi - r->cur)) {
        PyErr_SetString(PyExc_ValueError, "write byte out of range");
        return NULL;
    }
    uint8_t b = (uint8_t)v;
    if (region_io(r, r->cur + (uint64_t)r->pos, &b, 1, 1) < 0)
        return NULL;
    r->pos++;
    Py_RETURN_NONE;
}

static PyObject *region_seek(Region *r, PyObject *args)
{
    Py_ssize_t dist;
    int how = 0;
    if (!PyArg_ParseTuple(args, "n|i:seek", &dist, &how) || check_open(r) < 0)
        return NULL;
    Py_ssize_t len = (Py_ssize_t)(r->hi - r->cur), where;
    switch (how) {
    case 0: where = dist; break;
    case 1: where = r->pos + dist; break;
    case 2: where = len + dist; break;
    default:
        PyErr_SetString(PyExc_ValueError, "unknown seek type");
        return NULL;
    }
    if (where < 0 || where > len) {
        PyErr_SetString(PyExc_ValueError, "seek out of range");
        return NULL;
    }
    r->pos = where;
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromSsize_t(where);   /* mmap.seek returns the position from 3.13 on */
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *region_tell(Region *r, PyObject *unused)
{
    (void)unused;
    if (check_open(r) < 0)
        return NULL;
    return PyLong_FromSsize_t(r->pos);
}

static PyObject *get_u64(Region *r, void *which)
{
    uintptr_t w = (uintptr_t)which;
    return PyLong_FromUnsignedLongLong(w == 0 ? r->lo : w == 1 ? r->cur : r->hi);
}

static PyObject *get_closed(Region *r, void *unused)
{
    (void)unused;
    return PyBool_FromLong(r->closed || !r->s);
}

static PyMethodDef region_methods[] = {
    {"_bind", (PyCFunction)region_bind, METH_VARARGS, "_bind(handle, lo, cur, hi[, pos]): attach to SUVM space"},
    {"_mark_closed", (PyCFunction)region_mark_closed, METH_NOARGS, "refuse every later access"},
    {"_bind_new", (PyCFunction)region_bind_new, METH_VARARGS, "_bind_new(handle, heap, n) -> (rc, addr): allocate and bind, one call"},
    {"_swap", (PyCFunction)region_swap, METH_O, "_swap(other): exchange the two regions' allocations"},
    {"_release", (PyCFunction)region_release, METH_O, "_release(heap) -> rc or None: close and free, one call"},
    {"read", (PyCFunction)region_read, METH_VARARGS, "read([n]) -> bytes from the position, as mmap.read"},
    {"write", (PyCFunction)region_write, METH_O, "write(data) -> n, at the position, as mmap.write"},
    {"read_byte", (PyCFunction)region_read_byte, METH_NOARGS, "read_byte() -> int, as mmap"},
    {"write_byte", (PyCFunction)region_write_byte, METH_O, "write_byte(int), as mmap"},
    {"seek", (PyCFunction)region_seek, METH_VARARGS, "seek(pos[, whence]), as mmap"},
    {"tell", (PyCFunction)region_tell, METH_NOARGS, "tell() -> position"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef region_getset[] = {
    {"_lo", (getter)get_u64, NULL, "SUVM address where the allocation starts", (void *)0},
    {"_cur", (getter)get_u64, NULL, "SUVM address of this window (the pointer)", (void *)1},
    {"_hi", (getter)get_u64, NULL, "SUVM address where the allocation ends", (void *)2},
    {"closed", (getter)get_closed, NULL, "True once closed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* A map dropped without close(): its memory goes back, as an unclosed mmap's does. */
static void region_finalize(PyObject *self)
{
    Region *r = (Region *)self;
    if (r->owns && r->s && !r->closed && r->heap) {
        r->closed = 1;
        suvm_heap_free(r->heap, r->lo);    /* EINVAL if the instance was closed: all freed */
    }
}

static void region_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot region_slots[] = {
    {Py_tp_dealloc, region_dealloc},
    {Py_tp_finalize, region_finalize},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, region_methods},
    {Py_tp_getset, region_getset},
    {Py_mp_length, region_length},
    {Py_sq_length, region_length},
    {Py_mp_subscript, region_subscript},
    {Py_mp_ass_subscript, region_ass_subscript},
    {Py_bf_getbuffer, region_getbuffer},
    {Py_tp_doc, "A window of SUVM memory: the C fast path under SecureMemory and SPointer."},
    {0, NULL},
};

static PyType_Spec region_spec = {
    "trusted._native._suvm.Region", sizeof(Region), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, region_slots,
};

/* Called once through cffi (so without the GIL): create Region and add it to this module. */
int suvm_region_register(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    PyObject *mod = NULL, *errors = NULL, *tp = NULL;
    mod = PyImport_ImportModule("trusted._native._suvm");
    if (!mod)
        goto out;
    if (PyObject_HasAttrString(mod, "Region")) {
        rc = 0;
        goto out;
    }
    errors = PyImport_ImportModule("eleos_shim.errors");
    if (!errors)
        goto out;
    integrity_error = PyObject_GetAttrString(errors, "IntegrityError");   /* kept for good */
    if (!integrity_error)
        goto out;
    tp = PyType_FromSpec(&region_spec);
    if (!tp)
        goto out;
    if (PyObject_SetAttrString(mod, "Region", tp) < 0)
        goto out;
    Py_INCREF(tp);
    region_type = (PyTypeObject *)tp;
    rc = 0;
out:
    if (rc < 0)
        PyErr_Print();
    Py_XDECREF(tp);
    Py_XDECREF(errors);
    Py_XDECREF(mod);
    PyGILState_Release(g);
    return rc;
}
