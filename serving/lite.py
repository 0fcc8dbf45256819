"""TensorFlow Lite copies of the exported serving functions: the same model, a leaner runtime.

A call into the TensorFlow runtime costs ~0.2-0.5 ms however small its input: the user tower's
~380 ops and the DCN's ~90 are dispatched one by one. The TensorFlow Lite interpreter runs the
same graph, converted to its builtin ops and XNNPACK's kernels, in a fraction of that (the user
tower for one user: 0.05 ms instead of 0.55; docs/benchmarks.md).

``compile_function`` converts a restored SavedModel function when the server loads it, so no
new artifact is written and every published version can use it. The copy serves only if it
answers sample inputs as TensorFlow does (to float32 rounding); otherwise, or when a graph has
ops TFLite lacks, the TensorFlow graph serves and a warning says why.

tf.lite.Interpreter is deprecated in favour of the ai-edge-litert package, whose Interpreter
has the same API; TensorFlow is pinned (pyproject.toml), and tests/serving/test_lite.py fails
the day it is gone.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)
# Float32 rounding differs between the runtimes (other kernels, other summation orders): 1e-7
# seen; a real conversion error is orders of magnitude larger.
ATOL, RTOL = 1e-5, 1e-4


class LiteFunction:
    """Call like the exported function, with numpy arrays (strings as str or bytes); returns
    its one output as a numpy array.

    The interpreter is not thread-safe and allocates for one set of input shapes at a time: each
    thread gets its own, re-allocated whenever a call's shapes differ from its previous call's.
    """

    def __init__(self, model: bytes, warm_up: Sequence[np.ndarray]):
        self.model = model
        self._warm_up = [_tensor(a) for a in warm_up]
        self._local = threading.local()
        self._interpreter()  # fail here, at load, rather than in the first request

    def _interpreter(self):
        state = getattr(self._local, "state", None)
        if state is None:
            import tensorflow as tf

            with warnings.catch_warnings():  # its deprecation notice (see the module docstring)
                warnings.simplefilter("ignore")
                interpreter = tf.lite.Interpreter(model_content=self.model, num_threads=1)
            inputs = sorted(interpreter.get_input_details(), key=lambda d: _position(d["name"]))
            state = self._local.state = [interpreter, [d["index"] for d in inputs],
                                         interpreter.get_output_details()[0]["index"], None]
            # The first allocation must not be at the inputs' default shapes (1 for every
            # unknown dimension): TFLite then fixes the shape of the hash-table lookups' results
            # wrongly and the next ops fail to prepare ("shapes [1,20,64] and [64,1] are not
            # broadcastable"). Sample inputs of a batch of 2 allocate them as dynamic.
            self._run(state, self._warm_up)
        return state

    def __call__(self, *arrays: Any) -> np.ndarray:
        return self._run(self._interpreter(), [_tensor(a) for a in arrays])

    @staticmethod
    def _run(state: list, arrays: list[np.ndarray]) -> np.ndarray:
        interpreter, inputs, output, shapes = state
        now = [a.shape for a in arrays]
        if now != shapes:
            for index, shape in zip(inputs, now):
                interpreter.resize_tensor_input(index, shape, strict=False)
            interpreter.allocate_tensors()
            state[3] = now
        for index, array in zip(inputs, arrays):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return interpreter.get_tensor(output)


def compile_function(function: Callable, owner: Any, specs: Sequence[Any], samples: Sequence[np.ndarray],
                     reference: Callable[..., np.ndarray], name: str) -> LiteFunction | None:
    """A TFLite copy of ``function`` (a restored tf.function of ``owner``, the loaded SavedModel)
    for inputs of ``specs`` (tf.TensorSpec; fixed inner sizes help the converter), or None.

    ``samples``: inputs with a batch of at least 2, whose answer must match ``reference(*samples)``
    (TensorFlow's) within float32 rounding for the copy to be used.
    """
    import tensorflow as tf

    started = time.perf_counter()
    try:
        fixed = tf.function(lambda *args: function(*args), input_signature=list(specs))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()], owner)
        lite = LiteFunction(converter.convert(), samples)
        got, want = lite(*samples), np.asarray(reference(*samples))
    except Exception as e:  # noqa: BLE001 - ops TFLite lacks, a converter bug: TensorFlow serves
        gist = _gist(e)
        hint = " (models trained before TFLite serving used such ops: retraining exports a graph that converts)" \
            if "ops:" in gist else ""
        log.warning("%s: no TensorFlow Lite copy (%s: %s)%s; TensorFlow serves it", name, type(e).__name__, gist, hint)
        return None
    if got.shape != want.shape or not np.allclose(got, want, atol=ATOL, rtol=RTOL):
        diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
        log.warning("%s: the TensorFlow Lite copy answers differently (shape %s vs %s, max difference %.3g); "
                    "TensorFlow serves it", name, got.shape, want.shape, diff)
        return None
    log.info("%s: serving a TensorFlow Lite copy (%.1f s to convert, %.1f MB)", name,
             time.perf_counter() - started, len(lite.model) / 1e6)
    return lite


def _gist(error: Exception) -> str:
    """The line of a converter error that names the problem (its message is mostly an IR dump)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "ops:" in line or "not supported" in line]
    return "; ".join(named[:2])[:300] if named else (lines[0][:300] if lines else "")


def _tensor(array: Any) -> np.ndarray:
    """What the interpreter takes: strings as UTF-8 bytes, numbers as they are."""
    array = np.asarray(array)
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8") if array.size else np.empty(array.shape, dtype="S1")
    if array.dtype.kind == "O":
        return _tensor(array.astype(str))
    return array


def _position(name: str) -> int:
    """The argument's position from the converted signature's input name (``serving_default_args_3:0``)."""
    return int(name.rsplit("_", 1)[1].split(":")[0])
