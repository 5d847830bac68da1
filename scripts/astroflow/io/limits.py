"""Resource limits of the readers: a memory budget per decoded frame and a decoding time limit.

A file off a memory card or another person's disk can claim anything in its header: a FITS
NAXIS1 x NAXIS2 of 100000 x 100000, a SER frame of 10 GB, a TIFF strip of 20 GB. Every reader
checks what a file's header claims against :func:`check_memory` *before* it allocates, so a
hostile header costs one frame with a clear reason instead of a MemoryError or the kernel's OOM
killer. A decoder that loops on a damaged file (DeepSkyStacker on truncated CR3 files, LibRaw on
some damaged NEFs) is stopped so that it too costs one frame: by :func:`call_in_process`, which
decodes in a child process and kills it (RAW files: LibRaw may loop or crash where no thread can
stop it), or by :func:`call_with_timeout` and :func:`iterate_with_timeout`, which give up on a
decoding thread (video: FFmpeg releases the GIL while it decodes).

Both limits are configuration keys (``ingest.memory_mb``, ``ingest.decode_timeout_s`` in
``schemas/config.schema.yaml``), passed to the readers by the rules that read input files; the
defaults here are the schema's.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading

__all__ = [
    "DECODE_TIMEOUT_S",
    "MEMORY_MB",
    "DecodeTimeoutError",
    "DecoderDiedError",
    "call_in_process",
    "call_with_timeout",
    "check_memory",
    "iterate_with_timeout",
]

#: memory budget (MB) of one decoded frame, the schema's default of ``ingest.memory_mb``
MEMORY_MB = 4096
#: time limit (s) for decoding one file, the schema's default of ``ingest.decode_timeout_s``
DECODE_TIMEOUT_S = 120.0


class DecodeTimeoutError(TimeoutError):
    """A decoder ran past its time limit (:func:`call_with_timeout`)."""


class DecoderDiedError(RuntimeError):
    """A decoder's child process ended without an answer (:func:`call_in_process`): a crash."""


def check_memory(path, what, n_samples, bytes_per_sample, memory_mb, error=ValueError):
    """Refuse, before any allocation, an image whose decoded samples exceed the memory budget.

    Parameters
    ----------
    path : str or os.PathLike
        The file, for the message.
    what : str
        What the header claims, for the message (``"a 100000 x 100000 px 16-bit image"``).
    n_samples : int
        Samples the reader will hold (pixels times channels, of one frame).
    bytes_per_sample : int or float
        Bytes the reader holds per sample: the stored sample and its float32 copy (e.g. 2 + 4
        for 16-bit data read into float32).
    memory_mb : float or None
        The budget (MB, 10**6 bytes); None: :data:`MEMORY_MB`.
    error : type, optional
        The exception class to raise (the reader's own, a ValueError subclass).

    Raises
    ------
    error
        Naming the file, the claim, the memory it needs and the budget, when
        ``n_samples * bytes_per_sample`` exceeds ``memory_mb``.
    """
    budget = MEMORY_MB if memory_mb is None else float(memory_mb)
    needed = float(n_samples) * float(bytes_per_sample) / 1e6
    if needed > budget:
        raise error(
            f"{path}: the header claims {what}, which needs {needed:,.0f} MB to decode, more than "
            f"the memory budget of {budget:,.0f} MB per frame (ingest.memory_mb); refused before "
            "reading"
        )


