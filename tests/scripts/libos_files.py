"""File work an app does (text, binary, seek, append, stat, listdir/scandir, rename, unlink,
shutil.copy via sendfile, os.walk, rmtree); prints results only (no paths, no times) so the
output is identical with and without the enclave."""
import errno
import glob
import os
import pathlib
import shutil
import sys
import tempfile

top = tempfile.mkdtemp(prefix="libos-files-")
try:
    p = os.path.join(top, "notes.txt")
    with open(p, "w", encoding="utf-8") as f:
        f.write("line one\nline two\nünïcode ✓\n")
    with open(p, encoding="utf-8") as f:
        print("lines", [line.rstrip("\n") for line in f])
    with open(p, "a", encoding="utf-8") as f:
        print("append at", f.tell())
        f.write("appended\n")
    with open(p, "rb") as f:
        data = f.read()
        print("binary", len(data), data[-9:])
        f.seek(5)
        print("seek 5", f.read(3), f.tell())
        f.seek(-4, os.SEEK_END)
        print("from end", f.read())
    with open(p, "r+b") as f:
        f.seek(0)
        f.write(b"LINE")
        f.truncate(20)
    with open(p, "rb", buffering=0) as f:
        print("unbuffered", f.readall())
    with open(p, newline="") as f:
        print("newline=''", repr(f.readline()))
    bin_path = os.path.join(top, "blob.bin")
    blob = bytes(range(256)) * 1000
    with open(bin_path, "xb") as f:
        f.write(blob)
    try:
        open(bin_path, "x")
    except FileExistsError as e:
        print("x mode", type(e).__name__, e.errno == errno.EEXIST)
    st = os.stat(bin_path)
    print("stat", st.st_size, oct(st.st_mode & 0o170000), st.st_nlink,
          abs(st.st_mtime_ns / 1e9 - st.st_mtime) < 1e-6, st.st_mtime == os.stat(bin_path).st_mtime)
    fd = os.open(bin_path, os.O_RDONLY)
    print("pread", os.pread(fd, 4, 256), os.lseek(fd, 10, os.SEEK_SET), os.read(fd, 3))
    print("fstat size", os.fstat(fd).st_size)
    os.close(fd)
    shutil.copy(bin_path, os.path.join(top, "copy.bin"))
    with open(os.path.join(top, "copy.bin"), "rb") as f:
        print("copy equal", f.read() == blob)
    os.mkdir(os.path.join(top, "sub"))
    os.makedirs(os.path.join(top, "sub", "deep", "er"))
    pathlib.Path(top, "sub", "deep", "f.txt").write_text("deep\n")
    os.rename(os.path.join(top, "copy.bin"), os.path.join(top, "sub", "moved.bin"))
    os.replace(os.path.join(top, "sub", "moved.bin"), os.path.join(top, "sub", "m.bin"))
    print("listdir", sorted(os.listdir(top)), sorted(os.listdir(os.path.join(top, "sub"))))
    with os.scandir(top) as it:
        print("scandir", sorted((e.name, e.is_dir(), e.is_file()) for e in it))
    print("walk", sorted((os.path.relpath(d, top), sorted(ds), sorted(fs))
                         for d, ds, fs in os.walk(top)))
    print("fwalk", sorted((os.path.relpath(d, top), sorted(ds), sorted(fs))
                          for d, ds, fs, _ in os.fwalk(top)))
    print("glob", sorted(os.path.relpath(g, top) for g in glob.glob(os.path.join(top, "**", "*"),
                                                                   recursive=True)))
    print("pathlib", sorted(str(q.relative_to(top)) for q in pathlib.Path(top).rglob("*.txt")))
    print("exists", os.path.exists(p), os.path.isdir(top), os.path.isfile(os.path.join(top, "no")))
    try:
        os.stat(os.path.join(top, "missing"))
    except FileNotFoundError as e:
        print("missing", e.errno, os.path.basename(e.filename))
    try:
        os.rmdir(os.path.join(top, "sub"))
    except OSError as e:
        print("rmdir nonempty", type(e).__name__, e.errno)
    os.unlink(os.path.join(top, "sub", "m.bin"))
    print("after unlink", sorted(os.listdir(os.path.join(top, "sub"))))
    shutil.rmtree(os.path.join(top, "sub"))
    print("after rmtree", sorted(os.listdir(top)))
    r, w = os.pipe()
    print("pipe", os.write(w, b"through a pipe"), os.read(r, 100))
    os.close(r)
    os.close(w)
    with tempfile.TemporaryDirectory() as td:
        pathlib.Path(td, "x").mkdir()
        pathlib.Path(td, "x", "y").write_bytes(b"y")
    print("temporary directory removed", not os.path.exists(td))
    with tempfile.TemporaryFile() as tf:
        tf.write(b"temporary")
        tf.seek(0)
        print("tempfile", tf.read())
finally:
    shutil.rmtree(top)
print("done", file=sys.stderr)
