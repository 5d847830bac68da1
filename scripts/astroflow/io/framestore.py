"""Frames of one shape in one raw float32 file, read and written by ``os.pread``/``os.pwrite``.

The store holds ``N`` frames of ``(H, W)`` or ``(H, W, C)`` float32 pixels, native byte order,
one frame after the other and the rows of each frame contiguous (C order), with no header:
the file of ``N`` frames is exactly ``N * H * W * C * 4`` bytes, and frame ``i`` starts at byte
``i * H * W * C * 4``. Whoever opens a store again must know its shape (the planetary rules
keep it in a JSON sidecar).

It is the one on-disk frame buffer of the pipeline: the sample files of the lucky stacker
(:class:`astroflow.planetary.lucky.PatchStacker`), the aligned frames that the planetary pass
writes for deconvolution (:func:`astroflow.planetary.passes.write_aligned_frames`) and the
frames that multi-frame deconvolution reads a minibatch at a time
(:func:`astroflow.restoration.mfbd.multiframe_deconvolve`).

Why not a memory map: the pages of a ``numpy.memmap`` count in the process's resident memory
while they are cached, so the memory a job reports (and a scheduler enforces) would grow with
the number of frames. Explicit reads and writes go through the kernel's page cache, which the
kernel may drop at will: the process holds only the frames it asked for.
"""

from __future__ import annotations

import os

import numpy as np

from astroflow.checks import check_int, check_region

__all__ = ["FrameStore"]

_ITEM = np.dtype(np.float32).itemsize


class FrameStore:
    """float32 frames ``(N, H, W)`` or ``(N, H, W, C)`` in a raw file, via ``pwrite``/``pread``.

    Creating a store makes (or truncates) its file at full size, zero-filled (sparse where the
    file system allows); :meth:`open` opens an existing one read-only. Memory does not grow
    with ``N``: a write sends one frame, a read fetches only the frames (and rows) asked for.

    Parameters
    ----------
    path : str or os.PathLike
        File to create (an existing file is truncated).
    shape : tuple of int
        ``(N, H, W)`` or ``(N, H, W, C)``, all >= 1.

    Attributes
    ----------
    path : str
        The file.
    shape : tuple of int
        ``(N, H, W[, C])``.

    Raises
    ------
    ValueError
        If ``shape`` is not 3 or 4 integers >= 1.

    Examples
    --------
    >>> with FrameStore(tmp / "frames.f32", (100, 256, 256)) as store:  # doctest: +SKIP
    ...     for i, frame in enumerate(frames):
    ...         store.write(i, frame)
    ...     latent, info = multiframe_deconvolve(store, stack)
    """

    def __init__(self, path, shape):
        self._setup(path, shape, "w+b")
        self._file.truncate(self.shape[0] * self._frame_bytes)

    @classmethod
    def open(cls, path, shape):
        """Open an existing store read-only.

        Parameters
        ----------
        path : str or os.PathLike
            File written by a :class:`FrameStore` of this ``shape``.
        shape : tuple of int
            ``(N, H, W)`` or ``(N, H, W, C)``.

        Returns
        -------
        FrameStore

        Raises
        ------
        ValueError
            If ``shape`` is invalid or the file is smaller than ``shape`` needs.
        FileNotFoundError
            If the file does not exist.
        """
        self = cls.__new__(cls)
        self._setup(path, shape, "rb")
        size = os.fstat(self._file.fileno()).st_size
        need = self.shape[0] * self._frame_bytes
        if size < need:
            self.close()
            raise ValueError(
                f"{self.path} holds {size} bytes, fewer than the {need} of float32 frames of "
                f"shape {self.shape}"
            )
        return self

    def _setup(self, path, shape, mode):
        shape = tuple(shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"shape must be (N, H, W) or (N, H, W, C), got {shape!r}")
        self.shape = tuple(check_int(f"shape[{k}]", n, 1) for k, n in enumerate(shape))
        self.path = os.fspath(path)
        self._row_bytes = int(np.prod(self.shape[2:], dtype=np.int64)) * _ITEM
        self._frame_bytes = self.shape[1] * self._row_bytes
        self._file = open(self.path, mode)

    def __len__(self):
        return self.shape[0]

    def _index(self, index):
        index = check_int("frame index", index, 0)
        if index >= self.shape[0]:
            raise ValueError(f"frame index {index} out of range for {self.shape[0]} frames")
        return index

    def write(self, index, frame):
        """Write frame ``index``.

        Parameters
        ----------
        index : int
            Frame number, ``0 <= index < N``.
        frame : numpy.ndarray
            ``(H, W)`` or ``(H, W, C)`` (the store's frame shape), any real dtype, stored as
            float32 (NaN allowed: missing pixels).

        Raises
        ------
        ValueError
            If the index is out of range or the frame has another shape.
        OSError
            If the store was opened read-only.
        """
        index = self._index(index)
        data = np.ascontiguousarray(frame, dtype=np.float32)
        if data.shape != self.shape[1:]:
            raise ValueError(f"frame must have shape {self.shape[1:]}, got {data.shape}")
        os.pwrite(self._file.fileno(), data.tobytes(), index * self._frame_bytes)

    def read(self, indices, region=None):
        """Read frames, or a rectangle of them.

        Parameters
        ----------
        indices : int or sequence of int
            Frame numbers (any order, repeats allowed).
        region : tuple of int, optional
            ``(y0, y1, x0, x1)``, rows ``y0:y1`` and columns ``x0:x1`` with
            ``0 <= y0 < y1 <= H`` and ``0 <= x0 < x1 <= W``; default the whole frame. The rows
            ``y0:y1`` of a frame are read with one ``pread`` and the columns sliced from them.

        Returns
        -------
        numpy.ndarray
            float32 ``(len(indices), y1 - y0, x1 - x0[, C])``, as written.

        Raises
        ------
        ValueError
            If an index or the region is out of range, or the file is shorter than a frame.
        """
        indices = [self._index(i) for i in np.atleast_1d(np.asarray(indices)).tolist()]
        y0, y1, x0, x1 = check_region("region", region, self.shape[1], self.shape[2])
        rows = y1 - y0
        inner = self.shape[2:]
        out = np.empty((len(indices), rows, x1 - x0) + inner[1:], dtype=np.float32)
        nbytes = rows * self._row_bytes
        for k, i in enumerate(indices):
            offset = i * self._frame_bytes + y0 * self._row_bytes
            raw = os.pread(self._file.fileno(), nbytes, offset)
            if len(raw) != nbytes:
                raise ValueError(f"{self.path} is truncated: frame {i} could not be read")
            out[k] = np.frombuffer(raw, dtype=np.float32).reshape((rows,) + inner)[:, x0:x1]
        return out

    def close(self):
        """Close the file (idempotent); the file itself stays."""
        if getattr(self, "_file", None) is not None and not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"FrameStore({self.path!r}, shape={self.shape})"
