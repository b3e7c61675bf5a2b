"""What every model source answers: its BN layers, a measuring session, and a writer.

A *source* is what CKPT names, opened once: a TF1 graph (checkpoint + ``.meta``, or a ``--model`` graph
function), a frozen GraphDef, or a Keras / TF2 file. :mod:`ckptfix.pipeline` drives any source the same way::

    layers  = source.layers                          every BN layer, stored statistics included
    with source.session(chosen, data_keys, options, notice, device=d) as session:  one load: import + restore
        moments, output = session.moments(batch, keep_output)    BN on batch statistics
        session.inference_outputs(batch)               BN on the moving statistics in the session
        session.assign_statistics({layer: (mean, var)})  in memory only, never on disk
    source.write(new_values, destination, overwrite)   atomically, only the statistics replaced

A new model format is one more implementation of :class:`Source` and :class:`Session`; the batch loop, the
pooled statistics, the agreement check, the notices and the report are the pipeline's, shared by all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Protocol

import numpy as np

from ckptfix.data.conventions import Convention
from ckptfix.data.spec import FixedBatch, InputSpec
from ckptfix.diagnostics.cause import Cause
from ckptfix.stats import BatchMoments

Notice = Callable[[str], None]


@dataclass(eq=False)
class Layer:
    """One BN layer as every source describes it.

    ``stored_mean`` / ``stored_variance`` are the statistics the file holds (float64, flat); ``dtype`` is their
    stored dtype. ``bessel`` is the layer's variance convention: the moving variance its own update writes is
    Bessel-corrected ``M2 / (n - 1)`` (TF1 / tf_keras fused BN) or biased ``M2 / n`` (non-fused, Keras 3).
    ``found`` is the source's own description of the layer (graph nodes, Keras layer object).
    ``frozen``: see the field.
    """

    name: str
    kind: str
    mean_key: str
    variance_key: str
    stored_mean: np.ndarray
    stored_variance: np.ndarray
    dtype: str
    bessel: bool
    epsilon: float | None = None
    found: object = field(default=None, repr=False)
    #: the layer ran in inference mode while the model trained (Keras ``trainable=False``, slim
    #: ``is_training=False`` in a training graph): its stored statistics are what the weights were trained against
    frozen: bool = False
    #: ghost BN's group size: the session reports one moments entry per group of V samples (each normalised by its
    #: own moments, as in training); pooled they are the population's statistics, ``batch-mean`` their mean over groups
    virtual_batch_size: int | None = None

    @property
    def channels(self) -> int:
        return int(self.stored_mean.size)


class Session(Protocol):
    """A model loaded once, with chosen BN layers measurable on batch statistics.

    A batch is an array for a one-input model, else a dict keyed by input name (``input_specs[k].name``).
    With several devices the pipeline opens one session per device and calls their ``moments`` from
    concurrent threads, each session from one thread at a time: what they share (a Keras model's layers)
    must stay consistent under that; ``inference_outputs`` / ``assign_statistics`` are called on the first
    session only, after the pass.
    """

    input_specs: list[InputSpec]
    #: the batch size the model's own operations need (None: any batch size runs)
    fixed_batch: FixedBatch | None
    #: names of the fed inputs and of the training flag fed False (None: none), for the report
    input_names: list[str]
    training_flag: str | None
    #: the output compared in the agreement check (None: no check possible), and why inference-mode outputs
    #: cannot be computed (None when they can)
    output_name: str | None
    inference_unavailable: str | None

    def moments(self, batch, keep_output: bool) -> tuple[dict[str, list[BatchMoments]], np.ndarray | None]:
        """Per chosen layer, the moments of each of its BN inputs; with ``keep_output`` the output from the
        same forward pass (BN on batch statistics, everything else in inference mode)."""

    def inference_outputs(self, batch) -> np.ndarray:
        """The output with BN on the moving statistics currently in the session."""

    def assign_statistics(self, values: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace the moving (mean, variance) of the named layers, in memory only; undone on close."""


class Source(Protocol):
    """CKPT opened: its BN layers, a :class:`Session` factory, and a writer of the repaired file."""

    #: what the report calls the checkpoint (prefix, graph file, Keras file) and the graph it came from
    label: str
    graph_label: str
    #: the Keras / TF2 format (docs/keras.md); None for TF1 graphs
    model_format: str | None
    layers: list[Layer]
    #: notices from opening CKPT (e.g. which checkpoint a state file from another machine was taken to mean)
    notices: list[str]
    #: what the model says about its input's preprocessing (None: nothing); :mod:`ckptfix.data.conventions`
    #: decides the run's preprocessing from it
    convention: Convention | None

    def session(self, layers: list[Layer], data_keys, options, notice: Notice, device: str | None = None) -> ContextManager[Session]:
        """One load of the model with ``layers`` measurable; ``data_keys()`` names the data's arrays (or None).

        ``device`` (``/GPU:1``...): the forward pass is placed there (one session per device, see
        :mod:`ckptfix.scaling`); None: TensorFlow places it."""

    #: the paths the source reads (files and folders), which no output may touch (:mod:`ckptfix.io.outputs`)
    inputs: list[Path]
    #: whether the repaired model is one file (frozen graph, .keras, .h5) rather than a folder
    writes_file: bool

    def check_output(self, output: Path | None, overwrite: bool) -> Path:
        """The destination to write to (default beside the input), checked before any work."""

    def written_path(self, destination: Path) -> Path:
        """What :meth:`write` to ``destination`` gives to restore (a checkpoint prefix, a file or a folder)."""

    def write(self, new_values: Mapping[str, np.ndarray], destination: Path, overwrite: bool) -> Path:
        """Write the repaired copy (``new_values`` by checkpoint key); returns what to restore (prefix or file)."""

    def cause(self) -> Cause | None:
        """Why the statistics went stale, from the training graph the source keeps (None: it keeps none)."""

    def stored_values(self, other: Path) -> ContextManager[Callable[[str], np.ndarray | None]]:
        """(A context giving) a reader of another file of the same kind (``--against``): key -> stored tensor, None if absent."""


def without_renorm(names: list[str], renorm: list[bool], notices: list[str]) -> list[bool]:
    """Which of the BN layers ``names`` ckptfix recalibrates: all but batch renormalization (``renorm=True``) ones,
    which are kept as stored, with a notice appended to ``notices``.

    In training mode such a layer outputs ``(x - mu_B) / sigma_B * r + d`` with ``r = sigma_B / renorm_stddev`` and
    ``d = (mu_B - renorm_mean) / renorm_stddev`` (gradients stopped), which is ``(x - renorm_mean) / renorm_stddev``
    whatever the batch while ``renorm_clipping`` does not clip ``r`` or ``d``. The network was trained on that, so
    inference must normalise with the renorm statistics, not with its input's population statistics; the update ops
    move ``moving_mean`` / ``moving_variance`` together with ``renorm_mean`` / ``renorm_stddev``, and without them
    both keep their initial 0 / 1, which already agree.
    """
    kept = [name for name, flag in zip(names, renorm) if flag]
    if kept:
        notices.append(
            f"batch renormalization (renorm=True) in {', '.join(kept)}: kept as stored. Training normalised every batch "
            "with renorm_mean / renorm_stddev (exactly so where renorm_clipping did not clip r and d), not with batch "
            "statistics; their moving statistics follow the same updates, and recomputing them from batch statistics "
            "would change what the network was trained on")
    return [not flag for flag in renorm]