def call_in_process(func, timeout_s, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` in a child process, killed after ``timeout_s`` seconds.

    The child is a fork of this process (it starts no program and sees this process's modules
    and objects) and sends back what ``func`` returned, or the exception it raised, pickled. A
    decoder that loops, whether or not it holds the GIL, is killed with SIGKILL at the time
    limit, and one that crashes (a segmentation fault in C code) ends only the child: either way
    the caller gets an exception and the cost is one file. The price is a fork and a copy of
    the result through a pipe: a few milliseconds and about two bytes per byte returned.

    Parameters
    ----------
    func : callable
        Run in the child; its result and exceptions must pickle (numpy arrays, numbers, text,
        ValueError subclasses).
    timeout_s : float or None
        Seconds to wait (> 0); None: :data:`DECODE_TIMEOUT_S`.
    *args, **kwargs
        Passed to ``func``.

    Returns
    -------
    object
        What ``func`` returned.

    Raises
    ------
    DecodeTimeoutError
        If ``func`` has not returned after ``timeout_s`` seconds (the child is killed).
    DecoderDiedError
        If the child ended without an answer (killed by a signal or exited), naming how.
    Exception
        Whatever ``func`` raised, re-raised here.

    Notes
    -----
    Linux and macOS (the ``fork`` start method of :mod:`multiprocessing`); elsewhere ``func``
    runs through :func:`call_with_timeout` instead.
    """
    limit = DECODE_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if "fork" not in multiprocessing.get_all_start_methods():
        return call_with_timeout(func, limit, *args, **kwargs)
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_answer_to, args=(writer, func, args, kwargs),
                            name=f"decode-{getattr(func, '__name__', 'call')}", daemon=True)
    child.start()
    writer.close()
    try:
        if not reader.poll(limit):
            raise DecodeTimeoutError(f"still decoding after {limit:g} s")
        try:
            ok, value = reader.recv()
        except EOFError:
            child.join()
            raise DecoderDiedError(f"the decoder died without an answer ({_how_it_ended(child.exitcode)})") from None
    finally:
        reader.close()
        if child.is_alive():
            child.kill()
        child.join()
    if not ok:
        raise value
    return value


def _answer_to(conn, func, args, kwargs):
    """The child of :func:`call_in_process`: send ``(ok, value)`` through ``conn``."""
    try:
        answer = (True, func(*args, **kwargs))
    except BaseException as exc:  # handed to the parent, which re-raises it
        answer = (False, exc)
    try:
        conn.send(answer)
    except Exception as exc:  # an answer that does not pickle
        conn.send((False, DecoderDiedError(f"the decoder's answer cannot be sent back: {type(exc).__name__}: {exc}")))
    conn.close()


def _how_it_ended(exitcode):
    """A child's exit code in words: ``"killed by SIGSEGV"``, ``"exit status 3"``."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def call_with_timeout(func, timeout_s, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` and give up on it after ``timeout_s`` seconds.

    The call runs in a daemon thread; the caller waits at most ``timeout_s``. A call that
    overruns is abandoned, not killed (Python cannot kill a thread): it keeps its objects, which
    the caller must not touch afterwards (do not close a decoder a stuck call still uses), and
    it dies with the process. This stops decoders that release the GIL while they work, as
    FFmpeg's decoding (through PyAV) does; a decoder that loops while holding the GIL would
    hold the waiting thread too: :func:`call_in_process` stops any decoder.

    Parameters
    ----------
    func : callable
    timeout_s : float or None
        Seconds to wait (> 0); None: :data:`DECODE_TIMEOUT_S`.
    *args, **kwargs
        Passed to ``func``.

    Returns
    -------
    object
        What ``func`` returned.

    Raises
    ------
    DecodeTimeoutError
        If ``func`` has not returned after ``timeout_s`` seconds.
    Exception
        Whatever ``func`` raised, re-raised in the caller's thread.
    """
    limit = DECODE_TIMEOUT_S if timeout_s is None else float(timeout_s)
    box = queue.SimpleQueue()

    def run():
        try:
            box.put((True, func(*args, **kwargs)))
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            box.put((False, exc))

    threading.Thread(target=run, name=f"decode-{getattr(func, '__name__', 'call')}", daemon=True).start()
    return _answer(box, limit)


def _answer(box, limit):
    """The next ``(ok, value)`` the decoding thread put in ``box``: the value, or its exception
    raised here; :class:`DecodeTimeoutError` if none came within ``limit`` seconds."""
    try:
        ok, value = box.get(timeout=limit)
    except queue.Empty:
        raise DecodeTimeoutError(f"still decoding after {limit:g} s") from None
    if not ok:
        raise value
    return value


def iterate_with_timeout(make_iterator, timeout_s):
    """Iterate ``make_iterator()`` in a daemon thread, giving up when one item takes too long.

    The streaming form of :func:`call_with_timeout`, for a video decoder: each item (a decoded
    frame) must come within ``timeout_s`` of the caller asking for it. The thread makes an item
    only when the caller asks for it, so no more frames are held than without the thread. When
    the caller stops iterating, the thread closes the iterator (in its own thread, which owns
    the decoder) and ends; a thread stuck in an item is abandoned, as in
    :func:`call_with_timeout`.

    Parameters
    ----------
    make_iterator : callable
        Called without arguments in the thread; returns the iterator (a generator that opens
        and closes its own file).
    timeout_s : float or None
        Seconds allowed per item (> 0); None: :data:`DECODE_TIMEOUT_S`.

    Yields
    ------
    object
        The iterator's items, in order.

    Raises
    ------
    DecodeTimeoutError
        If an item has not come ``timeout_s`` seconds after it was asked for.
    Exception
        Whatever the iterator raised, re-raised in the caller's thread.
    """
    limit = DECODE_TIMEOUT_S if timeout_s is None else float(timeout_s)
    asks, answers = queue.SimpleQueue(), queue.SimpleQueue()
    done = object()

    def run():
        iterator = None
        try:
            iterator = iter(make_iterator())
            while asks.get():
                item = next(iterator, done)
                answers.put((True, item))
                if item is done:
                    return
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            answers.put((False, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    threading.Thread(target=run, name="decode-stream", daemon=True).start()
    try:
        while True:
            asks.put(True)
            item = _answer(answers, limit)
            if item is done:
                return
            yield item
            item = None  # the caller's reference is the only one while the next is made
    finally:
        asks.put(False)
