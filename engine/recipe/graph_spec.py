"""The explicit-graph schema: a recipe's ``[graph]`` table -> frozen `GraphSpec` (no torch import).

A graph is a list of named **nodes** and a table of **identities**. Nodes compute latents from an input
image; decoders render a latent. An identity names the node giving its latent (``code``) and the decoder
that renders it (``decoder``). DFL's two wirings are graphs too (see engine.graph.templates):

    [graph]
    swap_code = "source"                 # DF; "target" for LIAE (see below)

    [[graph.nodes]]
    name = "encoder"
    type = "encoder"                     # input is always the image
    [[graph.nodes]]
    name = "inter"
    type = "inter"
    input = "encoder"
    [[graph.nodes]]
    name = "decoder_src"
    type = "decoder"
    [[graph.nodes]]
    name = "decoder_dst"
    type = "decoder"

    [graph.identities.src]
    code = "inter"
    decoder = "decoder_src"
    [graph.identities.dst]
    code = "inter"
    decoder = "decoder_dst"

Node types and their keys (unset dims default to the [model] values; ``opts`` defaults to the letters
of [model].archi, e.g. "ud" for "df-ud"):

| type | keys | computes |
|---|---|---|
| encoder | input (= "image"), opts, e_dims | DFL Encoder: image -> flat code |
| inter | input, opts, ae_dims, out_ch (default ae_dims) | DFL Inter: flat -> (out_ch, r, r) |
| adapter | input, opts, kind ("conv1x1" or "dense"), hidden | residual latent adapter, shape-preserving |
| concat | inputs (>= 2 nodes) | channel concatenation, in the listed order |
| decoder | opts, d_dims, d_mask_dims | DFL Decoder: latent -> (image, mask); no input: identities feed it |

Inputs must name nodes declared *earlier* (the list is in evaluation order, so no cycles); decoders cannot
be inputs. Every node must be used by some identity. Identities ``src`` and ``dst`` are required (the
SAEHD training step); more identities may be added.

``swap_code`` says which code path encodes a face of identity X when it is rendered as identity Y
(``SwapModel.translate``): ``"source"`` uses X's own code node (DF; per-identity encoders with adapters into
a shared latent), ``"target"`` applies Y's code node to X's face (LIAE: the swap code is [AB, AB], i.e.
src's code path run on the dst face, dropping the dst-only inter_B).

Node names become attribute and part names (``model.encoder``, ``<name>_SAEHD_encoder.npy``), so they must
be Python identifiers and not clash with SwapModel attributes.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from engine.errors import RecipeError, did_you_mean

__all__ = [
    "NODE_TYPES", "NODE_KEYS", "ADAPTER_KINDS", "SWAP_CODES", "RESERVED_NAMES", "IMAGE",
    "NodeSpec", "IdentitySpec", "GraphSpec", "parse_graph_table", "graph_to_dict",
]

IMAGE = "image"  # the pseudo-node every encoder reads
NODE_TYPES = ("encoder", "inter", "adapter", "concat", "decoder")
ADAPTER_KINDS = ("conv1x1", "dense")  # == engine.modules.adapter.ADAPTER_KINDS (checked by a test)
SWAP_CODES = ("source", "target")
GRAPH_KEYS = ("swap_code", "nodes", "identities")
IDENTITY_KEYS = ("code", "decoder")
REQUIRED_IDENTITIES = ("src", "dst")
OPT_LETTERS = "udtc"

# allowed keys per node type, in dump order
NODE_KEYS: dict[str, tuple[str, ...]] = {
    "encoder": ("name", "type", "input", "opts", "e_dims"),
    "inter": ("name", "type", "input", "opts", "ae_dims", "out_ch"),
    "adapter": ("name", "type", "input", "opts", "kind", "hidden"),
    "concat": ("name", "type", "inputs"),
    "decoder": ("name", "type", "opts", "d_dims", "d_mask_dims"),
}
_REQUIRED_KEYS = {"encoder": (), "inter": ("input",), "adapter": ("input",), "concat": ("inputs",), "decoder": ()}
_INT_KEYS = ("e_dims", "ae_dims", "out_ch", "d_dims", "d_mask_dims", "hidden")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# Attribute names of SwapModel and torch.nn.Module that a node name would shadow (a node becomes
# `model.<name>`). engine.graph.model checks the live class too; a test keeps this list in sync.
RESERVED_NAMES = frozenset({
    IMAGE, "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "code",
    "code_shapes", "compile", "cpu", "cuda", "decode", "decoder_of", "describe", "dfl_archi", "double",
    "dump_patches", "eval", "extra_repr", "float", "forward", "forward_train", "get_buffer", "get_extra_state",
    "get_parameter", "get_submodule", "graph", "half", "identities", "ipu", "load_state_dict", "model_spec",
    "modules", "mtia", "named_buffers", "named_children", "named_modules", "named_parameters", "nodes",
    "parameters", "parts", "plan", "reconstruct", "register_backward_hook", "register_buffer",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "resolution",
    "set_extra_state", "set_submodule", "share_memory", "state_dict", "swap", "swap_code", "to", "to_empty",
    "train", "training", "translate", "type", "xpu", "zero_grad",
})


@attrs.frozen(kw_only=True)
class NodeSpec:
    """One node. Fields a type does not use stay None; None dims/opts mean "from [model]"."""

    name: str
    type: str
    input: str | None = None
    inputs: tuple[str, ...] | None = None
    opts: str | None = None
    e_dims: int | None = None
    ae_dims: int | None = None
    out_ch: int | None = None
    d_dims: int | None = None
    d_mask_dims: int | None = None
    kind: str | None = None
    hidden: int | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        """Names this node reads (``("image",)`` for an encoder, () for a decoder)."""
        if self.type == "encoder":
            return (self.input or IMAGE,)
        if self.type == "concat":
            return tuple(self.inputs or ())
        if self.type == "decoder":
            return ()
        return (self.input,) if self.input else ()


@attrs.frozen(kw_only=True)
class IdentitySpec:
    """An identity: the node whose output is its latent, and the decoder that renders it."""

    name: str
    code: str
    decoder: str


@attrs.frozen(kw_only=True)
class GraphSpec:
    """A whole graph: nodes in evaluation order, identities in declaration order, swap-code mode."""

    nodes: tuple[NodeSpec, ...]
    identities: tuple[IdentitySpec, ...]
    swap_code: str = "source"

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def identity(self, name: str) -> IdentitySpec:
        for ident in self.identities:
            if ident.name == name:
                return ident
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------------------
# parsing


def _unknown(file: str | None, where: str, key: str, valid: tuple[str, ...]) -> RecipeError:
    return RecipeError(file, where, f"unknown key '{key}'{did_you_mean(key, valid)}", f"valid: {', '.join(valid)}")


def _type_of(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__)


def parse_graph_table(table: Any, file: str | None = None) -> tuple[GraphSpec | None, list[RecipeError]]:
    """Validate a recipe's ``[graph]`` table; return (GraphSpec, []) or (None, every problem found).

    Checks: unknown keys (with did-you-mean), value types and ranges, node names (identifiers, unique,
    not reserved), node types, input references (must be earlier, non-decoder nodes, or "image" for
    encoders), identity references (code: a non-decoder node; decoder: a decoder node), required
    identities src and dst, and that every node is used. Shapes need [model] and are checked by
    `engine.graph.check` / `engine.graph.build`.
    """
    errs: list[RecipeError] = []
    if not isinstance(table, dict):
        return None, [RecipeError(file, "graph", f"expected a table, got {_type_of(table)}")]
    for k in table:
        if k not in GRAPH_KEYS:
            errs.append(_unknown(file, "graph", k, GRAPH_KEYS))

    swap_code = table.get("swap_code", "source")
    if swap_code not in SWAP_CODES:
        errs.append(RecipeError(file, "graph.swap_code", f"got {swap_code!r}", f"valid: {', '.join(SWAP_CODES)}"))

    nodes: list[NodeSpec] = []
    raw_nodes = table.get("nodes")
    if raw_nodes is None:
        errs.append(RecipeError(file, "graph", "missing [[graph.nodes]]",
                                "declare each node as a [[graph.nodes]] table with name and type"))
        raw_nodes = []
    elif not isinstance(raw_nodes, list):
        errs.append(RecipeError(file, "graph.nodes", f"expected an array of tables ([[graph.nodes]]), got "
                                                     f"{_type_of(raw_nodes)}"))
        raw_nodes = []
    seen: dict[str, int] = {}  # node name -> index of its (first) declaration
    parsed: list[tuple[int, NodeSpec]] = []
    for i, raw in enumerate(raw_nodes):
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            seen.setdefault(raw["name"], i)
        node = _parse_node(raw, i, file, errs, seen)
        if node is not None:
            nodes.append(node)
            parsed.append((i, node))

    by_name = {n.name: n for n in nodes}
    # references between nodes: earlier nodes only
    for i, node in parsed:
        for src in node.sources:
            where = f"graph.nodes[{i}]." + ("inputs" if node.type == "concat" else "input")
            if node.type == "encoder":
                if src != IMAGE:
                    errs.append(RecipeError(file, where, f"encoder '{node.name}' reads the image; got input {src!r}",
                                            f"use input = \"{IMAGE}\" or leave it out"))
                continue
            if src == IMAGE:
                errs.append(RecipeError(file, where, f"{node.type} '{node.name}' cannot read the image directly",
                                        "only encoders read the image; put an encoder node in front"))
                continue
            if src not in seen:
                errs.append(RecipeError(file, where, f"{node.type} '{node.name}' reads unknown node {src!r}"
                                        f"{did_you_mean(src, by_name)}",
                                        f"nodes: {', '.join(by_name) or 'none'}"))
                continue
            if src not in by_name:  # declared but invalid: already reported at its own entry
                continue
            if by_name[src].type == "decoder":
                errs.append(RecipeError(file, where, f"{node.type} '{node.name}' reads decoder '{src}'",
                                        "decoders render images; they cannot feed other nodes"))
                continue
            if seen[src] >= i:
                errs.append(RecipeError(file, where, f"{node.type} '{node.name}' reads node '{src}' which is "
                                        f"declared later (graph.nodes[{seen[src]}])",
                                        "nodes are evaluated in order: declare inputs first"))
                continue

    identities: list[IdentitySpec] = []
    raw_ids = table.get("identities")
    if raw_ids is None:
        errs.append(RecipeError(file, "graph", "missing [graph.identities]",
                                "add [graph.identities.src] and [graph.identities.dst] with code and decoder"))
        raw_ids = {}
    elif not isinstance(raw_ids, dict):
        errs.append(RecipeError(file, "graph.identities", f"expected a table, got {_type_of(raw_ids)}"))
        raw_ids = {}
    for name, raw in raw_ids.items():
        where = f"graph.identities.{name}"
        if not _NAME_RE.match(str(name)):
            errs.append(RecipeError(file, where, f"identity name {name!r} is not an identifier",
                                    "letters, digits and _, starting with a letter"))
            continue
        if not isinstance(raw, dict):
            errs.append(RecipeError(file, where, f"expected a table with code and decoder, got {_type_of(raw)}"))
            continue
        ok = True
        for k in raw:
            if k not in IDENTITY_KEYS:
                errs.append(_unknown(file, where, k, IDENTITY_KEYS))
                ok = False
        vals = {}
        for k in IDENTITY_KEYS:
            v = raw.get(k)
            if v is None:
                errs.append(RecipeError(file, where, f"missing key '{k}'",
                                        "code = <node giving the latent>, decoder = <decoder node>"))
                ok = False
                continue
            if not isinstance(v, str):
                errs.append(RecipeError(file, f"{where}.{k}", f"expected a node name (string), got {_type_of(v)}"))
                ok = False
                continue
            if v not in by_name:
                errs.append(RecipeError(file, f"{where}.{k}", f"unknown node {v!r}{did_you_mean(v, by_name)}",
                                        f"nodes: {', '.join(by_name) or 'none'}"))
                ok = False
                continue
            is_dec = by_name[v].type == "decoder"
            if k == "code" and is_dec:
                errs.append(RecipeError(file, f"{where}.code", f"'{v}' is a decoder; code must name the node "
                                        "giving the latent (encoder, inter, adapter or concat)"))
                ok = False
            elif k == "decoder" and not is_dec:
                errs.append(RecipeError(file, f"{where}.decoder", f"'{v}' is a {by_name[v].type}, not a decoder"))
                ok = False
            vals[k] = v
        if ok:
            identities.append(IdentitySpec(name=name, code=vals["code"], decoder=vals["decoder"]))
    if isinstance(table.get("identities"), dict):
        for req in REQUIRED_IDENTITIES:
            if req not in raw_ids:
                errs.append(RecipeError(file, "graph.identities", f"identity '{req}' is required",
                                        "the SAEHD step trains src and dst; add "
                                        f"[graph.identities.{req}] with code and decoder"))

    # used-ness propagates backwards from identity codes: a node feeding only unused nodes is unused too
    live: set[str] = set()
    stack = [ident.code for ident in identities] + [ident.decoder for ident in identities]
    while stack:
        n = stack.pop()
        if n in live or n not in by_name:
            continue
        live.add(n)
        stack.extend(s for s in by_name[n].sources if s != IMAGE)
    if not errs:
        for n in nodes:
            if n.name not in live:
                errs.append(RecipeError(file, f"graph.nodes[{seen[n.name]}]", f"node '{n.name}' is not used by "
                                        "any identity", "remove it, or reach it from an identity's code/decoder"))
    if errs:
        return None, errs
    return GraphSpec(nodes=tuple(nodes), identities=tuple(identities), swap_code=swap_code), []


def _parse_node(raw: Any, i: int, file: str | None, errs: list[RecipeError], seen: dict[str, int]) -> NodeSpec | None:
    where = f"graph.nodes[{i}]"
    if not isinstance(raw, dict):
        errs.append(RecipeError(file, where, f"expected a table, got {_type_of(raw)}"))
        return None
    n_before = len(errs)
    name, typ = raw.get("name"), raw.get("type")
    if name is None:
        errs.append(RecipeError(file, where, "missing key 'name'"))
    elif not isinstance(name, str) or not _NAME_RE.match(name):
        errs.append(RecipeError(file, f"{where}.name", f"node name {name!r} is not an identifier",
                                "letters, digits and _, starting with a letter"))
    elif name in RESERVED_NAMES:
        errs.append(RecipeError(file, f"{where}.name", f"node name '{name}' is reserved (a SwapModel attribute)",
                                "pick another name"))
    elif seen.get(name, i) != i:
        errs.append(RecipeError(file, f"{where}.name", f"duplicate node name '{name}' (first at "
                                f"graph.nodes[{seen[name]}])"))
    if typ is None:
        errs.append(RecipeError(file, where, "missing key 'type'", f"valid: {', '.join(NODE_TYPES)}"))
        return None
    if typ not in NODE_TYPES:
        errs.append(RecipeError(file, f"{where}.type", f"unknown node type {typ!r}{did_you_mean(str(typ), NODE_TYPES)}",
                                f"valid: {', '.join(NODE_TYPES)}"))
        return None
    keys = NODE_KEYS[typ]
    for k in raw:
        if k not in keys:
            errs.append(_unknown(file, where, k, keys))
    for k in _REQUIRED_KEYS[typ]:
        if k not in raw:
            errs.append(RecipeError(file, where, f"{typ} node needs key '{k}'"))
    vals: dict[str, Any] = {}
    for k in keys:
        if k in ("name", "type") or k not in raw:
            continue
        v = raw[k]
        kp = f"{where}.{k}"
        if k == "input":
            if not isinstance(v, str):
                errs.append(RecipeError(file, kp, f"expected a node name (string), got {_type_of(v)}"))
                continue
        elif k == "inputs":
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                errs.append(RecipeError(file, kp, f"expected an array of node names, got {v!r}"))
                continue
            if len(v) < 2:
                errs.append(RecipeError(file, kp, f"concat needs at least 2 inputs, got {len(v)}"))
                continue
            v = tuple(v)
        elif k == "opts":
            if not isinstance(v, str):
                errs.append(RecipeError(file, kp, f"expected a string of letters from u, d, t, c, got {_type_of(v)}"))
                continue
            bad = sorted(set(v) - set(OPT_LETTERS))
            if bad or len(set(v)) != len(v):
                what = f"unknown option(s) {', '.join(repr(b) for b in bad)}" if bad else "repeated letters"
                errs.append(RecipeError(file, kp, f"opts = {v!r}: {what}",
                                        "letters from u, d, t, c, each at most once"))
                continue
        elif k == "kind":
            if v not in ADAPTER_KINDS:
                errs.append(RecipeError(file, kp, f"unknown adapter kind {v!r}{did_you_mean(str(v), ADAPTER_KINDS)}",
                                        f"valid: {', '.join(ADAPTER_KINDS)}"))
                continue
        elif k in _INT_KEYS:
            if isinstance(v, bool) or not isinstance(v, int):
                errs.append(RecipeError(file, kp, f"expected an integer, got {_type_of(v)} {v!r}"))
                continue
            if not 1 <= v <= 65536:
                errs.append(RecipeError(file, kp, f"got {v}", "valid: 1..65536"))
                continue
        vals[k] = v
    if len(errs) != n_before:
        return None
    return NodeSpec(name=name, type=typ, **vals)


# ---------------------------------------------------------------------------------------------------------
# dumping


def graph_to_dict(graph: GraphSpec) -> dict[str, Any]:
    """GraphSpec -> the ``[graph]`` table (plain dict/list/str/int), so that
    ``parse_graph_table(graph_to_dict(g)) == (g, [])``. Unset (None) node fields are left out."""
    nodes = []
    for n in graph.nodes:
        d: dict[str, Any] = {}
        for k in NODE_KEYS[n.type]:
            v = getattr(n, k)
            if v is None:
                continue
            d[k] = list(v) if isinstance(v, tuple) else v
        nodes.append(d)
    return {
        "swap_code": graph.swap_code,
        "nodes": nodes,
        "identities": {i.name: {"code": i.code, "decoder": i.decoder} for i in graph.identities},
    }
