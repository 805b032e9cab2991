"""[graph] schema: parsing, did-you-mean errors naming the key path, exact round trip to TOML."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.graph import df, liae
from engine.recipe.graph_spec import (ADAPTER_KINDS, NODE_KEYS, RESERVED_NAMES, GraphSpec, IdentitySpec, NodeSpec,
                                     graph_to_dict, parse_graph_table)
from engine.recipe.specs import ModelSpec

MS = ModelSpec(archi="df-ud", resolution=64, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8)

DF_TOML = """
[graph]
swap_code = "source"
[[graph.nodes]]
name = "encoder"
type = "encoder"
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
"""

ADAPTERS_TOML = """
[graph]
[[graph.nodes]]
name = "enc_src"
type = "encoder"
e_dims = 8
[[graph.nodes]]
name = "enc_dst"
type = "encoder"
input = "image"
[[graph.nodes]]
name = "ad_src"
type = "adapter"
input = "enc_src"
kind = "dense"
hidden = 16
[[graph.nodes]]
name = "ad_dst"
type = "adapter"
input = "enc_dst"
kind = "dense"
[[graph.nodes]]
name = "inter_src"
type = "inter"
input = "ad_src"
opts = "d"
[[graph.nodes]]
name = "inter_dst"
type = "inter"
input = "ad_dst"
ae_dims = 16
out_ch = 32
[[graph.nodes]]
name = "both"
type = "concat"
inputs = ["inter_src", "inter_dst"]
[[graph.nodes]]
name = "dec"
type = "decoder"
d_dims = 8
d_mask_dims = 4
opts = "ud"
[graph.identities.src]
code = "both"
decoder = "dec"
[graph.identities.dst]
code = "both"
decoder = "dec"
"""


def _graph(text):
    return tomllib.loads(text)["graph"]


def test_df_table_parses_to_the_df_preset():
    g, errs = parse_graph_table(_graph(DF_TOML), "x.toml")
    assert errs == []
    assert g == df(MS)


@pytest.mark.parametrize("g", [df(MS), liae(MS)])
def test_presets_round_trip(g):
    d = graph_to_dict(g)
    back, errs = parse_graph_table(d)
    assert errs == [] and back == g
    assert graph_to_dict(back) == d


def test_dict_round_trip_is_exact():
    raw = _graph(ADAPTERS_TOML)
    raw["swap_code"] = "source"  # the dump always writes the resolved mode
    g, errs = parse_graph_table(raw)
    assert errs == []
    assert graph_to_dict(g) == raw
    assert g.node("ad_src") == NodeSpec(name="ad_src", type="adapter", input="enc_src", kind="dense", hidden=16)
    assert g.node("both").inputs == ("inter_src", "inter_dst")
    assert [i.name for i in g.identities] == ["src", "dst"]


def test_toml_writer_round_trip():
    from engine.recipe.toml_write import dumps

    g, _ = parse_graph_table(_graph(ADAPTERS_TOML))
    text = dumps({"graph": graph_to_dict(g)})
    assert parse_graph_table(tomllib.loads(text)["graph"])[0] == g


def _errors(text_or_dict):
    table = _graph(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    g, errs = parse_graph_table(table, "r.toml")
    assert g is None
    return errs


def test_unknown_key_did_you_mean_and_key_path():
    raw = _graph(DF_TOML)
    raw["nodes"][1]["inptu"] = "encoder"
    del raw["nodes"][1]["input"]
    errs = _errors(raw)
    msgs = [str(e) for e in errs]
    assert any("r.toml: [graph.nodes[1]] unknown key 'inptu' — did you mean 'input'?" in m for m in msgs), msgs
    assert any("[graph.nodes[1]] inter node needs key 'input'" in m for m in msgs), msgs


def test_all_errors_are_collected_at_once():
    raw = _graph(DF_TOML)
    raw["swap_cod"] = "source"
    raw["nodes"][0]["type"] = "encodr"
    raw["nodes"][2]["d_dims"] = "64"
    raw["identities"]["dst"]["decoder"] = "decoder_dts"
    errs = _errors(raw)
    text = "\n".join(str(e) for e in errs)
    assert "[graph] unknown key 'swap_cod' — did you mean 'swap_code'?" in text
    assert "[graph.nodes[0].type] unknown node type 'encodr' — did you mean 'encoder'?" in text
    assert "[graph.nodes[2].d_dims] expected an integer, got a string '64'" in text
    assert "[graph.identities.dst.decoder] unknown node 'decoder_dts' — did you mean 'decoder_dst'?" in text
    assert len(errs) >= 4


def test_bad_references_name_the_node():
    raw = _graph(DF_TOML)
    raw["nodes"][1]["input"] = "decoder_src"
    assert "[graph.nodes[1].input] inter 'inter' reads decoder 'decoder_src'" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["nodes"].insert(0, raw["nodes"].pop(1))  # inter before encoder
    assert "reads node 'encoder' which is declared later (graph.nodes[1])" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["nodes"][1]["input"] = "image"
    assert "cannot read the image directly" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["nodes"][0]["input"] = "inter"
    assert "[graph.nodes[0].input] encoder 'encoder' reads the image" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["identities"]["src"]["code"] = "decoder_src"
    assert "[graph.identities.src.code] 'decoder_src' is a decoder" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["identities"]["src"]["decoder"] = "inter"
    assert "[graph.identities.src.decoder] 'inter' is a inter, not a decoder" in str(_errors(raw)[0])


def test_identity_rules():
    raw = _graph(DF_TOML)
    del raw["identities"]["dst"]
    raw["nodes"].pop()  # decoder_dst would now be unused
    msg = str(_errors(raw)[0])
    assert "[graph.identities] identity 'dst' is required" in msg
    raw = _graph(DF_TOML)
    raw["identities"]["src"]["cod"] = "inter"
    assert any("unknown key 'cod' — did you mean 'code'?" in str(e) for e in _errors(raw))


def test_unused_and_duplicate_and_reserved_names():
    raw = _graph(DF_TOML)
    raw["nodes"].append({"name": "spare", "type": "decoder"})
    assert "[graph.nodes[4]] node 'spare' is not used by any identity" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["nodes"].append({"name": "inter", "type": "decoder"})
    assert "duplicate node name 'inter' (first at graph.nodes[1])" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["nodes"][3]["name"] = "swap"
    raw["identities"]["dst"]["decoder"] = "swap"
    assert "node name 'swap' is reserved" in str(_errors(raw)[0])
    raw = _graph(DF_TOML)
    raw["nodes"][3]["name"] = "2dec"
    assert "is not an identifier" in str(_errors(raw)[0])


def test_value_checks():
    raw = _graph(ADAPTERS_TOML)
    raw["nodes"][2]["kind"] = "dens"
    raw["nodes"][4]["opts"] = "dx"
    raw["nodes"][6]["inputs"] = ["inter_src"]
    raw["nodes"][5]["out_ch"] = 0
    raw["nodes"][0]["e_dims"] = True
    text = "\n".join(str(e) for e in _errors(raw))
    assert "unknown adapter kind 'dens' — did you mean 'dense'?" in text
    assert "opts = 'dx': unknown option(s) 'x'" in text
    assert "concat needs at least 2 inputs, got 1" in text
    assert "[graph.nodes[5].out_ch] got 0 (valid: 1..65536)" in text
    assert "[graph.nodes[0].e_dims] expected an integer, got a boolean True" in text
    assert "[graph] expected a table" in str(parse_graph_table([1])[1][0])


def test_concat_has_no_opts_key():
    raw = _graph(ADAPTERS_TOML)
    raw["nodes"][6]["opts"] = "d"
    assert "unknown key 'opts'" in str(_errors(raw)[0])
    assert "opts" not in NODE_KEYS["concat"]


def test_reserved_names_cover_swapmodel_attributes():
    import torch

    from engine.graph.model import SwapModel

    public = {a for a in dir(SwapModel) + dir(torch.nn.Module) if not a.startswith("_")}
    model = __import__("engine.graph", fromlist=["build"]).build(MS, device="meta")
    public |= {a for a in vars(model) if not a.startswith("_")}
    assert public <= RESERVED_NAMES, sorted(public - RESERVED_NAMES)


def test_adapter_kinds_agree_with_module():
    from engine.modules.adapter import ADAPTER_KINDS as M

    assert ADAPTER_KINDS == M


_name = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in RESERVED_NAMES)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n_adapters=st.integers(0, 3), names=st.lists(_name, min_size=8, max_size=8, unique=True),
       dims=st.lists(st.one_of(st.none(), st.integers(1, 512)), min_size=4, max_size=4),
       opts=st.one_of(st.none(), st.sampled_from(["", "u", "d", "t", "c", "ud", "udtc"])),
       swap=st.sampled_from(["source", "target"]), kind=st.sampled_from(ADAPTER_KINDS))
def test_round_trip_property(n_adapters, names, dims, opts, swap, kind):
    enc, inter, dec_a, dec_b, *ad = names
    nodes = [NodeSpec(name=enc, type="encoder", e_dims=dims[0], opts=opts)]
    last = enc
    for a in ad[:n_adapters]:
        nodes.append(NodeSpec(name=a, type="adapter", input=last, kind=kind, hidden=dims[1]))
        last = a
    nodes += [NodeSpec(name=inter, type="inter", input=last, ae_dims=dims[2], out_ch=dims[3], opts=opts),
              NodeSpec(name=dec_a, type="decoder", d_dims=dims[1], opts=opts), NodeSpec(name=dec_b, type="decoder")]
    g = GraphSpec(nodes=tuple(nodes), identities=(IdentitySpec(name="src", code=inter, decoder=dec_a),
                                                  IdentitySpec(name="dst", code=inter, decoder=dec_b)), swap_code=swap)
    back, errs = parse_graph_table(graph_to_dict(g))
    assert errs == [] and back == g
