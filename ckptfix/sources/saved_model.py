"""Any SavedModel as a model source, repaired at graph level: no Python class of the model is needed.

The chosen signature (``serving_default`` unless ``--signature``) is turned into one TF1-style graph
(:mod:`ckptfix.graph.saved_model`: its functions inlined, its captured variables mapped to their keys in
``variables/``), whose BN layers are found and measured by the same code as TF1 and frozen graphs
(:func:`~ckptfix.graph.batchnorm.find_batchnorm_layers`, :class:`~ckptfix.graph.model.GraphModel`). The
signature's inputs are fed by their keys (``.npz`` members, dict keys; one input: any data source); a bool
scalar input is the training flag, fed False.

Every signature reads the same variables, so repairing ``variables/`` once repairs them all. The output is a
new SavedModel folder: ``variables/`` rewritten with only the statistics replaced (every other tensor checked
byte for byte, :func:`ckptfix.io.checkpoint_writer.copy_checkpoint`), every other file (``saved_model.pb``,
``fingerprint.pb``, ``assets/``...) copied and compared byte for byte before the atomic swap.
"""

from __future__ import annotations

import contextlib
import filecmp
import shutil
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ckptfix.data.conventions import slim_convention
from ckptfix.data.spec import FixedBatch, InputSpec
from ckptfix.errors import CheckpointError, CkptfixError, GraphError, NoBatchNormError, OutputError
from ckptfix.graph.batchnorm import layer_tensors
from ckptfix.graph.feeds import Feeds, flag_candidates
from ckptfix.graph.index import GraphIndex
from ckptfix.graph.model import GraphModel
from ckptfix.graph.safety import check_forward_ops
from ckptfix.graph.saved_model import SignatureGraph, load_signature_graph
from ckptfix.graph.saver import check_restorable
from ckptfix.io.atomic import atomic_output, check_destination
from ckptfix.io.checkpoint_reader import stored_tensor
from ckptfix.io.checkpoint_writer import copy_checkpoint
from ckptfix.sources.base import Layer, Notice
from ckptfix.sources.graph import GraphSession, find_layers, layer_epsilon, recalibrated

FORMAT = "savedmodel-graph"
_BOOL = 10  # DT_BOOL


def _reader(prefix: Path):
    import tensorflow as tf

    if not prefix.with_name("variables.index").is_file():
        raise CheckpointError(f"SavedModel {prefix.parent.parent} has no variables/variables.index: nothing to repair.")
    try:
        return tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"cannot read {prefix}: {str(error).strip().splitlines()[0]}") from None


def _signature_feeds(graph: SignatureGraph, training_flag: str | None, index: GraphIndex,
                     layers: list) -> tuple[dict[str, str], str | None]:
    """(signature key -> tensor name of every fed input, the training flag's tensor name or None).

    The flag is ``--training-flag`` (a key or tensor name), the one bool scalar input, or else the one
    ``placeholder_with_default`` bool the BN ``layers`` depend on that the signature leaves at its default (a TF1
    graph's ``is_training``: both branches of its ``tf.cond`` are in the graph, and only the fed flag tells which
    runs)."""
    nodes = {node.name: node for node in graph.meta_graph.graph_def.node}

    def is_flag(tensor: str) -> bool:
        node = nodes.get(tensor.split(":")[0])
        shape = node.attr["shape"].shape if node is not None else None
        return node is not None and node.attr["dtype"].type == _BOOL and shape is not None and not shape.unknown_rank \
            and len(shape.dim) == 0

    if training_flag is not None:
        flag = graph.inputs.get(training_flag, training_flag)
        if flag not in graph.inputs.values() and flag + ":0" not in graph.inputs.values():
            raise GraphError(f"--training-flag {training_flag}: signature {graph.signature_name} has inputs "
                             f"{', '.join(sorted(graph.inputs))}; name one of them.")
        flag = flag if flag in graph.inputs.values() else flag + ":0"
    else:
        flags = [tensor for tensor in graph.inputs.values() if is_flag(tensor)]
        if len(flags) > 1:
            raise GraphError(f"signature {graph.signature_name} has several bool inputs: pass --training-flag NAME.")
        flag = flags[0] if flags else None
        if flag is None:
            defaults = [name for name in flag_candidates(index, layers)
                        if nodes[name.split(":")[0]].op == "PlaceholderWithDefault" and name not in graph.inputs.values()]
            flag = defaults[0] if len(defaults) == 1 else None
    return {key: tensor for key, tensor in sorted(graph.inputs.items()) if tensor != flag}, flag


