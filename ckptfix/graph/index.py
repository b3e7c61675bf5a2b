"""A read-only index over a GraphDef and its function library, for walking tensors by name.

Conventions. A top-level tensor is ``"node:k"`` (``"node"`` means ``"node:0"``; ``"^node"`` is a control
input). Inside a function body an input is either a function argument name or ``"node:out_arg:k"``. A
:class:`Tensor` carries the function it lives in (``None`` at top level); a function argument is mapped back to
the top-level tensor fed into the ``If`` / ``StatelessIf`` op that calls the function.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

IF_OPS = frozenset({"If", "StatelessIf"})
_GRADIENT_SCOPE = re.compile(r"(^|/)gradients(_\d+)?/")


def is_gradient(node_name: str) -> bool:
    """Whether a node belongs to a ``gradients`` scope (backprop ops of a training graph)."""
    return _GRADIENT_SCOPE.search(node_name) is not None


@dataclass(frozen=True)
class Tensor:
    """A tensor: producing node name, output index, and the function body it lives in (None: top level)."""

    node: str
    index: int = 0
    function: str | None = None

    @property
    def name(self) -> str:
        return f"{self.node}:{self.index}"


def parse_input(text: str, function: str | None = None) -> Tensor | None:
    """The tensor an input string refers to; None for control inputs."""
    if text.startswith("^"):
        return None
    parts = text.split(":")
    if function is None:
        return Tensor(parts[0], int(parts[1]) if len(parts) > 1 else 0)
    # Inside a function: "arg" or "node:out_arg:k". Output indices of multi-output ops are not needed by the
    # walks here (they only pass through single-output ops), so "k" is kept as the index.
    return Tensor(parts[0], int(parts[2]) if len(parts) > 2 else 0, function)


class GraphIndex:
    """Nodes by name, consumers, and the call sites of branch functions, for a GraphDef."""

    def __init__(self, graph_def) -> None:
        self.graph_def = graph_def
        self.nodes = {node.name: node for node in graph_def.node}
        self.position = {node.name: k for k, node in enumerate(graph_def.node)}
        self.functions = {f.signature.name: f for f in graph_def.library.function}
        self._function_nodes = {
            name: {node.name: node for node in f.node_def} for name, f in self.functions.items()
        }
        self._function_args = {
            name: [arg.name for arg in f.signature.input_arg] for name, f in self.functions.items()
        }
        # consumers of each top-level tensor, backprop ops left out: only the forward pass matters here
        self.consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for node in graph_def.node:
            if is_gradient(node.name):
                continue
            for position, text in enumerate(node.input):
                tensor = parse_input(text)
                if tensor is not None:
                    self.consumers[tensor.name].append((node.name, position))
        self._function_consumers: dict[str, dict[str, list[tuple[str, int]]]] = {}
        # function name -> top-level If nodes that call it as a branch
        self.call_sites: dict[str, list[str]] = defaultdict(list)
        for node in graph_def.node:
            if node.op in IF_OPS:
                for branch in ("then_branch", "else_branch"):
                    self.call_sites[node.attr[branch].func.name].append(node.name)

    def consumers_in(self, function: str | None) -> dict[str, list[tuple[str, int]]]:
        """``consumers`` of the top level (None) or of a function body's tensors (built on first use)."""
        if function is None:
            return self.consumers
        if function not in self._function_consumers:
            found: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for node in self.functions[function].node_def:
                for position, text in enumerate(node.input):
                    tensor = parse_input(text, function)
                    if tensor is not None:
                        found[tensor.name].append((node.name, position))
            self._function_consumers[function] = found
        return self._function_consumers[function]

    def node(self, name: str, function: str | None = None):
        if function is None:
            return self.nodes.get(name)
        return self._function_nodes[function].get(name)

    def inputs(self, node, function: str | None = None) -> list[Tensor]:
        """Data inputs of ``node`` (control inputs dropped), as tensors in the same scope."""
        return [t for t in (parse_input(text, function) for text in node.input) if t is not None]

    def to_top_level(self, tensor: Tensor) -> Tensor | None:
        """Map a function argument to the top-level tensor its (single) calling If op passes in.

        Returns the tensor unchanged when it is already top level, and None when it is computed inside the
        function or its function has no unique top-level If call site.
        """
        if tensor.function is None:
            return tensor
        args = self._function_args[tensor.function]
        if tensor.node not in args:
            return None
        sites = self.call_sites.get(tensor.function, [])
        if len(sites) != 1:
            return None
        caller = self.nodes[sites[0]]
        return self.inputs(caller)[1 + args.index(tensor.node)]

    def function_output(self, function: str, k: int) -> Tensor | None:
        """The tensor a function body returns as its output ``k``."""
        definition = self.functions.get(function)
        if definition is None or k >= len(definition.signature.output_arg):
            return None
        return parse_input(definition.ret[definition.signature.output_arg[k].name], function)

    def ancestors(self, starts: list[Tensor]) -> set[str]:
        """Names of top-level nodes that the given tensors depend on through data inputs (starts included)."""
        seen: set[str] = set()
        stack = [t.node for t in (self.to_top_level(s) for s in starts) if t is not None]
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            stack.extend(t.node for t in self.inputs(self.nodes[name]))
        return seen
