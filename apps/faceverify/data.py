"""Faces, probes and synthetic identities for the face verification server and its clients.

App code (inside the enclave when the server runs under the shim; never imports the shim).

Real faces are scikit-image's ``data.lfw_subset()`` (bundled, offline): its first 100 images
are 25x25 px faces of Labeled Faces in the Wild.  Each face is one identity.  They are enlarged
with bilinear interpolation to ``FACE_SIZE`` px so that a 16x16 block grid has several rows and
columns (at 25 px a face would be a single block).

A genuine probe is the enrolled face seen again: shifted by a few pixels, brighter or darker,
with sensor noise.  An impostor probe is another face, changed the same way.  Databases larger
than 100 identities are filled with deterministic synthetic identities made at the histogram
level (a mix of real faces' block statistics, resampled), because computing LBP for hundreds
of thousands of synthetic images would take minutes at every start.
"""
from __future__ import annotations

import functools

import numpy as np

from apps.faceverify import features

N_FACES = 100          # lfw_subset: 100 faces, then 100 non-face patches
FACE_SIZE = 128        # px after enlarging: 8x8 blocks of 16 px
SYNTH_CHUNK = 256      # synthetic identities are generated (and regenerated) in chunks of this
DEFAULT_SEED = 7


def enlarge(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D image with values in [0, 1] to size x size, as uint8."""
    h, w = img.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0 = np.minimum(np.floor(ys).astype(np.intp), h - 2)
    x0 = np.minimum(np.floor(xs).astype(np.intp), w - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = img[y0[:, None], x0[None, :]]
    b = img[y0[:, None], x0[None, :] + 1]
    c = img[y0[:, None] + 1, x0[None, :]]
    d = img[y0[:, None] + 1, x0[None, :] + 1]
    out = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _lfw_subset() -> np.ndarray:
    """skimage.data.lfw_subset(), read without importing scikit-image when we can.

    The array ships inside the scikit-image package.  Reading its bytes with a plain open()
    and parsing them from memory keeps start-up short (no scikit-image import) and keeps all
    file access at the Python level: numpy's np.load(path) dups the file descriptor and
    closes the copy from C, which a Python-level LibOS (the shim) cannot see.
    """
    import importlib.util
    import io
    import os
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = os.path.join(root, "data", "lfw_subset.npy")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    return np.load(io.BytesIO(f.read()))
    from skimage import data as skdata  # not bundled at the usual place: let skimage find it
    return skdata.lfw_subset()


@functools.lru_cache(maxsize=4)
def lfw_faces(size: int = FACE_SIZE) -> np.ndarray:
    """The 100 lfw_subset faces, enlarged to size x size, uint8, shape (100, size, size)."""
    raw = _lfw_subset()[:N_FACES]
    faces = np.stack([enlarge(f, size) for f in raw])
    faces.setflags(write=False)
    return faces


def perturb(face: np.ndarray, rng: np.random.Generator, max_shift: int = 3,
            noise_sigma: float = 4.0, gain: tuple[float, float] = (0.8, 1.2),
            offset: tuple[float, float] = (-20.0, 20.0)) -> np.ndarray:
    """The face as a camera would see it again: moved a few px, another exposure, noise."""
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    h, w = face.shape
    # Shift with edge replication (no wrap-around: the face moves, the border repeats).
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    moved = face[ys[:, None], xs[None, :]].astype(np.float64)
    moved = moved * rng.uniform(*gain) + rng.uniform(*offset)
    moved += rng.normal(0.0, noise_sigma, size=moved.shape)
    return np.clip(np.rint(moved), 0, 255).astype(np.uint8)


def enrollment_image(identity: int, size: int = FACE_SIZE, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The photo a real identity enrolled with: the face, well framed and lit, with the
    camera's noise.  (Enrolling the noiseless enlarged face instead would put flat-region
    codes in the template that no real capture reproduces: TPR at 1% FPR fell to 0.74 at
    sigma 4 when we tried.)"""
    rng = np.random.default_rng([seed, 0xE4, identity])
    return perturb(lfw_faces(size)[identity], rng, max_shift=0, gain=(1.0, 1.0),
                   offset=(0.0, 0.0))


@functools.lru_cache(maxsize=8)
def face_templates(size: int = FACE_SIZE, block: int = features.DEFAULT_BLOCK,
                   seed: int = DEFAULT_SEED) -> np.ndarray:
    """Enrolled templates of the 100 real faces, (100, bins) uint16."""
    t = np.stack([features.extract(enrollment_image(i, size, seed), block)
                  for i in range(N_FACES)])
    t.setflags(write=False)
    return t


def probe_image(identity: int, genuine: bool, rng: np.random.Generator,
                size: int = FACE_SIZE) -> np.ndarray:
    """A probe image for a real identity: its own face (genuine) or another (impostor)."""
    faces = lfw_faces(size)
    if genuine:
        source = identity
    else:
        source = int(rng.integers(0, N_FACES - 1))
        source += source >= identity          # any face but the claimed one
    return perturb(faces[source], rng)


@functools.lru_cache(maxsize=8)
def _real_frequencies(size: int, block: int, seed: int) -> np.ndarray:
    """The real faces' block histograms as frequencies, (100, blocks, bins) float64."""
    real = face_templates(size, block, seed).astype(np.float64) / (block * block)
    real = real.reshape(N_FACES, -1, features.N_BINS)
    real.setflags(write=False)
    return real


def _synthetic_frequencies(chunk: int, size: int, block: int, seed: int,
                           rows: slice | int = slice(None)) -> np.ndarray:
    """Per-block label frequencies of synthetic chunk ``chunk``, (SYNTH_CHUNK, blocks, bins),
    or of only the given rows of it.

    A synthetic identity is a patchwork face: each block position takes the statistics of
    that block of a randomly chosen real face, mixed with a second one.  Drawing per block
    keeps two synthetic identities as far apart as two real faces (mixing whole faces instead
    averaged them all toward one mean face: a third of synthetic impostors were accepted).
    The same chunk number always gives the same numbers, so clients can rebuild probes; the
    random draws are made for the whole chunk, and only the rows asked for are assembled.
    """
    real = _real_frequencies(size, block, seed)
    n_blocks = real.shape[1]
    rng = np.random.default_rng([seed, 0x5EED, chunk])
    cols = np.arange(n_blocks)[None, :]
    src_a = rng.integers(0, N_FACES, size=(SYNTH_CHUNK, n_blocks))[rows]
    src_b = rng.integers(0, N_FACES, size=(SYNTH_CHUNK, n_blocks))[rows]
    w = rng.uniform(0.0, 0.3, size=(SYNTH_CHUNK, n_blocks, 1))[rows]
    return (1.0 - w) * real[src_a, cols] + w * real[src_b, cols]


def synthetic_templates(chunk: int, size: int = FACE_SIZE, block: int = features.DEFAULT_BLOCK,
                        seed: int = DEFAULT_SEED) -> np.ndarray:
    """Enrolled templates of identities N_FACES + chunk*SYNTH_CHUNK + (0..SYNTH_CHUNK-1)."""
    freq = _synthetic_frequencies(chunk, size, block, seed)
    counts = np.rint(freq * (block * block)).astype(features.TEMPLATE_DTYPE)
    return counts.reshape(SYNTH_CHUNK, -1)


def synthetic_probes(identities, genuine, rng: np.random.Generator, size: int = FACE_SIZE,
                     block: int = features.DEFAULT_BLOCK, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Probe templates for synthetic identities, (n, bins) uint16: a fresh sample of each
    one's own block statistics (genuine) or of another synthetic identity's (impostor).

    The sample is Poisson-like per bin around the expected counts (normal with the Poisson
    variance: the large-n limit of drawing a block's pixels anew; numpy's multinomial and
    poisson took 1 ms per probe, too slow for pools of 10,000); batches are grouped by chunk
    so that a pool of thousands of probes costs about a second."""
    ids = np.asarray(identities, dtype=np.int64).ravel()
    gen = np.broadcast_to(np.asarray(genuine, dtype=bool), ids.shape)
    if ids.size and ids.min() < N_FACES:
        raise ValueError("real faces (ids < 100) are not synthetic identities")
    sources = ids.copy()
    n_imp = int((~gen).sum())
    if n_imp:
        other = N_FACES + rng.integers(0, SYNTH_CHUNK * 4, size=n_imp)
        other[other == ids[~gen]] += 1          # anyone but the claimed identity
        sources[~gen] = other
    chunks, rows = np.divmod(sources - N_FACES, SYNTH_CHUNK)
    expected = np.empty((ids.size,) + _real_frequencies(size, block, seed).shape[1:])
    for chunk in np.unique(chunks):
        sel = np.nonzero(chunks == chunk)[0]
        freq = _synthetic_frequencies(int(chunk), size, block, seed, rows=rows[sel])
        expected[sel] = freq / freq.sum(axis=-1, keepdims=True)
    mean = (expected * (block * block)).astype(np.float32)
    noise = rng.standard_normal(mean.shape, dtype=np.float32)
    counts = np.rint(mean + noise * np.sqrt(mean))
    np.clip(counts, 0, np.iinfo(features.TEMPLATE_DTYPE).max, out=counts)
    return counts.astype(features.TEMPLATE_DTYPE).reshape(ids.size, -1)


def synthetic_probe(identity: int, genuine: bool, rng: np.random.Generator,
                    size: int = FACE_SIZE, block: int = features.DEFAULT_BLOCK,
                    seed: int = DEFAULT_SEED) -> np.ndarray:
    """One probe template for a synthetic identity (see synthetic_probes)."""
    return synthetic_probes([identity], [genuine], rng, size, block, seed)[0]