def _layer_name(bn, mean_key: str) -> str:
    """The scope of the ``.../moving_mean`` variable the layer reads; for a variable not named so (a
    ``tf.Variable`` called ``Variable_3``), its object path in the checkpoint key, ``.../moving_mean`` dropped."""
    if bn.name != bn.mean_variable:
        return bn.name
    path = mean_key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
    scope, _, last = path.rpartition("/")
    return scope if scope and last.startswith("moving_mean") else path


def _layer_names(bases: list[str]) -> list[str]:
    """Unique names, in order: a repeated one gets ``_1``, ``_2``... from its second occurrence."""
    seen: dict[str, int] = {}
    names = []
    for base in bases:
        names.append(base if base not in seen else f"{base}_{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return names


class _SavedModelSession(GraphSession):
    """The graph session, its inputs named (and batch dicts keyed) by signature input keys, its output by the
    signature's output key (``output_0``, not the inlined graph's ``StatefulPartitionedCall_1:0``)."""

    def __init__(self, model: GraphModel, layers: list[Layer], feeds: Feeds, fed: dict[str, str],
                 flag_key: str | None, output: tuple[str, str]) -> None:
        super().__init__(model, layers, feeds, *output[::-1])
        self._tensors = fed
        self._names = {layer.found.name: layer.name for layer in layers}  # the graph's names -> the source's
        self.input_specs = [InputSpec(key, spec.shape, spec.dtype) for key, spec in zip(fed, model.input_specs)]
        if self.fixed_batch is not None:
            key = next(key for key, tensor in fed.items() if tensor == self.fixed_batch.input)
            self.fixed_batch = FixedBatch(self.fixed_batch.size, key, self.fixed_batch.reason)
        self.input_names = list(fed)
        self.training_flag = flag_key

    def _batch(self, batch):
        return {self._tensors[key]: value for key, value in batch.items()} if isinstance(batch, dict) else batch

    def moments(self, batch, keep_output: bool):
        moments, output = super().moments(self._batch(batch), keep_output)
        return {self._names[name]: values for name, values in moments.items()}, output

    def inference_outputs(self, batch) -> np.ndarray:
        return super().inference_outputs(self._batch(batch))


class SavedModelSource:
    """A SavedModel folder, its signature as one graph, and the BN layers found in it."""

    model_format = FORMAT

    def __init__(self, path, signature: str | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.prefix = self.path / "variables" / "variables"
        self.reader = _reader(self.prefix)
        self.graph = load_signature_graph(self.path, signature, self.reader)
        check_restorable(self.graph.meta_graph, self.reader, self.prefix, f"signature {self.graph.signature_name}", own=True)
        self.label = str(self.path)
        self.graph_label = f"signature {self.graph.signature_name}"
        self.notices: list[str] = []
        self.index = GraphIndex(self.graph.meta_graph.graph_def)
        folded: list[str] = []
        found = find_layers(self.index, self.graph.variable_keys, self.notices, f"signature {self.graph.signature_name}",
                            folded)
        if folded:
            self.notices.append(
                f"{len(folded)} BN node(s) read statistics folded into constants and are left alone: {', '.join(folded[:3])}"
                + (" ..." if len(folded) > 3 else "")
            )
        if not found:
            why = " (their statistics are constants)" if folded else ""
            raise NoBatchNormError(f"no BatchNorm layers with variables in signature {self.graph.signature_name} "
                                   f"of {self.path}{why}: nothing to recalibrate.")
        dtypes = self.reader.get_variable_to_dtype_map()
        keys = self.graph.variable_keys
        for bn in found:
            if keys.get(bn.mean_variable) is None or keys.get(bn.variance_variable) is None:
                raise GraphError(f"BN layer {bn.name} reads a variable the SavedModel's object graph does not save.")
        names = _layer_names([_layer_name(bn, keys[bn.mean_variable]) for bn in found])
        kept = recalibrated(found, names, [keys[bn.mean_variable] for bn in found],
                            set(self.index.nodes) | set(dtypes), self.notices, f"signature {self.graph.signature_name}")
        self.layers = []
        for bn, name in zip(found, names):
            if bn not in kept:
                continue
            mean_key, variance_key = keys[bn.mean_variable], keys[bn.variance_variable]
            stored = [np.asarray(stored_tensor(self.reader, self.prefix, key), np.float64).reshape(-1)
                      for key in (mean_key, variance_key)]
            self.layers.append(Layer(
                name=name, kind=bn.kind, mean_key=mean_key, variance_key=variance_key,
                stored_mean=stored[0], stored_variance=stored[1], dtype=dtypes[mean_key].name,
                bessel=bn.bessel, epsilon=layer_epsilon(self.index, bn), found=bn,
                virtual_batch_size=bn.virtual_batch_size,
            ))
        self.convention = slim_convention([layer.name for layer in self.layers])

    def _output(self, output_tensor: str | None, notice: Notice) -> tuple[str, str]:
        """The output the agreement check compares: (its signature output key, its tensor in the graph)."""
        outputs = self.graph.outputs
        if output_tensor is not None:
            if output_tensor in outputs:
                return output_tensor, outputs[output_tensor]
            tensor = output_tensor if ":" in output_tensor else output_tensor + ":0"
            if tensor in outputs.values():
                return next(key for key, value in outputs.items() if value == tensor), tensor
            raise GraphError(f"--output-tensor {output_tensor}: signature {self.graph.signature_name} has outputs "
                             f"{', '.join(sorted(outputs))}; name one of them.")
        key = sorted(outputs)[0]
        if len(outputs) > 1:
            notice(f"the agreement check compares signature output {key} (--output-tensor chooses another)")
        return key, outputs[key]

    @contextlib.contextmanager
    def session(self, layers: list[Layer], data_keys, options, notice: Notice, device: str | None = None
                ) -> Iterator[_SavedModelSession]:
        if options.input_name is not None:
            raise CkptfixError(f"--input does not apply to a SavedModel: its signature's inputs "
                               f"({', '.join(sorted(self.graph.inputs))}) are fed by name from the data.")
        chosen = [layer.found for layer in layers]
        fed, flag = _signature_feeds(self.graph, options.training_flag, self.index, [layer.found for layer in self.layers])
        if not fed:
            raise GraphError(f"signature {self.graph.signature_name} has no input to feed calibration data to.")
        check_forward_ops(self.index, layer_tensors(self.index, chosen), options.allow_unsafe_ops)
        flag_key = next((key for key, tensor in self.graph.inputs.items() if tensor == flag), flag)
        feeds = Feeds(tuple(fed.values()), flag)
        placement = {} if device is None else {"device": device}
        with GraphModel(self.graph.meta_graph, chosen, feeds, str(self.prefix), **placement) as model:
            yield _SavedModelSession(model, layers, feeds, fed, flag_key, self._output(options.output_tensor, notice))

    def cause(self) -> None:
        """A SavedModel keeps no training graph."""
        return None

    writes_file = False

    @property
    def inputs(self) -> list[Path]:
        return [self.path]

    def written_path(self, destination: Path) -> Path:
        return destination

    def check_output(self, output: Path | None, overwrite: bool) -> Path:
        destination = Path(output) if output is not None else self.path.with_name(self.path.name + "-recalibrated")
        return check_destination(destination, [self.path], is_folder=True, overwrite=overwrite,
                                 what=f"the input {self.path}", copies=self.path)

    def write(self, new_values: Mapping[str, np.ndarray], destination: Path, overwrite: bool) -> Path:
        """A copy of the folder with ``variables/`` rewritten (only ``new_values`` replaced); every other file
        byte-identical, checked before the swap."""
        def ignore(folder, names):
            return [n for n in names if n.startswith("variables.")] if Path(folder) == self.prefix.parent else []

        with atomic_output(destination, overwrite=overwrite, is_folder=True, copies=self.path) as staged:
            shutil.copytree(self.path, staged.path, dirs_exist_ok=True, ignore=ignore)
            copy_checkpoint(self.prefix, staged.path / "variables" / "variables", new_values, layout=self.graph.layout,
                            check_interrupt=staged.check_interrupt)
            staged.check_interrupt()
            _check_copied(self.path, staged.path)
        return destination

    @contextlib.contextmanager
    def stored_values(self, other):
        from ckptfix.graph.saved_model import is_saved_model

        other = Path(other).expanduser()
        if not is_saved_model(other):
            raise CheckpointError(f"--against {other}: not a SavedModel folder (no saved_model.pb).")
        prefix = other / "variables" / "variables"
        reader = _reader(prefix)
        yield lambda key: stored_tensor(reader, prefix, key)


def _check_copied(source: Path, staged: Path) -> None:
    """Every file of ``source`` but ``variables/variables.*`` is in ``staged`` with the same bytes, and no other."""
    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*")
                if p.is_file() and not (p.parent == root / "variables" and p.name.startswith("variables."))}

    expected, written = files(source), files(staged)
    wrong = sorted(str(p) for p in expected ^ written)
    wrong += sorted(str(p) for p in expected & written if not filecmp.cmp(source / p, staged / p, shallow=False))
    if wrong:
        raise OutputError(f"the copied SavedModel differs from the input in {wrong[0]}; nothing was kept.")

