"""TF1 graphs as a model source: a checkpoint with its ``.meta``, a checkpoint whose graph a ``--model``
function builds, or a frozen GraphDef whose statistics constants are thawed into a temporary checkpoint.

The graph is analysed on its MetaGraphDef proto (:mod:`ckptfix.graph`): BN layers and their variables'
checkpoint keys, then the inputs and training flag. A session is one :class:`~ckptfix.graph.model.GraphModel`:
one import of the rewritten graph, one restore, serving both the batch-statistics pass and the inference-mode
outputs of the agreement check.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ckptfix.data.conventions import slim_convention
from ckptfix.diagnostics.cause import Cause, find_cause
from ckptfix.errors import CheckpointError, GraphError, NoBatchNormError
from ckptfix.graph.batchnorm import BatchNormLayer, find_batchnorm_layers, layer_tensors, statistics_in_branches
from ckptfix.graph.feeds import detect_feeds
from ckptfix.graph.frozen import check_output_path, write_recalibrated_graph
from ckptfix.graph.index import GraphIndex, is_gradient
from ckptfix.graph.meta import checkpoint_keys, partition_layout
from ckptfix.graph.model import GraphModel
from ckptfix.graph.outputs import resolve_output
from ckptfix.graph.safety import check_forward_ops
from ckptfix.graph.saver import check_restorable
from ckptfix.io.checkpoint_reader import open_reader, stored_tensor
from ckptfix.io.checkpoint_writer import check_output_dir, default_output_dir, write_recalibrated_checkpoint
from ckptfix.io.locate import CheckpointFiles, Prefix, locate_checkpoint
from ckptfix.sources.base import Layer, Notice, without_renorm


def _reader(prefix):
    import tensorflow as tf

    try:
        return open_reader(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {prefix}: {str(error).strip().splitlines()[0]}") from None


#: what a debiased moving mean's ``decay ** local_step`` may still weigh once repaired (see GraphSource.write)
FORGOTTEN = 1e-7


def forgetting_steps(decay: float) -> int:
    """The least step count at which ``decay ** steps <= FORGOTTEN`` (53,720 for slim's Inception decay 0.9997)."""
    return int(np.ceil(np.log(FORGOTTEN) / np.log(decay))) if 0.0 < decay < 1.0 else 0


def layer_epsilon(index: GraphIndex, found) -> float | None:
    """The epsilon of the layer's first fused node (its ``epsilon`` attribute); None for non-fused arithmetic."""
    for fused in found.fused_nodes:
        node = index.node(fused.node, fused.function)
        if node is not None and "epsilon" in node.attr:
            return float(node.attr["epsilon"].f)
    return None


_TF2_KEY_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def find_layers(index: GraphIndex, keys: Mapping[str, str], notices: list[str], where: str,
                folded: list[str] | None = None) -> list[BatchNormLayer]:
    """:func:`~ckptfix.graph.batchnorm.find_batchnorm_layers` for every graph-level source, saying what it cannot
    reach: non-fused BN normalising a tensor computed inside the branch functions of TF2 control flow
    (:func:`~ckptfix.graph.batchnorm.statistics_in_branches`) is named in a notice (its statistics are kept as
    stored, unchecked), or, when the graph has no other BN, in a GraphError. ``keys``: variable op -> checkpoint key,
    which names the layers."""
    found = find_batchnorm_layers(index, folded)
    hidden = statistics_in_branches(index, found)
    if not hidden:
        return found
    paths = [keys.get(v, v).removesuffix(_TF2_KEY_SUFFIX) for v in hidden]
    scopes = sorted({path.rpartition("/")[0] or path for path in paths})
    why = (f"BN in {', '.join(scopes)} normalises a tensor computed inside tf.cond branch functions (TF2 control "
           "flow), which ckptfix cannot feed")
    if not found:
        raise GraphError(f"{why}: it cannot recalibrate {where}. Compute the BN input outside the tf.cond, or build a "
                         "TF1 graph with tf.compat.v1.disable_control_flow_v2().")
    notices.append(f"{why}: not measured, kept as stored and unchecked (the other BN layers are recalibrated)")
    return found


def _renorm_mean(name: str) -> str | None:
    """Where a BN layer with batch renormalization keeps ``renorm_mean``, given its moving mean ``name`` (a variable
    op name or a checkpoint key): ``bn/moving_mean`` -> ``bn/renorm_mean``, and in a TF2 object-based checkpoint
    ``.../moving_mean/.ATTRIBUTES/VARIABLE_VALUE`` -> ``.../renorm_mean/.ATTRIBUTES/VARIABLE_VALUE``. None for a
    mean not named ``moving_mean``."""
    suffix = _TF2_KEY_SUFFIX if name.endswith(_TF2_KEY_SUFFIX) else ""
    scope, _, last = name.removesuffix(suffix).rpartition("/")
    return f"{scope}/renorm_mean{suffix}" if scope and last == "moving_mean" else None


def recalibrated(found: list, names: list[str], mean_keys: list[str], known, notices: list[str], where: str) -> list:
    """The BN layers ``found`` (named ``names``, their moving means stored under ``mean_keys``) that ckptfix
    recalibrates, for every graph-level source (checkpoint + ``.meta`` or ``--model``, frozen graph, SavedModel):
    batch renormalization layers are kept as stored (:func:`~ckptfix.sources.base.without_renorm`).

    A layer uses renormalization when its ``renorm_mean`` is in ``known`` (the graph's node names and the
    checkpoint's keys): the graph holds it when its training path was kept (a ``.meta``, a graph frozen with its
    training flag), the checkpoint when the serving path alone was traced (a TF2 SavedModel's signature)."""
    renorm = [bool({_renorm_mean(bn.mean_variable), _renorm_mean(key)} & known) for bn, key in zip(found, mean_keys)]
    kept = [bn for bn, keep in zip(found, without_renorm(names, renorm, notices)) if keep]
    if not kept:
        raise NoBatchNormError(f"every BN layer in {where} uses batch renormalization, kept as stored: nothing to "
                               "recalibrate.")
    return kept


class GraphSession:
    """A :class:`~ckptfix.sources.base.Session` over a :class:`GraphModel`, speaking in layer names."""

    def __init__(self, model: GraphModel, layers: list[Layer], feeds, output_name: str | None,
                 output_label: str | None = None) -> None:
        """``output_name``: the tensor fetched for the agreement check; ``output_label``: how reports name it
        (default: the tensor's name)."""
        self._model = model
        self._output_tensor = output_name
        self._variables = {layer.name: (layer.found.mean_variable, layer.found.variance_variable) for layer in layers}
        self.input_specs = model.input_specs
        self.fixed_batch = model.fixed_batch
        self.input_names = list(feeds.inputs)
        self.training_flag = feeds.training_flag
        self.output_name = output_label or output_name
        self.inference_unavailable = model.inference_unavailable

    def moments(self, batch, keep_output: bool):
        # the output is fetched with every batch: one fetch list, so TensorFlow optimises the graph once
        moments, output = self._model.moments(batch, self._output_tensor)
        return moments, output if keep_output else None

    def inference_outputs(self, batch) -> np.ndarray:
        return self._model.inference_outputs(batch, self._output_tensor)

    def assign_statistics(self, values: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        by_variable = {}
        for name, (mean, variance) in values.items():
            mean_variable, variance_variable = self._variables[name]
            by_variable[mean_variable], by_variable[variance_variable] = mean, variance
        self._model.assign_statistics(by_variable)


class GraphSource:
    """A TF1 graph (``meta_graph``) and the checkpoint its variables are restored from (``files.prefix``)."""

    model_format = None

    def __init__(self, files: CheckpointFiles, meta_graph, *, label: str, graph_label: str,
                 training_graph: bool = False) -> None:
        """``training_graph``: ``meta_graph`` is the checkpoint's own ``.meta``, the graph training ran (where
        :meth:`cause` looks), not one built by ``--model`` or thawed from a frozen graph."""
        self.files, self.meta_graph = files, meta_graph
        self.label, self.graph_label = label, graph_label
        self.training_graph = training_graph
        self.notices = [files.notice] if files.notice else []
        self.index = GraphIndex(meta_graph.graph_def)
        where = "the graph --model built" if graph_label.startswith("built by") else Path(graph_label).name
        keys = checkpoint_keys(meta_graph)
        found = find_layers(self.index, keys, self.notices, where)
        if not found:
            raise NoBatchNormError(f"no BatchNorm layers in {where}: nothing to recalibrate.")
        reader = _reader(files.prefix)
        known = set(self.index.nodes) | set(reader.get_variable_to_shape_map())
        found = recalibrated(found, [bn.name for bn in found], [keys.get(bn.mean_variable, bn.mean_variable) for bn in found],
                             known, self.notices, where)
        self._check_restorable(reader)
        dtypes = reader.get_variable_to_dtype_map()
        trains = training_graph and any(is_gradient(name) for name in self.index.nodes)
        self.layers = []
        for bn in found:
            mean_key = keys.get(bn.mean_variable, bn.mean_variable)
            variance_key = keys.get(bn.variance_variable, bn.variance_variable)
            stored = []
            for key in (mean_key, variance_key):
                value = stored_tensor(reader, files.prefix, key)
                if value is None:
                    raise CheckpointError(
                        f"the checkpoint has no {key} (BN layer {bn.name}): pass --meta with the graph it was saved from."
                    )
                stored.append(np.asarray(value, np.float64).reshape(-1))
            self.layers.append(Layer(
                name=bn.name, kind=bn.kind, mean_key=mean_key, variance_key=variance_key,
                stored_mean=stored[0], stored_variance=stored[1], dtype=dtypes[mean_key].name,
                bessel=bn.bessel, epsilon=layer_epsilon(self.index, bn), found=bn,
                frozen=trains and bool(bn.fused_nodes) and not any(node.is_training for node in bn.fused_nodes),
                virtual_batch_size=bn.virtual_batch_size,
            ))
        self.convention = slim_convention([layer.name for layer in self.layers])

    def _check_restorable(self, reader) -> None:
        """Every entry the graph's saver restores is in the checkpoint with its variable's dtype and shape."""
        if self.graph_label.startswith("built by"):
            graph, own, fix = "the graph --model built", False, "--model builds another network than the one saved"
        else:
            # the .meta saved beside the checkpoint (or a frozen graph's own thawed statistics) wrote these keys;
            # any other is a --meta given by hand
            own = self.files.meta is None or Path(self.files.meta) == Path(self.files.prefix.file(".meta"))
            graph = Path(self.graph_label).name if own else self.graph_label
            fix = "it was saved from another graph than --meta: pass --meta with that graph"
        check_restorable(self.meta_graph, reader, self.files.prefix, graph, own=own, other_graph_fix=fix)

    def _training_notices(self, chosen, feeds, notice: Notice) -> None:
        if feeds.training_flag is not None:
            return
        upstream = self.index.ancestors([t for bn in chosen for t in bn.inputs])
        dropout = sorted({n.split("/dropout")[0] for n in upstream
                          if "dropout" in n and self.index.nodes[n].op == "RandomUniform"})
        if dropout:
            notice(f"training mode is baked into the graph: dropout was active upstream of BN in {', '.join(dropout)}")
        switched = sum(not node.is_training for bn in chosen for node in bn.fused_nodes)
        if switched:
            notice(f"{switched} inference-mode fused BN node(s) switched to batch statistics")

    @contextlib.contextmanager
    def session(self, layers: list[Layer], data_keys, options, notice: Notice, device: str | None = None) -> Iterator[GraphSession]:
        found = [layer.found for layer in self.layers]
        chosen = [layer.found for layer in layers]
        # inputs and flag of every BN layer: unselected ones run as saved in the agreement check's forward pass
        feeds = detect_feeds(self.index, found, options.input_name, options.training_flag, data_keys=data_keys)
        check_forward_ops(self.index, layer_tensors(self.index, chosen), options.allow_unsafe_ops)
        self._training_notices(chosen, feeds, notice)
        with GraphModel(self.meta_graph, chosen, feeds, str(self.files.prefix), device=device) as model:
            fed = [] if model.training_flag is None else [model.training_flag]
            output_name, output_notice = resolve_output(model.graph, model.inputs, options.output_tensor, fed)
            if output_notice:
                notice(output_notice)
            yield GraphSession(model, layers, feeds, output_name)

    def cause(self) -> Cause | None:
        """Read from the checkpoint's ``.meta`` (a training graph); a built or frozen graph has no training ops."""
        return find_cause(self.meta_graph, self.index) if self.training_graph else None

    writes_file = False

    @property
    def inputs(self) -> list[Path]:
        """The checkpoint's folder and its graph."""
        return [self.files.prefix.parent] + ([self.files.meta] if self.files.meta is not None else [])

    def written_path(self, destination: Path) -> Path:
        return Prefix(destination, self.files.prefix.name)

    def check_output(self, output: Path | None, overwrite: bool) -> Path:
        return check_output_dir(self.files, Path(output) if output is not None else default_output_dir(self.files), overwrite)

    def write(self, new_values: Mapping[str, np.ndarray], destination: Path, overwrite: bool) -> Path:
        layout = partition_layout(self.meta_graph)
        return write_recalibrated_checkpoint(self.files, self._with_zero_debias(new_values), destination, layout=layout,
                                             overwrite=overwrite)

    def _with_zero_debias(self, new_values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``new_values`` and, for each debiased moving mean written (slim ``zero_debias_moving_mean``), its
        companions, so that training resumed from the output keeps the new mean: the update recomputes
        ``moving_mean = biased / (1 - decay ** local_step)`` from them. ``local_step`` becomes at least
        :func:`forgetting_steps` (with the stale 0 the first resumed step would throw the mean away) and
        ``biased = new_mean * (1 - decay ** local_step)``."""
        values = dict(new_values)
        keys = checkpoint_keys(self.meta_graph)
        reader = _reader(self.files.prefix)
        for layer in self.layers:
            debias = layer.found.zero_debias
            if debias is None or layer.mean_key not in new_values:
                continue
            step_key, biased_key = keys.get(debias.local_step, debias.local_step), keys.get(debias.biased, debias.biased)
            stored = stored_tensor(reader, self.files.prefix, step_key)
            step = max(float(np.asarray(stored).reshape(-1)[0]) if stored is not None else 0.0, forgetting_steps(debias.decay))
            values[step_key] = np.asarray(step, np.float64)
            values[biased_key] = np.asarray(new_values[layer.mean_key], np.float64) * (1.0 - debias.decay ** step)
        return values

    def stored_values(self, other):
        prefix = locate_checkpoint(other, meta=self.files.meta, need_meta=False).prefix
        reader = _reader(prefix)
        return contextlib.nullcontext(lambda key: stored_tensor(reader, prefix, key))


class FrozenGraphSource(GraphSource):
    """A frozen GraphDef (``.pb`` / ``.pbtxt``), thawed (see :mod:`ckptfix.graph.frozen`); written back as one."""

    def __init__(self, frozen) -> None:
        self.frozen = frozen
        super().__init__(frozen.files, frozen.meta_graph, label=str(frozen.path), graph_label=str(frozen.path))

    @contextlib.contextmanager
    def session(self, layers, data_keys, options, notice: Notice, device: str | None = None):
        with super().session(layers, data_keys, options, notice, device=device) as session:
            training = self.frozen.training_mode_layers if session.training_flag is None else []
            if training:
                notice(f"{len(training)} BN node(s) of {self.frozen.path.name} were frozen in training mode "
                       f"({training[0]}...): they normalise with batch statistics and ignore these constants; "
                       "freeze the model with is_training=False")
            yield session

    writes_file = True

    @property
    def inputs(self) -> list[Path]:
        return [self.frozen.path]

    def written_path(self, destination: Path) -> Path:
        return destination

    def check_output(self, output: Path | None, overwrite: bool) -> Path:
        return check_output_path(self.frozen.path, output, overwrite)

    def write(self, new_values, destination: Path, overwrite: bool) -> Path:
        return write_recalibrated_graph(self.frozen, new_values, destination, overwrite)

    def stored_values(self, other):
        from ckptfix.errors import CkptfixError

        raise CkptfixError("--against compares checkpoints; it is not available for a frozen graph.")
