"""Refuse to run graph ops that execute Python or touch files, unless the user allows it.

Importing a GraphDef runs nothing. Running the forward pass runs every op the fetched tensors depend on,
through data and control edges, including the bodies of ``If`` branches. Among those, ops that call back into
Python (``PyFunc``, ``EagerPyFunc``), write files (savers, summary writers, ``WriteFile``, ``PrintV2`` to a file)
or feed queues would execute code or have effects the user did not ask for: they are named in an error unless
``allow_unsafe_ops`` is set. (The saver's restore op, which only reads the checkpoint, is run separately.)
"""

from __future__ import annotations

from ckptfix.errors import GraphError
from ckptfix.graph.index import IF_OPS, GraphIndex, Tensor

UNSAFE_OPS = frozenset(
    {
        "PyFunc", "PyFuncStateless", "EagerPyFunc",
        "WriteFile", "Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints",
        "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
        "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
        "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter",
        "PrintV2",
        "QueueEnqueue", "QueueEnqueueV2", "QueueEnqueueMany", "QueueEnqueueManyV2",
    }
)


def _closure(index: GraphIndex, starts: list[Tensor]) -> set[tuple[str | None, str]]:
    """(function, node) pairs the starts depend on through data and control edges, If bodies included."""
    seen: set[tuple[str | None, str]] = set()
    stack = [(s.function, s.node) for s in starts]
    while stack:
        function, name = stack.pop()
        if (function, name) in seen:
            continue
        node = index.node(name, function)
        if node is None:  # a function argument
            outer = index.to_top_level(Tensor(name, 0, function))
            if outer is not None:
                stack.append((None, outer.node))
            continue
        seen.add((function, name))
        for text in node.input:
            source = text.lstrip("^").split(":")[0]
            stack.append((function, source))
        if node.op in IF_OPS:
            for branch in ("then_branch", "else_branch"):
                body = node.attr[branch].func.name
                if body in index.functions:
                    stack.extend((body, inner.name) for inner in index.functions[body].node_def)
    return seen


def check_forward_ops(index: GraphIndex, starts: list[Tensor], allow_unsafe_ops: bool) -> None:
    """Raise GraphError naming the unsafe ops the forward pass would run, unless allowed."""
    if allow_unsafe_ops:
        return
    unsafe = sorted(
        f"{name} ({node.op})"
        for function, name in _closure(index, starts)
        if (node := index.node(name, function)) is not None and node.op in UNSAFE_OPS
    )
    if unsafe:
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise GraphError(
            f"the forward pass would run ops that execute Python or write files: {shown}. "
            "Pass --allow-unsafe-ops if you trust this graph."
        )
